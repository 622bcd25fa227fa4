"""What every Conveyor operator shares: the service it releases, the release id, the ledger.

A release is identified by ``<service>/<run_id>``: stable across retries and task reruns, so every
ledger write keyed by it is an upsert and a rerun never duplicates a record.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.config import ServiceConfig
    from conveyor.ledger import Ledger


def utcnow() -> datetime:
    return datetime.now(UTC)


def release_id_for(service_id: str, run_id: str) -> str:
    return f"{service_id}/{run_id}"


def ticket_id_for(release_id: str) -> str:
    return "RCA-" + hashlib.sha1(release_id.encode()).hexdigest()[:10].upper()


def ledger_for_conn(conn_id: str = "conveyor_ledger") -> Ledger:
    from conveyor.ledger.hook import LedgerHook

    return LedgerHook(ledger_conn_id=conn_id).ledger


class ConveyorOperator(BaseOperator):
    """Base class: loads the service definition at run time and records the stage in the ledger.

    Subclasses implement :meth:`run` and return a JSON-serialisable value (pushed to XCom). The
    stage row goes ``running`` then ``success`` with the returned summary as detail; failures are
    recorded by the DAG's failure callback (:func:`record_failure`), for stock operators too.

    :param service_id: the service's id (``include/services/<id>.yaml``).
    :param stage: the ledger stage name (defaults to the task id).
    :param ledger_conn_id: the release ledger's connection.
    """

    ui_color = "#e8f1fb"

    def __init__(self, *, service_id: str, stage: str | None = None,
                 ledger_conn_id: str = "conveyor_ledger", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service_id = service_id
        self.stage = stage
        self.ledger_conn_id = ledger_conn_id

    @cached_property
    def service(self) -> ServiceConfig:
        from conveyor.config import load_service

        return load_service(self.service_id)

    @cached_property
    def ledger(self) -> Ledger:
        return ledger_for_conn(self.ledger_conn_id)

    def release_id(self, context: Context) -> str:
        return release_id_for(self.service_id, context["dag_run"].run_id)

    def execute(self, context: Context) -> Any:
        stage = self.stage or self.task_id
        release_id = self.release_id(context)
        self.ledger.upsert_stage(release_id, stage, status="running", started_at=utcnow(), finished_at=None,
                                 error=None)
        from airflow.exceptions import AirflowSkipException

        try:
            result = self.run(context)
        except AirflowSkipException as skip:
            self.ledger.upsert_stage(release_id, stage, status="skipped", finished_at=utcnow(), error=str(skip))
            raise
        detail = result if isinstance(result, dict) else {"result": result}
        self.ledger.upsert_stage(release_id, stage, status="success", finished_at=utcnow(),
                                 detail=_summary(detail))
        return result

    def run(self, context: Context) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _summary(detail: dict[str, Any]) -> dict[str, Any]:
    """Keep ledger details small: drop bulky keys (full host lists stay in XCom)."""
    return {k: v for k, v in detail.items() if k not in ("hosts", "pre_scrapes", "manifest")}


def record_failure(context: Context) -> None:
    """Task failure callback: record the failed stage and its error in the ledger (all tasks)."""
    task = context["task"]
    service_id = getattr(task, "service_id", None) or (context["params"] or {}).get("_service_id") \
        or task.dag_id.removeprefix("release_")
    release_id = release_id_for(service_id, context["dag_run"].run_id)
    error = context.get("exception")
    message = f"{type(error).__name__}: {error}" if error else "failed"
    stage = getattr(task, "stage", None) or task.task_id
    ledger_for_conn(getattr(task, "ledger_conn_id", "conveyor_ledger")).upsert_stage(
        release_id, stage, status="failed", finished_at=utcnow(), error=message[:4000]
    )
