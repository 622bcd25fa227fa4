"""The fleet operators (deploy, plan waves, roll back) run against the local fleet, with a real ledger.

Each test asserts what a release engineer would check: the versions the hosts serve (``app/current``
and /health), which apps were restarted (pids), the ledger's rows, and the error a failed task
raises.
"""

from __future__ import annotations

import pytest

from conveyor.exceptions import DeployError, HealthCheckError, RollbackError
from conveyor.operators.deploy import DeployOperator, PlanWavesOperator, RollbackOperator
from tests.conveyor.hooks.fleet_support import SEED, artifact, hosts, state, write_service
from tests.conveyor.operators.operator_support import host_rows, operator_kwargs, plan_of, stage_row


def deploy_wave(version: str, plan: dict, wave: int) -> DeployOperator:
    return DeployOperator(artifact=artifact(version).to_dict(), environment="production", plan=plan, wave=wave,
                          **operator_kwargs(f"wave_{wave + 1}.deploy"))


def fleet_move(name: str, version: str) -> None:
    """Move one host to ``version`` the way a release does (one session, then its health)."""
    from conveyor.health import wait_healthy
    from conveyor.hooks.fleet import FleetHook

    host, info = hosts()[name], artifact(version)
    with FleetHook("conveyor_fleet").session(host) as session:
        session.deploy(info, info.tarball)
    wait_healthy(host, version, timeout_s=10, interval_s=0.2)


# ------------------------------------------------------------------------------------- deploy
def test_an_empty_wave_touches_no_host(fleet_on_v1_0_0, make_context, ledger, release_id, calls):
    fleet = fleet_on_v1_0_0
    plan = plan_of(["prod-1"], [["prod-1"], []])
    before = {n: state(fleet, n) for n in hosts("production")}

    result = deploy_wave("v1.1.0", plan, 1).execute(make_context())

    assert result == {"hosts": [], "changed": []}
    assert calls["connect"] == []  # not even a look at a host
    assert {n: state(fleet, n) for n in hosts("production")} == before
    release = ledger.get_release(release_id)
    assert release["hosts"] == []
    assert stage_row(release, "wave_2.deploy")["status"] == "success"


def test_a_host_already_on_the_version_is_recorded_unchanged(fleet_on_v1_0_0, make_context, ledger, release_id):
    fleet = fleet_on_v1_0_0
    plan = plan_of(["prod-1", "prod-2"], [["prod-1", "prod-2"]])
    before = {n: state(fleet, n) for n in ("prod-1", "prod-2")}

    result = deploy_wave(SEED, plan, 0).execute(make_context())

    assert result["hosts"] == ["prod-1", "prod-2"] and result["changed"] == []
    assert {n: state(fleet, n) for n in ("prod-1", "prod-2")} == before  # same pids, same current
    rows = host_rows(ledger.get_release(release_id))
    assert {n: (r["environment"], r["wave"], r["from_version"], r["to_version"], r["status"])
            for n, r in rows.items()} == {n: ("production", "wave-1", SEED, SEED, "unchanged")
                                          for n in ("prod-1", "prod-2")}


def test_a_wave_that_does_not_start_fails_naming_its_hosts(fleet_on_v1_0_0, make_context, ledger, release_id):
    """v1.3.0 needs a setting only the replica has: its app exits at once on production hosts.

    ``bin/restart`` normally sees the app die (DeployError with the app's own words); on a slow
    machine the app may outlive restart's 0.3 s check, and then the health check names the hosts.
    """
    fleet = fleet_on_v1_0_0
    wave = ["prod-1", "prod-2"]
    plan = plan_of(wave + ["prod-3"], [wave, ["prod-3"]])
    untouched = state(fleet, "prod-3")

    with pytest.raises((DeployError, HealthCheckError)) as failed:
        deploy_wave("v1.3.0", plan, 0).execute(make_context())

    message = str(failed.value)
    # Every host of the wave is named, whichever way it failed (restart saw the app die, or the host
    # never answered healthy); the host outside the wave is not.
    assert all(name in message for name in wave) and "prod-3" not in message, message
    died = [name for name in wave if f"{name}: restart failed" in message]
    assert (failed.type is DeployError) == bool(died), message
    if died:
        assert message.startswith("deploy failed on ")
        assert "required setting(s) SHOP_PAYMENT_GATEWAY not set" in message  # the app log's tail
    for name in wave:
        assert state(fleet, name)["current"] == "v1.3.0"
        assert state(fleet, name)["serves"] is None
    assert state(fleet, "prod-3") == untouched
    rows = host_rows(ledger.get_release(release_id))
    assert sorted(rows) == wave
    # a host whose restart failed is "failed"; one that switched but never answered is "deployed" (it changed)
    assert {n: (r["environment"], r["wave"], r["from_version"], r["to_version"], r["status"])
            for n, r in rows.items()} == {
        n: ("production", "wave-1", SEED, "v1.3.0", "failed" if n in died else "deployed") for n in wave}


