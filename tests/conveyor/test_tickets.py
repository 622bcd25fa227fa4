"""Root-cause tickets rendered from what a failed release really leaves: a ledger record written the way
the operators write it (a real ``Ledger`` on SQLite) and a real verdict of the canary judge."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from conveyor.analysis import AnalysisSettings, Verdict, judge
from conveyor.evidence import gather_evidence, ticket_id_for
from conveyor.ledger import Ledger
from conveyor.tickets import LocalTicketBackend, render_ticket
from tests.conveyor.analysis.test_judging import series

RID = "demo_shop/manual__1"
AT = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


def failing_verdict() -> Verdict:
    """The judge on a canary erring at 5% against baselines at 1%, asked until it decides."""
    canary = {"prod-1": series(60, 100, 5)}
    baseline = {f"prod-{i}": series(60, 100, 1) for i in range(2, 5)}
    settings = AnalysisSettings(window_s=600)
    for k in range(1, 62):
        verdict = judge({h: s[:k] for h, s in canary.items()}, {h: s[:k] for h, s in baseline.items()}, settings,
                        elapsed_s=(k - 1) * 10.0)
        if verdict.decision != "continue":
            return verdict
    raise AssertionError("the judge never decided")


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.dispose()


def record_canary_failure(ledger: Ledger, verdict: Verdict, detail: dict | None = None) -> None:
    """validate, build, tests, sign-off, wave 1 and its failed analysis: the operators' own calls (``detail``:
    the analysis' recorded detail, when the test builds it)."""
    ledger.upsert_release(RID, service="demo_shop", git_ref="v1.2.0", change_kind="minor", emergency=False,
                          author="dev", run_id="manual__1", dag_id="release_demo_shop", status="running",
                          started_at=AT)
    ledger.upsert_release(RID, version="v1.2.0", commit_sha="c" * 40, commit_range={
        "from": "a" * 40, "to": "c" * 40,
        "commits": [{"sha": "b" * 40, "author": "Bob", "email": "b@x", "date": "2026-11-21T09:00:00+00:00",
                     "subject": "Cache recommendations"}]})
    ledger.upsert_test_result(RID, "integration", "test_search_ignores_case", outcome="failed", message="boom",
                              pre_existing=True)
    ledger.upsert_approval(RID, "qa1", decision="approved", comment=None, at=AT + dt.timedelta(minutes=1))
    ledger.upsert_approval(RID, "qa2", decision="approved", comment="looks fine", at=AT + dt.timedelta(minutes=2))
    for host, env, wave in (("prod-1", "production", "wave-1"), ("replica-1", "replica", "replica")):
        ledger.upsert_host_deployment(RID, host, environment=env, wave=wave, from_version="v1.0.0",
                                      to_version="v1.2.0", status="deployed", at=AT + dt.timedelta(minutes=3))
    detail = detail or {"label": "wave-1", "canary": ["prod-1"], "baseline": ["prod-2", "prod-3", "prod-4"],
                        "elapsed_s": verdict.elapsed_s, **verdict.to_dict()}
    ledger.upsert_stage(RID, "wave_1.analysis", status="running", started_at=AT + dt.timedelta(minutes=4))
    ledger.upsert_stage(RID, "wave_1.analysis", status="running", detail=detail)
    ledger.upsert_stage(RID, "wave_1.analysis", status="failed", finished_at=AT + dt.timedelta(minutes=5),
                        error=f"AnalysisFailed: wave-1: {verdict.reason}")
    ledger.upsert_release(RID, status="failed", finished_at=AT + dt.timedelta(minutes=6))
    ledger.upsert_rollback(RID, "prod-1", from_version="v1.2.0", to_version="v1.0.0", status="rolled back",
                           at=AT + dt.timedelta(minutes=7))


