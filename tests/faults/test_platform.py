"""Fault-injection scenarios of the platform around the fleet (``make faults``): the artifact store, Slack,
the ticket system, the ledger's database, the task and triggerer processes, human answers that come too
late, two releases at once, and every way a click or a user could skip a gate (issue 10).

Each scenario injects one real fault (a server that is stopped or answers 5xx, a database that stops taking
connections, a process killed with SIGKILL, a trigger cancelled and rebuilt from its stored form, a task
state set by hand, a user who may not) and ends with what Conveyor guarantees under it: every production
host on one known version (read on the host's disk and from its /health, not through Conveyor), the task
or run failed or succeeded as it should, no ledger row lost or duplicated, a ticket that tells the truth,
a clear message. Operators run as the operator tests run them (``op.execute(context)`` against the session
fleet and a real ledger); a whole ``dag.test()`` release only where the scenario is about the run (Slack).
"""
# Fixtures are imported from the modules that define them (as the operator tests do), so every test's
# parameters "redefine" them: F811 says nothing useful in this file.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import importlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest
import yaml

from conveyor.evidence import ticket_id_for
from conveyor.exceptions import AnalysisInconclusive, InvalidInputError, ReleaseFailed
from conveyor.ledger import Ledger
from conveyor.operators.deploy import DeployOperator, PlanWavesOperator, RollbackOperator
from conveyor.operators.release import ReleaseFailedOperator, ReleaseOutcomeOperator, ValidateReleaseOperator
from conveyor.operators.signoff import REASON_MISSING, QASignoffOperator
from conveyor.operators.ticket import TicketOperator
from conveyor.signoff_check import SignoffMissing, SignoffPolicy, check_signoff
from tests.conveyor.hooks.airflow_api_stub import StubAirflowApi
from tests.conveyor.hooks.fleet_support import (  # noqa: F401 - fixtures
    ROOT,
    SEED,
    artifact,
    calls,
    current_link,
    fleet_env,
    fleet_on_v1_0_0,
    local_fleet,
)
from tests.conveyor.hooks.test_tickets import jira  # noqa: F401 - the local Jira server
from tests.conveyor.ledger.test_ledger import postgres_url  # noqa: F401 - a fresh PostgreSQL database
from tests.conveyor.operators.conftest import (  # noqa: F401 - fixtures
    bare_ledger,
    ledger,
    ledger_path,
    make_context,
    release_id,
    run_id,
)
from tests.conveyor.operators.operator_support import (
    LEDGER_CONN_ID,
    SERVICE_ID,
    operator_kwargs,
    plan_of,
    stage_row,
)
from tests.conveyor.operators.signoff_support import record_signoff
from tests.conveyor.operators.test_ticket import context_of, failed_analysis
from tests.conveyor.triggers.test_analysis import MetricsServer, first_event, trigger_for
from tests.faults.platform_support import (
    PROD,
    FailingWebhook,
    MotoS3,
    database_down,
    edit_service,
    kill_when,
    on_version,
    release_service,
    rows,
    start_task,
    truth,
)

NEW = "v1.1.0"
WAVE = ["prod-1", "prod-2", "prod-3"]
QA = ["qa1", "qa2", "qa3"]
#: What the scheduler's awaiting-input sweep hands an approval whose response_timeout passed unanswered
#: (airflow/jobs/scheduler_job_runner.py, check_awaiting_input_timeouts).
TIMEOUT_EVENT = {"error": "The Human-in-the-loop response timeout has passed without a response.",
                 "error_type": "timeout"}
ROLLED_BACK = {"status": "rolled back", "rolled_back": ["prod-1"], "touched": ["prod-1"], "failed": {}}


# ------------------------------------------------------------------------------------ helpers
def deploy_wave(plan: dict, wave: int = 0, version: str = NEW) -> DeployOperator:
    return DeployOperator(artifact=artifact(version).to_dict(), environment="production", plan=plan, wave=wave,
                          **operator_kwargs(f"wave_{wave + 1}.deploy"))


def rollback() -> RollbackOperator:
    return RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))


def other_run(make_context, run_id: str, suffix: str, xcoms: dict | None = None) -> tuple[dict, str]:
    """The context of another run of the release DAG (another release), and its release id."""
    context = make_context(xcoms)
    context["dag_run"] = SimpleNamespace(run_id=f"{run_id}_{suffix}", dag_id=f"release_{SERVICE_ID}",
                                         triggering_user_name="dev")
    return context, f"{SERVICE_ID}/{run_id}_{suffix}"


