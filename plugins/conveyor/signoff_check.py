"""The production gate's check: do the records show a complete QA sign-off and passing tests?

Task states prove nothing: anyone who may act on a DAG can set an approval or ``tests`` task to
*success* ("Mark success", ``PATCH .../taskInstances/...``) without it running. So right before a
production host changes, the gate reads what only a real answer or a real test run leaves behind:

* the ledger's release record (:meth:`conveyor.ledger.Ledger.get_release`): its ``approvals``
  (written only by ``QASignoffOperator.execute_complete``, which runs only when Airflow resumes the
  approval with a real Human-in-the-loop answer), its ``author`` and ``emergency`` (written by
  ``validate``), the ``tests`` stage and the test results;
* Airflow's own Human-in-the-loop records of the run (what ``GET .../hitlDetails`` returns), when
  they can be read: each counted approval must be an *Approve* answered by that very person.

:func:`check_signoff` says what is missing; pure (no Airflow), so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.evidence import responder_id
from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    from conveyor.config import ServiceConfig

#: The QA approval tasks of the release DAG (``qa_signoff.approval_1``, ``_2``, ...).
APPROVAL_TASK_PREFIX = "qa_signoff.approval_"
TESTS_STAGE = "tests"
APPROVE, REJECT = "Approve", "Reject"
_LISTED = 10  # failing tests named in a message


class SignoffMissing(ConveyorError):
    """The records do not show the sign-off (approvals, tests) that production needs."""


class SignoffUnverified(ConveyorError):
    """Airflow's Human-in-the-loop records could not be read, so the sign-off could not be verified."""


@dataclass(frozen=True)
class SignoffPolicy:
    """What a release needs: ``required`` approvals (``emergency_required`` for an emergency) by distinct
    people of ``group`` (empty: anyone), never the run's author."""

    required: int
    emergency_required: int
    group: tuple[str, ...] = ()

    @classmethod
    def of(cls, service: ServiceConfig) -> SignoffPolicy:
        return cls(required=service.qa.required_approvals, emergency_required=service.qa.emergency_approvals,
                   group=tuple(service.people(service.qa.group)))


@dataclass(frozen=True)
class SignoffCheck:
    """The gate's verdict. ``problems`` empty: the sign-off is complete."""

    needed: int
    emergency: bool
    counted: tuple[str, ...]  # approvers that count, in the ledger's order
    not_counted: tuple[str, ...]  # "who (why)" for approvals that do not
    problems: tuple[str, ...]
    cross_checked: bool  # Airflow's Human-in-the-loop records were read and compared
    answers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # approver -> the answers that match

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        return "sign-off missing: " + "; ".join(self.problems)

    def summary(self) -> dict[str, Any]:
        return {"approvals": list(self.counted), "needed": self.needed, "emergency": self.emergency,
                "not_counted": list(self.not_counted), "cross_checked": self.cross_checked,
                "answers": {who: list(where) for who, where in self.answers.items()}}


def hitl_answers(details: Sequence[Mapping[str, Any]], prefix: str = APPROVAL_TASK_PREFIX) -> tuple[
    dict[str, list[str]], list[str]
]:
    """Answers to the approval tasks in Airflow's Human-in-the-loop details: ``(approvals, rejections)``.

    ``approvals`` maps each user who answered exactly ``["Approve"]`` to where (``task`` or ``task (try
    N)``); ``rejections`` describes every ``Reject``. Details of other tasks, or not answered, are ignored.
    """
    approvals: dict[str, list[str]] = {}
    rejections: list[str] = []
    for detail in details:
        ti = detail.get("task_instance") or {}
        task = str(ti.get("task_id") or "")
        if not task.startswith(prefix) or not detail.get("response_received"):
            continue
        who = responder_id(detail.get("responded_by_user") or detail.get("responded_by"))
        where = f"{task} (try {ti['try_number']})" if ti.get("try_number") else task
        chosen = list(detail.get("chosen_options") or [])
        if chosen == [APPROVE] and who:
            approvals.setdefault(who, []).append(where)
        elif REJECT in chosen:
            rejections.append(f"{who or 'an unknown user'} rejected in Airflow's Required Actions ({where})")
    return approvals, rejections


