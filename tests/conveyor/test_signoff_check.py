"""The production gate's check (``conveyor.signoff_check``): a ledger release record and Airflow's
Human-in-the-loop details in, what is missing out. Pure and fast: the records are written here the way
``Ledger.get_release`` and ``GET .../hitlDetails`` return them."""

from __future__ import annotations

from conveyor.signoff_check import SignoffPolicy, check_signoff, hitl_answers

POLICY = SignoffPolicy(required=2, emergency_required=1, group=("qa1", "qa2", "qa3"))


def release(*approvals: tuple[str, str], author: str = "dev", emergency: bool = False, tests: str | None = "success",
            results: tuple[dict, ...] = ()) -> dict:
    """A ledger record: ``approvals`` as (approver, decision); the ``tests`` stage's status (None: no row)."""
    stages = [{"stage": "validate", "status": "success"}]
    if tests is not None:
        stages.append({"stage": "tests", "status": tests})
    return {"release_id": "demo_shop/manual__1", "author": author, "emergency": emergency, "stages": stages,
            "approvals": [{"approver": who, "decision": decision, "comment": None} for who, decision in approvals],
            "tests": list(results)}


def answer(task: str, who: str | None, option: str | None = "Approve", received: bool = True, try_number: int = 1):
    """A Human-in-the-loop detail as Airflow's API lists it."""
    return {"task_instance": {"task_id": task, "map_index": -1, "try_number": try_number, "state": "success"},
            "options": ["Approve", "Reject"], "response_received": received,
            "responded_by_user": {"id": who, "name": who} if who else None,
            "chosen_options": [option] if option else None, "params_input": {}}


BOTH = [answer("qa_signoff.approval_1", "qa1"), answer("qa_signoff.approval_2", "qa2")]


def test_two_distinct_qa_members_and_passing_tests_are_a_complete_sign_off():
    check = check_signoff(release(("qa1", "approved"), ("qa2", "approved")), POLICY, BOTH)
    assert check.ok, check.problems
    assert check.counted == ("qa1", "qa2") and check.needed == 2 and check.cross_checked
    assert check.answers == {"qa1": ("qa_signoff.approval_1 (try 1)",), "qa2": ("qa_signoff.approval_2 (try 1)",)}


def test_nothing_recorded_is_nothing_signed_off():
    check = check_signoff(release(), POLICY)
    assert check.message == "sign-off missing: 0 of 2 required approval(s); counted: none"
    assert not check.cross_checked
    assert check_signoff(None, POLICY).message == "sign-off missing: the ledger has no record of this release"


def test_the_authors_approval_does_not_count():
    check = check_signoff(release(("qa1", "approved"), ("qa2", "approved"), author="qa2"), POLICY, BOTH)
    assert check.message == ("sign-off missing: 1 of 2 required approval(s); counted: qa1; "
                             "not counted: qa2 (the run's author)")


def test_the_same_person_counts_once():
    check = check_signoff(release(("qa1", "approved"), ("qa1", "approved")), POLICY,
                          [answer("qa_signoff.approval_1", "qa1"), answer("qa_signoff.approval_2", "qa1")])
    assert check.counted == ("qa1",)
    assert check.problems[0] == ("1 of 2 required approval(s); counted: qa1; not counted: qa1 (counted once "
                                 "already)")


def test_an_outsider_does_not_count_and_without_a_group_anyone_but_the_author_does():
    check = check_signoff(release(("qa1", "approved"), ("ops", "approved")), POLICY)
    assert check.problems == ("1 of 2 required approval(s); counted: qa1; not counted: ops (not in the QA group)",)
    open_policy = SignoffPolicy(required=2, emergency_required=1, group=())
    assert check_signoff(release(("qa1", "approved"), ("ops", "approved")), open_policy).ok
    assert not check_signoff(release(("qa1", "approved"), ("dev", "approved")), open_policy).ok


def test_a_rejection_stops_the_release_even_with_enough_approvals():
    record = release(("qa1", "approved"), ("qa2", "rejected"), ("qa3", "approved"))
    record["approvals"][1]["comment"] = "wrong prices"
    check = check_signoff(record, POLICY)
    assert check.counted == ("qa1", "qa3")
    assert check.problems == ("qa2 rejected the release: wrong prices",)


