"""QA sign-off on Airflow's human-in-the-loop: a quorum of distinct QA members, never the author.

The sign-off is a task group of ``required_approvals`` approval tasks, answered in order on the
stock **Required Actions** page or through ``PATCH .../hitlDetails``. Each task is assigned, when
it starts, to the QA group minus the run's author minus everyone who already approved this
release, so Airflow's API itself answers 403 to anyone else: the author, a user outside the group,
or a second approval by the same person. One approval per person per release is also the ledger's
key. Any rejection stops the release (the task fails; the release is marked failed) and records
its reason; no answer within the timeout fails it with "no sign-off within ...".

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
from conveyor.signoff_check import APPROVAL_TASK_PREFIX

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.operators.base import ConveyorOperator

#: The ledger's comment of a rejection that came without the form's required reason.
REASON_MISSING = "(reason missing: rejected without the required reason, e.g. through the REST API)"
MAX_REASON = 2000
#: The form shown on the Required Actions page: a required, non-empty reason.
REASON_FORM = Param(None, type="string", minLength=1, maxLength=MAX_REASON, pattern=r"\S", title="Reason",
                    description="Required: what you checked (Approve), or why the release must stop (Reject).")


class QASignoffOperator(ApprovalOperator):
    """One approval of a release's QA sign-off.

    :param service_id: the service being released.
    :param group: user ids who may approve (empty: anyone allowed to act on the DAG, but never the author).
    :param ordinal: which approval this is (1-based), of ``required``.
    :param required: approvals the release needs (a normal change; see ``emergency_required``).
    :param emergency_required: approvals an emergency change needs; approval tasks beyond it skip.
    :param timeout: how long to wait for an answer.
    :param evidence_tasks: the tasks whose results the body shows, by role: ``validate`` (the checked
        ref), ``build``, ``tests``, ``replica`` (the replica's deploy and health).
    :param releases_url: the release ledger's Releases page for this service (the changelog link).
    :param body: Markdown, or a template file (``*.md.j2``, on the DAG's ``template_searchpath``).
    """

    template_fields = ("subject", "body")
    template_ext = (".j2",)
    ui_color = "#e6f4ea"

    def __init__(self, *, service_id: str, group: list[str], ordinal: int, required: int,
                 emergency_required: int, timeout: timedelta, evidence_tasks: dict[str, str], releases_url: str,
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

    def _approvers(self, context: Context) -> list[str]:
        release = ledger_for(self.ledger_conn_id).get_release(self._release_id(context)) or {}
        return [a["approver"] for a in release.get("approvals", []) if a["decision"] == "approved"]

    def eligible(self, author: str | None, approved: list[str]) -> list[str]:
        return [u for u in dict.fromkeys(self.group) if u != author and u not in approved]

    # -- execution -------------------------------------------------------------------------------------
    def execute(self, context: Context):
        from airflow.sdk.exceptions import AirflowSkipException

        dag_run = context["dag_run"]
        emergency = bool((context["params"] or {}).get("emergency"))
        needed = self.emergency_required if emergency else self.required
        if self.ordinal > needed:
            raise AirflowSkipException(f"an emergency change needs {needed} approval(s); this is approval "
                                       f"{self.ordinal}")
        author = getattr(dag_run, "triggering_user_name", None)
        approved = self._approvers(context)
        if len(approved) >= needed:  # a rerun after the quorum was reached
            self.log.info("Already approved by %s", ", ".join(approved))
            return {"chosen_options": [self.APPROVE], "responded_by_user": None, "already": approved}
        if self.group:
            eligible = self.eligible(author, approved)
            if not eligible:
                raise ReleaseFailed(
                    f"no QA member left to give approval {self.ordinal} of {needed}: group {self.group}, "
                    f"author {author!r} excluded, already approved: {approved or 'nobody'}"
                )
            self.assigned_users = [{"id": u, "name": u} for u in eligible]
            self.log.info("Approval %d of %d: waiting for one of %s (author %s excluded; approved so far: %s)",
                          self.ordinal, needed, ", ".join(eligible), author or "none", ", ".join(approved) or "none")
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:
            if event.get("error_type") == "timeout":
                raise ReleaseFailed(f"no sign-off within {format_duration(self.timeout)}: approval {self.ordinal} was never "
                                    "given")
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
                raise ReleaseFailed(f"approval by {who} does not count: the author and users outside the QA "
                                    "group cannot approve")
            if who in self._approvers(context):
                raise ReleaseFailed(f"approval {self.ordinal} by {who} does not count: {who} already approved "
                                    "this release (each person counts once)")
        decision = "approved" if chosen == self.APPROVE else "rejected"
        ledger.upsert_approval(release_id, who, decision=decision, comment=reason or (
            REASON_MISSING if decision == "rejected" else None), at=_as_datetime(event.get("responded_at")) or utcnow())
        if decision == "rejected":
            if not reason:
                raise ReleaseFailed(f"QA sign-off rejected by {who} without the required reason (the answer "
                                    "came without one, e.g. through the REST API); the release stops all the same")
            raise ReleaseFailed(f"QA sign-off rejected by {who}: {reason}")
        if reason:
            self.log.info("Approval %d given by %s: %s", self.ordinal, who, reason)
        else:
            self.log.warning("Approval %d given by %s without a comment (the answer came without the form's "
                             "reason, e.g. through the REST API); it counts", self.ordinal, who)
        return super().execute_complete(context=context, event=event)


def verify_production_signoff(task: ConveyorOperator, context: Context) -> dict[str, Any]:
    """The production gate: before a production host changes, the records must show the sign-off.

    Reads the ledger's release record and, through the ``conveyor_airflow_api`` connection
    (:class:`~conveyor.hooks.airflow_api.AirflowApiHook`), Airflow's Human-in-the-loop records of
    the run, and checks them with :func:`conveyor.signoff_check.check_signoff`: every required
    approval (``qa.required_approvals``, or ``qa.emergency_required_approvals`` when ``validate``
    recorded an emergency) given by a distinct QA member who is not the author, each an *Approve* in
    Airflow's own records, and the tests passed. Raises
    :class:`~conveyor.signoff_check.SignoffMissing` (``sign-off missing: ...``) otherwise, and
    :class:`~conveyor.signoff_check.SignoffUnverified` (``could not verify sign-off: ...``) when the
    connection is defined but Airflow's records cannot be read: the gate never passes unverified.
    Without the connection the ledger alone decides, and the log says so.
    """
    from conveyor.hooks.airflow_api import AirflowApiHook
    from conveyor.signoff_check import SignoffMissing, SignoffPolicy, SignoffUnverified, check_signoff

    dag_run = context["dag_run"]
    release = task.ledger.get_release(task.release_id(context))
    hook = AirflowApiHook()
    hitl = None
    if not hook.defined():
        task.log.warning("Connection %s is not defined: the sign-off is checked against the release ledger "
                         "only, not cross-checked with Airflow's Required Actions", hook.airflow_api_conn_id)
    else:
        try:
            hitl = hook.approval_answers(dag_run.dag_id, dag_run.run_id, APPROVAL_TASK_PREFIX)
        except Exception as e:  # whatever stops the read, the gate must not pass
            raise SignoffUnverified(f"could not verify sign-off: reading Airflow's Required Actions through "
                                    f"connection {hook.airflow_api_conn_id} failed: {e}") from None
    check = check_signoff(release, SignoffPolicy.of(task.service), hitl)
    if not check.ok:
        raise SignoffMissing(check.message)
    task.log.info("Sign-off verified: %d of %d approval(s) by %s%s; tests passed", len(check.counted), check.needed,
                  ", ".join(check.counted), " (emergency)" if check.emergency else "")
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
