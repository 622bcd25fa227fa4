"""The sign-off form's reason (issue 10, item 5): required where Airflow asks, handled truthfully when an
answer comes without it (Airflow's REST API does not check form fields).

A rejection without a reason stops the release and the ledger says the reason is missing; an approval
without one counts, with no comment. The real API's side is in tests/e2e/test_signoff_api.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest

from conveyor.exceptions import ReleaseFailed
from conveyor.operators.signoff import REASON_MISSING, QASignoffOperator

RELEASE_ID = "demo_shop/manual__1"


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    from conveyor.ledger import Ledger

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upsert_release(RELEASE_ID, service="demo_shop", author="dev", status="running")  # validate's
    monkeypatch.setenv("AIRFLOW_CONN_REASON_LEDGER", json.dumps({"conn_type": "sqlite",
                                                                 "host": str(tmp_path / "ledger.db")}))
    yield ledger
    ledger.dispose()


def approval(ordinal: int = 1) -> QASignoffOperator:
    return QASignoffOperator(
        task_id=f"approval_{ordinal}", service_id="demo_shop", group=["qa1", "qa2", "qa3"], ordinal=ordinal,
        required=2, emergency_required=1, timeout=timedelta(hours=1), subject="QA sign-off", body="body",
        evidence_tasks={}, releases_url="http://localhost:8080/conveyor/releases/demo_shop",
        ledger_conn_id="reason_ledger",
    )


def context() -> dict:
    return {"dag_run": SimpleNamespace(run_id="manual__1", triggering_user_name="dev"), "params": {},
            "task_instance": SimpleNamespace(id=uuid4())}


def event(user: str, option: str, params_input: dict) -> dict:
    return {"chosen_options": [option], "params_input": params_input,
            "responded_at": datetime(2026, 11, 23, 10, 5, tzinfo=UTC), "responded_by_user": {"id": user, "name": user}}


def decisions(ledger) -> list[tuple]:
    return [(a["approver"], a["decision"], a["comment"]) for a in ledger.get_release(RELEASE_ID)["approvals"]]


def test_the_form_requires_a_non_empty_reason(monkeypatch):
    from airflow.sdk.exceptions import TaskAwaitingInput

    written = []
    monkeypatch.setattr("airflow.providers.standard.operators.hitl.upsert_hitl_detail", lambda **kw: written.append(kw))
    with pytest.raises(TaskAwaitingInput):
        approval().execute(context())
    reason = written[-1]["params"]["reason"]
    assert reason["schema"]["type"] == "string"  # no "null": Airflow's form marks the field required
    assert reason["schema"]["minLength"] == 1 and reason["schema"]["maxLength"] == 2000
    assert reason["value"] is None  # nothing pre-filled: the UI will not submit until one is typed


def test_the_approval_task_still_starts_with_the_runs_conf():
    """The task runner validates every param (the run's conf included) before ``execute``: the form's
    required reason must not fail the approval when it starts, with or without an emergency reason."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import process_params

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags")).dags["release_demo_shop"]
    task = dag.get_task("qa_signoff.approval_1")
    for conf in ({"git_ref": "v1.1.0"}, {"git_ref": "v1.1.0", "reason": ""},
                 {"git_ref": "v1.1.0", "emergency": True, "reason": "checkout is down"}):
        params = process_params(dag, task, conf, suppress_exception=False)
        assert params["git_ref"] == "v1.1.0"


@pytest.mark.parametrize("params_input", [{}, {"reason": ""}, {"reason": "   "}, {"reason": None}])
def test_a_rejection_without_a_reason_stops_the_release_and_says_so(ledger, params_input):
    with pytest.raises(ReleaseFailed) as failed:
        approval(2).execute_complete(context(), event("qa2", "Reject", params_input))
    assert str(failed.value) == ("QA sign-off rejected by qa2 without the required reason (the answer came without "
                                 "one, e.g. through the REST API); the release stops all the same")
    assert decisions(ledger) == [("qa2", "rejected", REASON_MISSING)]
    assert "reason missing" in REASON_MISSING and "no reason given" not in REASON_MISSING


def test_a_rejection_with_a_reason_keeps_it(ledger):
    with pytest.raises(ReleaseFailed, match="QA sign-off rejected by qa2: wrong prices"):
        approval(2).execute_complete(context(), event("qa2", "Reject", {"reason": " wrong prices "}))
    assert decisions(ledger) == [("qa2", "rejected", "wrong prices")]


@pytest.mark.parametrize("params_input", [{}, {"reason": ""}, {"reason": None}])
def test_an_approval_without_a_reason_counts_without_a_comment(ledger, params_input):
    result = approval(1).execute_complete(context(), event("qa1", "Approve", params_input))
    assert result["chosen_options"] == ["Approve"]
    assert decisions(ledger) == [("qa1", "approved", None)]


@pytest.mark.parametrize("params_input", [{"reason": "x" * 2001}, {"reason": 5}, {"reason": "ok", "extra": 1}])
def test_a_malformed_answer_records_nothing(ledger, params_input):
    with pytest.raises(ValueError, match=r"^(Invalid input for param reason|params_input .* does not match params)"):
        approval(2).execute_complete(context(), event("qa2", "Reject", params_input))
    assert decisions(ledger) == []
