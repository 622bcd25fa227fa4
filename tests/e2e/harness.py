"""Drive whole release runs with ``dag.test()`` against the local fleet, answering every sign-off stage.

Sign-off answers are written the way Airflow's API server writes them
(``airflow/api_fastapi/core_api/routes/public/hitl.py``): the response fields on the HITL detail,
then ``handle_event_submit`` to resume the parked task. The REST path itself is exercised by the
tests that run a real API server.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Answer a Required Action only once it has waited this long: an answer racing the task's own park
# transition is lost in Airflow 3.3.2 (the task stays awaiting input), see docs/signoff.md.
SETTLE_S = 3.0


@dataclass
class Decision:
    user: str
    option: str  # "Approve" | "Reject"
    params: dict = field(default_factory=dict)


def later_stages(manager: str = "Approve", client: str = "Approve") -> dict[str, list[Decision]]:
    """The demo's answers to its approval stages after QA, by task group: the manager's (asked of major
    changes only) by ``mgr1``, the client's by ``client1``."""
    return {"manager_signoff.": [Decision("mgr1", manager, {"reason": "checked by the manager"})],
            "client_signoff.": [Decision("client1", client, {"reason": "accepted by the client"})]}


class HitlResponder(threading.Thread):
    """Answers the next awaiting Required Action of ``dag_id``: a task of a group in ``stages`` with that
    group's next decision (by default :func:`later_stages`: the demo's manager and client approve), any
    other (QA's approvals, "continue or roll back?") with each of ``decisions`` in turn."""

    def __init__(self, dag_id: str, decisions: list[Decision], timeout: float = 600,
                 stages: dict[str, list[Decision]] | None = None):
        super().__init__(daemon=True)
        self.dag_id = dag_id
        self.decisions = list(decisions)
        self.stages = later_stages() if stages is None else {g: list(d) for g, d in stages.items()}
        self.answered: list[tuple[str, str, str]] = []
        self.deadline = time.monotonic() + timeout
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.models.trigger import handle_event_submit
        from airflow.sdk.execution_time.hitl import HITLUser
        from airflow.triggers.base import TriggerEvent
        from airflow.utils import timezone
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select
        from sqlalchemy.orm import joinedload

        first_seen: dict[str, float] = {}
        while not self._stop_event.is_set() and time.monotonic() < self.deadline:
            with create_session() as session:
                ti = session.scalars(
                    select(TI).where(TI.dag_id == self.dag_id, TI.state == TaskInstanceState.AWAITING_INPUT)
                    .options(joinedload(TI.hitl_detail))
                ).first()
                if ti is not None and ti.hitl_detail is not None:
                    seen = first_seen.setdefault(str(ti.id), time.monotonic())
                    age = time.monotonic() - seen
                    detail: HITLDetail = session.scalars(select(HITLDetail).where(HITLDetail.ti_id == ti.id)).one()
                    if detail.response_received and age > SETTLE_S * 2:
                        # Answered, but the task is still parked: the answer raced the task's own park
                        # transition (Airflow 3.3.2). Resume it again, as the API would have.
                        handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                            session=session)
                        first_seen[str(ti.id)] = time.monotonic()
                        session.commit()
                        continue
                    queue = next((d for group, d in self.stages.items() if ti.task_id.startswith(group)),
                                 self.decisions)
                    if not detail.response_received and queue and age >= SETTLE_S:
                        decision = queue.pop(0)
                        detail.responded_by = HITLUser(id=decision.user, name=decision.user)
                        detail.responded_at = timezone.utcnow()
                        detail.chosen_options = [decision.option]
                        detail.params_input = decision.params
                        session.add(detail)
                        handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                            session=session)
                        self.answered.append((ti.task_id, decision.user, decision.option))
                        session.commit()
                        continue
            time.sleep(0.5)


def load_dag(dag_id: str = "release_demo_shop"):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[dag_id]


@dataclass
class RunResult:
    dag_run: object
    states: dict[str, str]
    answered: list


def run_release(conf: dict, decisions: list[Decision] | None = None, dag_id: str = "release_demo_shop",
                stages: dict[str, list[Decision]] | None = None) -> RunResult:
    """Run one release to its end; QA decisions default to approvals by qa1 and qa2, the later stages'
    to :func:`later_stages` (mgr1 and client1 approve)."""
    from airflow.utils.session import create_session

    dag = load_dag(dag_id)
    responder = HitlResponder(dag.dag_id, decisions if decisions is not None else [Decision("qa1", "Approve"), Decision("qa2", "Approve")],
                              stages=stages)
    responder.start()
    try:
        dr = dag.test(run_conf=conf)
    finally:
        responder.stop()
        responder.join(timeout=5)
    with create_session() as session:
        from airflow.models.taskinstance import TaskInstance as TI

        tis = session.query(TI).filter(TI.dag_id == dag.dag_id, TI.run_id == dr.run_id).all()
        states = {ti.task_id: (ti.state.value if hasattr(ti.state, "value") else ti.state) for ti in tis}
    return RunResult(dag_run=dr, states=states, answered=responder.answered)


# ------------------------------------------------------------------------------------ fleet state
def fleet_hosts(environment: str | None = None):
    from conveyor.config import load_service
    from conveyor.inventory import resolve_hosts

    service = load_service("demo_shop")
    envs = [environment] if environment else ["replica", "production"] + (["soak"] if service.soak else [])
    return [h for env in envs for h in resolve_hosts(service, env)]


def fleet_state(environment: str | None = None) -> dict[str, dict]:
    """Per host: the version ``current`` points to (over SSH), the app's pid, and what /health says."""
    from conveyor.health import probe_health
    from conveyor.hooks.fleet import FleetHook
    from conveyor.paths import fleet_dir

    hook = FleetHook("conveyor_fleet")
    state = {}
    for host in fleet_hosts(environment):
        pid_file = fleet_dir() / "hosts" / host.name / "run" / "app.pid"
        with hook.session(host) as session:
            current = session.current_version()
        state[host.name] = {
            "current": current,
            "pid": pid_file.read_text().strip() if pid_file.exists() else None,
            "health": probe_health(host),
        }
    return state


def versions(environment: str | None = None) -> dict[str, str | None]:
    return {name: s["health"]["version"] for name, s in fleet_state(environment).items()}


def put_fleet_on(version: str) -> None:
    """Bring every host to ``version`` over SSH (the same primitives a release uses), healthy."""
    from conveyor.artifacts import build_artifact
    from conveyor.config import load_service
    from conveyor.health import wait_healthy
    from conveyor.hooks.fleet import FleetHook
    from conveyor.parallel import for_each_host

    service = load_service("demo_shop")
    info = build_artifact(service, version)
    hook = FleetHook("conveyor_fleet")

    def one(host):
        with hook.session(host) as session:
            session.deploy(info, info.tarball)
        return wait_healthy(host, version, timeout_s=20, interval_s=0.3)

    _, errors = for_each_host(fleet_hosts(), one, max_parallel=8)
    assert not errors, errors


def ticket_for(run_id: str) -> dict | None:
    from conveyor.evidence import release_id_for, ticket_id_for
    from conveyor.tickets import LocalTicketBackend

    return LocalTicketBackend().get(ticket_id_for(release_id_for("demo_shop", run_id)))


def release_record(run_id: str) -> dict | None:
    from conveyor.evidence import release_id_for
    from conveyor.ledger.hook import LedgerHook

    return LedgerHook().ledger.get_release(release_id_for("demo_shop", run_id))
