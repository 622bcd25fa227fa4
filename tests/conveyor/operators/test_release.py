"""``FinalizeReleaseOperator`` on the local fleet: it checks the planned hosts, closes the release in the
ledger and prunes old release directories on every host (the service keeps 2 besides current and
previous)."""

from __future__ import annotations

import shutil

import pytest

from conveyor.exceptions import DeployError
from conveyor.operators.release import FinalizeReleaseOperator
from tests.conveyor.hooks.fleet_support import SEED, artifact, hosts, release_dirs, state
from tests.conveyor.operators.operator_support import operator_kwargs, plan_of, stage_row

PLANNED = ["prod-4", "prod-5"]


def finalize(version: str, plan: dict) -> FinalizeReleaseOperator:
    return FinalizeReleaseOperator(artifact=artifact(version).to_dict(), plan=plan, **operator_kwargs("finalize"))


def deploy_in_turn(names: list[str], versions: list[str]) -> None:
    """Each host through ``versions`` one after another (each staged, activated and restarted)."""
    from conveyor.health import wait_healthy
    from conveyor.hooks.fleet import FleetHook
    from conveyor.parallel import for_each_host

    def one(host):
        with FleetHook("conveyor_fleet").session(host) as session:
            for version in versions:
                session.deploy(artifact(version), artifact(version).tarball)
        return wait_healthy(host, versions[-1], timeout_s=10, interval_s=0.2)

    _, errors = for_each_host([hosts()[n] for n in names], one, max_parallel=len(names))
    assert not errors, errors


def test_finalize_closes_the_release_and_prunes_old_releases(fleet_on_v1_0_0, make_context, ledger, release_id):
    fleet = fleet_on_v1_0_0
    for name in PLANNED:  # a known history: only the seed version staged
        for old in release_dirs(fleet, name) - {SEED}:
            shutil.rmtree(fleet.host_home(name) / "app" / "releases" / old)
    deploy_in_turn(PLANNED, ["v1.1.0", "v1.2.0", "v1.4.0", "v1.6.0", "v1.5.0"])
    before = {n: state(fleet, n) for n in PLANNED}
    replicas = {n: (state(fleet, n), release_dirs(fleet, n)) for n in hosts("replica")}

    result = finalize("v1.5.0", plan_of(PLANNED, [PLANNED], original=dict.fromkeys(PLANNED, SEED))).execute(
        make_context())

    # current v1.5.0, previous v1.6.0, and the 2 newest others; v1.1.0 and the seed v1.0.0 go
    for name in PLANNED:
        assert release_dirs(fleet, name) == {"v1.5.0", "v1.6.0", "v1.4.0", "v1.2.0"}, name
        assert result["pruned"][name] == "kept 2 (+ current v1.5.0, previous v1.6.0), pruned 2"
    assert {n: state(fleet, n) for n in PLANNED} == before  # pruning restarts nothing
    for name, (was, dirs) in replicas.items():  # replicas are pruned too, never their current one
        assert state(fleet, name) == was and SEED in release_dirs(fleet, name) <= dirs
    assert sorted(result["pruned"]) == sorted(PLANNED + list(hosts("replica")))
    assert result["status"] == "success" and result["version"] == "v1.5.0"
    release = ledger.get_release(release_id)
    assert release["status"] == "success" and release["finished_at"] is not None
    assert stage_row(release, "finalize")["status"] == "success"


def test_finalize_refuses_when_a_planned_host_runs_another_version(fleet_on_v1_0_0, make_context, ledger,
                                                                 release_id):
    fleet = fleet_on_v1_0_0
    deploy_in_turn(["prod-4"], ["v1.1.0"])
    dirs = {n: release_dirs(fleet, n) for n in hosts()}

    with pytest.raises(DeployError) as refused:
        finalize("v1.1.0", plan_of(PLANNED, [PLANNED])).execute(make_context())

    assert str(refused.value) == "not every production host runs v1.1.0: prod-5 runs v1.0.0"
    assert {n: release_dirs(fleet, n) for n in hosts()} == dirs  # nothing pruned
    release = ledger.get_release(release_id)
    assert release["status"] == "running" and release["finished_at"] is None
    assert stage_row(release, "finalize")["status"] == "running"  # the DAG's failure callback marks it failed
