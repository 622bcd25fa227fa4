"""The ledger's regression results (migration 9): one row per service, month and area; a rerun of the month
replaces it (a passing rerun drops the ticket), and the list is by month then area, optionally of a year."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from conveyor.ledger import Ledger, migrations

AT = dt.datetime(2026, 3, 1, 6, 5, tzinfo=dt.UTC)


def test_a_rerun_replaces_the_months_result_and_years_are_apart(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upsert_regression_result("demo_shop", "2026-03", "search", release_id="demo_shop/r1", outcome="failed",
                                    passed=2, failed=1, failing_tests=["t.search"], version="v1.0.0",
                                    ticket_id="RCA-1", at=AT)
    ledger.upsert_regression_result("demo_shop", "2026-03", "cart", release_id="demo_shop/r1", outcome="passed",
                                    passed=5, failed=0, failing_tests=[], version="v1.0.0", ticket_id=None, at=AT)
    ledger.upsert_regression_result("demo_shop", "2025-12", "cart", release_id="demo_shop/r0", outcome="passed",
                                    passed=5, failed=0, failing_tests=[], version="v0.9.0", ticket_id=None, at=AT)
    ledger.upsert_regression_result("other", "2026-03", "cart", release_id="other/r1", outcome="passed", passed=1,
                                    failed=0, failing_tests=[], version="v3", ticket_id=None, at=AT)
    # the rerun: search passes now
    ledger.upsert_regression_result("demo_shop", "2026-03", "search", release_id="demo_shop/r2", outcome="passed",
                                    passed=3, failed=0, failing_tests=[], version="v1.0.0", ticket_id=None,
                                    at=AT + dt.timedelta(hours=1))

    rows = ledger.list_regression_results("demo_shop")
    assert [(r["month"], r["area"]) for r in rows] == [("2025-12", "cart"), ("2026-03", "cart"), ("2026-03", "search")]
    search = rows[-1]
    assert (search["release_id"], search["outcome"], search["passed"], search["failed"], search["failing_tests"],
            search["ticket_id"], search["at"]) == ("demo_shop/r2", "passed", 3, 0, [], None, AT + dt.timedelta(hours=1))
    assert [r["month"] for r in ledger.list_regression_results("demo_shop", year=2025)] == ["2025-12"]
    assert ledger.list_regression_results("nobody") == []
    with ledger.engine.connect() as conn:
        assert "regression_results" in sa.inspect(conn).get_table_names()
    assert ledger.schema_version() == migrations.LATEST_VERSION >= 9
    ledger.dispose()


def test_the_migrations_are_numbered_one_after_another():
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, len(migrations.MIGRATIONS) + 1))
    assert next(m for m in migrations.MIGRATIONS if m.version == 9).apply.__name__ == "_create_regression_results"
