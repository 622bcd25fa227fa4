"""Notifications reach a real HTTP webhook server; tickets carry the evidence and are idempotent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from conveyor.notifiers import ReleaseNotifier, read_notifications
from conveyor.operators.ticket import gather_evidence
from conveyor.tickets import LocalTicketBackend, render_ticket


@pytest.fixture
def webhook_server():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def test_notifier_posts_to_slack_webhook_and_logs(webhook_server, monkeypatch, tmp_path):
    url, received = webhook_server
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", json.dumps(
        {"conn_type": "slackwebhook", "host": f"{url}/services", "password": "T000/B000/XYZ"}))
    notifier = ReleaseNotifier(event="rollback", text="rolled back prod-1", slack_webhook_conn_id="slack_test")
    notifier.notify({"dag_run": SimpleNamespace(dag_id="release_demo_shop", run_id="r1")})
    assert received == [{"path": "/services/T000/B000/XYZ", "json": {"text": "rolled back prod-1"}}]
    [logged] = read_notifications()
    assert logged["event"] == "rollback" and logged["run_id"] == "r1"


EVIDENCE_RELEASE = {
    "release_id": "demo_shop/manual__1", "service": "demo_shop", "version": "v1.2.0", "git_ref": "v1.2.0",
    "commit_sha": "c" * 40, "change_kind": "minor", "emergency": False, "author": "dev",
    "commit_range": {"commits": [{"sha": "a" * 40, "subject": "Cache recommendations", "author": "Bob"}]},
    "stages": [
        {"stage": "build", "status": "success", "finished_at": "2026-11-22T10:00:00"},
        {"stage": "wave_1.analysis", "status": "failed", "finished_at": "2026-11-22T10:05:00",
         "error": "AnalysisFailed: wave-1: error rate 5.1% vs 0.0%",
         "detail": {"label": "wave-1", "decision": "fail", "reason": "error rate 5.1% vs 0.0%",
                    "metrics": [{"metric": "error_rate", "decision": "fail", "effect": 0.051,
                                 "interval": [0.03, 0.07], "statistic": 1e6, "samples": {"canary": 600}}]}},
    ],
    "hosts": [{"host": "prod-1", "environment": "production", "wave": "wave-1", "from_version": "v1.0.0",
               "to_version": "v1.2.0", "status": "deployed"},
              {"host": "replica-1", "environment": "replica", "status": "deployed"}],
    "tests": [{"suite": "integration", "test": "test_a", "outcome": "failed", "pre_existing": True}],
    "approvals": [{"approver": "qa1", "decision": "approve", "at": "2026-11-22T10:01:00"}],
}


def test_ticket_carries_the_evidence_and_is_idempotent(tmp_path):
    evidence = gather_evidence(EVIDENCE_RELEASE, {"status": "rolled back", "rolled_back": ["prod-1"]})
    evidence["run_url"] = "http://localhost:8080/dags/release_demo_shop/runs/manual__1"
    ticket = render_ticket("RCA-1", evidence)
    assert ticket.title == "[demo_shop] release v1.2.0 failed at wave_1.analysis"
    for expected in ("error rate 5.1% vs 0.0%", "Cache recommendations (Bob)", "prod-1 (wave-1): v1.0.0 -> v1.2.0",
                     "rolled back: prod-1", "integration::test_a", "qa1: approve", "Five whys",
                     "http://localhost:8080/dags/release_demo_shop/runs/manual__1"):
        assert expected in ticket.body, expected
    assert "replica-1" not in ticket.body.split("## Hosts touched")[1].split("##")[0]
    backend = LocalTicketBackend(tmp_path)
    backend.file(ticket, created_at="2026-11-22T10:06:00")
    backend.file(ticket, created_at="2026-11-22T11:00:00")  # a rerun of the ticket task
    [listed] = backend.list()
    assert listed["ticket_id"] == "RCA-1" and listed["created_at"] == "2026-11-22T10:06:00"
    assert listed["hosts_touched"] == ["prod-1"] and listed["rollback_status"] == "rolled back"
    assert "error rate" in backend.get("RCA-1")["body"]
