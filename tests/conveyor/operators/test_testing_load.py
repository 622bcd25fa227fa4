"""The ``tests`` stage's load suite on the local fleet's real replica, with the demo's own load settings
(Locust running include/demo/app/tests/load/locustfile.py, the thresholds of include/services/demo_shop.yaml):
v1.1.0 passes and its numbers are in the sign-off body; v1.4.0 (150 ms more on every request) fails on
p95, and its numbers against the thresholds are in the stage's error, the ledger and the ticket."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from conveyor.exceptions import TestSuiteError
from conveyor.operators.deploy import DeployOperator, PopulateReplicaOperator
from conveyor.operators.testing import TestSuitesOperator
from tests.conveyor.hooks.fleet_support import artifact, hosts
from tests.conveyor.operators.operator_support import SERVICE_ID, operator_kwargs, stage_row


@pytest.fixture
def load_only(fleet_on_v1_0_0, tmp_path):
    """The demo service file with only its load suite, as the demo sets it, and no triage (production's
    version is not asked about here)."""
    path = tmp_path / "services" / "demo_shop.yaml"  # written by fleet_env
    spec = yaml.safe_load(path.read_text())
    spec["tests"] = [suite for suite in spec["tests"] if suite.get("kind") == "load"]
    spec["triage"] = {"enabled": False}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return fleet_on_v1_0_0


@pytest.fixture
def release(ledger_path, run_id, release_id):
    """The release opened in the test's ledger, as ``validate`` opens it; yields the ``Ledger``."""
    from conveyor.ledger import Ledger

    ledger = Ledger(f"sqlite:///{ledger_path}")
    ledger.upsert_release(release_id, service=SERVICE_ID, git_ref="test", change_kind="minor", emergency=False,
                          author="dev", run_id=run_id, dag_id=f"release_{SERVICE_ID}", status="running")
    yield ledger
    ledger.dispose()


def on_replica(version: str, context: dict) -> dict:
    """``version`` deployed to the replica and its data reset, by the release's own operators."""
    info = artifact(version).to_dict()
    DeployOperator(artifact=info, environment="replica", **operator_kwargs("replica.deploy")).execute(context)
    PopulateReplicaOperator(artifact=info, **operator_kwargs("replica.populate")).execute(context)
    return info


def test_the_good_release_passes_the_load_stage_with_its_numbers_in_the_sign_off(
        load_only, make_context, release, release_id):
    context = make_context()
    info = on_replica("v1.1.0", context)

    result = TestSuitesOperator(artifact=info, **operator_kwargs("tests")).execute(context)

    load = result["suites"]["load"]["load"]
    assert result["failures"] == [] and result["suites"]["load"]["failed"] == 0
    assert {v["threshold"]: v["ok"] for v in load["verdicts"]} == {
        "p95_ms": True, "p99_ms": True, "error_rate": True, "min_rps": True}
    measured = load["measured"]
    assert measured["requests"] > 0 and measured["failures"] == 0
    rows = {t["test"]: t for t in release.get_release(release_id)["tests"] if t["suite"] == "load"}
    assert {name: row["outcome"] for name, row in rows.items()} == dict.fromkeys(
        ("p95_ms", "p99_ms", "error_rate", "min_rps"), "passed")
    assert rows["p95_ms"]["message"] == f"p95 {measured['p95_ms']:g} ms, within the threshold 150 ms"
    assert stage_row(release.get_release(release_id), "tests")["detail"]["suites"]["load"]["load"] == load

    body = sign_off_body({"validate": {"git_ref": "v1.1.0", "change_kind": "minor", "emergency": False,
                                       "author": "dev"},
                          "build": {**info, "commit_count": 0}, "tests": result, "replica": {"health": {}}})
    assert f"**Load test `load`** (10 users, {measured['requests']} requests in" in body
    assert f"- p95 {measured['p95_ms']:g} ms, within the threshold 150 ms" in body
    assert f"- rate {measured['rps']:g} req/s, within the threshold 20 req/s" in body


def test_the_slow_release_fails_the_load_stage_on_p95_with_its_numbers_everywhere(
        load_only, make_context, release, release_id):
    from conveyor.evidence import gather_evidence
    from conveyor.operators.base import record_failure
    from conveyor.tickets import render_ticket

    context = make_context()
    info = on_replica("v1.4.0", context)
    assert _served() == dict.fromkeys(hosts("replica"), "v1.4.0")
    task = TestSuitesOperator(artifact=info, **operator_kwargs("tests"))

    with pytest.raises(TestSuiteError) as failed:
        task.execute(context)
    record_failure({**context, "task": task, "exception": failed.value})  # Airflow's failure callback

    ledger_release = release.get_release(release_id)
    load = stage_row(ledger_release, "tests")["detail"]["suites"]["load"]["load"]
    measured = load["measured"]
    assert measured["p95_ms"] > 150 and measured["failures"] == 0  # slow, not broken
    p95 = f"p95 {measured['p95_ms']:g} ms, over the threshold 150 ms"
    assert failed.value.failures == ["load::p95_ms"]
    assert str(failed.value) == f"1 failing test(s): load::p95_ms ({p95})"
    assert stage_row(ledger_release, "tests")["status"] == "failed"
    assert p95 in stage_row(ledger_release, "tests")["error"]
    rows = {t["test"]: (t["outcome"], t["message"]) for t in ledger_release["tests"] if t["suite"] == "load"}
    assert rows["p95_ms"] == ("failed", p95)
    assert {name: outcome for name, (outcome, _) in rows.items()} == {
        "p95_ms": "failed", "p99_ms": "passed", "error_rate": "passed", "min_rps": "passed"}

    ticket = render_ticket("RCA-load", gather_evidence(ledger_release, None))
    assert ticket.fields["failed_stage"] == "tests" and ticket.fields["failing_tests"] == ["load::p95_ms"]
    assert ticket.fields["load_tests"] == {"load": load}
    assert "## Load tests on the replica" in ticket.body
    assert f"p95 {measured['p95_ms']:g} ms (threshold 150 ms: FAIL)" in ticket.body
    assert f"rate {measured['rps']:g} req/s (threshold 20 req/s: ok)" in ticket.body


def _served() -> dict[str, str | None]:
    from tests.conveyor.hooks.fleet_support import served_version

    return {name: served_version(name) for name in hosts("replica")}


def sign_off_body(xcoms: dict) -> str:
    """The first sign-off stage's body as Airflow renders it, with the ``tests`` task's result in XCom."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    root = Path(__file__).resolve().parents[3]
    dag = DagBag(dag_folder=str(root / "dags")).dags[f"release_{SERVICE_ID}"]
    approval = next(t for t in dag.tasks if getattr(t, "evidence_tasks", None))
    pulled = {approval.evidence_tasks.get(role, role): value for role, value in xcoms.items()}
    ti = SimpleNamespace(xcom_pull=lambda task_ids=None, **_: pulled.get(task_ids))
    context = {"ti": ti, "task": approval, "run_id": "manual__load", "params": {},
               "dag_run": SimpleNamespace(triggering_user_name="dev", run_id="manual__load",
                                          dag_id=f"release_{SERVICE_ID}")}
    return approval.render_template(approval.body, context)

