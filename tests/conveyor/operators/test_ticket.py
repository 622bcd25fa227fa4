"""The ticket and the run's end tell the truth when the rollback fails (issue 10, item 8), on the local fleet.

A release moves two hosts to v1.1.0 and fails its analysis; the rollback cannot put prod-2 back (the
release it would return to was removed from the host, so ``activate`` exits 4). The rollback task fails
and leaves no XCom; Airflow's failure callback records its stage. Then the ticket, the alert and
``fail_run``'s error must say which host runs which version (read over SSH) and that a person must act.
"""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest

from conveyor.evidence import ticket_id_for
from conveyor.exceptions import ReleaseFailed, RollbackError
from conveyor.notifiers import read_notifications
from conveyor.operators.base import record_failure
from conveyor.operators.deploy import DeployOperator, RollbackOperator
from conveyor.operators.release import ReleaseOutcomeOperator
from conveyor.operators.ticket import TicketOperator
from conveyor.tickets import LocalTicketBackend
from tests.conveyor.hooks.fleet_support import SEED, artifact, current_link, host_home, state
from tests.conveyor.hooks.test_tickets import jira  # noqa: F401 - the local Jira server
from tests.conveyor.ledger.test_ledger import postgres_url  # noqa: F401 - a fresh PostgreSQL database
from tests.conveyor.operators.operator_support import operator_kwargs, plan_of, stage_row
from tests.conveyor.operators.signoff_support import record_signoff

ACT = "a person must act"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail_rollback_on_prod_2(fleet, make_context, ledger, release_id) -> dict:
    """v1.1.0 on prod-1 and prod-2, a failed analysis, and a rollback that fails on prod-2; returns the plan."""
    plan = plan_of(["prod-1", "prod-2"], [["prod-1", "prod-2"]])
    ledger.upsert_release(release_id, version="v1.1.0")
    record_signoff(ledger, release_id)  # what the production gate checks before a host changes
    DeployOperator(artifact=artifact("v1.1.0").to_dict(), environment="production", plan=plan, wave=0,
                   **operator_kwargs("wave_1.deploy")).execute(make_context())
    ledger.upsert_stage(release_id, "wave_1.analysis", status="failed",
                        error="AnalysisFailed: wave-1: error rate 5.0% vs 1.0% on the baseline")
    shutil.rmtree(host_home(fleet, "prod-2") / "app" / "releases" / SEED)

    rollback = RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))
    context = make_context({"plan": plan})
    with pytest.raises(RollbackError, match=r"prod-2: cannot switch back to v1\.0\.0") as failure:
        rollback.execute(context)
    record_failure({**context, "task": rollback, "exception": failure.value})  # Airflow's failure callback
    assert state(fleet, "prod-1")["serves"] == SEED
    assert current_link(fleet, "prod-2") == "v1.1.0" and state(fleet, "prod-2")["serves"] == "v1.1.0"
    return plan


