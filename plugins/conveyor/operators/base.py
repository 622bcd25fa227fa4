"""What every Conveyor operator shares: the service it releases, the release id, the ledger stage.

A release is identified by ``<service>/<run_id>`` (:func:`~conveyor.evidence.release_id_for`):
stable across retries and task reruns, so every ledger write keyed by it is an upsert and a rerun
never duplicates a record.

An operator records its stage in the ledger with one mechanism, a block::

    def execute(self, context):
        with self.ledger_stage(context) as stage:
            ...                          # the work
            stage.detail = summary       # what the stage row keeps (optional)
        return summary

The row goes ``running`` when the block starts and ``success`` (or ``stage.status``) when it ends;
a skip is recorded as ``skipped``; a deferral leaves it ``running`` until the task resumes (resume
with ``ledger_stage(context, resumed=True)``). Failures are recorded by the DAG's failure callback
(:func:`record_failure`), for stock operators too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator

from conveyor.evidence import release_id_for

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.config import ServiceConfig
    from conveyor.hooks.fleet import FleetHook, FleetSession
    from conveyor.hosts import Host
    from conveyor.ledger import Ledger

T = TypeVar("T")

DEFAULT_LEDGER_CONN_ID = "conveyor_ledger"
_BULKY = ("hosts", "pre_scrapes", "manifest")  # kept in XCom, not in the ledger's stage detail


def utcnow() -> datetime:
    return datetime.now(UTC)


def ledger_for(conn_id: str = DEFAULT_LEDGER_CONN_ID) -> Ledger:
    from conveyor.ledger.hook import LedgerHook

    return LedgerHook(ledger_conn_id=conn_id).ledger


@dataclass
class StageRecord:
    """What a stage's ledger row will say when its block ends."""

    status: str = "success"
    detail: dict[str, Any] | None = None


class ConveyorOperator(BaseOperator):
    """Base class: the service definition (loaded at run time), the release id and the ledger stage.

    :param service_id: the service's id (``include/services/<id>.yaml``).
    :param stage: the ledger stage name (defaults to the task id).
    :param ledger_conn_id: the release ledger's connection.
    """

    ui_color = "#e8f1fb"
    #: False for tasks that must act whatever the ledger does (the rollback): their stage writes are
    #: logged when the ledger is down, never a reason to stop.
    ledger_required = True

    def __init__(self, *, service_id: str, stage: str | None = None,
                 ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID, **kwargs: Any) -> None:
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
        return ledger_for(self.ledger_conn_id)

    @property
    def stage_name(self) -> str:
        return self.stage or self.task_id

    def release_id(self, context: Context) -> str:
        return release_id_for(self.service_id, context["dag_run"].run_id)

    def recorded_stage(self, context: Context) -> dict[str, Any] | None:
        """This stage's ledger row from an earlier try or run of the task, if any."""
        release = self.ledger.get_release(self.release_id(context)) or {}
        return next((s for s in release.get("stages", []) if s["stage"] == self.stage_name), None)

    @contextmanager
    def ledger_stage(self, context: Context, *, resumed: bool = False) -> Iterator[StageRecord]:
        """Record this task's stage around the block (see the module docs)."""
        from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

        release_id = self.release_id(context)
        write = self.ledger.upsert_stage if self.ledger_required else self._record_quietly_stage
        if not resumed:
            write(release_id, self.stage_name, status="running", started_at=utcnow(), finished_at=None, error=None)
        record = StageRecord()
        try:
            yield record
        except TaskDeferred:
            raise  # still running: the resumed task closes the stage
        except AirflowSkipException as skip:
            self._record_quietly(release_id, status="skipped", finished_at=utcnow(), error=str(skip))
            raise
        except BaseException:
            if record.detail is not None:  # the evidence; record_failure marks the stage failed
                self._record_quietly(release_id, status="running", detail=_summary(record.detail))
            raise
        write(release_id, self.stage_name, status=record.status, finished_at=utcnow(),
              detail=_summary(record.detail or {}))

    def _record_quietly_stage(self, release_id: str, stage: str, **fields: Any) -> None:
        self._record_quietly(release_id, **fields)


    def _record_quietly(self, release_id: str, **fields: Any) -> None:
        """A stage write on the way out of a failed or skipped block: a ledger that is down must never
        replace the task's own error (it is logged; record_failure tries again)."""
        try:
            self.ledger.upsert_stage(release_id, self.stage_name, **fields)
        except Exception:
            self.log.exception("could not record stage %s of %s in the ledger", self.stage_name, release_id)