@pytest.fixture
def pg_ledger(postgres_url, monkeypatch, release_id, run_id):
    """A PostgreSQL ledger (a fresh database) behind the ``test_ledger`` connection, the release opened and
    signed off; yields ``(ledger, database name)``."""
    from sqlalchemy.engine import make_url

    name = make_url(postgres_url).database
    monkeypatch.setenv(f"AIRFLOW_CONN_{LEDGER_CONN_ID.upper()}", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": name}))
    ledger = Ledger(postgres_url)
    ledger.upsert_release(release_id, service=SERVICE_ID, git_ref="main", change_kind="minor", emergency=False,
                          author="dev", run_id=run_id, dag_id=f"release_{SERVICE_ID}", status="running")
    record_signoff(ledger, release_id)
    yield ledger, name
    ledger.dispose()


def refused_wave(fleet, plan: dict, context: dict, calls: dict) -> str:
    """A production wave the gate must refuse: its message; no SSH connection opened, no host changed."""
    before = truth(fleet)
    with pytest.raises(SignoffMissing) as refusal:
        deploy_wave(plan).execute(context)
    assert calls["connect"] == [], "the refused wave still opened SSH connections"
    assert truth(fleet) == before
    return str(refusal.value)


def approval(ordinal: int = 1, timeout: timedelta = timedelta(hours=24)) -> QASignoffOperator:
    return QASignoffOperator(
        task_id=f"approval_{ordinal}", service_id=SERVICE_ID, group=list(QA), ordinal=ordinal, required=2,
        emergency_required=1, timeout=timeout, subject="QA sign-off", body="body", evidence_tasks={},
        releases_url="http://localhost:8080/conveyor/releases/demo_shop", ledger_conn_id=LEDGER_CONN_ID,
    )


def hitl_context(make_context, author: str = "dev") -> dict:
    """A task try's context for a Required Action task (its task instance id; the run's author)."""
    context = make_context()
    context["dag_run"].triggering_user_name = author
    context["task_instance"] = SimpleNamespace(id=uuid4())
    return context


def answer(user: str, option: str = "Approve", reason: str | None = "checked", at: datetime | None = None) -> dict:
    """An answer as Airflow hands it to ``execute_complete`` (``HITLDetail.as_resume_event_payload``)."""
    return {"chosen_options": [option], "params_input": {"reason": reason} if reason is not None else {},
            "responded_at": at or datetime.now(UTC), "responded_by_user": {"id": user, "name": user},
            "timedout": False}


def decisions(ledger, release_id: str) -> list[tuple]:
    return [(a["approver"], a["decision"], a["comment"]) for a in ledger.get_release(release_id)["approvals"]]


@pytest.fixture
def hitl_requests(monkeypatch) -> list[dict]:
    """The Required Actions an approval or decision task writes (Airflow's ``upsert_hitl_detail``, which
    only the task runner's supervisor can serve, is recorded instead)."""
    written: list[dict] = []
    monkeypatch.setattr("airflow.providers.standard.operators.hitl.upsert_hitl_detail",
                        lambda **kw: written.append(kw))
    return written


# ============================================================================ 1. artifact store down
@pytest.mark.fault(name="artifact store down",
                   guarantee="deploy fails naming the store, no host changed; store back -> rerun deploys")
def test_artifact_store_down(fleet_on_v1_0_0, tmp_path, make_context, ledger, release_id, calls, monkeypatch):
    fleet = fleet_on_v1_0_0
    bucket = "conveyor-artifacts"
    info = artifact(NEW)  # built (in the session's local store) before the service points at S3
    s3 = MotoS3().start()
    try:
        # The artifact as the build left it in the S3 store, written with boto3 (not through Conveyor).
        client = s3.client()
        client.create_bucket(Bucket=bucket)
        client.upload_file(str(info.tarball), bucket, info.key)
        client.put_object(Bucket=bucket, Key=f"{info.key}.sha256", Body=f"{info.sha256}  {info.key}\n".encode())
        client.put_object(Bucket=bucket, Key=info.key.rsplit("/", 1)[0] + "/manifest.json",
                          Body=json.dumps(info.manifest).encode())
        monkeypatch.setenv("AIRFLOW_CONN_ARTIFACTS_S3", s3.connection())
        services = tmp_path / "services"
        edit_service(services, artifact_store={"url": f"s3://{bucket}", "conn_id": "artifacts_s3"})
        stored = {**info.to_dict(), "url": f"s3://{bucket}/{info.key}", "tarball": None}
        plan = plan_of(WAVE, [WAVE])
        op = DeployOperator(artifact=stored, environment="production", plan=plan, wave=0,
                            **operator_kwargs("wave_1.deploy"))

        s3.stop()  # the store goes down before the deploy
        before = truth(fleet)
        with pytest.raises(Exception, match=rf"s3://{bucket}|artifact store") as failed:  # names the store
            op.execute(make_context())
        message = f"{type(failed.value).__name__}: {failed.value}"
        assert bucket in message, message
        assert calls["connect"] == [] and truth(fleet) == before, "hosts were touched without an artifact"
        assert rows(ledger.get_release(release_id), "hosts", "host") == {}

        s3.start()  # back up: a rerun of the task deploys
        DeployOperator(artifact=stored, environment="production", plan=plan, wave=0,
                       **operator_kwargs("wave_1.deploy")).execute(make_context())
        assert on_version(fleet, NEW, WAVE) == {}
        assert on_version(fleet, SEED, [n for n in PROD if n not in WAVE]) == {}
        assert set(rows(ledger.get_release(release_id), "hosts", "host")) == set(WAVE)
    finally:
        edit_service(tmp_path / "services", artifact_store=None)  # the fixture puts the fleet back from the local store
        s3.stop()


# ================================================================================ 2. Slack down
@pytest.mark.fault(name="Slack down",
                   guarantee="the release goes on and succeeds; every message is in the notification log")
def test_slack_down(fleet_on_v1_0_0, airflow_db, tmp_path, monkeypatch):
    """A whole release (``dag.test()``) whose Slack webhook answers 500 to every message: the approvals'
    notifiers and the success callbacks try Slack, log the failure, and fail nothing."""
    from conveyor.notifiers import read_notifications
    from tests.e2e.harness import run_release

    fleet = fleet_on_v1_0_0
    slack = FailingWebhook()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_DOWN", slack.connection())
        release_service(tmp_path / "services", notifications={"slack_webhook_conn_id": "slack_down"})

        result = run_release({"git_ref": NEW})

        assert result.dag_run.state == "success", result.states
        assert on_version(fleet, NEW) == {}
        logged = [n for n in read_notifications() if n["run_id"] == result.dag_run.run_id]
        # two QA approvals and the client's acceptance (the demo's stage after QA; no manager's: minor)
        assert [n["event"] for n in logged] == ["started", "approval", "approval", "approval", "succeeded"]
        assert sorted(p["json"]["text"] for p in slack.posts) == sorted(n["text"] for n in logged)  # all tried, all 500
        assert all(p["path"] == "/services/T000/B000/XYZ" for p in slack.posts)
    finally:
        slack.close()


# ====================================================================== 3. ticket backend down
@pytest.fixture
def jira_service(jira, tmp_path, monkeypatch):
    """The demo service filing its tickets in the local Jira, with its own tickets directory."""
    spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    spec["tickets"] = {"backend": "jira", "dedup_window": "7d",
                       "jira": {"conn_id": "jira_test", "project": "OPS", "issue_type": "Bug"}}
    (tmp_path / "services").mkdir(exist_ok=True)
    (tmp_path / "services" / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path / "services"))
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    return jira


