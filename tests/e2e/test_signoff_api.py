"""Sign-off through a real Airflow: its REST API, its login, its assignment check (issue 4), the gates a
click cannot skip (issue 10): the production gate, who may release, the required reason; and the
approval stages after QA (issue 13): the manager's for a major change, then the client's.

One Airflow (scheduler, dag-processor, triggerer, API server; LocalExecutor on SQLite) serves the
whole module (``airflow_server``); runs are triggered as ``dev`` through ``POST .../dagRuns`` and
answered through ``PATCH .../hitlDetails`` (or ``conveyor approve|reject``), so the 403s below are
Airflow's own. The ``conveyor_airflow_api`` connection is defined, so the production gate
cross-checks every approval with Airflow's Required Actions through this same API. Each test starts
with every host of the local fleet on ``v1.0.0``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.operators.signoff import REASON_MISSING
from tests.e2e.airflow_server import (  # noqa: F401 - airflow_server: the module's Airflow
    DAG_ID,
    AirflowServer,
    airflow_server,
    answer,
    diagnose,
    task_states,
    trigger,
    wait_for_approval,
    wait_for_run,
)
from tests.e2e.harness import fleet_state, put_fleet_on, release_record, ticket_for, versions

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]
CONVEYOR = Path(sys.executable).with_name("conveyor")
APPROVAL_1, APPROVAL_2 = "qa_signoff.approval_1", "qa_signoff.approval_2"
MANAGER, CLIENT = "manager_signoff.approval_1", "client_signoff.approval_1"  # the demo's later stages (issue 13)


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
def fleet_on_v1_0_0(airflow_server):  # noqa: F811
    put_fleet_on("v1.0.0")
    state = fleet_state()
    assert {s["health"]["version"] for s in state.values()} == {"v1.0.0"}
    return state


def stage_error(run_id: str, stage: str) -> str:
    return next(s for s in release_record(run_id)["stages"] if s["stage"] == stage)["error"] or ""


def conveyor(server: AirflowServer, user: str, *args: str) -> subprocess.CompletedProcess:
    """``conveyor approve|reject ... --as user`` against the module's Airflow (password from the environment)."""
    return subprocess.run([str(CONVEYOR), *args, "--as", user, "--api", server.url], env=server.cli_env(user),
                          capture_output=True, text=True, timeout=120)


def assigned(detail: dict) -> set[str]:
    return {u["id"] for u in detail["assigned_users"]}


def unchanged(before: dict, after: dict) -> dict:
    """Hosts whose active version or app process differs between two ``fleet_state`` snapshots."""
    return {n: (before[n]["current"], before[n]["pid"], after[n]["current"], after[n]["pid"])
            for n in before if (before[n]["current"], before[n]["pid"]) != (after[n]["current"], after[n]["pid"])}


# -------------------------------------------------------------------------------------- tests