def test_ticket_carries_the_evidence_the_release_left(ledger, tmp_path):
    verdict = failing_verdict()
    assert verdict.decision == "fail"
    record_canary_failure(ledger, verdict)
    rollback = {"status": "rolled back", "rolled_back": ["prod-1"], "touched": ["prod-1"], "failed": {}}
    evidence = gather_evidence(ledger.get_release(RID), rollback)
    evidence["run_url"] = "http://localhost:8080/dags/release_demo_shop/runs/manual__1"
    ticket = render_ticket(ticket_id_for(RID), evidence)

    assert ticket.title == "[demo_shop] release v1.2.0 failed at wave_1.analysis"
    metric = next(m for m in verdict.to_dict()["metrics"] if m["decision"] == "fail")
    for expected in (
        verdict.reason,                                         # the judge's own sentence
        f"{metric['metric']}: fail",                            # the failing metric, as the judge names it
        "Cache recommendations (Bob)",                          # the commit range
        "prod-1 (wave-1): v1.0.0 -> v1.2.0 [deployed]",         # the host touched
        "rolled back: prod-1",                                  # and what the rollback did
        "integration::test_search_ignores_case",                # a pre-existing failure
        "qa1: approved", "qa2: approved", "looks fine",         # the sign-off, as recorded
        "Five whys",
        "http://localhost:8080/dags/release_demo_shop/runs/manual__1",
    ):
        assert expected in ticket.body, expected
    hosts_section = ticket.body.split("## Hosts touched")[1].split("##")[0]
    assert "replica-1" not in hosts_section  # only production hosts are "touched"
    assert ticket.fields["failing_tests"] == []  # the only failure is pre-existing


def test_filing_twice_updates_one_ticket(ledger, tmp_path):
    record_canary_failure(ledger, failing_verdict())
    evidence = gather_evidence(ledger.get_release(RID), {"status": "rolled back", "rolled_back": ["prod-1"]})
    ticket = render_ticket(ticket_id_for(RID), evidence)
    backend = LocalTicketBackend(tmp_path / "tickets")
    backend.file(ticket, created_at="2026-11-22T10:06:00")
    backend.file(ticket, created_at="2026-11-22T11:00:00")  # a rerun of the ticket task
    [listed] = backend.list()
    assert listed["ticket_id"] == ticket_id_for(RID) and listed["created_at"] == "2026-11-22T10:06:00"
    assert listed["hosts_touched"] == ["prod-1"] and listed["rollback_status"] == "rolled back"
    assert json.loads((tmp_path / "tickets" / f"{ticket_id_for(RID)}.json").read_text())["service"] == "demo_shop"
    assert "Metric comparison" in backend.get(ticket_id_for(RID))["body"]


# --------------------------------------------------------------- the rollback's outcome, from the ledger


def test_a_failed_rollback_is_read_from_the_ledger_when_its_task_left_no_xcom(ledger):
    from conveyor.evidence import rollback_outcome

    record_canary_failure(ledger, failing_verdict())
    ledger.upsert_rollback(RID, "prod-2", from_version="v1.2.0", to_version="v1.0.0",
                           status="failed: cannot switch back to v1.0.0: prod-2: exit 4", at=AT)
    # what RollbackOperator's ledger_stage block and the failure callback leave behind
    ledger.upsert_stage(RID, "rollback", status="running", started_at=AT, detail={
        "rolled_back": ["prod-1"], "touched": ["prod-1", "prod-2"], "status": "rollback incomplete",
        "failed": {"prod-2": "cannot switch back to v1.0.0: prod-2: exit 4"}})
    ledger.upsert_stage(RID, "rollback", status="failed", error="RollbackError: rollback incomplete: prod-2: ...")

    outcome = rollback_outcome(ledger.get_release(RID), None)
    assert outcome["status"] == "failed" and outcome["action_required"]
    assert outcome["rolled_back"] == ["prod-1"] and outcome["touched"] == ["prod-1", "prod-2"]
    assert outcome["failed"] == {"prod-2": "cannot switch back to v1.0.0: prod-2: exit 4"}
    # A later successful rerun of the rollback (its XCom) is the truth: every host it had to move is back.
    assert rollback_outcome(ledger.get_release(RID), {"status": "nothing to roll back", "rolled_back": []}) == {
        "status": "nothing to roll back", "rolled_back": [], "error": None, "failed": {}, "action_required": False}


