"""A wave whose host hangs: the host is cut at its bound, counted as a failed host, and the wave is rolled
back, the rollback's own steps bounded too (the lab's ``sftp-stall`` and ``exec-stall`` faults on the
local fleet, and a service file whose ``deploy.timeouts`` are 2 s so each test is quick).
"""

from __future__ import annotations

import pytest

from conveyor.exceptions import DeployError, RollbackError
from conveyor.operators.deploy import DeployOperator, RollbackOperator
from tests.conveyor.hooks.fleet_support import SEED, artifact, returns, state, write_service
from tests.conveyor.operators.operator_support import host_rows, operator_kwargs, plan_of, stage_row
from tests.conveyor.operators.signoff_support import record_signoff

BOUND_S = 2
WAVE = ["prod-1", "prod-2"]


@pytest.fixture
def hung_fleet(fleet_on_v1_0_0, tmp_path, ledger, release_id):
    """The fleet with quick bounds in the service file and a signed-off release; every injected fault
    is healed at the end."""
    record_signoff(ledger, release_id)
    write_service(tmp_path / "services", timeouts={"connect_s": 5, "command_s": BOUND_S, "upload_s": BOUND_S})
    yield fleet_on_v1_0_0
    fleet_on_v1_0_0.heal()


def deploy_wave(plan: dict) -> DeployOperator:
    return DeployOperator(artifact=artifact("v1.1.0").to_dict(), environment="production", plan=plan, wave=0,
                          **operator_kwargs("wave_1.deploy"))


def rollback() -> RollbackOperator:
    return RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))


def test_a_host_that_stops_reading_the_upload_fails_and_the_wave_rolls_back(hung_fleet, make_context, ledger,
                                                                             release_id):
    fleet = hung_fleet
    plan = plan_of([*WAVE, "prod-3"], [WAVE, ["prod-3"]])
    untouched = {n: state(fleet, n) for n in ("prod-2", "prod-3")}
    fleet.inject("prod-2", "sftp-stall")

    with pytest.raises(DeployError) as failed:
        returns(lambda: deploy_wave(plan).execute(make_context()))

    assert str(failed.value) == f"deploy failed on prod-2: prod-2: upload timed out after {BOUND_S} s"
    assert state(fleet, "prod-1")["serves"] == "v1.1.0"
    assert {n: state(fleet, n) for n in untouched} == untouched
    rows = host_rows(ledger.get_release(release_id))
    assert {n: (r["from_version"], r["to_version"], r["status"]) for n, r in rows.items()} == {
        "prod-1": (SEED, "v1.1.0", "deployed"), "prod-2": (SEED, "v1.1.0", "failed")}

    # The rollback uploads nothing, so the stalled SFTP does not stop it: every host is back on v1.0.0.
    result = returns(lambda: rollback().execute(make_context({"plan": plan})))

    assert result["status"] == "rolled back" and result["rolled_back"] == ["prod-1"]
    assert {n: (state(fleet, n)["current"], state(fleet, n)["serves"]) for n in plan_hosts(plan)} == dict.fromkeys(
        plan_hosts(plan), (SEED, SEED))
    assert stage_row(ledger.get_release(release_id), "rollback")["status"] == "success"


def test_a_host_that_hangs_for_good_fails_the_wave_and_the_rollback_names_it(hung_fleet, make_context, ledger,
                                                                            release_id):
    fleet = hung_fleet
    plan = plan_of([*WAVE, "prod-3"], [WAVE, ["prod-3"]])
    fleet.inject("prod-2", "exec-stall")  # commands never start: the host is hung

    with pytest.raises(DeployError) as failed:
        returns(lambda: deploy_wave(plan).execute(make_context()))
    assert str(failed.value) == f"deploy failed on prod-2: prod-2: current timed out after {BOUND_S} s"
    assert state(fleet, "prod-1")["serves"] == "v1.1.0"

    with pytest.raises(RollbackError) as incomplete:
        returns(lambda: rollback().execute(make_context({"plan": plan})))

    assert str(incomplete.value) == f"rollback incomplete: prod-2: prod-2: current timed out after {BOUND_S} s"
    assert (state(fleet, "prod-1")["current"], state(fleet, "prod-1")["serves"]) == (SEED, SEED)
    rollbacks = {r["host"]: r for r in ledger.get_release(release_id)["rollbacks"]}
    assert (rollbacks["prod-1"]["from_version"], rollbacks["prod-1"]["status"]) == ("v1.1.0", "rolled back")
    assert rollbacks["prod-2"]["status"] == f"failed: prod-2: current timed out after {BOUND_S} s"
    fleet.heal("prod-2")
    assert state(fleet, "prod-2")["current"] == SEED  # it never left v1.0.0: nothing ran on it


def plan_hosts(plan: dict) -> list[str]:
    return [h["name"] for h in plan["hosts"]]
