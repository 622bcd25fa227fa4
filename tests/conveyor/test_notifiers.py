"""Notifications reach a real HTTP webhook server (through the Slack provider's webhook hook) and the log."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from conveyor.notifiers import ReleaseNotifier, read_notifications


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


@pytest.fixture
def slack_down():
    """A Slack webhook endpoint that answers 500 to everything."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(self.path)
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal_error")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


def test_a_slack_outage_never_fails_what_notifies(slack_down, monkeypatch, tmp_path):
    """An approval's notifier, a callback or an alert goes on when Slack is down: the log keeps the message."""
    url, hits = slack_down
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DOWN", json.dumps(
        {"conn_type": "slackwebhook", "host": f"{url}/services", "password": "T000/B000/XYZ"}))
    notifier = ReleaseNotifier(event="approval", text="awaits QA sign-off", slack_webhook_conn_id="slack_down")
    error = notifier.notify({"dag_run": SimpleNamespace(dag_id="release_demo_shop", run_id="r2")})
    assert hits == ["/services/T000/B000/XYZ"]  # it was tried
    assert error  # and the failure came back as a value, not an exception
    [logged] = read_notifications()
    assert logged["event"] == "approval" and logged["text"] == "awaits QA sign-off"
    # and with nothing listening at all
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DOWN", json.dumps(
        {"conn_type": "slackwebhook", "host": "http://127.0.0.1:9/services", "password": "T000/B000/XYZ"}))
    assert ReleaseNotifier(event="failed", text="x", slack_webhook_conn_id="slack_down").notify({})