def test_a_host_failing_health_is_named(fleet_on_v1_0_0, tmp_path, make_context, ledger, release_id):
    """Two hosts deploy v1.1.0; one's health URL answers for a host still on v1.0.0 (a wrong
    inventory entry), so only that one never looks healthy on the new version."""
    fleet = fleet_on_v1_0_0
    write_service(tmp_path / "services", health={"timeout_s": 2, "interval_s": 0.2})
    plan = plan_of(["prod-4", "prod-5"], [["prod-4", "prod-5"]])
    plan["hosts"][1]["health_url"] = hosts()["prod-6"].health_url

    with pytest.raises(HealthCheckError) as failed:
        deploy_wave("v1.1.0", plan, 0).execute(make_context())

    assert str(failed.value) == "prod-5 not healthy on v1.1.0 after 2 s: answers version 'v1.0.0', expected 'v1.1.0'"
    assert state(fleet, "prod-4")["serves"] == "v1.1.0"
    assert state(fleet, "prod-5")["current"] == "v1.1.0"
    rows = host_rows(ledger.get_release(release_id))
    assert {n: (r["from_version"], r["to_version"], r["status"]) for n, r in rows.items()} == {
        "prod-4": (SEED, "v1.1.0", "deployed"), "prod-5": (SEED, "v1.1.0", "deployed")}


# ------------------------------------------------------------------------------------ rollback
def test_rollback_returns_only_the_hosts_that_moved(fleet_on_v1_0_0, make_context, ledger, release_id):
    fleet = fleet_on_v1_0_0
    names = ["prod-1", "prod-2", "prod-3"]
    plan = plan_of(names, [["prod-1", "prod-2"], ["prod-3"]])
    deploy_wave("v1.1.0", plan, 0).execute(make_context())
    moved = {n: state(fleet, n) for n in names}
    assert [moved[n]["serves"] for n in names] == ["v1.1.0", "v1.1.0", SEED]

    op = RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))
    result = op.execute(make_context({"plan": plan}))

    assert result["status"] == "rolled back"
    assert result["rolled_back"] == ["prod-1", "prod-2"] and result["touched"] == ["prod-1", "prod-2"]
    after = {n: state(fleet, n) for n in names}
    assert {n: (s["current"], s["serves"]) for n, s in after.items()} == dict.fromkeys(names, (SEED, SEED))
    assert after["prod-1"]["pid"] != moved["prod-1"]["pid"] and after["prod-2"]["pid"] != moved["prod-2"]["pid"]
    assert after["prod-3"]["pid"] == moved["prod-3"]["pid"]
    rollbacks = ledger.get_release(release_id)["rollbacks"]
    assert [(r["host"], r["from_version"], r["to_version"], r["status"]) for r in rollbacks] == [
        ("prod-1", "v1.1.0", SEED, "rolled back"), ("prod-2", "v1.1.0", SEED, "rolled back")]

    # A rerun (the first try killed after its work, say) changes no host and records the same rollback:
    # the hosts this release deployed were rolled back.
    again = op.execute(make_context({"plan": plan}))
    assert again["status"] == "rolled back" and again["rolled_back"] == ["prod-1", "prod-2"]
    assert {n: state(fleet, n) for n in names} == after
    assert [(r["host"], r["from_version"], r["to_version"], r["status"])
            for r in ledger.get_release(release_id)["rollbacks"]] == [
        ("prod-1", "v1.1.0", SEED, "rolled back"), ("prod-2", "v1.1.0", SEED, "rolled back")]


def test_rollback_of_a_host_that_had_no_version_is_a_clear_error(fleet_on_v1_0_0, make_context, ledger, release_id):
    fleet = fleet_on_v1_0_0
    plan = plan_of(["prod-5", "prod-6"], [["prod-5", "prod-6"]], original={"prod-5": None, "prod-6": SEED})
    before = {n: state(fleet, n) for n in ("prod-5", "prod-6")}

    op = RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))
    with pytest.raises(RollbackError, match=r"prod-5 had no version before this release"):
        op.execute(make_context({"plan": plan}))

    assert {n: state(fleet, n) for n in ("prod-5", "prod-6")} == before
    rollbacks = ledger.get_release(release_id)["rollbacks"]
    assert [r["host"] for r in rollbacks] == ["prod-5"]
    assert rollbacks[0]["status"].startswith("failed: ")
    assert "had no version before this release" in rollbacks[0]["status"]
    assert rollbacks[0]["to_version"] is None