def test_a_failed_rollback_is_told_by_the_ticket_the_alert_and_the_run(fleet_on_v1_0_0, make_context, ledger,
                                                                        release_id, run_id):
    plan = fail_rollback_on_prod_2(fleet_on_v1_0_0, make_context, ledger, release_id)
    assert stage_row(ledger.get_release(release_id), "rollback")["status"] == "failed"
    # prod-9 went down after the rollback: its version cannot be read, and the ticket says so.
    gone = {**plan["hosts"][0], "name": "prod-9", "ssh_port": closed_port()}
    ticket_plan = {**plan, "hosts": [*plan["hosts"], gone], "original": {**plan["original"], "prod-9": SEED}}

    result = TicketOperator(rollback_task_id="rollback", plan_task_id="plan", **operator_kwargs("ticket")).execute(
        make_context({"plan": ticket_plan}))  # the failed rollback task left no XCom

    ticket = LocalTicketBackend().get(ticket_id_for(release_id))
    assert result["ticket_id"] == ticket["ticket_id"] and result["rollback_status"] == "failed"
    assert ticket["rollback_status"] == "failed"
    assert ticket["host_versions"]["prod-1"] == SEED and ticket["host_versions"]["prod-2"] == "v1.1.0"
    assert ticket["host_versions"]["prod-9"].startswith("unreachable: ")
    assert ticket["action_required"].startswith(ACT)
    assert "prod-2 on v1.1.0 (still the release's version; it ran v1.0.0 before)" in ticket["action_required"]
    body = ticket["body"]
    assert "## A person must act" in body and ACT in body
    assert "- prod-1: v1.0.0 (its version before the release)\n" in body
    assert "- prod-2: v1.1.0 (still the release's version; it ran v1.0.0 before) **<- not back**" in body
    assert "- prod-9: unreachable: " in body
    assert "rollback: FAILED; rolled back: prod-1; failed on prod-2: cannot switch back to v1.0.0" in body
    assert "not needed" not in body

    alerts = [n for n in read_notifications() if n["run_id"] == run_id and n["event"] == "rollback_failed"]
    assert len(alerts) == 1
    assert ACT in alerts[0]["text"] and "prod-2 on v1.1.0" in alerts[0]["text"]
    assert "prod-1 on v1.0.0" in alerts[0]["text"] and ticket["ticket_id"] in alerts[0]["text"]

    outcome = ReleaseOutcomeOperator(rollback_task_id="rollback", ticket_task_id="ticket",
                                     **operator_kwargs("fail_run"))
    with pytest.raises(ReleaseFailed) as failed:
        outcome.execute(make_context({"ticket": result}))
    message = str(failed.value)
    assert "did not run" not in message
    assert "release failed at wave_1.analysis: AnalysisFailed" in message
    assert "rollback: FAILED; rolled back: prod-1; failed on prod-2" in message
    assert ACT in message and "hosts now: prod-1 on v1.0.0, prod-2 on v1.1.0, prod-9 unreachable" in message
    assert f"ticket: {ticket['ticket_id']}" in message

    # The ticket task failed too (no XCom at all): the ledger's rollback stage and rows still tell.
    with pytest.raises(ReleaseFailed) as failed:
        outcome.execute(make_context({}))
    message = str(failed.value)
    assert "failed on prod-2: cannot switch back to v1.0.0" in message and ACT in message
    assert f"ticket: {ticket['ticket_id']}" in message  # from the ledger's tickets row


def test_a_successful_rollback_reads_no_host_and_needs_no_one(fleet_on_v1_0_0, make_context, ledger, release_id,
                                                             run_id, calls):
    ledger.upsert_stage(release_id, "wave_1.analysis", status="failed", error="AnalysisFailed: wave-1: latency")
    rolled = {"status": "rolled back", "rolled_back": ["prod-1"], "touched": ["prod-1"], "failed": {}}
    result = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(
        make_context({"rollback": rolled, "plan": plan_of(["prod-1"], [["prod-1"]])}))
    ticket = LocalTicketBackend().get(result["ticket_id"])
    assert ticket["rollback_status"] == "rolled back" and ticket["action_required"] is None
    assert "## A person must act" not in ticket["body"] and "rollback: rolled back; rolled back: prod-1" in ticket["body"]
    assert calls["connect"] == []  # no SSH when the rollback did its work
    assert not [n for n in read_notifications() if n["run_id"] == run_id and n["event"] == "rollback_failed"]
    with pytest.raises(ReleaseFailed) as failed:
        ReleaseOutcomeOperator(rollback_task_id="rollback", ticket_task_id="ticket",
                               **operator_kwargs("fail_run")).execute(make_context({"rollback": rolled,
                                                                                    "ticket": result}))
    assert ACT not in str(failed.value) and "rollback: rolled back; rolled back: prod-1" in str(failed.value)


# ------------------------------------------------------------------ the rollback's records (issue 10, item 7)
def a_host_without_a_version_before(make_context) -> tuple[RollbackOperator, dict]:
    """prod-5 "had no version before this release": its rollback fails with a long RollbackError."""
    plan = plan_of(["prod-5", "prod-6"], [["prod-5", "prod-6"]], original={"prod-5": None, "prod-6": SEED})
    return RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback")), make_context({"plan": plan})