def _summary(detail: dict[str, Any]) -> dict[str, Any]:
    """Keep ledger details small: drop bulky keys (full host lists stay in XCom)."""
    return {k: v for k, v in detail.items() if k not in _BULKY}


def record_failure(context: Context) -> None:
    """Task failure callback: record the failed stage and its error in the ledger (all tasks)."""
    task = context["task"]
    service_id = getattr(task, "service_id", None) or task.dag_id.removeprefix("release_")
    release_id = release_id_for(service_id, context["dag_run"].run_id)
    error = context.get("exception")
    message = f"{type(error).__name__}: {error}" if error else "failed"
    stage = getattr(task, "stage", None) or task.task_id
    ledger_for(getattr(task, "ledger_conn_id", DEFAULT_LEDGER_CONN_ID)).upsert_stage(
        release_id, stage, status="failed", finished_at=utcnow(), error=message[:4000]
    )


class FleetOperator(ConveyorOperator):
    """Base of the operators that act on a service's hosts: one SSH session per host, health checks."""

    @cached_property
    def fleet(self) -> FleetHook:
        """The fleet's SSH sessions, every remote step bounded by the service's ``deploy.timeouts``."""
        from conveyor.hooks.fleet import FleetHook

        deploy = self.service.deploy
        return FleetHook(deploy.ssh_conn_id, connect_s=deploy.timeouts.connect_s, command_s=deploy.timeouts.command_s,
                         upload_s=deploy.timeouts.upload_s, probe_timeout_s=deploy.health.probe_timeout_s)

    def on_each_host(self, hosts: Sequence[Host], step: Callable[[FleetSession], T]) -> tuple[
        dict[str, T], dict[str, Exception]
    ]:
        """``step`` on every host in its own SSH session, ``deploy.max_parallel`` at a time: results and errors."""
        from conveyor.parallel import for_each_host

        def one(host: Host) -> T:
            with self.fleet.session(host) as session:
                return step(session)

        return for_each_host(hosts, one, max_parallel=self.service.deploy.max_parallel)

    def verify_running(self, hosts: Sequence[Host], version: str, what: str, prefix: str = "") -> None:
        """Check that every host runs ``version``; :class:`DeployError` names the others and those that could not
        say (``"<prefix>not every <what> host runs <version>: ..."``)."""
        from conveyor.exceptions import DeployError

        running, errors = self.on_each_host(hosts, lambda s: s.current_version())
        wrong = {n: v for n, v in running.items() if v != version}
        if errors or wrong:
            raise DeployError(f"{prefix}not every {what} host runs {version}: "
                              + "; ".join([f"{n} runs {v}" for n, v in wrong.items()]
                                          + [f"{n}: {e}" for n, e in errors.items()]))

    def check_health(self, hosts: Sequence[Host], version: str | None) -> dict[str, Any]:
        """Wait for every host to answer healthy on ``version``; :class:`HealthCheckError` names the others."""
        from conveyor.exceptions import HealthCheckError
        from conveyor.health import wait_healthy
        from conveyor.parallel import for_each_host

        health = self.service.deploy.health
        results, errors = for_each_host(
            hosts, lambda h: wait_healthy(h, version, timeout_s=health.timeout_s, interval_s=health.interval_s,
                                          probe_timeout_s=health.probe_timeout_s),
            max_parallel=self.service.deploy.max_parallel,
        )
        if errors:
            raise HealthCheckError("; ".join(str(e) for e in errors.values()))
        return results
