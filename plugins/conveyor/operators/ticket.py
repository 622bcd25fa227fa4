"""File the root-cause ticket of a failed release, with the evidence from the ledger and the run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from conveyor.evidence import gather_evidence, ticket_id_for
from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (``[api] base_url``, else the local platform's)."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


class TicketOperator(ConveyorOperator):
    """Create (or update, on rerun) the release's root-cause ticket and record it in the ledger.

    It records no stage of its own: the ticket is about the stages that failed.

    :param rollback_task_id: the rollback task (its XCom is the rollback's outcome, for the ticket).
    """

    ui_color = "#fff3c4"

    def __init__(self, *, rollback_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rollback_task_id = rollback_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.tickets import LocalTicketBackend, render_ticket

        release_id = self.release_id(context)
        release = self.ledger.get_release(release_id) or {"release_id": release_id, "service": self.service_id}
        evidence = gather_evidence(release, context["ti"].xcom_pull(task_ids=self.rollback_task_id))
        evidence["run_url"] = run_url(context["dag_run"].dag_id, context["dag_run"].run_id)
        ticket = render_ticket(ticket_id_for(release_id), evidence)
        path = LocalTicketBackend().file(ticket, created_at=utcnow().isoformat())
        self.ledger.upsert_ticket(ticket.ticket_id, release_id=release_id, service=self.service_id, path=str(path),
                                  title=ticket.title, created_at=utcnow())
        self.log.info("Filed %s: %s (%s)", ticket.ticket_id, ticket.title, path)
        return {"ticket_id": ticket.ticket_id, "path": str(path), "title": ticket.title}
