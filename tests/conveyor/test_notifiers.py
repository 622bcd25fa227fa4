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