@pytest.mark.fault(name="ticket backend down",
                   guarantee="ticket kept locally (pending); the next ticket task delivers it once; no duplicate")
def test_ticket_backend_down(jira_service, ledger, release_id, run_id):
    from conveyor.tickets import LocalTicketBackend

    server = jira_service
    failed_analysis(ledger, release_id)
    first = ticket_id_for(release_id)

    server.mode = "error"  # Jira answers 503 to everything when the release fails
    result = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(
        context_of(run_id, {"rollback": ROLLED_BACK}))
    assert (result["backend"], result["delivery"]) == ("jira", "pending")
    assert server.requests and server.issues == {}  # tried, refused (503)
    kept = LocalTicketBackend().get(first)
    assert kept["delivery"]["status"] == "pending"
    assert kept["failed_stage"] == "wave_1.analysis"
    assert "error rate 5.0% vs 1.0% on the baseline" in kept["error"]
    [row] = ledger.get_release(release_id)["tickets"]
    assert (row["delivery"], row["external_key"]) == ("pending", None) and row["delivery_error"]

    server.mode = "up"  # back; the next release fails elsewhere and its ticket task runs
    release_2 = f"{SERVICE_ID}/{run_id}_next"
    context_2 = context_of(f"{run_id}_next", {"rollback": {"status": "nothing to roll back", "rolled_back": [],
                                                           "touched": [], "failed": {}}})
    ledger.upsert_release(release_2, service=SERVICE_ID, version="v1.2.0", status="failed")
    ledger.upsert_stage(release_2, "build", status="failed", error="BuildError: build of demo_shop failed")
    TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(context_2)

    creates = server.calls("POST", "/rest/api/2/issue")
    summaries = sorted(i["fields"]["summary"] for i in server.issues.values())
    assert summaries == ["[demo_shop] release v1.2.0 failed at build", "[demo_shop] release v1.2.0 failed at wave_1.analysis"]
    pending_issue = next(i for i in server.issues.values() if "wave_1.analysis" in i["fields"]["summary"])
    assert release_id in pending_issue["fields"]["description"]
    assert "error rate 5.0% vs 1.0% on the baseline" in pending_issue["fields"]["description"]
    [row] = ledger.get_release(release_id)["tickets"]
    assert (row["delivery"], row["external_key"], row["delivery_error"]) == ("filed", pending_issue["key"], None)

    # A rerun of the first release's ticket task files nothing more.
    again = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(
        context_of(run_id, {"rollback": ROLLED_BACK}))
    assert (again["ticket_id"], again["delivery"]) == (first, "filed")
    assert len(server.calls("POST", "/rest/api/2/issue")) == len(creates) and len(server.issues) == 2


