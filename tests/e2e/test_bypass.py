"""Gates that a click cannot skip (issue 10, item 1), on whole releases with ``dag.test()``.

``dag.test(mark_success_pattern=...)`` marks the matching tasks *success* without running them, which is
what "Mark success" in the UI (or ``PATCH .../taskInstances/...`` with ``new_state: success``) does to a
run. A release whose approvals or tests were marked so must stop at the first production wave, with
"sign-off missing: ...", every production host still on its version (read over SSH), and the
root-cause ticket naming it. (Here the ``conveyor_airflow_api`` connection is not defined, so the gate
reads the ledger alone; tests/e2e/test_signoff_api.py runs it against a real API.)
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import (
    Decision,
    HitlResponder,
    fleet_state,
    load_dag,
    put_fleet_on,
    release_record,
    ticket_for,
)

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]


@pytest.fixture
def fleet_on_v1_0_0(release_env):
    put_fleet_on("v1.0.0")
    state = fleet_state("production")
    assert {s["current"] for s in state.values()} == {"v1.0.0"}
    return state


def run_marked(conf: dict, mark_success: str, decisions: list[Decision]) -> tuple[object, dict[str, str]]:
    """One release with the tasks matching ``mark_success`` marked success instead of run: (run, states)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    dag = load_dag()
    responder = HitlResponder(dag.dag_id, decisions)
    responder.start()
    try:
        dr = dag.test(run_conf=conf, mark_success_pattern=mark_success)
    finally:
        responder.stop()
        responder.join(timeout=5)
    with create_session() as session:
        tis = session.query(TI).filter(TI.dag_id == dag.dag_id, TI.run_id == dr.run_id).all()
        states = {ti.task_id: (ti.state.value if hasattr(ti.state, "value") else ti.state) for ti in tis}
    return dr, states


def untouched(before: dict, after: dict) -> bool:
    return {n: (s["current"], s["pid"]) for n, s in after.items()} == {
        n: (s["current"], s["pid"]) for n, s in before.items()}


def assert_stopped_at_the_first_wave(dr, states: dict, before: dict, missing: str) -> dict:
    assert dr.state == "failed", sorted(states.items())
    assert states["plan"] == "success"
    failed = sorted(t for t, s in states.items() if s == "failed" and t != "fail_run")
    assert failed == ["wave_1.deploy"], sorted(states.items())
    assert states["wave_2.deploy"] == "upstream_failed"
    after = fleet_state("production")
    assert untouched(before, after), (before, after)
    assert {n: s["current"] for n, s in after.items()} == dict.fromkeys(PROD, "v1.0.0")  # over SSH
    release = release_record(dr.run_id)
    assert release["status"] == "failed"
    assert [h for h in release["hosts"] if h["environment"] == "production"] == []
    [stage] = [s for s in release["stages"] if s["stage"] == "wave_1.deploy"]
    assert missing in stage["error"], stage
    ticket = ticket_for(dr.run_id)
    assert ticket["failed_stage"] == "wave_1.deploy"
    assert missing in ticket["error"]
    assert ticket["hosts_touched"] == [] and ticket["rollback_status"] == "nothing to roll back"
    return release


def test_approvals_marked_success_do_not_reach_production(fleet_on_v1_0_0):
    dr, states = run_marked({"git_ref": "v1.1.0"}, r"qa_signoff\.approval_\d+", decisions=[])

    assert states["qa_signoff.approval_1"] == states["qa_signoff.approval_2"] == "success"
    release = assert_stopped_at_the_first_wave(
        dr, states, fleet_on_v1_0_0, "sign-off missing: 0 of 2 required approval(s); counted: none")
    assert [(a["stage"], a["approver"]) for a in release["approvals"]] == [("client", "client1")]  # not QA's


def test_a_later_stage_marked_success_does_not_reach_production(fleet_on_v1_0_0):
    """QA approves; the client's acceptance (issue 13) is marked success instead of given."""
    dr, states = run_marked({"git_ref": "v1.1.0"}, r"client_signoff\.approval_\d+",
                            decisions=[Decision("qa1", "Approve"), Decision("qa2", "Approve")])

    assert states["client_signoff.approval_1"] == "success"
    release = assert_stopped_at_the_first_wave(
        dr, states, fleet_on_v1_0_0, "sign-off missing: client: 0 of 1 required approval(s); counted: none")
    assert [(a["stage"], a["approver"]) for a in release["approvals"]] == [("qa", "qa1"), ("qa", "qa2")]


def test_tests_marked_success_on_a_failing_tag_do_not_reach_production(fleet_on_v1_0_0):
    """``v1.5.0`` breaks a unit test; with ``tests`` marked success QA approves, and the gate still stops it."""
    dr, states = run_marked({"git_ref": "v1.5.0"}, "tests",
                            decisions=[Decision("qa1", "Approve"), Decision("qa2", "Approve")])

    assert states["tests"] == "success"
    assert states["qa_signoff.approval_1"] == states["qa_signoff.approval_2"] == "success"
    release = assert_stopped_at_the_first_wave(
        dr, states, fleet_on_v1_0_0,
        "sign-off missing: tests: the 'tests' stage has no record in the ledger (the suites did not run)")
    assert sorted(a["approver"] for a in release["approvals"]) == ["client1", "qa1", "qa2"]
