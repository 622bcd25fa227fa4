"""File the root-cause ticket of a failed release, with the evidence from the ledger, the run and the hosts."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from conveyor.evidence import (
    describe_hosts,
    describe_rollback,
    gather_evidence,
    host_states,
    original_versions,
    rollback_outcome,
    ticket_id_for,
)
from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.hooks.fleet import FleetHook
    from conveyor.hosts import Host
    from conveyor.ledger import Ledger
    from conveyor.tickets import Ticket

# Reading what the hosts run when the rollback failed: per host, then for all of them (wall clock).
HOST_CONNECT_TIMEOUT_S = 10
HOST_COMMAND_TIMEOUT_S = 20
HOSTS_READ_TIMEOUT_S = 60


def ui_url(path: str) -> str:
    """A page of the Airflow API server (``[api] base_url``, else the local platform's)."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return f"{base}{path}"


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI."""
    return ui_url(f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}")


def chart_url(release_id: str, stage: str) -> str:
    """An analysis' chart of canary vs baseline, served by Conveyor's web app (behind the UI's login)."""
    from conveyor.analysis.evidence_view import chart_path

    return ui_url(chart_path(release_id, stage))


def read_versions(hosts: list[Host], fleet: FleetHook, *, max_parallel: int,
                  timeout_s: float = HOSTS_READ_TIMEOUT_S) -> tuple[dict[str, str | None], dict[str, str]]:
    """Each host's current version over SSH (one session each), all within ``timeout_s`` of wall clock:
    the versions read, and why the others could not be (a host that did not answer in time is one)."""
    versions: dict[str, str | None] = {}
    unreachable: dict[str, str] = {}
    lock, slots = threading.Lock(), threading.Semaphore(max(1, max_parallel))

    def one(host: Host) -> None:
        with slots:
            try:
                with fleet.session(host) as session:
                    version = session.current_version()
            except Exception as exc:  # an unreachable host is reported as such
                with lock:
                    unreachable[host.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            else:
                with lock:
                    versions[host.name] = version

    # Daemon threads: a host that hangs past the deadline cannot keep the task's process alive.
    threads = [threading.Thread(target=one, args=(h,), name=f"version-{h.name}", daemon=True) for h in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        versions, unreachable = dict(versions), dict(unreachable)
    for host in hosts:
        if host.name not in versions and host.name not in unreachable:
            unreachable[host.name] = f"no answer within {timeout_s:g}s"
    return versions, unreachable


class TicketOperator(ConveyorOperator):
    """Create (or update, on rerun) the release's root-cause ticket, deliver it to the service's ticket
    system, and record it in the ledger.

    The rollback's outcome comes from its XCom when it succeeded, else from the ledger (its stage and its
    rows). When the rollback did not put every host back, the ticket reads what each host runs now (over
    SSH, bounded), says that a person must act, and a ``rollback_failed`` alert goes out (notification log
    and Slack). With ``tickets.backend: jira | github`` the ticket is delivered through
    :func:`conveyor.tickets.deliver_pending` (deduplicated by failure signature; a system that is down
    leaves it pending locally, and this task retries every pending ticket, of any release). It records no
    stage of its own: the ticket is about the stages that failed.

    :param rollback_task_id: the rollback task (its XCom, or its ledger stage, is the rollback's outcome).
    :param plan_task_id: the wave plan's task (the production hosts, and what each ran before the release).
    """

    ui_color = "#fff3c4"

    def __init__(self, *, rollback_task_id: str, plan_task_id: str = "plan", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rollback_task_id = rollback_task_id
        self.plan_task_id = plan_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.hooks.tickets import tracker_for
        from conveyor.tickets import LocalTicketBackend, deliver_pending, render_ticket

        release_id = self.release_id(context)
        ti = context["ti"]
        problems: list[Exception] = []  # ledger errors: reported after the ticket is safe, never instead of it
        try:
            release = self.ledger.get_release(release_id) or {"release_id": release_id, "service": self.service_id}
        except Exception as exc:  # the ticket is still filed, with what the run knows
            self.log.error("Cannot read release %s from the ledger: %s: %s", release_id, type(exc).__name__, exc)
            problems.append(exc)
            release = {"release_id": release_id, "service": self.service_id,
                       "stages": [{"stage": "unknown", "status": "failed",
                                   "error": f"(the ledger could not be read: {type(exc).__name__}: {exc})"}]}
        rollback = rollback_outcome(release, ti.xcom_pull(task_ids=self.rollback_task_id),
                                    stage=self.rollback_task_id)
        states = self._hosts_now(release, ti.xcom_pull(task_ids=self.plan_task_id)) \
            if rollback["action_required"] else []
        evidence = gather_evidence(release, rollback, states)
        evidence["run_url"] = run_url(context["dag_run"].dag_id, context["dag_run"].run_id)
        if evidence.get("analysis_stage"):
            evidence["chart_url"] = chart_url(release_id, evidence["analysis_stage"])
        ticket = render_ticket(ticket_id_for(release_id), evidence)

        local = LocalTicketBackend()
        path = local.file(ticket, created_at=utcnow().isoformat(), target=self._target())
        self.log.info("Filed %s locally: %s (%s)", ticket.ticket_id, ticket.title, path)
        if evidence["action_required"]:
            self._alert(context, evidence, ticket)
        attempted = deliver_pending(local, tracker_for, now=utcnow(), log=self.log.warning) if local.pending() else []
        mine = local.get(ticket.ticket_id) or {}
        delivery = mine.get("delivery") or {}
        problems += self._record(ticket, release_id, path, delivery, attempted)

        if delivery.get("status") == "pending" and getattr(ti, "try_number", 1) <= (self.retries or 0):
            from conveyor.tickets import TicketDeliveryError

            raise TicketDeliveryError(f"{ticket.ticket_id} is kept locally, pending for {delivery.get('backend')}: "
                                      f"{delivery.get('error')}; the task's retry delivers it", unavailable=True)
        if problems:
            raise problems[0]
        return {"ticket_id": ticket.ticket_id, "path": str(path), "title": ticket.title,
                "rollback_status": rollback["status"], "action_required": evidence["action_required"],
                "host_versions": ticket.fields["host_versions"], "delivery": delivery.get("status"),
                "backend": delivery.get("backend"), "url": delivery.get("url"), "key": delivery.get("key")}

    def _target(self) -> dict[str, Any] | None:
        from conveyor.tickets import target_for

        try:
            return target_for(self.service.tickets)
        except Exception as exc:  # a broken service file: the ticket stays local (and says why the release failed)
            self.log.error("Cannot read the ticket settings of %s (%s); the ticket stays local", self.service_id, exc)
            return None

    def _hosts_now(self, release: dict[str, Any], plan: dict[str, Any] | None) -> list[dict[str, Any]]:
        """What every production host of the release runs now, read over SSH (bounded)."""
        from conveyor.hooks.fleet import FleetHook
        from conveyor.hosts import Host
        from conveyor.inventory import resolve_hosts

        try:
            service = self.service
            hosts = [Host.from_dict(h) for h in plan["hosts"]] if plan else resolve_hosts(service, "production")
        except Exception as exc:
            self.log.error("Cannot list the production hosts of %s: %s", self.service_id, exc)
            return []
        timeouts = service.deploy.timeouts  # the service's bounds, and never more than the ticket can wait
        fleet = FleetHook(service.deploy.ssh_conn_id, connect_s=min(timeouts.connect_s, HOST_CONNECT_TIMEOUT_S),
                          command_s=min(timeouts.command_s, HOST_COMMAND_TIMEOUT_S))
        versions, unreachable = read_versions(hosts, fleet, max_parallel=service.deploy.max_parallel)
        states = host_states(versions, unreachable, original_versions(release, plan), release.get("version"))
        self.log.warning("The rollback did not finish; hosts now: %s", describe_hosts(states))
        return states

    def _alert(self, context: Context, evidence: dict[str, Any], ticket: Ticket) -> None:
        from conveyor.notifiers import alert

        try:
            slack = self.service.notifications.slack_webhook_conn_id
        except Exception:  # the service file is broken: the alert still reaches the notification log
            slack = None
        states = evidence.get("host_states") or []
        text = (f"Release {evidence.get('version') or evidence.get('git_ref')} of {evidence.get('service')}: "
                f"ROLLBACK FAILED, {evidence['action_required']}. Rollback: "
                f"{describe_rollback(evidence['rollback'])}. Hosts now: {describe_hosts(states) or 'unknown'}. "
                f"Ticket {ticket.ticket_id}; run {evidence.get('run_url')}")
        alert(context, event="rollback_failed", text=text, slack_webhook_conn_id=slack)

    def _record(self, ticket: Ticket, release_id: str, path: Any, delivery: dict[str, Any],
                attempted: list[dict[str, Any]]) -> list[Exception]:
        """The ledger's ``tickets`` rows: this ticket, and every other one a delivery pass just tried."""
        problems: list[Exception] = []
        rows = {ticket.ticket_id: {"release_id": release_id, "service": self.service_id, "path": str(path),
                                   "title": ticket.title, "created_at": utcnow(),
                                   "signature": ticket.fields.get("signature"), **_delivery_fields(delivery)}}
        for record in attempted:
            rows.setdefault(record["ticket_id"], {
                "release_id": record.get("release_id"), "service": record.get("service"),
                "signature": record.get("signature"), **_delivery_fields(record.get("delivery") or {})})
        ledger: Ledger = self.ledger
        for ticket_id, fields in rows.items():
            try:
                ledger.upsert_ticket(ticket_id, **fields)
            except Exception as exc:  # the ticket itself is safe (local copy, and delivered or pending)
                self.log.error("Could not record ticket %s in the ledger: %s: %s", ticket_id, type(exc).__name__, exc)
                if ticket_id == ticket.ticket_id:
                    problems.append(exc)
        return problems


def _delivery_fields(delivery: dict[str, Any]) -> dict[str, Any]:
    return {"backend": delivery.get("backend"), "external_key": delivery.get("key"), "url": delivery.get("url"),
            "delivery": delivery.get("status"), "delivery_error": delivery.get("error")}
