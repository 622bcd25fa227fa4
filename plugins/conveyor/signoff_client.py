"""Answer a release's QA sign-off through Airflow's REST API (what ``conveyor approve|reject`` does).

The sign-off tasks are Airflow HITL approvals (:mod:`conveyor.operators.signoff`), so answering one
is Airflow's own call and Airflow's own authorization:

1. ``POST {api}/auth/token`` with ``{"username", "password"}`` (SimpleAuthManager; FAB answers the
   same path) gives a JWT;
2. ``GET {api}/api/v2/dags/{dag}/dagRuns/{run}/hitlDetails?response_received=false`` lists the run's
   pending Required Actions; the QA approval is the one offering Approve/Reject whose task is
   ``awaiting_input``;
3. ``PATCH {api}/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map_index}/hitlDetails``
   with ``{"chosen_options": ["Approve"|"Reject"], "params_input": {"reason": ...}}``. The API
   answers 403 to anyone the task is not assigned to (the run's author, users outside the QA group,
   a QA member who already approved this release), 409 when it was already answered.

Standard library only (``urllib``): the CLI imports no Airflow. Every failure is a
:class:`SignoffError` whose message is meant for the user (it carries Airflow's own ``detail``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.exceptions import SignoffError

DEFAULT_API = "http://localhost:8080"
DEFAULT_DAG = "release_demo_shop"
APPROVE, REJECT = "Approve", "Reject"
#: Task states in which a HITL task can take an answer (3.3 parks it in ``awaiting_input``;
#: 3.1/3.2 defer it).
WAITING_STATES = ("awaiting_input", "deferred")
MAX_REASON = 2000  # the sign-off form's ``reason`` Param (maxLength)
#: Answer a request only once it is this old (seconds). Airflow 3.3.2 races on an answer that lands
#: before the scheduler has processed the executor's "finished" event of the process that parked the
#: task: the task is resumed and queued, then that stale event removes it from the executor and the
#: scheduler fails it ("finished with state success, but the task instance's state attribute is
#: queued"). The parking process is reaped up to ``[workers] min_heartbeat_interval`` (5 s by
#: default) after it parks, plus a scheduler loop. A human is never that fast; a script is, so the
#: client waits out the gap.
SETTLE_S = 10.0
TERMINAL_RUN_STATES = ("success", "failed")


class Forbidden(SignoffError):
    """Airflow answered 403: this user may not answer this approval (or may not act on the DAG)."""


class NotAwaiting(SignoffError):
    """The run has no QA approval waiting for an answer."""


class AuthFailed(SignoffError):
    """The user name or password was refused (401/403 on ``/auth/token``)."""


def _detail_text(detail: Any) -> str:
    """Airflow's error ``detail`` (a string, or FastAPI's list of validation errors) as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, dict):
                loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
            else:
                parts.append(str(d))
        return "; ".join(parts)
    if isinstance(detail, dict):
        return detail.get("message") or json.dumps(detail, default=str)
    return str(detail)


