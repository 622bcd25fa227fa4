"""``AirflowApiHook``: Airflow's own REST API, read as a service user (the production gate's evidence).

A task cannot read another task's Human-in-the-loop detail through the Task SDK (the execution API
is scoped to the task itself), so the production gate reads the run's Required Actions the way the
UI does: ``POST /auth/token``, then ``GET /api/v2/dags/{dag}/dagRuns/{run}/hitlDetails`` (and, for an
approval task that was cleared and rerun, its earlier tries). It only reads: a user with Airflow's
*viewer* role is enough.

Connection ``conveyor_airflow_api`` (conn type ``http``): ``host`` is the API server's base URL
(``http://localhost:8080``; a bare host name takes ``schema`` as the scheme, ``http`` by default, and
``port``), ``login`` / ``password`` the service user. No extras are read. When the connection is not
defined, :meth:`AirflowApiHook.defined` says so and the gate checks the ledger alone.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from conveyor.signoff_client import SignoffClient, SignoffError


class AirflowApiHook(BaseHook):
    """Read a run's Human-in-the-loop records through Airflow's REST API.

    :param airflow_api_conn_id: the connection (see the module docs).
    :param timeout: seconds per HTTP request.
    """

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "conveyor_airflow_api"
    conn_type = "http"
    hook_name = "Airflow REST API (Conveyor's production gate)"

    def __init__(self, airflow_api_conn_id: str = default_conn_name, *, timeout: float = 30.0) -> None:
        super().__init__()
        self.airflow_api_conn_id = airflow_api_conn_id
        self.timeout = timeout

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "extra"],
            "relabeling": {"host": "API base URL", "login": "Service user", "password": "Password"},
            "placeholders": {"host": "http://localhost:8080", "login": "conveyor"},
        }

    def defined(self) -> bool:
        """Whether the connection exists (when it does not, the gate relies on the ledger alone)."""
        try:
            self.get_connection(self.airflow_api_conn_id)
        except AirflowNotFoundException:
            return False
        return True

    def base_url(self) -> str:
        conn = self.get_connection(self.airflow_api_conn_id)
        host = (conn.host or "").strip().rstrip("/")
        if not host:
            raise SignoffError(f"connection {self.airflow_api_conn_id}: host (the API base URL) is empty")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        return host

    def client(self) -> SignoffClient:
        """A :class:`~conveyor.signoff_client.SignoffClient` logged in as the connection's user."""
        conn = self.get_connection(self.airflow_api_conn_id)
        if not conn.login:
            raise SignoffError(f"connection {self.airflow_api_conn_id}: login (the service user) is empty")
        client = SignoffClient(api=self.base_url(), timeout=self.timeout)
        client.login(conn.login, conn.password or "")
        return client

    def get_conn(self) -> SignoffClient:
        return self.client()

    def approval_answers(self, dag_id: str, run_id: str, task_prefix: str | tuple[str, ...]) -> list[dict[str, Any]]:
        """The Human-in-the-loop details of the run's tasks whose id starts with ``task_prefix`` (or one of
        several, e.g. every approval stage's ``<stage>_signoff.approval_``): the
        current try's (``GET .../hitlDetails``) and every earlier try's (a task cleared after it was
        answered reruns without asking again; its answer is in the earlier try).

        Raises :class:`~conveyor.signoff_client.SignoffError` when the API cannot be read.
        """
        client = self.client()
        details = [d for d in client.hitl_details(dag_id, run_id)
                   if str((d.get("task_instance") or {}).get("task_id") or "").startswith(task_prefix)]
        current = {((d.get("task_instance") or {}).get("task_id"), (d.get("task_instance") or {}).get("try_number"))
                   for d in details}
        for ti in client.task_instances(dag_id, run_id):
            task_id, tries = ti.get("task_id") or "", int(ti.get("try_number") or 0)
            if not task_id.startswith(task_prefix):
                continue
            for n in range(1, tries + 1):
                if (task_id, n) in current:
                    continue
                detail = client.hitl_detail_try(dag_id, run_id, task_id, n, map_index=ti.get("map_index", -1))
                if detail is not None:
                    details.append(detail)
        return details

    def test_connection(self) -> tuple[bool, str]:
        try:
            client = self.client()
            version = client.call("GET", "/api/v2/version", what="reading Airflow's version")
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"logged in to Airflow {version.get('version', '?')} at {client.api} as {client.user}"