def test_an_emergency_needs_the_emergency_count_as_recorded_by_validate():
    one = release(("qa1", "approved"), emergency=True)
    assert check_signoff(one, POLICY).ok
    assert check_signoff(one, POLICY).needed == 1
    assert check_signoff(release(("qa1", "approved")), POLICY).message == (
        "sign-off missing: 1 of 2 required approval(s); counted: qa1")
    assert check_signoff(release(emergency=True), POLICY).message == (
        "sign-off missing: 0 of 1 required approval(s) (emergency); counted: none")


def test_an_approval_without_a_matching_answer_in_airflow_does_not_count():
    record = release(("qa1", "approved"), ("qa2", "approved"))
    for hitl in (
        [answer("qa_signoff.approval_1", "qa1")],  # no answer by qa2 at all
        [answer("qa_signoff.approval_1", "qa1"), answer("qa_signoff.approval_2", None, None, received=False)],
        [answer("qa_signoff.approval_1", "qa1"), answer("qa_signoff.approval_2", "qa3")],  # someone else answered
        [answer("qa_signoff.approval_1", "qa1"), answer("wave_1.decide", "qa2", "Continue")],  # another task
        [answer("qa_signoff.approval_1", "qa1"), answer("other.approval", "qa2")],
    ):
        check = check_signoff(record, POLICY, hitl)
        assert check.problems[0] == ("1 of 2 required approval(s); counted: qa1; not counted: qa2 (no Approve "
                                     "answer by them in Airflow's Required Actions)"), hitl


def test_a_rejection_in_airflows_records_is_a_problem_even_when_the_ledger_lacks_it():
    hitl = [*BOTH, answer("qa_signoff.approval_2", "qa3", "Reject", try_number=1)]
    check = check_signoff(release(("qa1", "approved"), ("qa2", "approved")), POLICY, hitl)
    assert check.problems == ("qa3 rejected in Airflow's Required Actions (qa_signoff.approval_2 (try 1))",)


def test_an_earlier_tries_answer_counts():
    """An approval task cleared after it was answered reruns without asking: its answer is an earlier try's."""
    approvals, rejections = hitl_answers([answer("qa_signoff.approval_1", "qa1", try_number=1),
                                          answer("qa_signoff.approval_2", "qa2", try_number=2)])
    assert approvals == {"qa1": ["qa_signoff.approval_1 (try 1)"], "qa2": ["qa_signoff.approval_2 (try 2)"]}
    assert rejections == []


def test_tests_must_have_passed():
    assert check_signoff(release(("qa1", "approved"), ("qa2", "approved"), tests=None), POLICY).problems == (
        "tests: the 'tests' stage has no record in the ledger (the suites did not run)",)
    assert check_signoff(release(("qa1", "approved"), ("qa2", "approved"), tests="failed"), POLICY).problems == (
        "tests: the 'tests' stage is 'failed', not 'success'",)
    failing = ({"suite": "unit", "test": "test_cart.test_bulk", "outcome": "failed", "pre_existing": False},
               {"suite": "integration", "test": "test_search", "outcome": "failed", "pre_existing": True},
               {"suite": "unit", "test": "test_ok", "outcome": "passed", "pre_existing": False})
    check = check_signoff(release(("qa1", "approved"), ("qa2", "approved"), results=failing), POLICY)
    assert check.problems == ("tests: 1 failing test(s): unit::test_cart.test_bulk",)
    pre_existing_only = release(("qa1", "approved"), ("qa2", "approved"), results=failing[1:])
    assert check_signoff(pre_existing_only, POLICY).ok


def test_every_problem_is_in_the_message():
    check = check_signoff(release(("dev", "approved"), tests="failed"), POLICY, [])
    assert check.message == ("sign-off missing: 0 of 2 required approval(s); counted: none; not counted: dev (the "
                             "run's author); tests: the 'tests' stage is 'failed', not 'success'")
