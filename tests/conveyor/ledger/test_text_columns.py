"""Every column of the ledger takes what the code writes into it (issue 10, item 7).

On PostgreSQL a ``VARCHAR(n)`` refuses a longer value (``DataError``), a text refuses a NUL byte and
a JSON column refuses ``NaN``; SQLite takes all of them. Each case the issue names runs on both (the
PostgreSQL cases carry the ``services`` marker): a failed rollback's status with its error, test
names over 500 characters, run ids of Airflow's full 250 characters, long commit authors; then the
whole schema at once, and an existing (narrow) ledger after its migration.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest
import sqlalchemy as sa

from conveyor.ledger import Ledger, migrations, schema
from conveyor.ledger.core import fit_text
from tests.conveyor.ledger.test_ledger import ledger, ledger_url, postgres_url  # noqa: F401 - fixtures

AT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RUN_ID = "manual__" + "x" * 242  # Airflow's run_id is VARCHAR(250): the longest run id it can give
RID = f"demo_shop/{RUN_ID}"


def opened(book: Ledger, rid: str = "demo_shop/manual__1") -> str:
    book.upsert_release(rid, service="demo_shop", status="running", started_at=AT)
    return rid


def test_a_failed_rollback_keeps_its_status_with_the_error(ledger):  # noqa: F811
    opened(ledger)
    error = "RollbackError: prod-2 had no version before this release; cannot roll back " + "(details) " * 20
    ledger.upsert_rollback("demo_shop/manual__1", "prod-2", from_version="v1.2.0", to_version=None,
                           status=f"failed: {error}", at=AT)
    [row] = ledger.get_release("demo_shop/manual__1")["rollbacks"]
    assert row["status"] == f"failed: {error}"  # the whole error: it is what a person acts on


def test_test_names_over_500_characters_are_kept_apart(ledger):  # noqa: F811
    rid = opened(ledger)
    base = "tests/integration/test_checkout.py::test_totals[" + "parameter-" * 60
    long_a, long_b = base + "a]", base + "b]"
    assert len(long_a) > 500
    ledger.upsert_test_result(rid, "integration", long_a, outcome="failed", message="boom")
    ledger.upsert_test_result(rid, "integration", long_b, outcome="passed")
    ledger.upsert_test_result(rid, "integration", long_a, outcome="failed", message="boom again")  # a rerun
    tests = ledger.get_release(rid)["tests"]
    assert len(tests) == 2  # two different tests stay two rows; the rerun is an upsert
    assert all(len(t["test"]) <= 500 and t["test"].startswith(base[:400]) for t in tests)
    assert {t["test"] for t in tests} == {fit_text(long_a, 500), fit_text(long_b, 500)}
    assert sorted(t["outcome"] for t in tests) == ["failed", "passed"]


def test_a_run_id_of_250_characters_records_every_row(ledger):  # noqa: F811
    assert len(RID) > 250
    ledger.upsert_release(RID, service="demo_shop", git_ref="v1.1.0", change_kind="minor", run_id=RUN_ID,
                          dag_id="release_demo_shop", author="dev", status="running", started_at=AT)
    ledger.upsert_stage(RID, "wave_1.deploy", status="failed", error="DeployError: boom")
    ledger.upsert_host_deployment(RID, "prod-1", environment="production", wave="wave-1",
                                  from_version="v1.0.0", to_version="v1.1.0", status="deployed", at=AT)
    ledger.upsert_approval(RID, "qa1", decision="approved", at=AT)
    ledger.upsert_test_result(RID, "unit", "test_a", outcome="passed")
    ledger.upsert_rollback(RID, "prod-1", from_version="v1.1.0", to_version="v1.0.0", status="rolled back", at=AT)
    ledger.upsert_ticket("RCA-0123456789", release_id=RID, service="demo_shop", title="t", created_at=AT)
    release = ledger.get_release(RID)
    assert release["run_id"] == RUN_ID and release["release_id"] == RID
    assert [len(release[k]) for k in ("stages", "hosts", "approvals", "tests", "rollbacks", "tickets")] == [1] * 6
    assert ledger.list_releases("demo_shop")[0]["release_id"] == RID


def test_long_commit_authors_and_release_authors_are_kept(ledger):  # noqa: F811
    author = "Jean-Baptiste Emmanuel Zorg " * 12 + "<jbz@example.com>"
    assert len(author) > 250
    ledger.upsert_commit("demo_shop", "c" * 40, author=author, message="Fix", committed_at=AT)
    ledger.upsert_release("demo_shop/manual__1", service="demo_shop", author=author, status="running")
    assert ledger.get_commits("demo_shop", ["c" * 40])["c" * 40]["author"] == author
    assert ledger.get_release("demo_shop/manual__1")["author"] == author


def test_a_nul_byte_and_nan_do_not_lose_the_record(ledger):  # noqa: F811
    """Remote output can hold a NUL byte, a metrics endpoint can answer NaN: the stage is still recorded."""
    rid = opened(ledger)
    ledger.upsert_stage(rid, "wave_1.analysis", status="running", started_at=AT,
                        detail={"output": "ok\x00garbage", "effect": float("nan"), "bound": float("inf"),
                                "per_host": [{"host\x00": -math.inf}]})
    ledger.upsert_stage(rid, "wave_1.analysis", status="failed", error="DeployError: exit 1: \x00\x01 binary")
    [stage] = ledger.get_release(rid)["stages"]
    assert stage["status"] == "failed"
    assert "\x00" not in stage["error"] and stage["error"].startswith("DeployError: exit 1: ")
    assert stage["detail"]["effect"] == "NaN" and stage["detail"]["bound"] == "Infinity"
    assert "\x00" not in json.dumps(stage["detail"])
    assert stage["detail"]["per_host"] == [{"host\ufffd": "-Infinity"}]


def _long(n: int) -> str:
    return ("0123456789abcdef" * (n // 16 + 1))[:n]


@pytest.mark.parametrize("table", schema.V1_TABLES, ids=lambda t: t.name)
def test_every_string_column_takes_10000_characters(ledger, table):  # noqa: F811
    """Whatever a writer passes, the row is written: a value longer than its column is cut with a marker."""
    values: dict[str, object] = {}
    for column in table.columns:
        if isinstance(column.type, sa.String):
            values[column.name] = _long(10_000)
    key = [values.pop(c.name) for c in table.primary_key.columns]
    if table.name == "approvals":
        values["at"] = AT
    method = {"releases": "upsert_release", "stages": "upsert_stage", "host_deployments": "upsert_host_deployment",
              "approvals": "upsert_approval", "test_results": "upsert_test_result", "rollbacks": "upsert_rollback",
              "tickets": "upsert_ticket", "commits": "upsert_commit"}[table.name]
    getattr(ledger, method)(*key, **values)
    with ledger.engine.connect() as conn:
        [row] = conn.execute(sa.select(table)).mappings().all()
    for column in table.columns:
        if not isinstance(column.type, sa.String):
            continue
        stored, length = row[column.name], column.type.length
        if length is None:  # a text column keeps everything
            assert stored == _long(10_000), column.name
        else:
            assert len(stored) <= length and stored == fit_text(_long(10_000), length), column.name


def test_fit_text_marks_what_it_cut():
    assert fit_text("short", 30) == "short"
    cut = fit_text("x" * 100, 30)
    assert len(cut) == 30 and cut.startswith("x" * 20) and "…#" in cut
    assert fit_text("x" * 99 + "a", 30) != fit_text("x" * 99 + "b", 30)  # distinct values stay distinct
    assert fit_text("x" * 100, 30) == fit_text("x" * 100, 30)  # and the same value cuts the same way


def _narrow_v3_ledger(url: str) -> None:
    """A ledger as schema version 3 left it: the columns as narrow as they were then, no ticket delivery."""
    narrow = {("releases", "release_id"): 250, ("releases", "author"): 250, ("commits", "author"): 250,
              ("rollbacks", "status"): 30, ("stages", "stage"): 100, ("test_results", "release_id"): 250}
    engine = sa.create_engine(url)
    old = sa.MetaData()
    for table in schema.V1_TABLES:
        columns = []
        for c in table.columns:
            if table.name == "tickets" and c.name not in ("ticket_id", "release_id", "service", "path", "url",
                                                         "title", "created_at"):
                continue
            kind = sa.String(narrow[(table.name, c.name)]) if (table.name, c.name) in narrow else c.type
            columns.append(sa.Column(c.name, kind, primary_key=c.primary_key))
        sa.Table(table.name, old, *columns)
    old.create_all(engine)
    schema.schema_version.create(engine)
    with engine.begin() as conn:
        for m in migrations.MIGRATIONS[:3]:
            conn.execute(sa.insert(schema.schema_version).values(version=m.version, name=m.name, applied_at=AT))
    engine.dispose()


def test_an_existing_ledger_takes_long_values_after_its_migration(ledger_url):  # noqa: F811
    _narrow_v3_ledger(ledger_url)
    upgraded = Ledger(ledger_url)
    try:
        assert upgraded.migrate() == [m.version for m in migrations.MIGRATIONS[3:]]
        author = "A" * 400
        upgraded.upsert_release(RID, service="demo_shop", author=author, run_id=RUN_ID, status="failed")
        upgraded.upsert_stage(RID, "g" * 200, status="failed", error="boom")
        upgraded.upsert_test_result(RID, "unit", "t" * 480, outcome="failed")
        upgraded.upsert_rollback(RID, "prod-1", status="failed: " + "e" * 300, at=AT)
        upgraded.upsert_commit("demo_shop", "c" * 40, author=author)
        upgraded.upsert_ticket("RCA-0123456789", release_id=RID, backend="jira", external_key="OPS-7",
                             signature="0123456789ab", delivery="filed", delivery_error=None)
        release = upgraded.get_release(RID)
        assert release["author"] == author and release["rollbacks"][0]["status"] == "failed: " + "e" * 300
        assert release["stages"][0]["stage"] == "g" * 200
        assert release["tickets"][0]["external_key"] == "OPS-7"
    finally:
        upgraded.dispose()
