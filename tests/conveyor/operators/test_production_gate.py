"""The production gate in ``DeployOperator`` (issue 10, item 1): a production wave deploys only when the
records show the sign-off, whatever the states of the approval and ``tests`` tasks say.

Each test runs a wave's deploy on the local fleet with a real SQLite ledger (the release opened by
``validate``: author ``dev``, not an emergency) and, where it says so, the ``conveyor_airflow_api``
connection pointing at a real HTTP server speaking Airflow's API (``airflow_api_stub``). A refused
wave opens no SSH connection and changes no host.
"""

from __future__ import annotations

import pytest

from conveyor.operators.deploy import DeployOperator
from conveyor.signoff_check import SignoffMissing, SignoffUnverified
from tests.conveyor.hooks.airflow_api_stub import StubAirflowApi
from tests.conveyor.hooks.fleet_support import SEED, artifact, hosts, state
from tests.conveyor.operators.operator_support import SERVICE_ID, host_rows, operator_kwargs, plan_of
from tests.conveyor.operators.signoff_support import record_signoff

WAVE = ["prod-1"]


def deploy_wave(version: str = "v1.1.0", wave: int = 0) -> DeployOperator:
    plan = plan_of(["prod-1", "prod-2"], [WAVE, ["prod-2"]])
    return DeployOperator(artifact=artifact(version).to_dict(), environment="production", plan=plan, wave=wave,
                          **operator_kwargs(f"wave_{wave + 1}.deploy"))


@pytest.fixture
def ledger(bare_ledger):
    """Only the release opened: each test writes the approvals and test results it is about."""
    return bare_ledger


@pytest.fixture
def no_api(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", raising=False)


@pytest.fixture
def api(monkeypatch, run_id):
    with StubAirflowApi(f"release_{SERVICE_ID}", run_id) as stub:
        monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", stub.connection())
        stub.answer("client_signoff.approval_1", "client1")  # the demo's client stage; each test answers QA's
        yield stub


def refused(fleet, op: DeployOperator, context: dict, calls: dict, exception=SignoffMissing) -> str:
    """Run ``op``, expect the gate to refuse it, check that nothing was touched; the message."""
    before = {n: state(fleet, n) for n in hosts("production")}
    with pytest.raises(exception) as refusal:
        op.execute(context)
    assert calls["connect"] == []  # not even a look at a host
    assert {n: state(fleet, n) for n in hosts("production")} == before
    return str(refusal.value)


def test_approval_tasks_marked_success_leave_no_sign_off(fleet_on_v1_0_0, make_context, ledger, release_id, calls,
                                                         no_api, capsys):
    record_signoff(ledger, release_id, approvers=())  # the tests passed; nobody approved

    message = refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls)

    assert message == "sign-off missing: 0 of 2 required approval(s); counted: none"
    assert host_rows(ledger.get_release(release_id)) == {}
    assert "Connection conveyor_airflow_api is not defined: the sign-off is checked against the release ledger " \
           "only" in capsys.readouterr().out


def test_every_wave_checks_again(fleet_on_v1_0_0, make_context, ledger, release_id, calls, no_api):
    record_signoff(ledger, release_id, approvers=("qa1",))
    message = refused(fleet_on_v1_0_0, deploy_wave(wave=1), make_context(), calls)
    assert message == "sign-off missing: 1 of 2 required approval(s); counted: qa1"


def test_tests_marked_success_are_no_passing_tests(fleet_on_v1_0_0, make_context, ledger, release_id, calls, no_api):
    record_signoff(ledger, release_id, tests=None)
    assert refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls) == (
        "sign-off missing: tests: the 'tests' stage has no record in the ledger (the suites did not run)")

    ledger.upsert_stage(release_id, "tests", status="failed")  # it failed, then was marked success
    ledger.upsert_test_result(release_id, "unit", "test_cart.test_bulk_discount", outcome="failed")
    assert refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls) == (
        "sign-off missing: tests: the 'tests' stage is 'failed', not 'success'; "
        "tests: 1 failing test(s): unit::test_cart.test_bulk_discount")


def test_the_authors_approval_does_not_count(fleet_on_v1_0_0, make_context, ledger, release_id, calls, no_api):
    record_signoff(ledger, release_id, approvers=("qa1", "dev"))
    assert refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls) == (
        "sign-off missing: 1 of 2 required approval(s); counted: qa1; not counted: dev (the run's author)")


def test_a_complete_sign_off_lets_the_wave_deploy(fleet_on_v1_0_0, make_context, ledger, release_id, no_api):
    record_signoff(ledger, release_id)

    result = deploy_wave().execute(make_context())

    assert result["changed"] == WAVE
    assert state(fleet_on_v1_0_0, "prod-1")["serves"] == "v1.1.0"
    assert state(fleet_on_v1_0_0, "prod-2")["serves"] == SEED


def test_approvals_are_cross_checked_with_airflows_records(fleet_on_v1_0_0, make_context, ledger, release_id, calls,
                                                           api, capsys):
    record_signoff(ledger, release_id)
    api.answer("qa_signoff.approval_1", "qa1")
    api.answer("qa_signoff.approval_2", None, None, received=False)  # never answered: its state was set by hand

    assert refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls) == (
        "sign-off missing: 1 of 2 required approval(s); counted: qa1; not counted: qa2 (no Approve answer by "
        "them in Airflow's Required Actions)")

    api.answer("qa_signoff.approval_2", "qa2", "Reject")
    assert "qa2 rejected in Airflow's Required Actions (qa_signoff.approval_2 (try 1))" in refused(
        fleet_on_v1_0_0, deploy_wave(), make_context(), calls)

    api.answer("qa_signoff.approval_2", "qa2")
    result = deploy_wave().execute(make_context())
    assert result["changed"] == WAVE
    assert ("Cross-checked with Airflow's Required Actions: qa1 approved qa_signoff.approval_1 (try 1); qa2 "
            "approved qa_signoff.approval_2 (try 1)") in capsys.readouterr().out


def test_an_unreadable_api_never_passes(fleet_on_v1_0_0, make_context, ledger, release_id, calls, api, monkeypatch):
    record_signoff(ledger, release_id)
    api.answer("qa_signoff.approval_1", "qa1")
    api.answer("qa_signoff.approval_2", "qa2")
    api.fail_reads = True
    message = refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls, SignoffUnverified)
    assert message.startswith("could not verify sign-off: reading Airflow's Required Actions through connection "
                              "conveyor_airflow_api failed: ")
    assert "HTTP 500" in message

    api.fail_reads = False
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", api.connection(password="wrong"))
    assert "login as 'conveyor' refused" in refused(fleet_on_v1_0_0, deploy_wave(), make_context(), calls,
                                                    SignoffUnverified)