def test_two_distinct_qa_members_approve_and_the_release_reaches_production(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    server = airflow_server
    run_id = trigger(server, "v1.1.0")

    first = wait_for_approval(server, run_id, APPROVAL_1)
    assert assigned(first) == {"qa1", "qa2", "qa3"}
    assert "v1.1.0" in first["subject"]
    form = first["params"]["reason"]["schema"]  # a required field: Airflow's form will not submit without it
    assert (form["type"], form["minLength"]) == ("string", 1)
    for outsider in ("dev", "ops", "admin"):  # the author, a user outside QA, even an admin
        status, body = answer(server, outsider, run_id, APPROVAL_1, "Approve")
        assert status == 403, (outsider, status, body)
        assert f"User={outsider}" in body["detail"]
        assert "not a respondent" in body["detail"]
    status, body = answer(server, "qa1", run_id, APPROVAL_1, "Approve", "Checked the cart")
    assert status == 200, body
    assert body["responded_by"]["id"] == "qa1"
    assert body["chosen_options"] == ["Approve"]

    second = wait_for_approval(server, run_id, APPROVAL_2)
    assert assigned(second) == {"qa2", "qa3"}  # qa1 counts once
    status, body = answer(server, "qa1", run_id, APPROVAL_2, "Approve")
    assert status == 403, body
    status, body = answer(server, "dev", run_id, APPROVAL_2, "Approve")
    assert status == 403, body
    status, body = answer(server, "qa2", run_id, APPROVAL_2, "Approve")  # no reason: counts, no comment
    assert status == 200, body
    status, body = answer(server, "qa3", run_id, APPROVAL_2, "Approve")
    assert status == 409, body  # one answer per approval

    client = wait_for_approval(server, run_id, CLIENT)  # the client's acceptance follows (no manager: minor)
    assert assigned(client) == {"client1"}
    status, body = answer(server, "client1", run_id, CLIENT, "Approve", "Accepted")
    assert status == 200, body

    assert wait_for_run(server, run_id) == "success", diagnose(server, run_id)
    for wave in ("wave_1.deploy", "wave_4.deploy"):  # the gate read Airflow's records, as the service user
        log = server.task_log(run_id, wave)
        assert "Cross-checked with Airflow's Required Actions: qa1 approved qa_signoff.approval_1 (try 1); qa2 " \
               "approved qa_signoff.approval_2 (try 1)" in log, log
        assert "conveyor_airflow_api is not defined" not in log
    assert versions("production") == {name: "v1.1.0" for name in PROD}
    release = release_record(run_id)
    assert release["status"] == "success"
    assert release["author"] == "dev"
    approvals = {a["approver"]: a for a in release["approvals"]}
    assert sorted(approvals) == ["client1", "qa1", "qa2"]
    assert {a["decision"] for a in approvals.values()} == {"approved"}
    assert (approvals["qa1"]["stage"], approvals["client1"]["stage"]) == ("qa", "client")
    assert approvals["qa1"]["at"] is not None
    assert approvals["qa2"]["at"] is not None
    assert approvals["qa1"]["at"] <= approvals["qa2"]["at"]
    assert (approvals["qa1"]["comment"], approvals["qa2"]["comment"]) == ("Checked the cart", None)
    assert ticket_for(run_id) is None


def test_a_rejection_with_the_cli_fails_the_release_before_production(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    server = airflow_server
    before = fleet_state("production")
    run_id = trigger(server, "v1.1.0")
    wait_for_approval(server, run_id, APPROVAL_1)

    result = conveyor(server, "dev", "approve", run_id)  # the author
    assert result.returncode == 1, result
    assert "HTTP 403" in result.stderr
    assert "User=dev (id=dev) is not a respondent" in result.stderr

    result = conveyor(server, "qa1", "approve", run_id, "--comment", "Checked the cart on replica-1")
    assert result.returncode == 0, result.stderr
    assert f"Approved {APPROVAL_1} of run {run_id} (release_demo_shop) as qa1" in result.stdout

    wait_for_approval(server, run_id, APPROVAL_2)
    result = conveyor(server, "qa1", "approve", run_id)  # a second approval by the same person
    assert result.returncode == 1, result
    assert "HTTP 403" in result.stderr
    assert "User=qa1" in result.stderr

    reason = "Checkout shows the old shipping price on the replica (QA-142)"
    result = conveyor(server, "qa2", "reject", run_id, "--reason", reason)
    assert result.returncode == 0, result.stderr
    assert f"Rejected {APPROVAL_2} of run {run_id}" in result.stdout
    assert reason in result.stdout

    assert wait_for_run(server, run_id) == "failed"
    states = task_states(server, run_id)
    assert states[APPROVAL_2] == "failed", diagnose(server, run_id)
    assert states["plan"] == "upstream_failed"
    assert states["wave_1.deploy"] == "upstream_failed"
    assert states["ticket"] == "success"
    assert states["fail_run"] == "failed"
    assert unchanged(before, fleet_state("production")) == {}

    approvals = {a["approver"]: a for a in release_record(run_id)["approvals"]}
    assert approvals["qa1"]["decision"] == "approved"
    assert approvals["qa1"]["comment"] == "Checked the cart on replica-1"
    assert approvals["qa2"]["decision"] == "rejected"
    assert approvals["qa2"]["comment"] == reason
    assert approvals["qa2"]["at"] is not None
    ticket = ticket_for(run_id)
    assert ticket is not None
    assert ticket["failed_stage"] == APPROVAL_2
    assert reason in ticket["body"]
    assert "qa2: rejected" in ticket["body"]
    assert ticket["hosts_touched"] == []

    result = conveyor(server, "qa3", "approve", run_id)  # nothing left to answer
    assert result.returncode == 1
    assert "no QA approval awaiting input" in result.stderr
    assert "run state: failed" in result.stderr


def test_no_sign_off_within_the_timeout_fails_the_release(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    server = airflow_server
    before = fleet_state("production")
    with server.service_override(qa={"timeout": "20s"}):
        run_id = trigger(server, "v1.1.0")
        detail = wait_for_approval(server, run_id, APPROVAL_1)
        assert assigned(detail) == {"qa1", "qa2", "qa3"}
        started = time.monotonic()
        assert wait_for_run(server, run_id, timeout=180) == "failed"
        assert time.monotonic() - started < 120
    states = task_states(server, run_id)
    assert states[APPROVAL_1] == "failed", diagnose(server, run_id)
    assert states["wave_1.deploy"] == "upstream_failed"
    assert unchanged(before, fleet_state("production")) == {}
    release = release_record(run_id)
    stage = {s["stage"]: s for s in release["stages"]}[APPROVAL_1]
    assert stage["status"] == "failed"
    assert "no sign-off within 20s" in stage["error"]
    assert release["approvals"] == []
    assert "no sign-off within 20s" in ticket_for(run_id)["error"]


def test_pre_existing_failure_goes_to_sign_off_and_is_listed_for_qa(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    server = airflow_server
    run_id = trigger(server, "v1.6.0")
    wait_for_approval(server, run_id, APPROVAL_1)

    detail = server.client("qa1").hitl_detail(DAG_ID, run_id, APPROVAL_1)  # what QA reads
    body = detail["body"]
    assert "Pre-existing failures" in body, body
    pre_existing = body.split("Pre-existing failures", 1)[1].split("**Replica health", 1)[0]
    assert "test_search_ignores_case" in pre_existing, body
    assert "v1.6.0" in body
    tests = [t for t in release_record(run_id)["tests"] if t["outcome"] == "failed"]
    assert [(t["test"].rsplit(".", 1)[-1], t["pre_existing"]) for t in tests] == [("test_search_ignores_case", True)]

    status, body = answer(server, "qa1", run_id, APPROVAL_1, "Reject", "demo: checked the triage only")
    assert status == 200, body
    assert wait_for_run(server, run_id) == "failed"
    assert task_states(server, run_id)["tests"] == "success"


def test_new_test_failure_stops_at_tests_without_asking_qa(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    server = airflow_server
    before = fleet_state("production")
    run_id = trigger(server, "v1.5.0")
    assert wait_for_run(server, run_id) == "failed"
    states = task_states(server, run_id)
    assert states["tests"] == "failed", diagnose(server, run_id)
    assert states[APPROVAL_1] == "upstream_failed"
    assert server.client("admin").hitl_details(DAG_ID, run_id) == []
    assert unchanged(before, fleet_state("production")) == {}
    ticket = ticket_for(run_id)
    assert ticket["failed_stage"] == "tests"
    assert "unit::tests.unit.test_cart.test_bulk_discount_is_ten_percent" in ticket["failing_tests"]


def test_a_second_trigger_waits_for_the_first_release_to_end(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    """One release per service at a time: the second run queues, it does not interleave (issue 5)."""
    server = airflow_server
    admin = server.client("admin")
    first = trigger(server, "v1.5.0")
    second = trigger(server, "v1.5.0", user="ops")
    deadline = time.monotonic() + 120
    while admin.dag_run(DAG_ID, first)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert admin.dag_run(DAG_ID, first)["state"] == "running"
    assert admin.dag_run(DAG_ID, second)["state"] == "queued"
    assert wait_for_run(server, first) == "failed"
    assert wait_for_run(server, second) == "failed"
    first_run, second_run = admin.dag_run(DAG_ID, first), admin.dag_run(DAG_ID, second)
    assert second_run["start_date"] >= first_run["end_date"], (first_run, second_run)
    assert task_states(server, second)["tests"] == "failed"


# ------------------------------------------------------------------------------- issue 10: gates


def test_an_approval_marked_success_through_the_api_does_not_reach_production(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    """The author sets the second approval to success by hand (what "Mark success" does): ``plan`` runs,
    and the first production wave refuses, naming what is missing; no production host changes."""
    server = airflow_server
    before = fleet_state("production")
    run_id = trigger(server, "v1.1.0")
    wait_for_approval(server, run_id, APPROVAL_1)
    status, body = answer(server, "qa1", run_id, APPROVAL_1, "Approve", "Checked the cart")
    assert status == 200, body
    wait_for_approval(server, run_id, APPROVAL_2)

    status, body = server.client("dev").request(
        "PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{APPROVAL_2}", {"new_state": "success"})
    assert status == 200, body  # Airflow lets the author set a task's state
    wait_for_approval(server, run_id, CLIENT)  # the later stage asks all the same, and is given
    status, body = answer(server, "client1", run_id, CLIENT, "Approve")
    assert status == 200, body

    assert wait_for_run(server, run_id) == "failed"
    states = task_states(server, run_id)
    assert (states[APPROVAL_2], states["plan"]) == ("success", "success"), diagnose(server, run_id)
    assert states["wave_1.deploy"] == "failed"
    assert states["wave_2.deploy"] == "upstream_failed"
    assert unchanged(before, fleet_state("production")) == {}
    missing = "sign-off missing: 1 of 2 required approval(s); counted: qa1"
    assert missing in stage_error(run_id, "wave_1.deploy")
    release = release_record(run_id)
    assert [(a["approver"], a["decision"]) for a in release["approvals"]] == [("qa1", "approved"),
                                                                              ("client1", "approved")]
    assert [h for h in release["hosts"] if h["environment"] == "production"] == []
    ticket = ticket_for(run_id)
    assert ticket["failed_stage"] == "wave_1.deploy"
    assert missing in ticket["error"]
    assert ticket["hosts_touched"] == []


def test_a_rejection_without_a_reason_through_the_api_stops_the_release_and_says_so(airflow_server,  # noqa: F811
                                                                                    fleet_on_v1_0_0):
    server = airflow_server
    before = fleet_state("production")
    run_id = trigger(server, "v1.1.0")
    wait_for_approval(server, run_id, APPROVAL_1)

    status, body = answer(server, "qa1", run_id, APPROVAL_1, "Reject", params_input={"reason": "  "})
    assert status == 200, body  # the API does not check the form's fields

    assert wait_for_run(server, run_id) == "failed"
    assert task_states(server, run_id)[APPROVAL_1] == "failed", diagnose(server, run_id)
    assert unchanged(before, fleet_state("production")) == {}
    [approval] = release_record(run_id)["approvals"]
    assert (approval["approver"], approval["decision"], approval["comment"]) == ("qa1", "rejected", REASON_MISSING)
    ticket = ticket_for(run_id)
    assert "QA sign-off rejected by qa1 without the required reason" in ticket["error"]
    assert "qa1: rejected at" in ticket["body"] and REASON_MISSING in ticket["body"]
    assert "(no reason given)" not in ticket["body"]


def test_only_allowed_users_release_and_only_operations_declare_an_emergency(airflow_server,  # noqa: F811
                                                                              fleet_on_v1_0_0):
    server = airflow_server
    before = fleet_state()
    refused = {
        trigger(server, "v1.1.0", user="qa1"): "qa1 may not release demo_shop: release.allowed in ",
        trigger(server, "v1.1.0", user="dev", emergency=True, reason="checkout is down"):
            "dev may not declare an emergency for demo_shop: release.emergency in ",
    }
    for run_id, why in refused.items():
        assert wait_for_run(server, run_id) == "failed"
        states = task_states(server, run_id)
        assert (states["validate"], states["build"]) == ("failed", "upstream_failed"), diagnose(server, run_id)
        assert why in stage_error(run_id, "validate")
        release = release_record(run_id)
        assert (release["version"], release["hosts"], release["approvals"]) == (None, [], [])
        assert why in ticket_for(run_id)["error"]
    assert unchanged(before, fleet_state()) == {}


# ----------------------------------------------------------------------- issue 13: approval stages


def pending(server: AirflowServer, run_id: str) -> set[str]:
    """The run's Required Actions not yet answered, by task id."""
    return {d["task_instance"]["task_id"] for d in server.client("admin").hitl_details(DAG_ID, run_id, pending=True)}


def refused_to(server: AirflowServer, user: str, run_id: str, task_id: str) -> None:
    status, body = answer(server, user, run_id, task_id, "Approve", "mine")
    assert status == 403, (user, task_id, status, body)
    assert f"User={user}" in body["detail"] and "not a respondent" in body["detail"]


def test_a_major_change_asks_qa_then_the_manager_then_the_client_and_never_the_author(airflow_server,  # noqa: F811
                                                                                      fleet_on_v1_0_0):
    """The author ``dev`` is put into every stage's group, and still no stage asks them: Airflow itself
    answers 403 at each one. The stages come one after the other, and each later one shows the earlier
    decisions."""
    server = airflow_server
    groups = {"qa": ["qa1", "qa2", "qa3", "dev"], "managers": ["mgr1", "dev"], "client": ["client1", "dev"]}
    with server.service_override(groups=groups):
        run_id = trigger(server, "v1.1.0", change="major")

        assert assigned(wait_for_approval(server, run_id, APPROVAL_1)) == {"qa1", "qa2", "qa3"}
        refused_to(server, "dev", run_id, APPROVAL_1)
        assert answer(server, "qa1", run_id, APPROVAL_1, "Approve", "Checked the cart")[0] == 200
        assert assigned(wait_for_approval(server, run_id, APPROVAL_2)) == {"qa2", "qa3"}
        refused_to(server, "dev", run_id, APPROVAL_2)
        assert answer(server, "qa2", run_id, APPROVAL_2, "Approve")[0] == 200

        manager = wait_for_approval(server, run_id, MANAGER)
        assert assigned(manager) == {"mgr1"}  # the group minus the author
        assert CLIENT not in pending(server, run_id)  # in order: the client is not asked yet
        assert manager["subject"].startswith("Manager sign-off 1/1: v1.1.0")
        assert "- qa: approved by qa1 — Checked the cart; approved by qa2" in manager["body"], manager["body"]
        refused_to(server, "dev", run_id, MANAGER)
        refused_to(server, "qa1", run_id, MANAGER)
        assert answer(server, "mgr1", run_id, MANAGER, "Approve", "Fits the roadmap")[0] == 200

        client = wait_for_approval(server, run_id, CLIENT)
        assert assigned(client) == {"client1"}
        assert "- manager: approved by mgr1 — Fits the roadmap" in client["body"], client["body"]
        refused_to(server, "dev", run_id, CLIENT)
        refused_to(server, "mgr1", run_id, CLIENT)
        result = conveyor(server, "client1", "approve", run_id, "--comment", "Accepted for ACME")
        assert result.returncode == 0, result.stderr
        assert f"Approved {CLIENT} of run {run_id}" in result.stdout

        assert wait_for_run(server, run_id) == "success", diagnose(server, run_id)
    assert versions("production") == {name: "v1.1.0" for name in PROD}
    release = release_record(run_id)
    assert [(a["stage"], a["approver"], a["decision"], a["comment"]) for a in release["approvals"]] == [
        ("qa", "qa1", "approved", "Checked the cart"), ("qa", "qa2", "approved", None),
        ("manager", "mgr1", "approved", "Fits the roadmap"), ("client", "client1", "approved", "Accepted for ACME")]
    log = server.task_log(run_id, "wave_1.deploy")  # the gate verified every stage from the records
    assert "Stages: qa: qa1, qa2; manager: mgr1; client: client1" in log, log
    assert "client1 approved client_signoff.approval_1 (try 1)" in log


def test_a_client_rejection_fails_the_release_before_production(airflow_server, fleet_on_v1_0_0):  # noqa: F811
    server = airflow_server
    before = fleet_state("production")
    run_id = trigger(server, "v1.1.0")  # a minor change: QA, then the client (no manager's check)
    wait_for_approval(server, run_id, APPROVAL_1)
    assert answer(server, "qa1", run_id, APPROVAL_1, "Approve", "Checked the cart")[0] == 200
    wait_for_approval(server, run_id, APPROVAL_2)
    assert answer(server, "qa2", run_id, APPROVAL_2, "Approve")[0] == 200

    wait_for_approval(server, run_id, CLIENT)
    assert task_states(server, run_id)[MANAGER] == "skipped"
    refused_to(server, "dev", run_id, CLIENT)
    reason = "The invoice still shows last year's VAT rate (ACME-77)"
    result = conveyor(server, "client1", "reject", run_id, "--reason", reason)
    assert result.returncode == 0, result.stderr
    assert f"Rejected {CLIENT} of run {run_id}" in result.stdout

    assert wait_for_run(server, run_id) == "failed"
    states = task_states(server, run_id)
    assert states[CLIENT] == "failed", diagnose(server, run_id)
    assert (states["plan"], states["wave_1.deploy"], states["ticket"]) == ("upstream_failed", "upstream_failed",
                                                                          "success")
    assert unchanged(before, fleet_state("production")) == {}
    release = release_record(run_id)
    assert [h for h in release["hosts"] if h["environment"] == "production"] == []
    assert [(a["stage"], a["approver"], a["decision"], a["comment"]) for a in release["approvals"]] == [
        ("qa", "qa1", "approved", "Checked the cart"), ("qa", "qa2", "approved", None),
        ("client", "client1", "rejected", reason)]
    assert f"Client sign-off rejected by client1: {reason}" in stage_error(run_id, CLIENT)
    ticket = ticket_for(run_id)
    assert ticket["failed_stage"] == CLIENT
    assert f"Client sign-off rejected by client1: {reason}" in ticket["error"]
    assert "[client] client1: rejected at" in ticket["body"] and "[qa] qa1: approved at" in ticket["body"]
    assert ticket["hosts_touched"] == []
