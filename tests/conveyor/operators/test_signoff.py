"""The QA sign-off operator's decisions: who may answer, what is recorded, what fails the release.

``QASignoffOperator.execute`` / ``execute_complete`` with the ledger on a temporary SQLite file behind
an Airflow connection; the same answers arrive through the real API in tests/e2e/test_signoff_api.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest


@pytest.fixture
def signoff(tmp_path, monkeypatch):
    from datetime import timedelta

    from conveyor.ledger import Ledger
    from conveyor.operators import signoff as module

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upsert_release("demo_shop/manual__1", service="demo_shop", author="dev", status="running")  # validate's
    monkeypatch.setenv("AIRFLOW_CONN_SIGNOFF_LEDGER", json.dumps(
        {"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}))

    def make(ordinal: int = 1, group=("qa1", "qa2", "qa3")):
        return module.QASignoffOperator(
            task_id=f"approval_{ordinal}", service_id="demo_shop", group=list(group), ordinal=ordinal, required=2,
            emergency_required=1, timeout=timedelta(seconds=20), subject="QA sign-off", body="body",
            evidence_tasks={}, releases_url="http://localhost:8080/conveyor/releases/demo_shop",
            ledger_conn_id="signoff_ledger",
        )

    yield make, ledger
    ledger.dispose()


def _context(author: str = "dev", emergency: bool = False) -> dict:
    from types import SimpleNamespace
    from uuid import uuid4

    return {"dag_run": SimpleNamespace(run_id="manual__1", triggering_user_name=author),
            "params": {"emergency": emergency}, "task_instance": SimpleNamespace(id=uuid4())}


def _event(user: str, option: str = "Approve", reason: str | None = None) -> dict:
    return {"chosen_options": [option], "params_input": {"reason": reason} if reason else {},
            "responded_at": datetime(2026, 11, 23, 10, 5, tzinfo=UTC), "responded_by_user": {"id": user, "name": user}}


def _approvals(ledger) -> list[tuple]:
    release = ledger.get_release("demo_shop/manual__1") or {}
    return [(a["approver"], a["decision"], a["comment"]) for a in release.get("approvals", [])]


def test_operator_assigns_the_group_minus_author_and_earlier_approvers(signoff, monkeypatch):
    from airflow.sdk.exceptions import TaskAwaitingInput

    make, ledger = signoff
    calls = []
    monkeypatch.setattr("airflow.providers.standard.operators.hitl.upsert_hitl_detail",
                        lambda **kw: calls.append(kw))
    with pytest.raises(TaskAwaitingInput):
        make(1).execute(_context(author="qa1"))
    assert [u["id"] for u in calls[-1]["assigned_users"]] == ["qa2", "qa3"]

    make(1).execute_complete(_context(author="qa1"), _event("qa2"))
    with pytest.raises(TaskAwaitingInput):
        make(2).execute(_context(author="qa1"))
    assert [u["id"] for u in calls[-1]["assigned_users"]] == ["qa3"]


def test_operator_records_approvals_with_the_answer_time(signoff):
    make, ledger = signoff
    result = make(1).execute_complete(_context(), _event("qa1", reason=" looks good "))
    assert result["chosen_options"] == ["Approve"]
    [row] = ledger.get_release("demo_shop/manual__1")["approvals"]
    assert (row["approver"], row["decision"], row["comment"]) == ("qa1", "approved", "looks good")
    assert row["at"] == datetime(2026, 11, 23, 10, 5, tzinfo=UTC)


def test_operator_rejection_fails_with_the_reason(signoff):
    from conveyor.exceptions import ReleaseFailed

    make, ledger = signoff
    with pytest.raises(ReleaseFailed, match="QA sign-off rejected by qa2: wrong prices"):
        make(2).execute_complete(_context(), _event("qa2", "Reject", "wrong prices"))
    assert _approvals(ledger) == [("qa2", "rejected", "wrong prices")]


def test_operator_timeout_fails_with_no_sign_off_within(signoff):
    from conveyor.exceptions import ReleaseFailed

    make, ledger = signoff
    with pytest.raises(ReleaseFailed, match="no sign-off within 20s: approval 1 was never given"):
        make(1).execute_complete(_context(), {"error": "timeout", "error_type": "timeout"})
    assert _approvals(ledger) == []


def test_operator_refuses_approvals_the_api_could_not_stop(signoff):
    """With no QA group Airflow lets anyone answer: the author and repeat approvers do not count."""
    from conveyor.exceptions import ReleaseFailed

    make, ledger = signoff
    with pytest.raises(ReleaseFailed, match="approval by dev does not count"):
        make(1, group=()).execute_complete(_context(author="dev"), _event("dev"))
    make(1, group=()).execute_complete(_context(), _event("qa1"))
    with pytest.raises(ReleaseFailed, match="qa1 already approved this release"):
        make(2, group=()).execute_complete(_context(), _event("qa1"))
    with pytest.raises(ReleaseFailed, match="approval by ops does not count"):
        make(2).execute_complete(_context(), _event("ops"))  # outside the group, answered around the API
    assert _approvals(ledger) == [("qa1", "approved", None)]


def test_operator_records_nothing_for_a_malformed_answer(signoff):
    make, ledger = signoff
    event = {**_event("qa1"), "params_input": {"reason": "ok", "extra": 1}}
    with pytest.raises(ValueError, match="does not match params"):
        make(1).execute_complete(_context(), event)
    assert _approvals(ledger) == []
