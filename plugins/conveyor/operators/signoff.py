"""Sign-off on Airflow's human-in-the-loop: approval stages (QA, manager, client, ...) in order, each a
quorum of distinct members of its group, never the author.

Each stage (``approvals`` in the service file, or the single QA stage of ``qa``) is a task group
``<stage>_signoff`` of ``required`` approval tasks, answered in order on the stock **Required
Actions** page or through ``PATCH .../hitlDetails``. Each task is assigned, when it starts, to the
stage's group minus the run's author minus everyone who already approved in this stage and, unless
the stage sets ``distinct_from_earlier: false``, in an earlier stage of this release; so Airflow's
API itself answers 403 to anyone else: the author, a user outside the group, or a second approval by
the same person. One decision per person per stage and release is also the ledger's key. A stage
with ``when: major`` skips its tasks for a minor change; an emergency skips the approvals beyond the
stage's emergency count. Any rejection, in any stage, stops the release (the task fails; the release
is marked failed) and records its reason; no answer within the stage's timeout fails it with "no
sign-off within ...". The sign-off body of a later stage shows the earlier stages' decisions.

The form's one field, ``reason``, is required (the Required Actions page will not submit without
it). Airflow's REST API does not check form fields, so an answer may still arrive without one: a
rejection without a reason stops the release all the same and is recorded as such
(:data:`REASON_MISSING`); an approval without one counts, with no comment.

Task states are not evidence: "Mark success" on an approval runs nothing. Before any production
host changes, :func:`verify_production_signoff` (called by every production wave's deploy) checks
the ledger's approvals and test results, and Airflow's own Human-in-the-loop records of the run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from conveyor.durations import format_duration
from conveyor.evidence import release_id_for, responder_id
from conveyor.exceptions import ConveyorError, ReleaseFailed
from conveyor.operators.base import DEFAULT_LEDGER_CONN_ID, ledger_for, utcnow
from conveyor.signoff_check import QA_STAGE, stage_applies

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.operators.base import ConveyorOperator

#: The ledger's comment of a rejection that came without the form's required reason.
REASON_MISSING = "(reason missing: rejected without the required reason, e.g. through the REST API)"
MAX_REASON = 2000
#: The form shown on the Required Actions page: a required, non-empty reason.
REASON_FORM = Param(None, type="string", minLength=1, maxLength=MAX_REASON, pattern=r"\S", title="Reason",
                    description="Required: what you checked (Approve), or why the release must stop (Reject).")


class SignoffOperator(ApprovalOperator):
    """One approval of a release's sign-off stage.

    :param service_id: the service being released.
    :param group: user ids who may approve (empty: anyone allowed to act on the DAG, but never the author).
    :param ordinal: which approval this is (1-based), of ``required``.
    :param required: approvals the stage needs (a normal change; see ``emergency_required``).
    :param emergency_required: approvals an emergency change needs; approval tasks beyond it skip.
    :param timeout: how long to wait for an answer.
    :param evidence_tasks: the tasks whose results the body shows, by role: ``validate`` (the checked
        ref), ``build``, ``tests``, ``replica`` (the replica's deploy and health).
    :param releases_url: the release ledger's Releases page for this service (the changelog link).
    :param body: Markdown, or a template file (``*.md.j2``, on the DAG's ``template_searchpath``).
    :param approval_stage: the stage's name (``qa``, ``manager``, ...), recorded with each decision. (Not
        ``stage``: that is the ledger stage a failure is recorded under, the task id here.)
    :param title: how messages name the stage (``QA``, ``Manager``).
    :param when: ``always``, or ``major``: the stage's tasks skip unless the run's ``change`` is major.
    :param earlier_stages: the names of the stages before this one, in order.
    :param distinct_from_earlier: whether people who approved in an earlier stage are excluded here.
    :param earlier_tasks: the approval task ids of the earlier stages, by stage: their answers are
        shown in the body (``task.earlier_tasks`` in the template).
    """

    template_fields = ("subject", "body")
    template_ext = (".j2",)
    ui_color = "#e6f4ea"

    def __init__(self, *, service_id: str, group: list[str], ordinal: int, required: int,
                 emergency_required: int, timeout: timedelta, evidence_tasks: dict[str, str], releases_url: str,
                 approval_stage: str = QA_STAGE, title: str = "QA", when: str = "always", earlier_stages: list[str] | None = None,
                 distinct_from_earlier: bool = True, earlier_tasks: dict[str, list[str]] | None = None,
                 ledger_conn_id: str = DEFAULT_LEDGER_CONN_ID, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not the sign-off form
        super().__init__(
            fail_on_reject=True, response_timeout=timeout,
            # What the task itself validates when it starts (with the run's conf, whose emergency
            # ``reason`` overrides it): lenient. The form Airflow shows is REASON_FORM (required), see
            # serialized_params.
            params={"reason": Param(None, type=["string", "null"], maxLength=MAX_REASON, title="Reason")},
            **kwargs,
        )
        self.service_id = service_id
        self.group = list(group)
        self.ordinal = ordinal
        self.required = required
        self.emergency_required = emergency_required
        self.timeout = timeout
        self.evidence_tasks = dict(evidence_tasks)
        self.releases_url = releases_url
        self.approval_stage = approval_stage
        self.title = title
        self.when = when
        self.earlier_stages = list(earlier_stages or [])
        self.distinct_from_earlier = distinct_from_earlier
        self.earlier_tasks = {name: list(tasks) for name, tasks in (earlier_tasks or {}).items()}
        self.ledger_conn_id = ledger_conn_id

    @property
    def serialized_params(self) -> dict[str, dict[str, Any]]:
        """The Required Action's form: ``reason``, required and non-empty, so the UI refuses to submit
        without it. (A required Param on ``self.params`` would fail the task when it starts: the task
        runner validates every param before ``execute``, and the form has no value then.)"""
        return {"reason": REASON_FORM.serialize()}

    # -- helpers ---------------------------------------------------------------------------------------
    def _release_id(self, context: Context) -> str:
        return release_id_for(self.service_id, context["dag_run"].run_id)

    def _approvers(self, context: Context) -> tuple[list[str], list[str]]:
        """Who approved in this stage, and who in the earlier stages (excluded here unless the stage allows)."""
        release = ledger_for(self.ledger_conn_id).get_release(self._release_id(context)) or {}
        approved = [a for a in release.get("approvals", []) if a["decision"] == "approved"]
        here = [a["approver"] for a in approved if (a.get("stage") or QA_STAGE) == self.approval_stage]
        before = [a["approver"] for a in approved if (a.get("stage") or QA_STAGE) in self.earlier_stages]
        return here, list(dict.fromkeys(before))

    def _excluded(self, here: list[str], before: list[str]) -> list[str]:
        return list(dict.fromkeys(here + (before if self.distinct_from_earlier else [])))

    def eligible(self, author: str | None, approved: list[str]) -> list[str]:
        """The group minus the author minus ``approved`` (people who may not count again here)."""
        return [u for u in dict.fromkeys(self.group) if u != author and u not in approved]

    # -- execution -------------------------------------------------------------------------------------
    def execute(self, context: Context):
        from airflow.sdk.exceptions import AirflowSkipException

        dag_run = context["dag_run"]
        params = context["params"] or {}
        if not stage_applies(self.when, params.get("change")):
            raise AirflowSkipException(f"the {self.approval_stage} stage applies to {self.when} changes only; this is a "
                                       f"{params.get('change')} change")
        emergency = bool(params.get("emergency"))
        needed = self.emergency_required if emergency else self.required
        if self.ordinal > needed:
            raise AirflowSkipException(f"an emergency change needs {needed} {self.approval_stage} approval(s); this is "
                                       f"approval {self.ordinal}")
        author = getattr(dag_run, "triggering_user_name", None)
        here, before = self._approvers(context)
        if len(here) >= needed:  # a rerun after the quorum was reached
            self.log.info("Already approved by %s", ", ".join(here))
            return {"chosen_options": [self.APPROVE], "responded_by_user": None, "already": here}
        if self.group:
            excluded = self._excluded(here, before)
            eligible = self.eligible(author, excluded)
            if not eligible:
                raise ReleaseFailed(
                    f"no {self.title} member left to give approval {self.ordinal} of {needed}: group {self.group}, "
                    f"author {author!r} excluded, already approved: {excluded or 'nobody'}"
                )
            self.assigned_users = [{"id": u, "name": u} for u in eligible]
            self.log.info("%s approval %d of %d: waiting for one of %s (author %s excluded; approved so far: %s)",
                          self.title, self.ordinal, needed, ", ".join(eligible), author or "none",
                          ", ".join(excluded) or "none")
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:
            if event.get("error_type") == "timeout":
                stage = "" if self.approval_stage == QA_STAGE else f"{self.approval_stage} "
                raise ReleaseFailed(f"no sign-off within {format_duration(self.timeout)}: {stage}approval {self.ordinal} "
                                    "was never given")
            raise ConveyorError(f"sign-off failed: {event.get('error')}")
        # Validate the answer (option, form fields) before recording anything: a malformed answer
        # fails the task without leaving a decision in the ledger. A blank or missing reason is not
        # malformed but missing (the API does not enforce the form): handled below, explicitly.
        self.validate_chosen_options(event.get("chosen_options") or [])
        params_input = dict(event.get("params_input") or {})
        raw = params_input.get("reason")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            params_input.pop("reason", None)
        self.validate_params_input(params_input)
        event = {**event, "params_input": params_input}
        chosen = (event.get("chosen_options") or [None])[0]
        who = responder_id(event.get("responded_by_user")) or "unknown"
        reason = (params_input.get("reason") or "").strip() or None
        ledger = ledger_for(self.ledger_conn_id)
        release_id = self._release_id(context)
        author = getattr(context["dag_run"], "triggering_user_name", None)
        if chosen == self.APPROVE:
            # Only reachable when the API's assignment check did not apply: an empty QA group (no
            # assignees, so Airflow lets anyone with DAG access answer) or an answer written around
            # the API. The approval does not count and the release stops, saying why.
            if who == author or (self.group and who not in self.group):
                raise ReleaseFailed(f"approval by {who} does not count: the author and users outside the "
                                    f"{self.title} group cannot approve")
            if who in self._excluded(*self._approvers(context)):
                raise ReleaseFailed(f"approval {self.ordinal} by {who} does not count: {who} already approved "
                                    "this release (each person counts once)")
        decision = "approved" if chosen == self.APPROVE else "rejected"
        ledger.upsert_approval(release_id, who, stage=self.approval_stage, decision=decision, comment=reason or (
            REASON_MISSING if decision == "rejected" else None), at=_as_datetime(event.get("responded_at")) or utcnow())
        if decision == "rejected":
            if not reason:
                raise ReleaseFailed(f"{self.title} sign-off rejected by {who} without the required reason (the "
                                    "answer came without one, e.g. through the REST API); the release stops all the "
                                    "same")
            raise ReleaseFailed(f"{self.title} sign-off rejected by {who}: {reason}")
        if reason:
            self.log.info("%s approval %d given by %s: %s", self.title, self.ordinal, who, reason)
        else:
            self.log.warning("%s approval %d given by %s without a comment (the answer came without the form's "
                             "reason, e.g. through the REST API); it counts", self.title, self.ordinal, who)
        return super().execute_complete(context=context, event=event)


#: The name this operator had while QA was the only stage.
QASignoffOperator = SignoffOperator


def verify_production_signoff(task: ConveyorOperator, context: Context) -> dict[str, Any]:
    """The production gate: before a production host changes, the records must show the sign-off.

    Reads the ledger's release record and, through the ``conveyor_airflow_api`` connection
    (:class:`~conveyor.hooks.airflow_api.AirflowApiHook`), Airflow's Human-in-the-loop records of
    the run, and checks them with :func:`conveyor.signoff_check.check_signoff`: in every approval
    stage that applies to the release (``when: major`` only for a major change), every required
    approval (the stage's ``required``, or its emergency count when ``validate`` recorded an
    emergency) given by a distinct member of the stage's group who is not the author, each an
    *Approve* in Airflow's own records of that stage's tasks, and the tests passed. Raises
    :class:`~conveyor.signoff_check.SignoffMissing` (``sign-off missing: ...``) otherwise, and
    :class:`~conveyor.signoff_check.SignoffUnverified` (``could not verify sign-off: ...``) when the
    connection is defined but Airflow's records cannot be read: the gate never passes unverified.
    Without the connection the ledger alone decides, and the log says so.
    """
    from conveyor.signoff_check import SignoffPolicy

    dag_run = context["dag_run"]
    release = task.ledger.get_release(task.release_id(context))
    return verify_signoff(task, release, SignoffPolicy.of(task.service), dag_run.dag_id, dag_run.run_id)


def verify_signoff(task: ConveyorOperator, release: dict[str, Any] | None, policies: Any, dag_id: str, run_id: str,
                   *, tests_stage: str | None = "tests") -> dict[str, Any]:
    """Check ``release``'s sign-off (``policies``, the run ``dag_id``/``run_id`` whose Required Actions
    gave it) in the ledger and in Airflow's records; see :func:`verify_production_signoff`. A promotion
    checks the soaked release's sign-off with it, and its own promotion approval."""
    from conveyor.hooks.airflow_api import AirflowApiHook
    from conveyor.signoff_check import SignoffMissing, SignoffUnverified, check_signoff

    hook = AirflowApiHook()
    hitl = None
    if not hook.defined():
        task.log.warning("Connection %s is not defined: the sign-off is checked against the release ledger "
                         "only, not cross-checked with Airflow's Required Actions", hook.airflow_api_conn_id)
    else:
        try:
            hitl = hook.approval_answers(dag_id, run_id, tuple(p.prefix for p in policies))
        except Exception as e:  # whatever stops the read, the gate must not pass
            raise SignoffUnverified(f"could not verify sign-off: reading Airflow's Required Actions through "
                                    f"connection {hook.airflow_api_conn_id} failed: {e}") from None
    check = check_signoff(release, policies, hitl, tests_stage=tests_stage)
    if not check.ok:
        raise SignoffMissing(check.message)
    task.log.info("Sign-off verified: %d of %d approval(s) by %s%s%s", len(check.counted), check.needed,
                  ", ".join(check.counted), " (emergency)" if check.emergency else "",
                  "; tests passed" if tests_stage else "")
    task.log.info("Stages: %s%s", "; ".join(f"{name}: {', '.join(who) or 'none needed'}"
                                             for name, who in check.stages.items()),
                  f"; not required for this change: {', '.join(check.not_required)}" if check.not_required else "")
    if check.cross_checked:
        task.log.info("Cross-checked with Airflow's Required Actions: %s",
                      "; ".join(f"{who} approved {', '.join(where)}" for who, where in check.answers.items()))
    return check.summary()


def _as_datetime(value: Any) -> datetime | None:
    """The answer's ``responded_at`` (a datetime, or an ISO string after serialization), timezone-aware."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