# ================================================================= 4. ledger database down, then back
@pytest.mark.services
@pytest.mark.fault(name="ledger database down then back",
                   guarantee="a wave fails naming the database, no host changed, nothing written; "
                             "back up -> rerun deploys, one row per host")
def test_ledger_database_down_then_back(fleet_on_v1_0_0, pg_ledger, make_context, release_id, calls):
    fleet = fleet_on_v1_0_0
    ledger, name = pg_ledger
    plan = plan_of(WAVE, [WAVE])

    with database_down(name):
        before = truth(fleet)
        with pytest.raises(Exception, match=name) as failed:  # names the database
            deploy_wave(plan).execute(make_context())
        message = f"{type(failed.value).__name__}: {failed.value}"
        assert "not currently accepting connections" in message, message
        assert calls["connect"] == [] and truth(fleet) == before  # the gate could not read: nothing moved

    release = ledger.get_release(release_id)
    assert stage_row(release, "wave_1.deploy") is None and rows(release, "hosts", "host") == {}  # nothing half-written
    deploy_wave(plan).execute(make_context())
    deploy_wave(plan).execute(make_context())  # and once more: a rerun of a finished wave

    assert on_version(fleet, NEW, WAVE) == {}
    release = ledger.get_release(release_id)
    assert {n: (r["from_version"], r["to_version"], r["status"]) for n, r in rows(release, "hosts", "host").items()} == \
        dict.fromkeys(WAVE, (SEED, NEW, "deployed"))
    assert stage_row(release, "wave_1.deploy")["status"] == "success"


@pytest.mark.services
@pytest.mark.fault(name="ledger database down when a release fails",
                   guarantee="release_failed goes on and the rollback returns every host whatever the ledger "
                             "does; back up -> the run ends failed with the rollback recorded once")