def test_rollback_without_a_plan_touches_nothing(fleet_on_v1_0_0, make_context, ledger, release_id, calls):
    fleet = fleet_on_v1_0_0
    before = {n: state(fleet, n) for n in hosts()}

    op = RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))
    result = op.execute(make_context({"plan": None}))

    assert result == {"rolled_back": [], "touched": [], "status": "nothing to roll back"}
    assert calls["connect"] == []
    assert {n: state(fleet, n) for n in hosts()} == before
    release = ledger.get_release(release_id)
    assert release["rollbacks"] == [] and release["hosts"] == []
    assert stage_row(release, "rollback")["detail"]["status"] == "nothing to roll back"


# ---------------------------------------------------------------------------------- plan waves
def test_a_rerun_of_plan_waves_returns_the_first_plan(fleet_on_v1_0_0, make_context, ledger, release_id):
    op = PlanWavesOperator(n_waves=4, **operator_kwargs("plan"))
    first = op.execute(make_context())
    assert first["original"] == dict.fromkeys(sorted(hosts("production")), SEED)
    assert [len(w) for w in first["waves"]] == [1, 1, 1, 3]

    fleet_move("prod-1", "v1.1.0")  # the fleet changes under the release
    second = PlanWavesOperator(n_waves=4, **operator_kwargs("plan")).execute(make_context())

    assert second == first
    assert second["original"]["prod-1"] == SEED
    assert stage_row(ledger.get_release(release_id), "plan")["status"] == "success"


def test_plan_waves_of_another_release_sees_the_fleet_as_it_is(fleet_on_v1_0_0, make_context, ledger, run_id):
    """The reuse is per release: another run plans afresh (and sees the moved host)."""
    from types import SimpleNamespace

    PlanWavesOperator(n_waves=4, **operator_kwargs("plan")).execute(make_context())
    fleet_move("prod-1", "v1.1.0")
    other = make_context()
    other["dag_run"] = SimpleNamespace(run_id=run_id + "_other", dag_id="release_demo_shop", triggering_user_name="dev")

    plan = PlanWavesOperator(n_waves=4, **operator_kwargs("plan")).execute(other)

    assert plan["original"]["prod-1"] == "v1.1.0"


# ------------------------------------------------------------- a try killed between switch and restart
def _switch_without_restart(name: str, version: str) -> None:
    """What a try killed halfway leaves: ``version`` staged and ``current`` switched to it, the app not
    restarted (the session's raw calls, the same ``conveyor-remote.sh`` steps ``deploy`` takes)."""
    from conveyor.hooks.fleet import FleetHook

    info = artifact(version)
    incoming = f".conveyor/incoming/{info.key.rsplit('/', 1)[-1]}"
    with FleetHook("conveyor_fleet").session(hosts()[name]) as session:
        session.upload(info.tarball, incoming)
        for step in (("stage", "app", version, info.sha256, incoming), ("activate", "app", version)):
            result = session.remote(*step)
            assert result.ok, result.describe()


def test_a_rollback_retried_after_an_interrupted_switch_puts_the_app_back(fleet_on_v1_0_0, make_context, ledger):
    fleet = fleet_on_v1_0_0
    plan = plan_of(["prod-1", "prod-2"], [["prod-1"], ["prod-2"]])
    deploy_wave("v1.1.0", plan, 0).execute(make_context())
    _switch_without_restart("prod-1", SEED)  # the rollback's first try, killed before bin/restart
    assert state(fleet, "prod-1")["current"] == SEED and state(fleet, "prod-1")["serves"] == "v1.1.0"

    result = RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback")).execute(make_context({"plan": plan}))

    assert state(fleet, "prod-1")["serves"] == SEED, result


def test_a_deploy_retried_after_an_interrupted_switch_finishes_it(fleet_on_v1_0_0, tmp_path, make_context, ledger):
    fleet = fleet_on_v1_0_0
    write_service(tmp_path / "services", health={"timeout_s": 2, "interval_s": 0.2})
    plan = plan_of(["prod-2"], [["prod-2"]])
    _switch_without_restart("prod-2", "v1.1.0")  # the first try, killed before bin/restart
    assert state(fleet, "prod-2")["current"] == "v1.1.0" and state(fleet, "prod-2")["serves"] == SEED

    deploy_wave("v1.1.0", plan, 0).execute(make_context())

    assert state(fleet, "prod-2")["serves"] == "v1.1.0"

