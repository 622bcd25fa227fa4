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


# ------------------------------------------------------------------------ approval stages (issue 13)
MANAGER = SignoffPolicy(required=1, emergency_required=1, group=("mgr1", "qa1"), name="manager", when="major")
CLIENT = SignoffPolicy(required=1, emergency_required=0, group=("client1", "qa2"), name="client")
STAGES = (POLICY, MANAGER, CLIENT)


def staged(*approvals: tuple[str, str, str], change: str = "minor", **kw) -> dict:
    """A ledger record whose ``approvals`` are (stage, approver, decision)."""
    record = release(**kw)
    record["change_kind"] = change
    record["approvals"] = [{"stage": stage, "approver": who, "decision": decision, "comment": None}
                           for stage, who, decision in approvals]
    return record


QA_OK = (("qa", "qa1", "approved"), ("qa", "qa2", "approved"))
QA_ANSWERS = [answer("qa_signoff.approval_1", "qa1"), answer("qa_signoff.approval_2", "qa2")]


def test_every_stage_that_applies_must_be_approved_in_order():
    minor = staged(*QA_OK, ("client", "client1", "approved"))
    check = check_signoff(minor, STAGES, [*QA_ANSWERS, answer("client_signoff.approval_1", "client1")])
    assert check.ok, check.problems
    assert (check.counted, check.needed, check.not_required) == (("qa1", "qa2", "client1"), 3, ("manager",))
    assert check.stages == {"qa": ("qa1", "qa2"), "client": ("client1",)}
    assert check.answers["client1"] == ("client_signoff.approval_1 (try 1)",)

    major = {**minor, "change_kind": "major"}  # the manager's stage applies: nobody approved it
    assert check_signoff(major, STAGES).problems == ("manager: 0 of 1 required approval(s); counted: none",)
    assert check_signoff(staged(*QA_OK, change="major"), STAGES).problems == (
        "manager: 0 of 1 required approval(s); counted: none", "client: 0 of 1 required approval(s); counted: none")


def test_an_approval_counts_only_in_its_own_stage():
    """An approval recorded for the client stage by someone outside its group, or answered in Airflow only
    in another stage's task, does not count there."""
    record = staged(*QA_OK, ("client", "ops", "approved"))
    assert check_signoff(record, STAGES).problems == (
        "client: 0 of 1 required approval(s); counted: none; not counted: ops (not in the client group)",)
    record = staged(*QA_OK, ("client", "client1", "approved"))
    hitl = [*QA_ANSWERS, answer("qa_signoff.approval_3", "client1")]
    assert check_signoff(record, STAGES, hitl).problems == (
        "client: 0 of 1 required approval(s); counted: none; not counted: client1 (no Approve answer by them in "
        "Airflow's Required Actions)",)


def test_a_person_counts_once_across_stages_unless_the_stage_says_otherwise():
    record = staged(*QA_OK, ("client", "qa2", "approved"))
    assert check_signoff(record, STAGES).problems == (
        "client: 0 of 1 required approval(s); counted: none; not counted: qa2 (counted in an earlier stage)",)
    lenient = SignoffPolicy(required=1, emergency_required=0, group=("client1", "qa2"), name="client",
                            distinct_from_earlier=False)
    check = check_signoff(record, (POLICY, MANAGER, lenient))
    assert check.ok and check.stages == {"qa": ("qa1", "qa2"), "client": ("qa2",)}
    # the manager's stage is skipped for a minor change: its approver does not count as "earlier"
    record = staged(*QA_OK, ("manager", "qa1", "approved"), change="major")
    assert check_signoff(record, STAGES).problems[0] == (
        "manager: 0 of 1 required approval(s); counted: none; not counted: qa1 (counted in an earlier stage)")


def test_a_rejection_in_any_stage_stops_the_release_with_its_reason():
    record = staged(*QA_OK, ("client", "client1", "rejected"))
    record["approvals"][-1]["comment"] = "the invoice layout is not what we signed"
    hitl = [*QA_ANSWERS, answer("client_signoff.approval_1", "client1", "Reject")]
    assert check_signoff(record, STAGES, hitl).problems == (
        "client: 0 of 1 required approval(s); counted: none",
        "client: client1 rejected the release: the invoice layout is not what we signed",
        "client1 rejected in Airflow's Required Actions (client_signoff.approval_1 (try 1))")


def test_an_emergency_needs_each_stages_emergency_count():
    record = staged(("qa", "qa1", "approved"), emergency=True)  # the client stage's emergency count is 0
    check = check_signoff(record, STAGES)
    assert check.ok and check.needed == 1 and check.stages == {"qa": ("qa1",), "client": ()}


def test_the_policy_of_a_service_lists_its_stages():
    from conveyor.config import load_service

    assert SignoffPolicy.of(load_service("demo_shop")) == (
        SignoffPolicy(required=2, emergency_required=1, group=("qa1", "qa2", "qa3")),
        SignoffPolicy(required=1, emergency_required=1, group=("mgr1",), name="manager", when="major"),
        SignoffPolicy(required=1, emergency_required=1, group=("client1",), name="client"))