@pytest.mark.parametrize(("stage", "rows", "hosts", "expected"), [
    ("running", [], ["deployed"], "did not finish"),  # killed mid-rollback: the stage never ended
    (None, [], ["deployed"], "did not run"),  # hosts changed, no rollback recorded at all
    (None, [], [], "not needed"),  # nothing reached production
    (None, ["rolled back"], ["deployed"], "rolled back"),
    (None, ["failed: boom"], ["deployed"], "failed"),
    ("success", ["rolled back"], ["deployed"], "rolled back"),
])
def test_the_rollback_outcome_without_xcom(ledger, stage, rows, hosts, expected):
    from conveyor.evidence import rollback_outcome

    ledger.upsert_release(RID, service="demo_shop", status="failed")
    for status in hosts:
        ledger.upsert_host_deployment(RID, "prod-1", environment="production", wave="wave-1",
                                      from_version="v1.0.0", to_version="v1.2.0", status=status, at=AT)
    for status in rows:
        ledger.upsert_rollback(RID, "prod-1", from_version="v1.2.0", to_version="v1.0.0", status=status, at=AT)
    if stage:
        ledger.upsert_stage(RID, "rollback", status=stage, started_at=AT,
                            detail={"status": "rolled back"} if stage == "success" else None)
    outcome = rollback_outcome(ledger.get_release(RID), None)
    assert outcome["status"] == expected
    assert outcome["action_required"] == (expected in ("failed", "did not finish", "did not run"))


def test_host_states_say_which_host_is_back():
    from conveyor.evidence import describe_hosts, host_states

    states = host_states({"prod-1": "v1.0.0", "prod-2": "v1.2.0", "prod-3": "v0.9.0", "prod-4": "v1.2.0"},
                         {"prod-5": "NoValidConnectionsError: Unable to connect to port 22"},
                         {"prod-1": "v1.0.0", "prod-2": "v1.0.0", "prod-3": "v1.0.0", "prod-4": None,
                          "prod-5": "v1.0.0"}, "v1.2.0")
    assert [(s["host"], s["ok"]) for s in states] == [
        ("prod-1", True), ("prod-2", False), ("prod-3", False), ("prod-4", True), ("prod-5", False)]
    assert describe_hosts([s for s in states if not s["ok"]]) == (
        "prod-2 on v1.2.0 (still the release's version; it ran v1.0.0 before), "
        "prod-3 on v0.9.0 (neither its version before the release (v1.0.0) nor the release's), "
        "prod-5 unreachable: NoValidConnectionsError: Unable to connect to port 22")


# ------------------------------------------------------------------------------- failure signatures


def test_the_same_failure_in_two_releases_has_one_signature():
    from conveyor.evidence import error_kind, failure_signature

    a = failure_signature("demo_shop", "wave_1.analysis", "AnalysisFailed: wave-1: error rate 5.1% vs 1.0%")
    b = failure_signature("demo_shop", "wave_1.analysis", "AnalysisFailed: wave-1: error rate 7.3% vs 0.9%")
    assert a == b and len(a) == 12
    assert a != failure_signature("demo_shop", "wave_2.analysis", "AnalysisFailed: wave-2: error rate 5%")
    assert a != failure_signature("demo_shop", "wave_1.analysis", "HealthCheckError: prod-1 did not answer")
    assert a != failure_signature("other", "wave_1.analysis", "AnalysisFailed: wave-1: error rate 5.1% vs 1.0%")
    assert error_kind("conveyor.exceptions.DeployError: boom") == "DeployError"
    assert error_kind("no class here") == error_kind(None) == "unknown"


