"""Whole releases of the demo shop on the local fleet, over real SSH, judged by the real analysis.

Each test starts from a known fleet (every host on ``v1.0.0`` unless it says otherwise) and asserts
what a release engineer would look at: the versions the hosts serve, which app processes were
restarted, the ledger's record, and the root-cause ticket.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.harness import (
    ROOT,
    fleet_state,
    put_fleet_on,
    release_record,
    run_release,
    ticket_for,
    versions,
)

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]
REPLICAS = ["replica-1", "replica-2"]


@pytest.fixture
def fleet_on_v1_0_0(release_env):
    put_fleet_on("v1.0.0")
    state = fleet_state()
    assert {s["health"]["version"] for s in state.values()} == {"v1.0.0"}
    return state


def _failed(result) -> list[str]:
    """The failed tasks of a run, apart from ``fail_run`` (the leaf that fails every failed release)."""
    assert result.states["fail_run"] == "failed"
    return sorted(t for t, s in result.states.items() if s == "failed" and t != "fail_run")


def test_good_release_reaches_every_production_host(fleet_on_v1_0_0):
    result = run_release({"git_ref": "v1.1.0"})

    assert result.dag_run.state == "success", result.states
    assert versions() == {name: "v1.1.0" for name in REPLICAS + PROD}
    assert result.answered == [("qa_signoff.approval_1", "qa1", "Approve"), ("qa_signoff.approval_2", "qa2", "Approve"),
                               ("client_signoff.approval_1", "client1", "Approve")]
    assert result.states["manager_signoff.approval_1"] == "skipped"  # a minor change: no manager's check
    assert {result.states[t] for t in ("release_failed", "rollback", "ticket", "fail_run")} == {"skipped"}
    assert ticket_for(result.dag_run.run_id) is None

    release = release_record(result.dag_run.run_id)
    assert release["status"] == "success" and release["version"] == "v1.1.0"
    prod_rows = {h["host"]: h for h in release["hosts"] if h["environment"] == "production"}
    assert sorted(prod_rows) == PROD
    assert {(h["from_version"], h["to_version"], h["status"]) for h in prod_rows.values()} == {
        ("v1.0.0", "v1.1.0", "deployed")}
    waves = {}
    for h in prod_rows.values():
        waves.setdefault(h["wave"], []).append(h["host"])
    assert [len(waves[w]) for w in sorted(waves)] == [1, 1, 1, 3]  # canary, then 25%, 50%, 100% of 6
    analyses = {s["stage"]: s for s in release["stages"] if s["stage"].endswith("analysis") or s["stage"] == "watch"}
    assert len(analyses) == 5 and all(s["status"] == "success" for s in analyses.values())

    # Re-running the deploy task of the finished run changes no host: no upload, no restart.
    before = fleet_state("production")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for task_id in ("wave_1.deploy", "wave_4.deploy"):
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", "tasks", "test", "release_demo_shop", task_id, result.dag_run.run_id],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = fleet_state("production")
    assert {n: (s["current"], s["pid"]) for n, s in after.items()} == {
        n: (s["current"], s["pid"]) for n, s in before.items()}
    rows = release_record(result.dag_run.run_id)["hosts"]
    assert len(rows) == len(REPLICAS + PROD)  # no duplicate rows, statuses kept
    assert {h["status"] for h in rows if h["environment"] == "production"} == {"deployed"}


def test_version_that_does_not_start_stops_at_the_canary(fleet_on_v1_0_0):
    before = fleet_on_v1_0_0
    result = run_release({"git_ref": "v1.3.0"})

    assert result.dag_run.state == "failed"
    assert _failed(result) == ["wave_1.deploy"]
    assert result.states["rollback"] == "success" and result.states["ticket"] == "success"
    after = fleet_state("production")
    assert {n: s["health"]["version"] for n, s in after.items()} == {n: "v1.0.0" for n in PROD}
    canary = [n for n in PROD if after[n]["pid"] != before[n]["pid"]]
    assert len(canary) == 1, "only the canary was touched (and restarted back on v1.0.0)"
    assert result.states.get("wave_2.deploy") == "upstream_failed"

    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == "wave_1.deploy"
    assert ticket["version"] == "v1.3.0"
    assert ticket["hosts_touched"] == canary
    assert ticket["rollback_status"] == "rolled back"
    assert "required setting(s) SHOP_PAYMENT_GATEWAY not set" in ticket["error"]  # the app log tail
    assert "Payments: read the gateway from SHOP_PAYMENT_GATEWAY" in ticket["body"]  # the commit range
    assert "/dags/release_demo_shop/runs/" in ticket["run_url"]
    assert "Why" in ticket["body"]
    release = release_record(result.dag_run.run_id)
    assert release["status"] == "failed"
    assert [(r["host"], r["to_version"], r["status"]) for r in release["rollbacks"]] == [
        (canary[0], "v1.0.0", "rolled back")]


def test_error_regression_is_caught_by_the_comparison_and_rolled_back(fleet_on_v1_0_0):
    result = run_release({"git_ref": "v1.2.0"})

    assert result.dag_run.state == "failed"
    [failed] = _failed(result)
    assert failed.endswith(".analysis"), result.states
    assert versions("production") == {n: "v1.0.0" for n in PROD}
    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == failed
    assert ticket["rollback_status"] == "rolled back"
    assert "error rate" in ticket["error"]
    assert "errors: fail" in ticket["body"]  # the metric comparison, with its evidence
    release = release_record(result.dag_run.run_id)
    assert {r["to_version"] for r in release["rollbacks"]} == {"v1.0.0"}
    assert sorted(r["host"] for r in release["rollbacks"]) == sorted(ticket["hosts_touched"])


def test_latency_regression_is_caught_by_the_judge_and_rolled_back(fleet_on_v1_0_0):
    """v1.4.0 adds 150 ms to every request: the judge fails the canary on latency (same settings as
    the good release above, which passes)."""
    result = run_release({"git_ref": "v1.4.0"})

    assert result.dag_run.state == "failed"
    assert _failed(result) == ["wave_1.analysis"], result.states
    assert versions("production") == {n: "v1.0.0" for n in PROD}
    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == "wave_1.analysis"
    assert "latency" in ticket["error"].lower()
    assert ticket["rollback_status"] == "rolled back"
    assert "## Metric comparison" in ticket["body"] and "latency" in ticket["body"]


def test_failing_test_stops_before_production(fleet_on_v1_0_0):
    before = fleet_on_v1_0_0
    result = run_release({"git_ref": "v1.5.0"}, decisions=[])

    assert result.dag_run.state == "failed", sorted(result.states.items())
    assert _failed(result) == ["tests"]
    assert result.states["qa_signoff.approval_1"] == "upstream_failed"
    after = fleet_state("production")
    assert {n: (s["current"], s["pid"]) for n, s in after.items()} == {
        n: (s["current"], s["pid"]) for n, s in before.items() if n in PROD}
    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == "tests"
    assert "unit::tests.unit.test_cart.test_bulk_discount_is_ten_percent" in ticket["failing_tests"]
    assert not [t for t in ticket["failing_tests"] if t.startswith("integration")]
    assert ticket["hosts_touched"] == []
    assert ticket["rollback_status"] == "nothing to roll back"


@pytest.mark.parametrize("bad_ref", ["v1.1.0; rm -rf /", "$(id)", "`id`", "v1.1.0 && true", "../../etc/passwd", ""])
def test_shell_metacharacters_in_git_ref_are_refused_at_trigger(release_env, bad_ref):
    from airflow.sdk.exceptions import ParamValidationError

    from tests.e2e.harness import load_dag

    dag = load_dag()
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"git_ref": bad_ref})
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.conf.isnot(None)).all()
        assert not [r for r in runs if (r.conf or {}).get("git_ref") == bad_ref]