def test_ledger_database_down_when_a_release_fails(fleet_on_v1_0_0, pg_ledger, make_context, release_id):
    fleet = fleet_on_v1_0_0
    ledger, name = pg_ledger
    plan = plan_of(WAVE, [WAVE])
    deploy_wave(plan).execute(make_context())
    assert on_version(fleet, NEW, WAVE) == {}

    with database_down(name):  # the wave's analysis failed; the failure path runs while the ledger is down
        marked = ReleaseFailedOperator(**operator_kwargs("release_failed")).execute(make_context())
        assert marked["recorded"] is False and name in marked["error"]
        try:
            rollback().execute(make_context({"plan": plan}))
            error = None
        except Exception as exc:  # the rollback may fail for the ledger's sake, but only after moving the hosts
            error = f"{type(exc).__name__}: {exc}"
        left = on_version(fleet, SEED, WAVE)
        assert left == {}, f"hosts left on the release's version while the ledger was down: {left}; rollback: {error}"

    result = rollback().execute(make_context({"plan": plan}))  # back up: the rollback task's rerun records it
    assert on_version(fleet, SEED) == {}
    release = ledger.get_release(release_id)
    assert {n: (r["to_version"], r["status"]) for n, r in rows(release, "rollbacks", "host").items()} == \
        dict.fromkeys(WAVE, (SEED, "rolled back")), result
    with pytest.raises(ReleaseFailed, match="rollback: "):
        ReleaseOutcomeOperator(rollback_task_id="rollback", ticket_task_id="ticket",
                               **operator_kwargs("fail_run")).execute(make_context({"rollback": result}))
    assert ledger.get_release(release_id)["status"] == "failed"


# ============================================================== 5-6. the task process killed mid-step
def killed_task(tmp_path, spec: dict, moment) -> None:
    """Run the operator of ``spec`` in its own process and SIGKILL it at ``moment()``."""
    proc, output = start_task({"ledger_conn_id": LEDGER_CONN_ID, **spec}, tmp_path)
    kill_when(proc, output, moment)


@pytest.mark.fault(name="task killed mid-wave",
                   guarantee="the rerun finishes the wave (every host on the version, healthy); "
                             "one true ledger row per host")
def test_task_killed_mid_wave(fleet_on_v1_0_0, tmp_path, make_context, ledger, release_id, run_id):
    fleet = fleet_on_v1_0_0
    edit_service(tmp_path / "services", deploy={"max_parallel": 1})  # one host after the other
    plan = plan_of(WAVE + ["prod-4"], [WAVE, ["prod-4"]])

    killed_task(tmp_path, {"operator": "deploy", "task_id": "wave_1.deploy", "run_id": run_id,
                           "artifact": artifact(NEW).to_dict(), "plan": plan, "wave": 0},
                moment=lambda: any(current_link(fleet, n) == NEW for n in WAVE))  # a host switched, mid-restart
    assert on_version(fleet, NEW, WAVE) != {}, "the wave had finished before the kill"

    deploy_wave(plan).execute(make_context())  # the task's rerun (a retry, or a clear)

    assert on_version(fleet, NEW, WAVE) == {}
    assert on_version(fleet, SEED, ["prod-4", "prod-5", "prod-6"]) == {}
    release = ledger.get_release(release_id)
    assert stage_row(release, "wave_1.deploy")["status"] == "success"
    recorded = {n: (r["from_version"], r["to_version"], r["status"]) for n, r in rows(release, "hosts", "host").items()}
    assert recorded == dict.fromkeys(WAVE, (SEED, NEW, "deployed")), (
        f"the ledger does not say that this release moved every host of the wave from {SEED}: {recorded}")


@pytest.mark.fault(name="task killed mid-rollback",
                   guarantee="the rerun of the rollback returns every host; one true rollback row per host")
def test_task_killed_mid_rollback(fleet_on_v1_0_0, tmp_path, make_context, ledger, release_id, run_id):
    fleet = fleet_on_v1_0_0
    edit_service(tmp_path / "services", deploy={"max_parallel": 1})
    plan = plan_of(WAVE, [WAVE])
    deploy_wave(plan).execute(make_context())
    assert on_version(fleet, NEW, WAVE) == {}

    killed_task(tmp_path, {"operator": "rollback", "task_id": "rollback", "run_id": run_id, "xcoms": {"plan": plan}},
                moment=lambda: any(current_link(fleet, n) == SEED for n in WAVE))  # a host switched back
    assert on_version(fleet, SEED, WAVE) != {}, "the rollback had finished before the kill"

    result = rollback().execute(make_context({"plan": plan}))  # the rollback task's rerun

    assert on_version(fleet, SEED) == {}
    release = ledger.get_release(release_id)
    recorded = {n: (r["from_version"], r["to_version"], r["status"])
                for n, r in rows(release, "rollbacks", "host").items()}
    assert recorded == dict.fromkeys(WAVE, (NEW, SEED, "rolled back")), (
        f"the ledger does not say that every host of the wave was rolled back from {NEW}: {recorded}; "
        f"the rerun said {result}")