@dataclass
class SignoffClient:
    """A small client of Airflow's public REST API (v2), enough to find and answer sign-offs.

    :param api: the API server's base URL (``[api] base_url``), e.g. ``http://localhost:8080``.
    :param token: a JWT; see :meth:`login`.
    :param timeout: seconds per HTTP request.
    """

    api: str = DEFAULT_API
    token: str | None = None
    timeout: float = 30.0
    user: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.api = self.api.rstrip("/")
        if not self.api.startswith(("http://", "https://")):
            raise SignoffError(f"--api must be an http(s) URL, got {self.api!r}")

    # -- transport -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                *, auth: bool = True) -> tuple[int, Any]:
        """One HTTP call; returns ``(status, decoded JSON or text)``, never raises on HTTP errors."""
        url = self.api + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # the scheme is checked in __post_init__
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise SignoffError(f"cannot reach Airflow at {self.api}: {reason} (is it running? see --api)") from None
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
             *, expect: tuple[int, ...] = (200,), what: str = "") -> Any:
        """Like :meth:`request`, raising :class:`SignoffError` (:class:`Forbidden` for 403) otherwise."""
        status, data = self.request(method, path, body, query)
        if status in expect:
            return data
        detail = data.get("detail") if isinstance(data, dict) and "detail" in data else data
        message = f"{what or method + ' ' + path}: HTTP {status}: {_detail_text(detail)}"
        if status == 401:
            message += " (the token was refused: log in again)"
        error = Forbidden if status == 403 else SignoffError
        raise error(message, status=status, detail=detail)

    # -- auth ------------------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> str:
        """Get a JWT for ``username`` (``POST /auth/token``); keeps it for later calls and returns it."""
        status, data = self.request("POST", "/auth/token", {"username": username, "password": password},
                                    auth=False)
        if status in (200, 201) and isinstance(data, dict) and data.get("access_token"):
            self.token = data["access_token"]
            self.user = username
            return self.token
        detail = data.get("detail") if isinstance(data, dict) else data
        if status in (400, 401, 403):
            raise AuthFailed(f"login as {username!r} refused by {self.api}: HTTP {status}: {_detail_text(detail)}",
                             status=status, detail=detail)
        raise SignoffError(f"login at {self.api}/auth/token failed: HTTP {status}: {_detail_text(detail)}",
                           status=status, detail=detail)

    # -- reads -----------------------------------------------------------------------------------------
    @staticmethod
    def _q(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        status, data = self.request("GET", f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}")
        if status == 404:
            raise SignoffError(f"no run {run_id!r} of DAG {dag_id!r} (check RUN_ID and --dag)", status=404)
        if status != 200:
            detail = data.get("detail") if isinstance(data, dict) else data
            error = Forbidden if status == 403 else SignoffError
            raise error(f"reading run {run_id} of {dag_id}: HTTP {status}: {_detail_text(detail)}", status=status,
                        detail=detail)
        return data

    def hitl_details(self, dag_id: str, run_id: str, *, pending: bool | None = None) -> list[dict[str, Any]]:
        """The run's Required Actions (HITL details), ``pending=True`` for those not answered yet."""
        query: dict[str, Any] = {"limit": 100}
        if pending is not None:
            query["response_received"] = "false" if pending else "true"
        data = self.call("GET", f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/hitlDetails", query=query,
                         what=f"listing the Required Actions of run {run_id}")
        return list(data.get("hitl_details") or [])

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self.call("GET", self._hitl_path(dag_id, run_id, task_id, map_index),
                         what=f"reading the Required Action of {task_id}")

    def hitl_detail_try(self, dag_id: str, run_id: str, task_id: str, try_number: int,
                        map_index: int = -1) -> dict[str, Any] | None:
        """The Required Action of one try of ``task_id`` (an earlier try's is kept in Airflow's history);
        None when that try has none."""
        path = f"{self._hitl_path(dag_id, run_id, task_id, map_index)}/tries/{int(try_number)}"
        status, data = self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            detail = data.get("detail") if isinstance(data, dict) else data
            error = Forbidden if status == 403 else SignoffError
            raise error(f"reading try {try_number} of the Required Action of {task_id}: HTTP {status}: "
                        f"{_detail_text(detail)}", status=status, detail=detail)
        return data

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (``task_id``, ``map_index``, ``state``, ``try_number`` ...)."""
        data = self.call("GET", f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances",
                         query={"limit": 100}, what=f"listing the task instances of run {run_id}")
        return list(data.get("task_instances") or [])

    def _hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        return (f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/"
                f"{self._q(task_id)}/{int(map_index)}/hitlDetails")

    def awaiting_approval(self, dag_id: str, run_id: str, task_id: str | None = None) -> dict[str, Any]:
        """The run's QA approval waiting for an answer (a HITL detail offering Approve/Reject).

        Raises :class:`NotAwaiting` with the run's state when there is none.
        """
        run = self.dag_run(dag_id, run_id)  # a clear "no run" before anything else
        details = [
            d for d in self.hitl_details(dag_id, run_id, pending=True)
            if {APPROVE, REJECT} <= set(d.get("options") or [])
            and (d.get("task_instance") or {}).get("state") in WAITING_STATES
            and (task_id is None or (d.get("task_instance") or {}).get("task_id") == task_id)
        ]
        if not details:
            which = f"task {task_id}" if task_id else "no QA approval"
            raise NotAwaiting(
                f"run {run_id} of {dag_id} has {which + ' not' if task_id else which} awaiting input "
                f"(run state: {run.get('state')}); nothing to answer",
            )
        details.sort(key=lambda d: (d["task_instance"].get("task_id") or "", d["task_instance"].get("map_index", -1)))
        return details[0]

    # -- writes ----------------------------------------------------------------------------------------
    def respond(self, dag_id: str, run_id: str, task_id: str, option: str, params_input: dict[str, Any] | None = None,
                map_index: int = -1) -> dict[str, Any]:
        """``PATCH`` the HITL detail: Airflow's own check decides (403 for non-assignees)."""
        return self.call(
            "PATCH", self._hitl_path(dag_id, run_id, task_id, map_index),
            {"chosen_options": [option], "params_input": params_input or {}},
            what=f"answering {task_id} of run {run_id} as {self.user or 'this user'}",
        )

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Trigger a run (``POST .../dagRuns``, logical date none); returns the new run."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.call("POST", f"/api/v2/dags/{self._q(dag_id)}/dagRuns", body, expect=(200, 201),
                         what=f"triggering {dag_id}")


