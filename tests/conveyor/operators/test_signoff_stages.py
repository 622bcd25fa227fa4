"""Approval stages after QA (issue 13): the stage operator's decisions and the body a later stage shows.

``SignoffOperator.execute`` / ``execute_complete`` with the ledger on a temporary SQLite file behind an
Airflow connection (as in ``test_signoff``); Airflow's ``upsert_hitl_detail`` is replaced by a recorder
of what the Required Action would be (what cannot run here without Airflow's database). The same
stages run against the real API server in tests/e2e/test_approval_stages.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest

RID = "demo_shop/manual__1"


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """``make(name, ...)``: an approval task of stage ``name``; the ledger; the Required Actions written."""
    from conveyor.ledger import Ledger
    from conveyor.operators.signoff import SignoffOperator

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upsert_release(RID, service="demo_shop", author="dev", status="running")  # validate's
    monkeypatch.setenv("AIRFLOW_CONN_SIGNOFF_LEDGER", json.dumps(
        {"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}))
    requests: list[dict] = []
    monkeypatch.setattr("airflow.providers.standard.operators.hitl.upsert_hitl_detail",
                        lambda **kw: requests.append(kw))

    def make(name: str, group=("client1", "qa2"), *, ordinal: int = 1, required: int = 1, emergency: int = 1,
             when: str = "always", earlier=("qa",), distinct: bool = True):
        return SignoffOperator(
            task_id=f"{name}_approval_{ordinal}", service_id="demo_shop", group=list(group), ordinal=ordinal,
            required=required, emergency_required=emergency, timeout=timedelta(seconds=20), subject="sign-off",
            body="body", evidence_tasks={}, releases_url="http://localhost:8080/conveyor/releases/demo_shop",
            approval_stage=name, title=name.capitalize(), when=when, earlier_stages=list(earlier),
            distinct_from_earlier=distinct, ledger_conn_id="signoff_ledger",
        )

    yield make, ledger, requests
    ledger.dispose()


def _context(author: str = "dev", change: str = "minor", emergency: bool = False) -> dict:
    return {"dag_run": SimpleNamespace(run_id="manual__1", triggering_user_name=author),
            "params": {"change": change, "emergency": emergency}, "task_instance": SimpleNamespace(id=uuid4())}


def _event(user: str, option: str = "Approve", reason: str | None = None) -> dict:
    return {"chosen_options": [option], "params_input": {"reason": reason} if reason else {},
            "responded_at": datetime(2026, 11, 23, 10, 5, tzinfo=UTC), "responded_by_user": {"id": user, "name": user}}


def _decisions(ledger) -> list[tuple]:
    return [(a["stage"], a["approver"], a["decision"], a["comment"]) for a in ledger.get_release(RID)["approvals"]]


def test_a_major_only_stage_skips_for_a_minor_change_and_asks_for_a_major_one(stage):
    from airflow.sdk.exceptions import AirflowSkipException, TaskAwaitingInput

    make, ledger, requests = stage
    with pytest.raises(AirflowSkipException, match="the manager stage applies to major changes only"):
        make("manager", ("mgr1",), when="major").execute(_context(change="minor"))
    assert requests == []
    with pytest.raises(TaskAwaitingInput):
        make("manager", ("mgr1",), when="major").execute(_context(change="major"))
    assert [u["id"] for u in requests[-1]["assigned_users"]] == ["mgr1"]


def test_people_who_approved_an_earlier_stage_are_not_asked_again_unless_the_stage_allows(stage):
    from airflow.sdk.exceptions import TaskAwaitingInput

    make, ledger, requests = stage
    ledger.upsert_approval(RID, "qa2", decision="approved", at=datetime(2026, 11, 23, 9, tzinfo=UTC))
    with pytest.raises(TaskAwaitingInput):
        make("client").execute(_context())
    assert [u["id"] for u in requests[-1]["assigned_users"]] == ["client1"]
    with pytest.raises(TaskAwaitingInput):
        make("client", distinct=False).execute(_context())
    assert [u["id"] for u in requests[-1]["assigned_users"]] == ["client1", "qa2"]
    with pytest.raises(TaskAwaitingInput):  # the author never
        make("client", distinct=False).execute(_context(author="client1"))
    assert [u["id"] for u in requests[-1]["assigned_users"]] == ["qa2"]


def test_a_stage_records_its_decisions_under_its_name(stage):
    from conveyor.exceptions import ReleaseFailed

    make, ledger, _ = stage
    ledger.upsert_approval(RID, "qa2", decision="approved", at=datetime(2026, 11, 23, 9, tzinfo=UTC))
    make("client", distinct=False).execute_complete(_context(), _event("qa2", reason="accepted for ACME"))
    with pytest.raises(ReleaseFailed, match="^approval 1 by qa2 does not count: qa2 already approved"):
        make("client").execute_complete(_context(), _event("qa2"))  # written around the API
    assert _decisions(ledger) == [("qa", "qa2", "approved", None), ("client", "qa2", "approved", "accepted for ACME")]


def test_a_rejection_at_a_later_stage_fails_the_release_with_its_reason(stage):
    from conveyor.exceptions import ReleaseFailed

    make, ledger, _ = stage
    with pytest.raises(ReleaseFailed, match="^Client sign-off rejected by client1: the totals are wrong$"):
        make("client").execute_complete(_context(), _event("client1", "Reject", "the totals are wrong"))
    assert _decisions(ledger) == [("client", "client1", "rejected", "the totals are wrong")]
    # the failure callback records the failed ledger stage under ``task.stage`` or the task id: the task id
    assert getattr(make("client"), "stage", None) is None


def test_an_emergency_skips_the_approvals_beyond_the_stages_emergency_count(stage):
    from airflow.sdk.exceptions import AirflowSkipException

    make, _, requests = stage
    with pytest.raises(AirflowSkipException, match="an emergency change needs 0 client approval"):
        make("client", emergency=0).execute(_context(emergency=True))
    assert requests == []


def test_a_timeout_names_the_stage(stage):
    from conveyor.exceptions import ReleaseFailed

    make, ledger, _ = stage
    with pytest.raises(ReleaseFailed, match="^no sign-off within 20s: client approval 1 was never given$"):
        make("client").execute_complete(_context(), {"error": "timeout", "error_type": "timeout"})
    assert _decisions(ledger) == []


# ----------------------------------------------------------------------------- the body of a later stage
class _TaskInstance:
    def __init__(self, xcoms: dict) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str | None = None, **_: object):
        return self.xcoms.get(task_ids)


def test_the_client_sees_the_earlier_stages_decisions():
    from airflow.dag_processing.dagbag import DagBag

    from conveyor.paths import PROJECT_ROOT

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["release_demo_shop"]
    client = dag.get_task("client_signoff.approval_1")
    assert client.earlier_tasks == {"qa": ["qa_signoff.approval_1", "qa_signoff.approval_2"],
                                    "manager": ["manager_signoff.approval_1"]}
    answers = {"qa_signoff.approval_1": {"chosen_options": ["Approve"], "params_input": {"reason": "cart ok"},
                                         "responded_by_user": {"id": "qa1", "name": "qa1"}},
               "qa_signoff.approval_2": {"chosen_options": ["Approve"], "params_input": {},
                                         "responded_by_user": {"id": "qa3", "name": "qa3"}},
               # the evidence every stage's body shows first (see tests/conveyor/test_pipeline.py)
               "validate": {"git_ref": "v1.1.0", "emergency": False, "change_kind": "minor", "author": "dev"},
               "build": {"version": "v1.1.0", "commit": "0123abcd" * 5, "commit_count": 0,
                         "manifest": {"commit_range": {"commits": []}}},
               "tests": {}, "replica.deploy": {"health": {}}}
    context = {"ti": _TaskInstance(answers), "task": client, "run_id": "manual__1",
               "params": {"git_ref": "v1.1.0", "change": "minor", "emergency": False, "reason": ""},
               "dag_run": SimpleNamespace(triggering_user_name="dev", run_id="manual__1", dag_id=dag.dag_id)}
    body = client.render_template(client.body, context)
    assert "**Earlier stages' decisions:**" in body, body
    assert "- qa: approved by qa1 — cart ok; approved by qa3" in body
    assert "- manager: no answer recorded (skipped: not required for this release)" in body
    assert client.render_template(client.subject, context).startswith("Client sign-off 1/1: ")