# =========================================================== 7. triggerer restarted mid-analysis
@pytest.mark.fault(name="triggerer restarted mid-analysis",
                   guarantee="the trigger rebuilt from its stored form keeps started_at: the window bounds "
                             "the whole wait, and it decides")
def test_triggerer_restarted_mid_analysis():
    from airflow.models.trigger import Trigger

    def scrapes(server: MetricsServer, host: str) -> int:
        return (server.counts[host]["ok"] + server.counts[host]["err"]) // 200

    with MetricsServer({"canary": 0.01, "b1": 0.01, "b2": 0.01}) as server:
        trigger = trigger_for(server, ["canary"], ["b1", "b2"], window_s=4.0)

        async def until_restart() -> None:
            events = trigger.run()
            step = asyncio.ensure_future(anext(events))
            while scrapes(server, "canary") < 8 and not step.done():
                await asyncio.sleep(0.02)
            assert not step.done(), f"the analysis decided before the restart: {step.result().payload}"
            step.cancel()  # what the triggerer does to its triggers when it stops
            try:
                await step
            except asyncio.CancelledError:
                pass
            await events.aclose()

        asyncio.run(until_restart())
        restarted_at = time.time()
        row = Trigger.from_object(trigger)  # what the deferred task stored; a new triggerer rebuilds it
        module, _, name = row.classpath.rpartition(".")
        rebuilt = getattr(importlib.import_module(module), name)(**row.kwargs)
        event = first_event(rebuilt)
        decided_at = time.time()

    assert rebuilt.started_at == trigger.started_at
    assert event["status"] == "done" and event["verdict"]["decision"] == "pass", event
    assert event["elapsed_s"] >= 4.0
    # Measured from the first start: the time before the restart counts (a trigger that started its window
    # again would report at most the time since the restart).
    assert event["elapsed_s"] > decided_at - restarted_at, event


# ========================================================== 8. a late approval after the timeout
@pytest.mark.fault(name="late approval after the timeout",
                   guarantee="the timeout fails the release with 'no sign-off within ...'; a late answer "
                             "counts for nothing")
def test_late_approval_after_the_timeout(fleet_on_v1_0_0, bare_ledger, make_context, release_id, run_id, calls,
                                         monkeypatch):
    ledger = bare_ledger
    record_signoff(ledger, release_id, approvers=(), later={})  # the tests passed; the approvals wait

    with pytest.raises(ReleaseFailed, match=r"^no sign-off within 20s: approval 1 was never given$"):
        approval(1, timedelta(seconds=20)).execute_complete(hitl_context(make_context), TIMEOUT_EVENT)
    assert decisions(ledger, release_id) == []

    # Then qa1 and qa2 answer Approve. Airflow's API still writes an answer to the Required Action of a task
    # that failed (it only does not resume it), so Airflow's records hold two approvals, after the deadline.
    with StubAirflowApi(f"release_{SERVICE_ID}", run_id) as api:
        monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", api.connection())
        api.answer("qa_signoff.approval_1", "qa1")
        api.answer("qa_signoff.approval_2", "qa2")
        for detail in api.current:
            detail["task_instance"]["state"] = "failed"
        message = refused_wave(fleet_on_v1_0_0, plan_of(["prod-1"], [["prod-1"]]), make_context(), calls)
    assert message == ("sign-off missing: 0 of 2 required approval(s); counted: none; "
                       "client: 0 of 1 required approval(s); counted: none")  # nor the client's, after QA's
    assert decisions(ledger, release_id) == []


# ============================================================================ 9. concurrent triggers
@pytest.mark.fault(name="concurrent triggers",
                   guarantee="one release per service at a time (max_active_runs=1, as the scheduler reads it); "
                             "two releases' tasks at once keep their own ledger rows")
