"""File the root-cause ticket of a failed release, with the evidence from the ledger and the run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from conveyor.operators.base import ConveyorOperator, ticket_id_for, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context


def run_url(dag_id: str, run_id: str) -> str:
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def failed_stages(release: dict[str, Any]) -> list[dict[str, Any]]:
    """The release's failed stages from the ledger record, first failure first."""
    failed = [s for s in release.get("stages", []) if s.get("status") == "failed"]
    return sorted(failed, key=lambda s: str(s.get("finished_at") or ""))


def gather_evidence(release: dict[str, Any], rollback: dict[str, Any] | None) -> dict[str, Any]:
    """Turn a ledger release record (with its stages, hosts, tests...) into ticket evidence."""
    stages = release.get("stages", [])
    failed = failed_stages(release)
    first = failed[0] if failed else None
    analysis = None
    for s in failed + stages:
        detail = s.get("detail") or {}
        if isinstance(detail, dict) and detail.get("decision") in ("fail", "inconclusive"):
            analysis = detail
            break
    tests = release.get("tests", [])
    commits = (release.get("commit_range") or {}).get("commits", [])
    return {
        **{k: release.get(k) for k in ("release_id", "service", "version", "git_ref", "change_kind", "emergency",
                                       "reason", "author")},
        "commit": release.get("commit_sha"),
        "failed_stage": first["stage"] if first else None,
        "error": first.get("error") if first else None,
        "failing_tests": [f"{t['suite']}::{t['test']}" for t in tests
                          if t.get("outcome") == "failed" and not t.get("pre_existing")],
        "pre_existing_tests": [f"{t['suite']}::{t['test']}" for t in tests if t.get("pre_existing")],
        "analysis": analysis,
        "commits": commits,
        "hosts_touched": [h for h in release.get("hosts", [])
                          if h.get("environment") == "production" and h.get("status") in ("deployed", "failed")],
        "rollback": rollback or {},
        "approvals": release.get("approvals", []),
    }


class TicketOperator(ConveyorOperator):
    """Create (or update, on rerun) the release's root-cause ticket and record it in the ledger."""

    ui_color = "#fff3c4"

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.tickets import LocalTicketBackend, render_ticket

        release_id = self.release_id(context)
        release = self.ledger.get_release(release_id) or {"release_id": release_id, "service": self.service_id}
        rollback = context["ti"].xcom_pull(task_ids="rollback")
        evidence = gather_evidence(release, rollback)
        evidence["run_url"] = run_url(context["dag_run"].dag_id, context["dag_run"].run_id)
        ticket = render_ticket(ticket_id_for(release_id), evidence)
        path = LocalTicketBackend().file(ticket, created_at=utcnow().isoformat())
        self.ledger.upsert_ticket(ticket.ticket_id, release_id=release_id, service=self.service_id, path=str(path),
                                  title=ticket.title, created_at=utcnow())
        self.log.info("Filed %s: %s (%s)", ticket.ticket_id, ticket.title, path)
        return {"ticket_id": ticket.ticket_id, "path": str(path), "title": ticket.title}