def settle_delay(detail: dict[str, Any], settle_s: float = SETTLE_S, now: datetime | None = None) -> float:
    """Seconds to wait before answering ``detail`` so that it is ``settle_s`` old (see :data:`SETTLE_S`)."""
    created = detail.get("created_at")
    if not created or settle_s <= 0:
        return 0.0
    try:
        created_at = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - created_at).total_seconds()
    return min(settle_s, max(0.0, settle_s - age))  # bounded: a skewed clock never waits longer


@dataclass
class SignoffResult:
    dag_id: str
    run_id: str
    task_id: str
    decision: str  # "Approve" | "Reject"
    user: str
    responded_at: str | None
    reason: str | None
    subject: str | None


def sign_off(*, api: str, user: str, password: str, run_id: str, decision: str, reason: str | None = None,
             dag_id: str = DEFAULT_DAG, task_id: str | None = None, timeout: float = 30.0,
             settle_s: float = SETTLE_S) -> SignoffResult:
    """Log in as ``user`` and answer the run's awaiting QA approval with ``decision``.

    ``reason`` goes into the form's ``reason`` field (required to reject; optional comment to
    approve); the operator records it in the ledger and the ticket.
    """
    if decision not in (APPROVE, REJECT):
        raise ValueError(f"decision must be {APPROVE!r} or {REJECT!r}")
    reason = (reason or "").strip() or None
    if decision == REJECT and not reason:
        raise SignoffError("a rejection needs a reason (--reason TEXT)")
    if reason and len(reason) > MAX_REASON:
        raise SignoffError(f"the reason is {len(reason)} characters; at most {MAX_REASON} are accepted")
    client = SignoffClient(api=api, timeout=timeout)
    client.login(user, password)
    detail = client.awaiting_approval(dag_id, run_id, task_id)
    wait = settle_delay(detail, settle_s)
    if wait > 0:
        time.sleep(wait)
    ti = detail["task_instance"]
    answer = client.respond(dag_id, run_id, ti["task_id"], decision, {"reason": reason} if reason else {},
                            map_index=ti.get("map_index", -1))
    responder = (answer or {}).get("responded_by") or {}
    return SignoffResult(
        dag_id=dag_id, run_id=run_id, task_id=ti["task_id"], decision=decision,
        user=responder.get("name") or responder.get("id") or user,
        responded_at=(answer or {}).get("responded_at"), reason=reason, subject=detail.get("subject"),
    )