def test_concurrent_triggers(fleet_on_v1_0_0, make_context, ledger, release_id, run_id):
    from airflow.serialization.serialized_objects import DagSerialization

    from tests.e2e.harness import load_dag

    fleet = fleet_on_v1_0_0
    dag = load_dag()
    assert dag.max_active_runs == 1
    assert DagSerialization.from_dict(DagSerialization.to_dict(dag)).max_active_runs == 1  # what the scheduler reads

    context_b, release_b = other_run(make_context, run_id, "b")
    ledger.upsert_release(release_b, service=SERVICE_ID, git_ref="main", change_kind="minor", emergency=False,
                          author="dev", run_id=f"{run_id}_b", dag_id=f"release_{SERVICE_ID}", status="running")
    record_signoff(ledger, release_b)
    plans: dict[str, dict] = {}
    errors: list[BaseException] = []

    def both(work_a, work_b) -> None:
        def guarded(work):
            try:
                work()
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=guarded, args=(w,)) for w in (work_a, work_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors

    both(lambda: plans.__setitem__("a", PlanWavesOperator(n_waves=4, **operator_kwargs("plan")).execute(make_context())),
         lambda: plans.__setitem__("b", PlanWavesOperator(n_waves=4, **operator_kwargs("plan")).execute(context_b)))
    plan_a, plan_b = plan_of(["prod-1"], [["prod-1"]]), plan_of(["prod-2"], [["prod-2"]])
    both(lambda: deploy_wave(plan_a).execute(make_context()), lambda: deploy_wave(plan_b).execute(context_b))

    a, b = ledger.get_release(release_id), ledger.get_release(release_b)
    assert stage_row(a, "plan")["detail"]["plan"]["waves"] == plans["a"]["waves"]
    assert stage_row(b, "plan")["detail"]["plan"]["waves"] == plans["b"]["waves"]
    assert {n: (r["from_version"], r["to_version"], r["status"]) for n, r in rows(a, "hosts", "host").items()} == {
        "prod-1": (SEED, NEW, "deployed")}
    assert {n: (r["from_version"], r["to_version"], r["status"]) for n, r in rows(b, "hosts", "host").items()} == {
        "prod-2": (SEED, NEW, "deployed")}
    assert on_version(fleet, NEW, ["prod-1", "prod-2"]) == {}
    assert on_version(fleet, SEED, ["prod-3", "prod-4", "prod-5", "prod-6"]) == {}


# ================================================================ 10-15. the bypasses, as scenarios
@pytest.mark.fault(name="approvals marked success",
                   guarantee="no approval in the records: the production gate refuses, no host changed")
def test_approvals_marked_success(fleet_on_v1_0_0, bare_ledger, make_context, release_id, calls):
    record_signoff(bare_ledger, release_id, approvers=())  # the tests ran and passed; nobody approved
    message = refused_wave(fleet_on_v1_0_0, plan_of(["prod-1"], [["prod-1"]]), make_context(), calls)
    assert message == "sign-off missing: 0 of 2 required approval(s); counted: none"
    assert rows(bare_ledger.get_release(release_id), "hosts", "host") == {}


@pytest.mark.fault(name="tests marked success on a failing suite",
                   guarantee="the production gate refuses, naming the failing test; no host changed")
def test_tests_marked_success_on_a_failing_suite(fleet_on_v1_0_0, bare_ledger, make_context, release_id, calls):
    record_signoff(bare_ledger, release_id, tests=None)  # qa1 and qa2 approved
    bare_ledger.upsert_stage(release_id, "tests", status="failed")  # the suite failed, then was marked success
    bare_ledger.upsert_test_result(release_id, "unit", "test_cart.test_bulk_discount", outcome="failed")
    message = refused_wave(fleet_on_v1_0_0, plan_of(["prod-1"], [["prod-1"]]), make_context(), calls)
    assert message == ("sign-off missing: tests: the 'tests' stage is 'failed', not 'success'; "
                       "tests: 1 failing test(s): unit::test_cart.test_bulk_discount")


@pytest.mark.fault(name="the author approving",
                   guarantee="the author is never asked; an answer by them fails the approval and records nothing")
def test_the_author_approving(bare_ledger, make_context, release_id, hitl_requests):
    from airflow.sdk.exceptions import TaskAwaitingInput

    context = hitl_context(make_context, author="qa1")  # a QA member released their own change
    with pytest.raises(TaskAwaitingInput):
        approval(1).execute(context)
    assert [u["id"] for u in hitl_requests[-1]["assigned_users"]] == ["qa2", "qa3"]  # Airflow answers 403 to qa1

    with pytest.raises(ReleaseFailed, match="^approval by qa1 does not count: the author"):
        approval(1).execute_complete(context, answer("qa1"))  # written around the API
    assert decisions(bare_ledger, release_id) == []


@pytest.mark.fault(name="the author deciding an inconclusive canary",
                   guarantee="the author is never asked; their Continue rolls the release back")
def test_the_author_deciding_an_inconclusive_canary(hitl_requests):
    from airflow.sdk.exceptions import TaskAwaitingInput

    from tests.e2e.harness import load_dag

    decide = load_dag().get_task("wave_1.decide")  # the release DAG's own: deciders default to the QA group
    verdict = {"label": "wave-1", "decision": "inconclusive", "reason": "too little traffic", "canary": ["prod-1"],
               "baseline": ["prod-2"]}
    context = {"dag_run": SimpleNamespace(run_id="manual__1", triggering_user_name="qa2"),
               "ti": SimpleNamespace(xcom_pull=lambda task_ids=None, **_: verdict),
               "task_instance": SimpleNamespace(id=uuid4()), "params": {}}
    with pytest.raises(TaskAwaitingInput):
        decide.execute(context)
    assert [u["id"] for u in hitl_requests[-1]["assigned_users"]] == ["qa1", "qa3"]

    with pytest.raises(AnalysisInconclusive, match="the decision by qa2 does not count: the run's author cannot "
                                                   "decide; rolling back"):
        decide.execute_complete(context, answer("qa2", "Continue", reason=None))


def validate(user: str, *, emergency: bool = False):
    context = {
        "dag_run": SimpleNamespace(run_id="manual__faults", dag_id=f"release_{SERVICE_ID}", triggering_user_name=user,
                                   run_type="manual"),
        "params": {"git_ref": NEW, "change": "minor", "emergency": emergency,
                   "reason": "checkout is down" if emergency else ""},
        "dag": None,
    }
    return ValidateReleaseOperator(**operator_kwargs("validate")).execute(context)


@pytest.mark.fault(name="emergency declared by someone not allowed",
                   guarantee="validate refuses with the reason; no release opened")
def test_emergency_declared_by_someone_not_allowed(fleet_env, tmp_path, ledger_path):
    with pytest.raises(InvalidInputError) as refusal:
        validate("dev", emergency=True)
    assert str(refusal.value) == (f"dev may not declare an emergency for demo_shop: release.emergency in "
                                  f"{tmp_path / 'services' / 'demo_shop.yaml'} is @operations (ops, admin)")
    ledger = Ledger(f"sqlite:///{ledger_path}")
    try:
        assert ledger.get_release(f"{SERVICE_ID}/manual__faults") is None
    finally:
        ledger.dispose()


@pytest.mark.fault(name="manual run on a stopped line",
                   guarantee="validate refuses with 'line stopped at <commit>'; no release opened")
def test_manual_run_on_a_stopped_line(fleet_env, ledger_path):
    from conveyor.artifacts import mirror
    from conveyor.ci import branch_head
    from conveyor.config import load_service

    ledger = Ledger(f"sqlite:///{ledger_path}")
    try:
        head = branch_head(mirror(load_service(SERVICE_ID)), "main")
        ledger.upsert_commit(SERVICE_ID, head, author="Dana Dev", message="Cart: break the bulk discount",
                             ci_status="red", ci_detail="1 failing test")
        with pytest.raises(InvalidInputError) as refusal:
            validate("dev")
        assert str(refusal.value).startswith(f"line stopped at {head[:12]} (")
        assert "a manual release waits until CI judges a newer commit green" in str(refusal.value)
        assert ledger.get_release(f"{SERVICE_ID}/manual__faults") is None
    finally:
        ledger.dispose()


@pytest.mark.fault(name="rejection without a reason",
                   guarantee="recorded as a rejection with the reason missing; the release stops")
def test_rejection_without_a_reason(bare_ledger, make_context, release_id):
    from conveyor.config import load_service

    with pytest.raises(ReleaseFailed, match="^QA sign-off rejected by qa2 without the required reason"):
        approval(2).execute_complete(hitl_context(make_context), answer("qa2", "Reject", reason=None))
    assert decisions(bare_ledger, release_id) == [("qa2", "rejected", REASON_MISSING)]
    record_signoff(bare_ledger, release_id, approvers=("qa1", "qa3"))  # even with two approvals, production refuses
    check = check_signoff(bare_ledger.get_release(release_id), SignoffPolicy.of(load_service(SERVICE_ID)))
    assert not check.ok and f"qa2 rejected the release: {REASON_MISSING}" in check.message
