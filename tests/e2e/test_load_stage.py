"""The load stage in a whole release, with the demo's own load suite (not the e2e's shortened one):
v1.4.0 (+150 ms on every request) stops at ``tests`` on the replica, before any production host
changes, and the numbers against the thresholds are in the run's error, the ledger and the ticket.
(v1.1.0 passing the same stage, with its numbers in the sign-off body, is
tests/conveyor/operators/test_testing_load.py; the e2e releases use a shortened suite.)"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.e2e.harness import ROOT, fleet_state, put_fleet_on, release_record, run_release, ticket_for

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]


@pytest.fixture
def demo_load(release_env, e2e_services, tmp_path, monkeypatch):
    """The e2e service file with the demo's own load suite put back; the fleet on v1.0.0."""
    put_fleet_on("v1.0.0")
    spec = yaml.safe_load((e2e_services / "demo_shop.yaml").read_text())
    demo = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    spec["tests"] = demo["tests"]
    services = tmp_path / "services"
    services.mkdir()
    (services / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))
    return fleet_state()


def test_a_slow_release_stops_at_the_load_stage_with_its_numbers(demo_load):
    before = demo_load
    result = run_release({"git_ref": "v1.4.0"}, decisions=[])

    assert result.dag_run.state == "failed", sorted(result.states.items())
    assert sorted(t for t, s in result.states.items() if s == "failed" and t != "fail_run") == ["tests"]
    after = fleet_state()
    assert {n: (after[n]["current"], after[n]["pid"]) for n in PROD} == {
        n: (before[n]["current"], before[n]["pid"]) for n in PROD}

    release = release_record(result.dag_run.run_id)
    [stage] = [s for s in release["stages"] if s["stage"] == "tests"]
    measured = stage["detail"]["suites"]["load"]["load"]["measured"]
    p95 = f"p95 {measured['p95_ms']:g} ms, over the threshold 150 ms"
    assert measured["p95_ms"] > 150 and p95 in stage["error"]
    load_rows = {t["test"]: (t["outcome"], t["message"], t["pre_existing"]) for t in release["tests"]
                 if t["suite"] == "load"}
    assert load_rows["p95_ms"] == ("failed", p95, False)  # production's v1.0.0 keeps it: not pre-existing
    assert {t: r[0] for t, r in load_rows.items()} == {"p95_ms": "failed", "p99_ms": "passed",
                                                       "error_rate": "passed", "min_rps": "passed"}

    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == "tests" and ticket["failing_tests"] == ["load::p95_ms"]
    assert ticket["hosts_touched"] == []
    line = re.search(r"^- load: .*$", ticket["body"], re.MULTILINE)
    assert line and f"p95 {measured['p95_ms']:g} ms (threshold 150 ms: FAIL)" in line[0], ticket["body"]
