"""``conveyor.signoff_client`` and ``conveyor approve|reject`` against a tiny stub of Airflow's API.

The stub speaks the few endpoints the client uses, with Airflow's shapes (``/auth/token``,
``.../hitlDetails`` list, get and patch, ``.../dagRuns/{run}``) and Airflow's 403 message; the real
API is exercised by ``tests/e2e/test_signoff_api.py``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from conveyor import cli
from conveyor.signoff_client import (
    AuthFailed,
    Forbidden,
    NotAwaiting,
    SignoffClient,
    SignoffError,
    settle_delay,
    sign_off,
)

DAG = "release_demo_shop"
RUN = "manual__2026-11-23T10:00:00+00:00"
PASSWORDS = {"qa1": "pw1", "qa2": "pw2", "dev": "pwd"}


def detail(task_id: str, state: str = "awaiting_input", options=("Approve", "Reject"), assigned=("qa1", "qa2"),
           received: bool = False) -> dict:
    return {
        "task_instance": {"task_id": task_id, "map_index": -1, "state": state, "dag_id": DAG, "dag_run_id": RUN},
        "options": list(options), "subject": f"QA sign-off: {task_id}", "body": "**v1.1.0**",
        "assigned_users": [{"id": u, "name": u} for u in assigned], "response_received": received,
    }


class StubAirflow:
    def __init__(self):
        self.details: list[dict] = []
        self.run_state = "running"
        self.calls: list[tuple[str, str, dict | None, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _user(self):
                auth = self.headers.get("Authorization", "")
                return auth.removeprefix("Bearer token-") if auth.startswith("Bearer token-") else None

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.split("/") if p]
                body = self._body() if method in ("POST", "PATCH") else None
                stub.calls.append((method, unquote(url.path), body, self.headers.get("Authorization")))
                if parts == ["auth", "token"] and method == "POST":
                    if PASSWORDS.get(body.get("username")) == body.get("password"):
                        return self._send(201, {"access_token": f"token-{body['username']}"})
                    return self._send(401, {"detail": "Invalid credentials"})
                user = self._user()
                if user is None:
                    return self._send(401, {"detail": "Not authenticated"})
                if parts[:2] != ["api", "v2"] or parts[2:3] != ["dags"] or parts[4:5] != ["dagRuns"]:
                    return self._send(404, {"detail": "Not Found"})
                if parts[5] != RUN:
                    return self._send(404, {"detail": f"The DagRun with dag_id: `{parts[3]}` and run_id: "
                                                      f"`{parts[5]}` was not found"})
                rest = parts[6:]
                if not rest and method == "GET":
                    return self._send(200, {"dag_run_id": RUN, "dag_id": DAG, "state": stub.run_state})
                if rest == ["hitlDetails"] and method == "GET":
                    query = parse_qs(url.query)
                    items = stub.details
                    if query.get("response_received") == ["false"]:
                        items = [d for d in items if not d["response_received"]]
                    return self._send(200, {"hitl_details": items, "total_entries": len(items)})
                if len(rest) == 4 and rest[0] == "taskInstances" and rest[3] == "hitlDetails":
                    match = [d for d in stub.details if d["task_instance"]["task_id"] == rest[1]]
                    if not match:
                        return self._send(404, {"detail": "Human-in-the-loop detail does not exist"})
                    d = match[0]
                    if method == "GET":
                        return self._send(200, d)
                    if d["response_received"]:
                        return self._send(409, {"detail": "Human-in-the-loop detail has already been updated"})
                    if user not in {u["id"] for u in d["assigned_users"]}:
                        return self._send(403, {"detail": f"User={user} (id={user}) is not a respondent for the task."})
                    d.update(response_received=True, chosen_options=body["chosen_options"],
                             params_input=body["params_input"])
                    return self._send(200, {"responded_by": {"id": user, "name": user},
                                            "responded_at": "2026-11-23T10:05:00Z",
                                            "chosen_options": body["chosen_options"],
                                            "params_input": body["params_input"]})
                return self._send(404, {"detail": "Not Found"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PATCH(self):
                self._route("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def patches(self) -> list[tuple[str, dict, str]]:
        return [(path, body, auth) for method, path, body, auth in self.calls if method == "PATCH"]


@pytest.fixture
def stub():
    s = StubAirflow()
    s.thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()


def test_login_and_a_refused_password(stub):
    client = SignoffClient(api=stub.url + "/")
    assert client.login("qa1", "pw1") == "token-qa1"
    assert client.api == stub.url
    with pytest.raises(AuthFailed, match=r"login as 'qa1' refused .*HTTP 401: Invalid credentials"):
        SignoffClient(api=stub.url).login("qa1", "wrong")


def test_finds_the_approval_awaiting_input_and_answers_it(stub):
    stub.details = [
        detail("qa_signoff.approval_1", state="success", received=True),
        detail("wave_1.decide", options=("Continue", "Roll back")),  # another kind of Required Action
        detail("qa_signoff.approval_2"),
    ]
    result = sign_off(api=stub.url, user="qa2", password="pw2", run_id=RUN, decision="Approve",
                      reason="  looks good ", dag_id=DAG)
    assert (result.task_id, result.user, result.decision, result.reason) == (
        "qa_signoff.approval_2", "qa2", "Approve", "looks good")
    assert result.responded_at == "2026-11-23T10:05:00Z"
    [(path, body, auth)] = stub.patches()
    assert path == f"/api/v2/dags/{DAG}/dagRuns/{RUN}/taskInstances/qa_signoff.approval_2/-1/hitlDetails"
    assert body == {"chosen_options": ["Approve"], "params_input": {"reason": "looks good"}}
    assert auth == "Bearer token-qa2"


def test_approve_without_comment_sends_an_empty_form(stub):
    stub.details = [detail("qa_signoff.approval_1")]
    sign_off(api=stub.url, user="qa1", password="pw1", run_id=RUN, decision="Approve", dag_id=DAG)
    [(_, body, _)] = stub.patches()
    assert body == {"chosen_options": ["Approve"], "params_input": {}}


def test_a_403_carries_airflows_message(stub):
    stub.details = [detail("qa_signoff.approval_1", assigned=("qa1", "qa2"))]
    with pytest.raises(Forbidden, match=r"HTTP 403: User=dev \(id=dev\) is not a respondent for the task") as e:
        sign_off(api=stub.url, user="dev", password="pwd", run_id=RUN, decision="Approve", dag_id=DAG)
    assert e.value.status == 403


def test_no_awaiting_approval_names_the_run_state(stub):
    stub.run_state = "failed"
    stub.details = [detail("qa_signoff.approval_1", state="failed", received=True)]
    with pytest.raises(NotAwaiting, match=r"has no QA approval awaiting input \(run state: failed\)"):
        sign_off(api=stub.url, user="qa1", password="pw1", run_id=RUN, decision="Approve", dag_id=DAG)
    assert stub.patches() == []


def test_unknown_run_and_unreachable_api(stub):
    with pytest.raises(SignoffError, match="no run 'nope' of DAG"):
        sign_off(api=stub.url, user="qa1", password="pw1", run_id="nope", decision="Approve", dag_id=DAG)
    with pytest.raises(SignoffError, match="cannot reach Airflow at http://127.0.0.1:1"):
        sign_off(api="http://127.0.0.1:1", user="qa1", password="pw1", run_id=RUN, decision="Approve")
    with pytest.raises(SignoffError, match="http"):
        SignoffClient(api="localhost:8080")


def test_a_rejection_needs_a_reason(stub):
    stub.details = [detail("qa_signoff.approval_1")]
    with pytest.raises(SignoffError, match="needs a reason"):
        sign_off(api=stub.url, user="qa1", password="pw1", run_id=RUN, decision="Reject", reason="  ")
    with pytest.raises(SignoffError, match="at most 2000"):
        sign_off(api=stub.url, user="qa1", password="pw1", run_id=RUN, decision="Reject", reason="x" * 2001)
    assert stub.calls == []  # refused before any call


def test_answers_wait_until_the_request_is_a_few_seconds_old():
    now = datetime(2026, 11, 23, 10, 0, 10, tzinfo=UTC)
    assert settle_delay({"created_at": "2026-11-23T10:00:09Z"}, 5, now=now) == pytest.approx(4)
    assert settle_delay({"created_at": "2026-11-23T10:00:00+00:00"}, 5, now=now) == 0
    assert settle_delay({"created_at": "2026-11-23T10:05:00Z"}, 5, now=now) == 5  # clock skew: bounded
    assert settle_delay({"created_at": "garbage"}, 5, now=now) == 0
    assert settle_delay({}, 5, now=now) == 0


# ----------------------------------------------------------------------------------- the CLI


def test_cli_approve_and_reject(stub, capsys, monkeypatch):
    stub.details = [detail("qa_signoff.approval_1")]
    monkeypatch.setenv("CONVEYOR_PASSWORD", "pw1")
    assert cli.main(["approve", RUN, "--as", "qa1", "--api", stub.url, "--comment", "ok on replica"]) == 0
    out = capsys.readouterr().out
    assert f"Approved qa_signoff.approval_1 of run {RUN} (release_demo_shop) as qa1 at 2026-11-23T10:05:00Z." in out
    assert "Comment: ok on replica" in out

    stub.details.append(detail("qa_signoff.approval_2", assigned=("qa2",)))
    code = cli.main(["reject", RUN, "--as", "qa2", "--password", "pw2", "--api", stub.url, "--reason", "QA-142"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"Rejected qa_signoff.approval_2 of run {RUN}" in out
    assert "Reason: QA-142" in out
    assert stub.patches()[-1][1] == {"chosen_options": ["Reject"], "params_input": {"reason": "QA-142"}}


def test_cli_failures_exit_1_with_airflows_message(stub, capsys, monkeypatch):
    stub.details = [detail("qa_signoff.approval_1", assigned=("qa1",))]
    monkeypatch.setenv("CONVEYOR_PASSWORD", "pw2")
    assert cli.main(["approve", RUN, "--as", "qa2", "--api", stub.url]) == 1
    err = capsys.readouterr().err
    assert "conveyor: error:" in err
    assert "HTTP 403: User=qa2 (id=qa2) is not a respondent for the task." in err

    stub.details = []
    assert cli.main(["approve", RUN, "--as", "qa2", "--api", stub.url]) == 1
    assert "has no QA approval awaiting input (run state: running)" in capsys.readouterr().err

    assert cli.main(["approve", RUN, "--as", "qa2", "--password", "bad", "--api", stub.url]) == 1
    assert "login as 'qa2' refused" in capsys.readouterr().err


def test_cli_usage_errors(stub, capsys, monkeypatch):
    monkeypatch.delenv("CONVEYOR_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # not a tty: no prompt
    assert cli.main(["approve", RUN, "--as", "qa1", "--api", stub.url]) == 2
    assert "no password" in capsys.readouterr().err
    assert cli.main(["reject", RUN, "--as", "qa1", "--password", "pw1", "--reason", " ", "--api", stub.url]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["reject", RUN, "--as", "qa1", "--password", "pw1"])  # --reason is required
    assert e.value.code == 2
    assert stub.calls == []