@pytest.mark.services
def test_a_failed_rollback_on_postgresql_keeps_its_records_and_its_error(fleet_on_v1_0_0, make_context, release_id,
                                                                         postgres_url, monkeypatch):  # noqa: F811
    from conveyor.ledger import Ledger

    monkeypatch.setenv("AIRFLOW_CONN_TEST_LEDGER",
                       json.dumps({"conn_type": "postgres", "extra": {"sqlalchemy_url": postgres_url}}))
    ledger = Ledger(postgres_url)
    try:
        ledger.upsert_release(release_id, service="demo_shop", status="running")
        op, context = a_host_without_a_version_before(make_context)
        with pytest.raises(RollbackError, match=r"prod-5 had no version before this release"):
            op.execute(context)  # before: a DataError (a 30-character status column) replaced it
        [row] = ledger.get_release(release_id)["rollbacks"]
        assert row["host"] == "prod-5"
        assert row["status"] == "failed: prod-5 had no version before this release; cannot roll back"
        assert stage_row(ledger.get_release(release_id), "rollback")["detail"]["failed"] == {
            "prod-5": "prod-5 had no version before this release; cannot roll back"}
    finally:
        ledger.dispose()


def test_a_ledger_that_cannot_write_never_replaces_the_rollback_error(fleet_on_v1_0_0, make_context, ledger):
    import sqlalchemy as sa

    with ledger.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE rollbacks"))  # every rollback row now fails to write
    op, context = a_host_without_a_version_before(make_context)
    with pytest.raises(RollbackError, match=r"prod-5 had no version before this release"):
        op.execute(context)


# ------------------------------------------------------------------------ a real ticket system (Jira)
@pytest.fixture
def jira_service(jira, tmp_path, monkeypatch):  # noqa: F811
    """The demo service filing its tickets in Jira (the local server), with its own tickets directory."""
    import yaml

    from tests.conveyor.hooks.fleet_support import ROOT

    spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    spec["tickets"] = {"backend": "jira", "dedup_window": "7d",
                       "jira": {"conn_id": "jira_test", "project": "OPS", "issue_type": "Bug"}}
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path / "services"))
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    return jira


def failed_analysis(ledger, release_id: str) -> None:
    ledger.upsert_release(release_id, service="demo_shop", version="v1.2.0", status="failed")
    ledger.upsert_stage(release_id, "wave_1.analysis", status="failed",
                        error="AnalysisFailed: wave-1: error rate 5.0% vs 1.0% on the baseline")


def context_of(run_id: str, xcoms: dict) -> dict:
    from types import SimpleNamespace

    from tests.conveyor.operators.conftest import XComs

    dag_run = SimpleNamespace(run_id=run_id, dag_id="release_demo_shop", triggering_user_name="dev")
    return {"dag_run": dag_run, "ti": XComs(xcoms), "params": {}}


def test_the_ticket_task_files_in_jira_deduplicates_and_never_loses_a_ticket(jira_service, ledger, release_id,
                                                                            run_id):
    from conveyor.tickets import TicketDeliveryError

    server = jira_service
    rolled = {"rollback": {"status": "rolled back", "rolled_back": ["prod-1"], "touched": ["prod-1"], "failed": {}}}
    failed_analysis(ledger, release_id)
    first = ticket_id_for(release_id)

    server.stop()  # Jira is down when the first release fails
    result = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(context_of(run_id, rolled))
    assert result["delivery"] == "pending" and result["backend"] == "jira"
    assert LocalTicketBackend().get(first)["delivery"]["status"] == "pending"  # kept, with its evidence
    [row] = ledger.get_release(release_id)["tickets"]
    assert (row["backend"], row["delivery"], row["external_key"]) == ("jira", "pending", None)
    assert "jira is down" in row["delivery_error"] and len(row["signature"]) == 12
    # With retries left, the task fails after keeping the ticket, so that Airflow's retry delivers it.
    with pytest.raises(TicketDeliveryError, match=rf"{first} is kept locally, pending for jira: jira is down"):
        TicketOperator(rollback_task_id="rollback", retries=1, **operator_kwargs("ticket")).execute(
            context_of(run_id, rolled))

    server.start()  # back up; the next release fails the same way
    run_2 = f"{run_id}_2"
    release_2 = f"demo_shop/{run_2}"
    failed_analysis(ledger, release_2)
    result_2 = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(
        context_of(run_2, rolled))

    assert (result_2["delivery"], result_2["key"]) == ("commented", "OPS-1")  # the same failure: one ticket
    assert [r["json"]["fields"]["summary"] for r in server.calls("POST", "/rest/api/2/issue")] == [
        "[demo_shop] release v1.2.0 failed at wave_1.analysis"]
    [create] = server.calls("POST", "/rest/api/2/issue")
    assert create["json"]["fields"]["project"] == {"key": "OPS"}
    assert create["json"]["fields"]["issuetype"] == {"name": "Bug"}
    assert "AnalysisFailed: wave-1: error rate 5.0% vs 1.0% on the baseline" in create["json"]["fields"]["description"]
    assert release_id in create["json"]["fields"]["description"]
    [comment] = server.calls("POST", "/rest/api/2/issue/OPS-1/comment")
    assert release_2 in comment["json"]["body"]
    rows = {r["release_id"]: r for r in [*ledger.get_release(release_id)["tickets"],
                                         *ledger.get_release(release_2)["tickets"]]}
    assert (rows[release_id]["delivery"], rows[release_id]["external_key"]) == ("filed", "OPS-1")
    assert rows[release_id]["url"] == f"{server.url}/browse/OPS-1" and rows[release_id]["delivery_error"] is None
    assert (rows[release_2]["delivery"], rows[release_2]["external_key"]) == ("commented", "OPS-1")

    # A rerun of the first release's ticket task never files a second ticket, nor comments again.
    before = len(server.requests)
    again = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(
        context_of(run_id, rolled))
    assert (again["ticket_id"], again["delivery"], again["key"]) == (first, "filed", "OPS-1")
    assert len(server.requests) == before


