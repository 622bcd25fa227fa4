"""Running Conveyor's operators directly (``op.execute(context)``) against the local fleet and a
real SQLite ledger per test.

The context is the part of Airflow's that the operators read: the dag run (its ``run_id`` makes
the release id), ``params``, and a task instance whose ``xcom_pull`` returns the upstream results
the test gives it (the task runner, which would serve XComs, does not run here).
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conveyor.hooks.fleet_support import calls, fleet_env, fleet_on_v1_0_0, local_fleet  # noqa: F401
from tests.conveyor.operators.operator_support import LEDGER_CONN_ID, SERVICE_ID
from tests.conveyor.operators.signoff_support import record_signoff


class XComs:
    """A task instance's ``xcom_pull``: the value recorded for ``task_ids``, or None."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values = dict(values or {})

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> Any:
        return self.values.get(task_ids)


@pytest.fixture
def ledger_path(tmp_path, monkeypatch):
    """A fresh SQLite ledger behind the ``test_ledger`` connection; yields its file path."""
    path = tmp_path / "ledger.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{LEDGER_CONN_ID.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


@pytest.fixture
def bare_ledger(ledger_path, release_id, run_id):
    """The release as ``validate`` opens it (author ``dev``, not an emergency) and nothing else: no
    approval and no ``tests`` stage (a test that needs them writes its own)."""
    from conveyor.ledger import Ledger

    ledger = Ledger(f"sqlite:///{ledger_path}")
    ledger.upsert_release(release_id, service=SERVICE_ID, git_ref="main", change_kind="minor", emergency=False,
                          author="dev", run_id=run_id, dag_id=f"release_{SERVICE_ID}", status="running")
    yield ledger
    ledger.dispose()


@pytest.fixture
def ledger(bare_ledger, release_id):
    """The test's ledger (``conveyor.ledger.Ledger``, read back directly), with the release opened as the
    DAG's ``validate`` task opens it and signed off, so production waves may deploy."""
    record_signoff(bare_ledger, release_id)  # qa1 and qa2 approved, the tests passed
    return bare_ledger


@pytest.fixture
def run_id() -> str:
    return f"manual__test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def release_id(run_id) -> str:
    return f"{SERVICE_ID}/{run_id}"


@pytest.fixture
def make_context(run_id):
    """``make_context(xcoms={task_id: value})``: the context of one task try of this test's run."""

    def make(xcoms: dict[str, Any] | None = None) -> dict[str, Any]:
        dag_run = SimpleNamespace(run_id=run_id, dag_id=f"release_{SERVICE_ID}", triggering_user_name="dev")
        return {"dag_run": dag_run, "ti": XComs(xcoms), "params": {}}

    return make
