"""The production gate's check: do the records show every approval stage's sign-off and passing tests?

Task states prove nothing: anyone who may act on a DAG can set an approval or ``tests`` task to
*success* ("Mark success", ``PATCH .../taskInstances/...``) without it running. So right before a
production host changes, the gate reads what only a real answer or a real test run leaves behind:

* the ledger's release record (:meth:`conveyor.ledger.Ledger.get_release`): its ``approvals``, each
  with its stage (written only by ``SignoffOperator.execute_complete``, which runs only when Airflow
  resumes the approval with a real Human-in-the-loop answer), its ``author``, ``emergency`` and
  ``change_kind`` (written by ``validate``), the ``tests`` stage and the test results;
* Airflow's own Human-in-the-loop records of the run (what ``GET .../hitlDetails`` returns), when
  they can be read: each counted approval must be an *Approve* answered by that very person in that
  stage's task group (``<stage>_signoff.approval_<k>``).

Every approval stage of the service (``approvals``, or the one QA stage of ``qa``) that applies to the
release is checked in order; a ``when: major`` stage does not apply to a minor change and is not
required. A person counts once per release across the stages, unless a stage sets
``distinct_from_earlier: false`` (then once within it). Problems name the stage (``client: 0 of 1
required approval(s) ...``), except the QA stage's, which keep their historic wording.

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
QA_STAGE = "qa"


def stage_applies(when: str, change: str | None) -> bool:
    """Whether a stage asked ``when`` (``always`` | ``major``) applies to a release of ``change``."""
    return when == "always" or change == when


def stage_task_prefix(stage: str) -> str:
    """The approval tasks of a stage: ``<stage>_signoff.approval_<k>``."""
    return f"{stage}_signoff.approval_"

TESTS_STAGE = "tests"
APPROVE, REJECT = "Approve", "Reject"
_LISTED = 10  # failing tests named in a message


class SignoffMissing(ConveyorError):
    """The records do not show the sign-off (approvals, tests) that production needs."""


class SignoffUnverified(ConveyorError):
    """Airflow's Human-in-the-loop records could not be read, so the sign-off could not be verified."""


@dataclass(frozen=True)
class SignoffPolicy:
    """What one approval stage needs: ``required`` approvals (``emergency_required`` for an emergency) by
    distinct people of ``group`` (empty: anyone), never the run's author; only for a ``major`` change
    when ``when`` says so; people counted in an earlier stage do not count again unless
    ``distinct_from_earlier`` is false."""

    required: int
    emergency_required: int
    group: tuple[str, ...] = ()
    name: str = QA_STAGE
    when: str = "always"
    distinct_from_earlier: bool = True

    @classmethod
    def of(cls, service: ServiceConfig) -> tuple[SignoffPolicy, ...]:
        """Every approval stage of ``service``, in order."""
        return tuple(cls(required=s.required, emergency_required=s.emergency_approvals,
                         group=tuple(service.people(s.group)), name=s.name, when=s.when,
                         distinct_from_earlier=s.distinct_from_earlier) for s in service.stages)

    @property
    def prefix(self) -> str:
        return stage_task_prefix(self.name)

    def applies(self, change: str | None) -> bool:
        return stage_applies(self.when, change)

    def label(self, text: str) -> str:
        """``text`` about this stage, named (the QA stage's keep their historic wording)."""
        return text if self.name == QA_STAGE else f"{self.name}: {text}"


@dataclass(frozen=True)
class SignoffCheck:
    """The gate's verdict. ``problems`` empty: the sign-off is complete."""

    needed: int  # approvals needed, over every stage that applies
    emergency: bool
    counted: tuple[str, ...]  # approvers that count, stage by stage, in the ledger's order
    not_counted: tuple[str, ...]  # "who (why)" for approvals that do not
    problems: tuple[str, ...]
    cross_checked: bool  # Airflow's Human-in-the-loop records were read and compared
    answers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # approver -> the answers that match
    stages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> who counted there
    not_required: tuple[str, ...] = ()  # stages that do not apply to this release (``when: major``)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        return "sign-off missing: " + "; ".join(self.problems)

    def summary(self) -> dict[str, Any]:
        return {"approvals": list(self.counted), "needed": self.needed, "emergency": self.emergency,
                "not_counted": list(self.not_counted), "cross_checked": self.cross_checked,
                "answers": {who: list(where) for who, where in self.answers.items()},
                "stages": {name: list(who) for name, who in self.stages.items()},
                "not_required": list(self.not_required)}