def suite_problems(release: Mapping[str, Any], stage: str = TESTS_STAGE) -> list[str]:
    """What the ledger says against the tests: the stage did not succeed, or a test failed that is not
    pre-existing (a failure production's version has too does not block)."""
    problems = []
    row = next((s for s in release.get("stages") or [] if s.get("stage") == stage), None)
    if row is None:
        problems.append(f"tests: the '{stage}' stage has no record in the ledger (the suites did not run)")
    elif row.get("status") != "success":
        problems.append(f"tests: the '{stage}' stage is {row.get('status')!r}, not 'success'")
    failing = [f"{t.get('suite')}::{t.get('test')}" for t in release.get("tests") or []
               if t.get("outcome") == "failed" and not t.get("pre_existing")]
    if failing:
        more = f" and {len(failing) - _LISTED} more" if len(failing) > _LISTED else ""
        problems.append(f"tests: {len(failing)} failing test(s): {', '.join(failing[:_LISTED])}{more}")
    return problems


def check_signoff(release: Mapping[str, Any] | None, policy: SignoffPolicy,
                  hitl: Sequence[Mapping[str, Any]] | None = None, *, prefix: str = APPROVAL_TASK_PREFIX,
                  tests_stage: str = TESTS_STAGE) -> SignoffCheck:
    """What the records say about a release's sign-off (see the module docs).

    An approval counts when its decision is ``approved``, its approver is not the run's author, is in
    ``policy.group`` (when one is set), was not counted already, and (when ``hitl`` is given: Airflow's
    Human-in-the-loop details of the run) answered ``["Approve"]`` to an approval task in Airflow. Any
    rejection, in the ledger or in Airflow, is a problem even when enough approvals count: a rejected
    release is not released by the same run.

    :param release: the ledger's record (``Ledger.get_release``), or None when there is none.
    :param hitl: None when Airflow's records were not read (the ledger alone decides).
    """
    if not release:
        return SignoffCheck(needed=policy.required, emergency=False, counted=(), not_counted=(),
                            problems=("the ledger has no record of this release",), cross_checked=hitl is not None)
    author = release.get("author")
    emergency = bool(release.get("emergency"))
    needed = policy.emergency_required if emergency else policy.required
    answered, rejected_in_airflow = hitl_answers(hitl, prefix) if hitl is not None else ({}, [])
    counted: list[str] = []
    not_counted: list[str] = []
    rejections: list[str] = []
    for approval in release.get("approvals") or []:
        who = approval.get("approver")
        if approval.get("decision") != "approved":
            comment = approval.get("comment")
            rejections.append(f"{who} {approval.get('decision')} the release" + (f": {comment}" if comment else ""))
            continue
        why = None
        if who in counted:
            why = "counted once already"
        elif author and who == author:
            why = "the run's author"
        elif policy.group and who not in policy.group:
            why = "not in the QA group"
        elif hitl is not None and who not in answered:
            why = "no Approve answer by them in Airflow's Required Actions"
        if why:
            not_counted.append(f"{who} ({why})")
        else:
            counted.append(who)
    problems: list[str] = []
    if len(counted) < needed:
        kind = " (emergency)" if emergency else ""
        text = f"{len(counted)} of {needed} required approval(s){kind}; counted: {', '.join(counted) or 'none'}"
        if not_counted:
            text += f"; not counted: {', '.join(not_counted)}"
        problems.append(text)
    problems += rejections + rejected_in_airflow
    problems += suite_problems(release, tests_stage)
    return SignoffCheck(needed=needed, emergency=emergency, counted=tuple(counted), not_counted=tuple(not_counted),
                        problems=tuple(problems), cross_checked=hitl is not None,
                        answers={who: tuple(answered.get(who, ())) for who in counted} if hitl is not None else {})


__all__ = ["APPROVAL_TASK_PREFIX", "SignoffCheck", "SignoffMissing", "SignoffPolicy", "SignoffUnverified",
           "check_signoff", "hitl_answers", "suite_problems"]
