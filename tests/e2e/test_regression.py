"""The regression calendar (issue 14): ``regression_demo_shop`` runs one month's areas against a replica of
production's version (v1.0.0), records a result per area in the ledger, files one ticket per failing area,
and a rerun of the month adds neither rows nor tickets.

The failing area runs the test v1.6.0 added for a bug production already has (case-sensitive search,
``include/demo/history/test_search.py``): it fails on v1.0.0.
"""

from __future__ import annotations

import pytest
import yaml

from tests.e2e.harness import ROOT, put_fleet_on, run_release

pytestmark = [pytest.mark.e2e]

SEARCH_TEST = ROOT / "include" / "demo" / "history" / "test_search.py"
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
# The search test is not in v1.0.0's checkout: it runs from a copy of the checkout's tests (never the shared
# checkout itself, which other runs use).
SEARCH = ('t=$(mktemp -d) && trap \'rm -rf "$t"\' EXIT && cp -R tests pytest.ini "$t/" && cp ' + str(SEARCH_TEST)
          + ' "$t/tests/integration/" '
          '&& cd "$t" && python -m pytest -q -p no:cacheprovider tests/integration/test_search.py --junitxml={junit}')
MONTH = 3


@pytest.fixture
def regression_service(release_env, e2e_services, tmp_path, monkeypatch):
    """The e2e service file with three areas, two of them in March: cart (passes) and search (fails)."""
    put_fleet_on("v1.0.0")
    spec = yaml.safe_load((e2e_services / "demo_shop.yaml").read_text())
    spec["regression"] = {
        "areas": {
            "cart": {"command": [*PYTEST, "tests/unit/test_cart.py", "--junitxml={junit}"], "timeout_s": 120},
            "search": {"command": SEARCH, "timeout_s": 120},
            "catalog": {"command": [*PYTEST, "tests/unit/test_catalog.py", "--junitxml={junit}"], "timeout_s": 120},
        },
        "rotation": {"months": {"jan": ["catalog"], "mar": ["cart", "search"], "jul": ["catalog", "search"]}},
    }
    services = tmp_path / "services"
    services.mkdir()
    (services / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))


def _month_rows(ledger, month: str) -> list[dict]:
    return [r for r in ledger.list_regression_results("demo_shop") if r["month"] == month]


def _regression_tickets() -> list[dict]:
    """The session's regression tickets of demo_shop (the local backend is shared by the e2e tests)."""
    from conveyor.tickets import LocalTicketBackend

    return [t for t in LocalTicketBackend().list() if t.get("kind") == "regression" and t["service"] == "demo_shop"]


def test_a_month_records_each_area_and_files_one_ticket_per_failing_area(regression_service):
    from conveyor.evidence import release_id_for
    from conveyor.ledger.hook import LedgerHook

    ledger = LedgerHook().ledger
    first = run_release({"month": MONTH}, decisions=[], dag_id="regression_demo_shop", stages={})

    assert first.dag_run.state == "failed", sorted(first.states.items())
    assert first.states["report"] == "failed"
    assert {t: s for t, s in first.states.items() if t != "report"} == {
        "plan": "success", "production_version": "success", "replica.deploy": "success",
        "replica.populate": "success", "areas": "success", "tickets": "success"}
    month = f"{first.dag_run.run_after.year}-{MONTH:02d}"  # March of the run's year
    rows = {r["area"]: r for r in _month_rows(ledger, month)}
    assert sorted(rows) == ["cart", "search"]  # March's areas, not catalog
    cart, search = rows["cart"], rows["search"]
    assert (cart["outcome"], cart["failed"], cart["failing_tests"], cart["ticket_id"]) == ("passed", 0, [], None)
    assert cart["passed"] > 0 and cart["version"] == "v1.0.0"
    assert (search["outcome"], search["failed"], search["version"]) == ("failed", 1, "v1.0.0")
    assert search["failing_tests"] == ["tests.integration.test_search.test_search_ignores_case"]
    assert search["release_id"] == release_id_for("demo_shop", first.dag_run.run_id)

    [ticket] = _regression_tickets()
    assert ticket["ticket_id"] == search["ticket_id"]
    assert (ticket["area"], ticket["month"], ticket["failing_tests"]) == ("search", month, search["failing_tests"])
    assert [o["month"] for o in ticket["occurrences"]] == [month]

    second = run_release({"month": MONTH}, decisions=[], dag_id="regression_demo_shop", stages={})

    assert second.dag_run.state == "failed" and second.states["tickets"] == "success"
    again = {r["area"]: r for r in _month_rows(ledger, month)}
    assert sorted(again) == ["cart", "search"]  # replaced, not added
    assert again["search"]["release_id"] == release_id_for("demo_shop", second.dag_run.run_id)
    [same] = _regression_tickets()
    assert same["ticket_id"] == ticket["ticket_id"] and [o["month"] for o in same["occurrences"]] == [month]


def test_the_demo_calendar_passes_on_production_and_one_area_runs_by_hand(release_env):
    """The demo's own areas (cart, catalog, api: one a month) pass on v1.0.0; ``area`` runs just that one."""
    from conveyor.ledger.hook import LedgerHook

    put_fleet_on("v1.0.0")
    ledger = LedgerHook().ledger
    for month, area in ((1, "cart"), (2, "catalog")):
        result = run_release({"month": month}, decisions=[], dag_id="regression_demo_shop", stages={})
        assert result.dag_run.state == "success", sorted(result.states.items())
        [row] = _month_rows(ledger, f"{result.dag_run.run_after.year}-{month:02d}")
        assert (row["area"], row["outcome"], row["version"]) == (area, "passed", "v1.0.0") and row["passed"] > 0

    by_hand = run_release({"area": "api", "month": 12}, decisions=[], dag_id="regression_demo_shop", stages={})
    assert by_hand.dag_run.state == "success", sorted(by_hand.states.items())
    [row] = _month_rows(ledger, f"{by_hand.dag_run.run_after.year}-12")  # December's areas would be catalog
    assert (row["area"], row["outcome"], row["failed"]) == ("api", "passed", 0) and row["passed"] > 0
    assert not [t for t in _regression_tickets() if t["area"] in ("cart", "catalog", "api")]
