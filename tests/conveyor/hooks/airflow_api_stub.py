"""A small real HTTP server speaking the part of Airflow's REST API the production gate reads.

``POST /auth/token``, ``GET /api/v2/version``, and for one run ``GET .../hitlDetails`` (the current
tries' Human-in-the-loop details), ``GET .../taskInstances`` and ``GET .../taskInstances/{task}/
{map_index}/hitlDetails/tries/{n}``, with Airflow's shapes and status codes. The test sets what the run
holds (:meth:`StubAirflowApi.answer`); the real API is exercised by tests/e2e/test_signoff_api.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

USER, PASSWORD = "conveyor", "gate-secret"


def detail(task_id: str, who: str | None, option: str | None = "Approve", *, try_number: int = 1,
           received: bool = True) -> dict:
    """A Human-in-the-loop detail as Airflow lists it (``task_instance``, options, the response)."""
    return {
        "task_instance": {"task_id": task_id, "map_index": -1, "try_number": try_number, "state": "success"},
        "options": ["Approve", "Reject"], "subject": f"QA sign-off: {task_id}", "assigned_users": [],
        "created_at": "2026-11-23T10:00:00Z", "response_received": received,
        "responded_by_user": {"id": who, "name": who} if who else None,
        "responded_at": "2026-11-23T10:05:00Z" if received else None,
        "chosen_options": [option] if option else None, "params_input": {},
    }


class StubAirflowApi:
    """The API of one Airflow holding one run; ``fail_reads`` makes the run's reads answer HTTP 500."""

    def __init__(self, dag_id: str, run_id: str) -> None:
        self.dag_id, self.run_id = dag_id, run_id
        self.current: list[dict] = []  # the current try of each task's detail
        self.history: dict[tuple[str, int], dict] = {}  # earlier tries' details
        self.tries: dict[str, int] = {}  # task id -> its current try number
        self.fail_reads = False
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
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

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                stub.requests.append(("POST", self.path, None))
                if self.path == "/auth/token" and body == {"username": USER, "password": PASSWORD}:
                    return self._send(201, {"access_token": "token-for-conveyor"})
                return self._send(401, {"detail": "Invalid credentials"})

            def do_GET(self):
                url = urlparse(self.path)
                stub.requests.append(("GET", url.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != "Bearer token-for-conveyor":
                    return self._send(401, {"detail": "Not authenticated"})
                parts = [unquote(p) for p in url.path.split("/") if p]
                if parts == ["api", "v2", "version"]:
                    return self._send(200, {"version": "3.3.2"})
                if parts[:6] != ["api", "v2", "dags", stub.dag_id, "dagRuns", stub.run_id]:
                    return self._send(404, {"detail": "Not Found"})
                if stub.fail_reads:
                    return self._send(500, {"detail": "Internal Server Error"})
                rest = parts[6:]
                if rest == ["hitlDetails"]:
                    return self._send(200, {"hitl_details": stub.current, "total_entries": len(stub.current)})
                if rest == ["taskInstances"]:
                    tis = [{"task_id": t, "map_index": -1, "try_number": n, "state": "success"}
                           for t, n in stub.tries.items()]
                    return self._send(200, {"task_instances": tis, "total_entries": len(tis)})
                if len(rest) == 6 and rest[0] == "taskInstances" and rest[3:5] == ["hitlDetails", "tries"]:
                    task, n = rest[1], int(rest[5])
                    found = stub.history.get((task, n)) or next(
                        (d for d in stub.current if d["task_instance"]["task_id"] == task
                         and d["task_instance"]["try_number"] == n), None)
                    if found is None:
                        return self._send(404, {"detail": "Human-in-the-loop detail does not exist"})
                    return self._send(200, found)
                return self._send(404, {"detail": "Not Found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def connection(self, password: str = PASSWORD) -> str:
        """The ``conveyor_airflow_api`` connection (JSON, for ``AIRFLOW_CONN_CONVEYOR_AIRFLOW_API``)."""
        return json.dumps({"conn_type": "http", "host": self.url, "login": USER, "password": password})

    def answer(self, task_id: str, who: str | None, option: str | None = "Approve", *, try_number: int = 1,
               received: bool = True) -> None:
        """The task's current try has this Required Action (and answer)."""
        self.tries[task_id] = try_number
        self.current = [d for d in self.current if d["task_instance"]["task_id"] != task_id]
        self.current.append(detail(task_id, who, option, try_number=try_number, received=received))

    def answered_earlier(self, task_id: str, who: str, option: str = "Approve", *, try_number: int,
                         current_try: int) -> None:
        """The task was answered in ``try_number`` and then cleared: its current try has no Required Action."""
        self.history[(task_id, try_number)] = detail(task_id, who, option, try_number=try_number)
        self.tries[task_id] = current_try
        self.current = [d for d in self.current if d["task_instance"]["task_id"] != task_id]

    def __enter__(self) -> StubAirflowApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