def test_the_ticket_task_attaches_the_analysis_chart_in_jira(jira_service, ledger, release_id, run_id):
    """Issue 11: the ticket has the per-metric table and the chart links, and Jira gets the chart as a file."""
    from pathlib import Path
    from urllib.parse import quote

    from conveyor.analysis.evidence_view import markdown_table
    from tests.conveyor.analysis.evidence_support import failing_errors

    graph = "http://127.0.0.1:9090/graph?g0.expr=shop_http_requests_total"
    detail, _ = failing_errors(source="prometheus", graph_url=graph)
    ledger.upsert_release(release_id, service="demo_shop", version="v1.2.0", status="failed")
    ledger.upsert_stage(release_id, "wave_1.analysis", status="failed", detail=detail,
                        error=f"AnalysisFailed: wave-1: {detail['reason']}")
    rolled = {"rollback": {"status": "rolled back", "rolled_back": ["prod-1"], "touched": ["prod-1"], "failed": {}}}
    result = TicketOperator(rollback_task_id="rollback", **operator_kwargs("ticket")).execute(
        context_of(run_id, rolled))

    assert (result["delivery"], result["key"]) == ("filed", "OPS-1")
    name = f"{result['ticket_id']}.wave_1.analysis.svg"
    local_chart = Path(result["path"]).parent / name
    [stored] = jira_service.issues["OPS-1"]["attachments"]
    assert (stored["filename"], stored["content_type"]) == (name, "image/svg+xml")
    assert stored["content"].decode() == local_chart.read_text()  # the file beside the local ticket
    assert LocalTicketBackend().get(result["ticket_id"])["delivery"]["attached"] == [name]
    description = jira_service.issues["OPS-1"]["fields"]["description"]
    assert markdown_table(detail) in description and f"[Prometheus graph](<{graph}>)" in description
    page = f"/conveyor/releases/{quote(release_id, safe='/:')}/charts/wave_1.analysis.svg"
    assert re.search(rf"\[chart of canary vs baseline\]\(<https?://[^/>]+{re.escape(page)}>\) \(file `{name}`\)",
                     description)


def test_a_ledger_that_is_down_does_not_stop_the_rollback(ledger, ledger_path, make_context, release_id,
                                                          monkeypatch):
    from conveyor.operators.release import ReleaseFailedOperator

    up = json.dumps({"conn_type": "sqlite", "host": str(ledger_path)})
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LEDGER", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": closed_port(), "schema": "ledger"}))
    result = ReleaseFailedOperator(**operator_kwargs("release_failed")).execute(make_context())
    assert result["recorded"] is False and "OperationalError" in result["error"]  # and the rollback runs next

    monkeypatch.setenv("AIRFLOW_CONN_TEST_LEDGER", up)  # the ledger is back by the end of the failure path
    assert ledger.get_release(release_id)["status"] == "running"
    with pytest.raises(ReleaseFailed, match="rollback: not needed; ticket: not filed"):
        ReleaseOutcomeOperator(rollback_task_id="rollback", ticket_task_id="ticket",
                               **operator_kwargs("fail_run")).execute(make_context())
    assert ledger.get_release(release_id)["status"] == "failed"