def hitl_answers(details: Sequence[Mapping[str, Any]], prefix: str | tuple[str, ...] = APPROVAL_TASK_PREFIX) -> tuple[
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


def check_signoff(release: Mapping[str, Any] | None, policy: SignoffPolicy | Sequence[SignoffPolicy],
                  hitl: Sequence[Mapping[str, Any]] | None = None, *, tests_stage: str | None = TESTS_STAGE) -> SignoffCheck:
    """What the records say about a release's sign-off (see the module docs).

    In each stage of ``policy`` that applies to the release, an approval counts when its decision is
    ``approved``, its approver is not the run's author, is in the stage's ``group`` (when one is set),
    was not counted already (in this stage, or in an earlier one unless the stage allows it), and
    (when ``hitl`` is given: Airflow's Human-in-the-loop details of the run) answered ``["Approve"]``
    to one of the stage's approval tasks in Airflow. Any rejection, in the ledger or in Airflow, is a
    problem even when enough approvals count: a rejected release is not released by the same run.

    :param release: the ledger's record (``Ledger.get_release``), or None when there is none.
    :param policy: the stages, in order (one :class:`SignoffPolicy`: a single stage).
    :param hitl: None when Airflow's records were not read (the ledger alone decides).
    :param tests_stage: the stage whose record shows the tests passed; None: the tests are not this check's
        (a promotion's own approval: the soaked release's check covers them).
    """
    stages = (policy,) if isinstance(policy, SignoffPolicy) else tuple(policy)
    if not release:
        return SignoffCheck(needed=sum(s.required for s in stages), emergency=False, counted=(), not_counted=(),
                            problems=("the ledger has no record of this release",), cross_checked=hitl is not None)
    author = release.get("author")
    emergency = bool(release.get("emergency"))
    change = release.get("change_kind")
    rows = list(release.get("approvals") or [])
    counted: list[str] = []
    not_counted: list[str] = []
    problems: list[str] = []
    answers: dict[str, list[str]] = {}
    by_stage: dict[str, tuple[str, ...]] = {}
    not_required: list[str] = []
    earlier: set[str] = set()  # counted in an earlier stage
    needed_total = 0
    for stage in stages:
        if not stage.applies(change):
            not_required.append(stage.name)
            continue
        needed = stage.emergency_required if emergency else stage.required
        needed_total += needed
        answered, _ = hitl_answers(hitl, stage.prefix) if hitl is not None else ({}, [])
        here: list[str] = []
        missed: list[str] = []
        for approval in rows:
            who = approval.get("approver")
            if (approval.get("stage") or QA_STAGE) != stage.name or approval.get("decision") != "approved":
                continue
            why = None
            if who in here:
                why = "counted once already"
            elif stage.distinct_from_earlier and who in earlier:
                why = "counted in an earlier stage"
            elif author and who == author:
                why = "the run's author"
            elif stage.group and who not in stage.group:
                why = "not in the QA group" if stage.name == QA_STAGE else f"not in the {stage.name} group"
            elif hitl is not None and who not in answered:
                why = "no Approve answer by them in Airflow's Required Actions"
            if why:
                missed.append(f"{who} ({why})")
            else:
                here.append(who)
                if hitl is not None:
                    answers.setdefault(who, []).extend(answered.get(who, ()))
        if len(here) < needed:
            kind = " (emergency)" if emergency else ""
            text = f"{len(here)} of {needed} required approval(s){kind}; counted: {', '.join(here) or 'none'}"
            if missed:
                text += f"; not counted: {', '.join(missed)}"
            problems.append(stage.label(text))
        counted += here
        not_counted += [stage.label(m) for m in missed]
        by_stage[stage.name] = tuple(here)
        earlier.update(here)
    for approval in rows:  # a rejection in any stage stops the release
        if approval.get("decision") != "approved":
            who, comment = approval.get("approver"), approval.get("comment")
            text = f"{who} {approval.get('decision')} the release" + (f": {comment}" if comment else "")
            stage_name = approval.get("stage") or QA_STAGE
            problems.append(text if stage_name == QA_STAGE else f"{stage_name}: {text}")
    if hitl is not None:
        problems += hitl_answers(hitl, tuple(s.prefix for s in stages))[1]
    if tests_stage is not None:
        problems += suite_problems(release, tests_stage)
    return SignoffCheck(needed=needed_total, emergency=emergency, counted=tuple(counted),
                        not_counted=tuple(not_counted), problems=tuple(problems), cross_checked=hitl is not None,
                        answers={who: tuple(where) for who, where in answers.items()} if hitl is not None else {},
                        stages=by_stage, not_required=tuple(not_required))


__all__ = ["APPROVAL_TASK_PREFIX", "QA_STAGE", "SignoffCheck", "SignoffMissing", "SignoffPolicy", "SignoffUnverified",
           "check_signoff", "hitl_answers", "stage_task_prefix", "suite_problems"]