def test_a_ticket_carries_its_signature_and_says_when_a_person_must_act(ledger):
    from conveyor.evidence import host_states, rollback_outcome

    record_canary_failure(ledger, failing_verdict())
    ledger.upsert_rollback(RID, "prod-2", from_version="v1.2.0", to_version="v1.0.0", status="failed: exit 4", at=AT)
    release = ledger.get_release(RID)
    states = host_states({"prod-1": "v1.0.0", "prod-2": "v1.2.0"}, {}, {"prod-1": "v1.0.0", "prod-2": "v1.0.0"},
                         "v1.2.0")
    evidence = gather_evidence(release, rollback_outcome(release, None), states)
    ticket = render_ticket(ticket_id_for(RID), evidence)
    assert ticket.fields["signature"] == evidence["signature"] and ticket.fields["error_kind"] == "AnalysisFailed"
    assert f"| failure signature | `{evidence['signature']}`" in ticket.body
    assert ticket.fields["rollback_status"] == "failed"
    assert ticket.fields["host_versions"] == {"prod-1": "v1.0.0", "prod-2": "v1.2.0"}
    assert ticket.fields["action_required"] == (
        "a person must act: the rollback did not put every host back "
        "(prod-2 on v1.2.0 (still the release's version; it ran v1.0.0 before))")
    assert ticket.body.index("## A person must act") < ticket.body.index("## What happened")


# ----------------------------------------------------------------------- the metric comparison, as evidence

CHART_URL = "http://airflow.example/conveyor/releases/demo_shop/manual__1/charts/wave_1.analysis.svg"
GRAPH = "http://127.0.0.1:9090/graph?g0.expr=sum%28rate%28shop_http_requests_total%5B1m%5D%29%29"


def analysed_ticket(ledger: Ledger, **extra):
    """The ticket of a release whose wave-1 analysis failed on the error rate (a real verdict and its timeline)."""
    from tests.conveyor.analysis.evidence_support import failing_errors

    detail, _ = failing_errors(**extra)
    record_canary_failure(ledger, failing_verdict(), detail=detail)
    evidence = gather_evidence(ledger.get_release(RID), {"status": "rolled back", "rolled_back": ["prod-1"]})
    evidence["chart_url"] = CHART_URL
    return detail, evidence, render_ticket(ticket_id_for(RID), evidence)


def test_the_ticket_shows_the_metric_table_the_graph_and_the_chart(ledger):
    from conveyor.analysis.evidence_view import chart_svg, markdown_table

    detail, evidence, ticket = analysed_ticket(ledger, source="prometheus", graph_url=GRAPH)
    assert evidence["analysis_stage"] == "wave_1.analysis"
    section = ticket.body.split("## Metric comparison")[1].split("\n## ")[0]
    assert markdown_table(detail) in section
    assert "| error rate | 5.00% | 1.00% |" in section
    assert f"[Prometheus graph](<{GRAPH}>)" in section
    name = f"{ticket.ticket_id}.wave_1.analysis.svg"
    assert f"[chart of canary vs baseline](<{CHART_URL}>) (file `{name}`)" in section
    assert ticket.attachments == {name: chart_svg(detail)}  # the chart, drawn from the recorded detail
    assert "errors: fail" in section  # each metric's own line, as the judge named it


def test_a_ticket_without_a_timeline_has_its_table_but_no_chart(ledger):
    _, evidence, _ = analysed_ticket(ledger)
    del evidence["analysis"]["details"]["timeline"]  # an analysis recorded before timelines
    ticket = render_ticket(ticket_id_for(RID), evidence)
    assert ticket.attachments == {}
    assert "| error rate | 5.00% | 1.00% |" in ticket.body and ".svg" not in ticket.body


def test_the_local_backend_stores_the_chart_beside_the_ticket(ledger, tmp_path):
    import xml.etree.ElementTree as ET

    _, _, ticket = analysed_ticket(ledger)
    backend = LocalTicketBackend(tmp_path / "tickets")
    path = backend.file(ticket, created_at="2026-11-22T10:06:00")
    [name] = ticket.attachments
    chart = path.parent / name
    assert chart.read_text() == ticket.attachments[name]
    assert ET.fromstring(chart.read_text()).tag == "{http://www.w3.org/2000/svg}svg"
    assert name in path.read_text()  # the ticket's text names the file beside it
    assert backend.get(ticket.ticket_id)["attachments"] == [name]
    assert backend.ticket(ticket.ticket_id) == ticket  # a later delivery pass attaches the same chart
    assert [t["ticket_id"] for t in backend.list()] == [ticket.ticket_id]  # a chart is no ticket


@pytest.mark.parametrize("name", ["../evil.svg", "a/b.svg", ".hidden.svg", ""])
def test_the_local_backend_refuses_an_attachment_name_that_leaves_its_directory(tmp_path, name):
    from conveyor.tickets import Ticket

    backend = LocalTicketBackend(tmp_path / "tickets")
    ticket = Ticket(ticket_id="RCA-1", title="t", body="b", fields={}, attachments={name: "<svg/>"})
    with pytest.raises(ValueError, match="plain file names"):
        backend.file(ticket, created_at="2026-11-22T10:06:00")
    assert not (tmp_path / "evil.svg").exists() and backend.list() == []


# ------------------------------------------------------------------------------------ local copies


def test_a_ticket_for_a_ticket_system_is_pending_until_delivered_and_stays_delivered(ledger, tmp_path):
    from conveyor.tickets import target_for

    record_canary_failure(ledger, failing_verdict())
    ticket = render_ticket(ticket_id_for(RID), gather_evidence(ledger.get_release(RID), None))
    backend = LocalTicketBackend(tmp_path / "tickets")
    target = {"backend": "github", "conn_id": "github_default", "repository": "acme/shop", "labels": [],
              "dedup_window_s": 604800}
    backend.file(ticket, created_at="2026-11-22T10:06:00", target=target)
    assert [t["ticket_id"] for t in backend.pending()] == [ticket.ticket_id]
    backend.set_delivery(ticket.ticket_id, {"backend": "github", "status": "filed", "key": "7", "url": "u"})
    backend.file(ticket, created_at="2026-11-22T11:00:00", target=target)  # a rerun of the ticket task
    assert backend.pending() == [] and backend.get(ticket.ticket_id)["delivery"]["key"] == "7"
    assert backend.ticket(ticket.ticket_id) == ticket  # what a later pass delivers is what was rendered
    backend.file(ticket, created_at="2026-11-22T11:00:00", target=None)
    assert backend.get(ticket.ticket_id)["delivery"]["status"] == "filed"  # never forgets where it went

    from conveyor.config import load_service

    assert target_for(load_service("demo_shop").tickets) is None  # the demo files locally


# ---------------------------------------------------------------------------- the rollback_failed alert


def test_the_alert_reaches_slack_and_a_slack_that_is_down_only_logs(monkeypatch, tmp_path):
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    from conveyor.notifiers import alert, read_notifications

    received: list[dict] = []

    class Slack(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slack)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    for name, port in (("SLACK_UP", server.server_port), ("SLACK_DOWN", closed)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(
            {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{port}/services", "password": "T0/B0/X"}))
    context = {"dag_run": SimpleNamespace(dag_id="release_demo_shop", run_id="r1")}
    try:
        text = "Release v1.2.0 of demo_shop: ROLLBACK FAILED, a person must act: prod-2 on v1.2.0"
        assert alert(context, event="rollback_failed", text=text, slack_webhook_conn_id="slack_up") is None
        assert received == [{"text": text}]
        error = alert(context, event="rollback_failed", text=text, slack_webhook_conn_id="slack_down")
        assert error and "Connection" in error  # said, not raised
    finally:
        server.shutdown()
    assert [n["event"] for n in read_notifications()] == ["rollback_failed", "rollback_failed"]  # both logged
