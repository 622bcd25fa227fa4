"""Host and fleet faults of ``make faults``: one real fault on the loopback fleet per scenario, then what
the release does about it, with its own operators.

A production wave is deployed with ``DeployOperator`` (the sign-off evidence is in the test's ledger);
when a task fails, the test goes on as the DAG's failure path does (``failure_path``: the failure
callback, ``release_failed``, ``rollback``, ``ticket``, ``fail_run``). Each scenario ends with the issue's
guarantees: every production host on one known version (its ``current`` link on disk and what its
``/health`` answers, looked at without Conveyor's code), the task failed or succeeded as it should, the
ledger's host, rollback and stage rows as expected (none lost, none twice), a ticket that tells the
truth, and a message that names the host and the cause.

The service file is the demo's with small bounds (2 s per remote step, a 4 s health wait, 1 s probes),
so each scenario takes seconds; ``returns`` guards every call against a hang (a guard, not a timing
assertion). Waves are two hosts (prod-1, prod-2) with prod-3 planned for a later wave.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from conveyor.exceptions import AnalysisFailed, DeployError, HealthCheckError
from conveyor.operators.deploy import DeployOperator
from tests.conveyor.hooks.fleet_support import (  # noqa: F401 - fixtures
    artifact,
    calls,
    fleet_env,
    fleet_on_v1_0_0,
    local_fleet,
    release_dirs,
    returns,
)
from tests.conveyor.operators.conftest import (  # noqa: F401 - fixtures
    bare_ledger,
    ledger,
    ledger_path,
    make_context,
    release_id,
    run_id,
)
from tests.conveyor.operators.operator_support import operator_kwargs, plan_of
from tests.faults.hosts_support import (
    ACT,
    BOUND_S,
    GARBAGE,
    HEALTH_S,
    NEXT,
    PROBE_S,
    SEED,
    BadMetrics,
    TrickleHealth,
    assert_on,
    closed_port,
    exposition,
    failure_path,
    host_rows,
    member,
    nan_exposition,
    new_ssh_key,
    on_disk,
    rollback_rows,
    serves,
    stages,
    store_artifact,
    versions,
    when,
    write_fault_service,
)

WAVE = ["prod-1", "prod-2"]
PLANNED = [*WAVE, "prod-3"]


@pytest.fixture
def fault_fleet(fleet_on_v1_0_0, tmp_path, ledger, release_id):  # noqa: F811
    """The fleet on v1.0.0, the fault service file, a signed-off release of v1.1.0; faults healed after."""
    for version in (SEED, NEXT):  # built into the session's store before a test points its service elsewhere
        artifact(version)
    ledger.upsert_release(release_id, version=NEXT)  # what build records
    write_fault_service(tmp_path / "services")
    yield fleet_on_v1_0_0
    fleet_on_v1_0_0.heal()


def wave_plan(**hosts: dict) -> dict:
    """prod-1 and prod-2 in wave 1, prod-3 in wave 2; ``hosts`` overrides fields of a host's record."""
    plan = plan_of(PLANNED, [WAVE, ["prod-3"]])
    for record in plan["hosts"]:
        record.update(hosts.get(record["name"].replace("-", "_"), {}))
    return plan


def deploy(plan: dict, wave: int = 0, info: dict | None = None) -> DeployOperator:
    return DeployOperator(artifact=info or artifact(NEXT).to_dict(), environment="production", plan=plan, wave=wave,
                          **operator_kwargs(f"wave_{wave + 1}.deploy"))


def deploy_fails(plan: dict, *, context: dict, op: DeployOperator | None = None,
                 kinds: tuple = (DeployError,)) -> tuple[DeployOperator, Exception]:
    """The wave's deploy (``op``, or wave 1 of ``plan``), which must fail with one of ``kinds``."""
    op = op or deploy(plan)
    with pytest.raises(kinds) as failed:
        returns(lambda: op.execute(context))
    return op, failed.value


def ticket_says(path, *lines: str) -> None:
    """The ticket's body has each line."""
    body = path.stored["body"]
    for line in lines:
        assert line in body, f"{line!r} not in the ticket:\n{body}"


def hosts_touched(*rows: str) -> list[str]:
    return [f"- {row}" for row in rows]


# ====================================================================================== 1. host killed
@pytest.mark.fault(name="host killed mid-deploy (dies after its upload)",
                   guarantee="the wave fails on that host, the rollback returns every host to v1.0.0")
def test_a_host_that_dies_in_the_middle_of_its_deploy(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    """prod-2 dies right after it received the artifact: its app is killed (SIGKILL) and it never runs
    another command (its SSH server accepts and then does nothing, as a host whose kernel hangs: nothing
    comes back, so Conveyor sees a stall, not an error). The moment is caught by holding its upload
    (``sftp-stall``) until the watcher has struck. It comes back (a reboot: faults healed, its app not
    running) before the rollback, which must restart it on v1.0.0."""
    from conveyor_lab.fleet import layout

    fleet = fault_fleet
    plan = wave_plan()
    incoming = fleet.host_home("prod-2") / ".conveyor" / "incoming"
    app = fleet.app_pid(fleet.spec.host("prod-2"))
    fleet.inject("prod-2", "sftp-stall")

    def dies() -> None:
        fleet.inject("prod-2", "exec-stall")  # from now on nothing starts on it
        os.kill(app, signal.SIGKILL)  # and its app is gone
        layout.write_atomic(fleet.paths.fault_file(fleet.spec.host("prod-2")), "exec-stall\n")  # the upload lands

    with when(lambda: incoming.is_dir() and any(p.name.endswith(".part") for p in incoming.iterdir()), dies) as hit:
        op, error = deploy_fails(plan, context=make_context())
    assert hit["done"] and hit["error"] is None, hit

    assert str(error) == f"deploy failed on prod-2: prod-2: stage timed out after {BOUND_S} s"
    assert versions(fleet, ["prod-1", "prod-2"]) == {"prod-1": (NEXT, NEXT), "prod-2": (SEED, None)}
    fleet.heal("prod-2")  # it reboots: reachable again, its app not started

    path = failure_path(make_context, op, error, plan=plan)

    assert path.rollback_error is None and path.rollback["status"] == "rolled back"
    assert path.rollback["rolled_back"] == WAVE  # prod-2's app restarted on its version
    assert_on(fleet, PLANNED, SEED)
    assert host_rows(ledger, release_id) == {"prod-1": ("production", "wave-1", SEED, NEXT, "deployed"),
                                             "prod-2": ("production", "wave-1", SEED, NEXT, "failed")}
    assert rollback_rows(ledger, release_id) == {"prod-1": (NEXT, SEED, "rolled back"),
                                                 "prod-2": (SEED, SEED, "rolled back")}
    assert stages(ledger, release_id)["wave_1.deploy"] == "failed"
    assert stages(ledger, release_id)["rollback"] == "success"
    assert path.stored["failed_stage"] == "wave_1.deploy" and path.stored["action_required"] is None
    ticket_says(path, "stage timed out", *hosts_touched(f"prod-1 (wave-1): {SEED} -> {NEXT} [deployed]",
                                                       f"prod-2 (wave-1): {SEED} -> {NEXT} [failed]"),
                "- rollback: rolled back; rolled back: prod-1, prod-2")
    assert path.message.startswith("release failed at wave_1.deploy: DeployError: deploy failed on prod-2: "
                                   f"prod-2: stage timed out after {BOUND_S} s; rollback: rolled back")


@pytest.mark.fault(name="host's app killed mid-wave",
                   guarantee="the wave fails on that host (restart or health), the rollback returns every host")
def test_a_host_whose_app_is_killed_as_it_starts(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    """prod-2's new app process is killed (SIGKILL, as the OOM killer would) the moment ``bin/restart``
    starts it; its restart or its health check then fails, never the whole wave silently."""
    fleet = fault_fleet
    plan = wave_plan()
    host = fleet.spec.host("prod-2")
    before = fleet.app_pid(host)
    killed: list[int] = []

    def new_app() -> bool:
        pid = fleet.app_pid(host)
        return pid is not None and pid != before

    def kill() -> None:
        pid = fleet.app_pid(host)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    with when(new_app, kill) as hit:
        op, error = deploy_fails(plan, context=make_context(), kinds=(DeployError, HealthCheckError))
    assert hit["done"] and hit["error"] is None, hit

    message = str(error)
    assert "prod-2" in message and "prod-1" not in message, message
    assert (message.startswith("deploy failed on prod-2: restart failed: prod-2: exit 1: ")
            or message.startswith(f"prod-2 not healthy on {NEXT} after {HEALTH_S} s")), message
    assert versions(fleet, WAVE) == {"prod-1": (NEXT, NEXT), "prod-2": (NEXT, None)}

    path = failure_path(make_context, op, error, plan=plan)

    assert path.rollback_error is None and path.rollback["rolled_back"] == WAVE
    assert_on(fleet, PLANNED, SEED)
    assert fleet.app_pid(host) not in (None, *killed)
    rows = host_rows(ledger, release_id)
    assert rows["prod-1"] == ("production", "wave-1", SEED, NEXT, "deployed")
    assert rows["prod-2"][:4] == ("production", "wave-1", SEED, NEXT) and set(rows) == set(WAVE)
    assert rollback_rows(ledger, release_id) == dict.fromkeys(WAVE, (NEXT, SEED, "rolled back"))
    assert path.stored["failed_stage"] == "wave_1.deploy" and "prod-2" in path.stored["error"]
    assert path.message.startswith("release failed at wave_1.deploy: ") and "prod-2" in path.message


# ================================================================================= 2-3. SSH identity
@pytest.fixture
def fleet_connection(fault_fleet, monkeypatch):
    """``fleet_connection(**extra)`` makes the fleet's SSH connection carry other extras (a key, a host
    key); the real connection is back before the fleet is looked at and put back."""

    def use(**extra: str) -> None:
        conn = fault_fleet.connection()
        conn["extra"].update(extra)
        monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_FLEET", json.dumps(conn))

    yield use
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_FLEET", fault_fleet.connection_uri())


@pytest.mark.fault(name="SSH authentication failure",
                   guarantee="no host changes; the message says authentication failed, naming the hosts")
def test_a_fleet_connection_with_the_wrong_key(fault_fleet, fleet_connection, tmp_path, make_context,  # noqa: F811
                                               ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    plan = wave_plan()
    before = {n: (on_disk(fleet, n), serves(fleet, n), fleet.app_pid(fleet.spec.host(n))) for n in PLANNED}
    key, _ = new_ssh_key(tmp_path / "wrong")
    fleet_connection(key_file=str(key))

    op, error = deploy_fails(plan, context=make_context())

    message = str(error)
    assert message.startswith("deploy failed on prod-1: ") and "; prod-2: " in message, message
    assert message.lower().count("authentication failed") == 2, message
    path = failure_path(make_context, op, error, plan=plan)

    assert {n: (on_disk(fleet, n), serves(fleet, n), fleet.app_pid(fleet.spec.host(n))) for n in PLANNED} == before
    # Conveyor cannot see the hosts: the rollback says so, and so does the ticket, host by host.
    assert path.rollback_error is not None and "authentication failed" in str(path.rollback_error).lower()
    assert set(path.stored["host_versions"]) == set(PLANNED)
    assert all(v.startswith("unreachable: ") and "authentication failed" in v.lower()
               for v in path.stored["host_versions"].values()), path.stored["host_versions"]
    assert path.stored["action_required"].startswith(ACT)
    assert rollback_rows(ledger, release_id) == {
        n: (None, SEED, "failed: Authentication failed.") for n in PLANNED}
    assert host_rows(ledger, release_id) == dict.fromkeys(WAVE, ("production", "wave-1", SEED, NEXT, "failed"))
    assert "authentication failed" in path.message.lower() and ACT in path.message


@pytest.mark.fault(name="host key changed",
                   guarantee="the connection is refused before any command; no host changes; the message names "
                             "the key")
def test_a_host_whose_key_is_not_the_expected_one(fault_fleet, fleet_connection, tmp_path,
                                                  make_context, ledger, release_id):  # noqa: F811
    """The connection expects another host key (the host was replaced, or someone is in the middle)."""
    fleet = fault_fleet
    plan = wave_plan()
    before = {n: (on_disk(fleet, n), serves(fleet, n), fleet.app_pid(fleet.spec.host(n))) for n in PLANNED}
    _, other = new_ssh_key(tmp_path / "other")
    fleet_connection(host_key=other)

    op, error = deploy_fails(plan, context=make_context())

    message = str(error)
    assert message.startswith("deploy failed on prod-1: ") and "; prod-2: " in message, message
    assert message.count("does not match") == 2 and "Host key for server" in message, message
    path = failure_path(make_context, op, error, plan=plan)

    assert {n: (on_disk(fleet, n), serves(fleet, n), fleet.app_pid(fleet.spec.host(n))) for n in PLANNED} == before
    assert all(v.startswith("unreachable: ") and "does not match" in v
               for v in path.stored["host_versions"].values()), path.stored["host_versions"]
    assert path.stored["action_required"].startswith(ACT)
    assert host_rows(ledger, release_id) == dict.fromkeys(WAVE, ("production", "wave-1", SEED, NEXT, "failed"))
    assert "does not match" in path.message and ACT in path.message


# ================================================================================ 4-6. hung hosts
@pytest.mark.fault(name="hung SFTP upload", guarantee="the host fails at upload_s, the wave rolls back")
def test_a_host_that_stops_reading_the_upload(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    plan = wave_plan()
    staged = release_dirs(fleet, "prod-2")
    fleet.inject("prod-2", "sftp-stall")

    op, error = deploy_fails(plan, context=make_context())

    assert str(error) == f"deploy failed on prod-2: prod-2: upload timed out after {BOUND_S} s"
    assert versions(fleet, WAVE) == {"prod-1": (NEXT, NEXT), "prod-2": (SEED, SEED)}
    path = failure_path(make_context, op, error, plan=plan)  # the fault lasts: the rollback uploads nothing

    assert path.rollback_error is None and path.rollback["rolled_back"] == ["prod-1"]
    assert_on(fleet, PLANNED, SEED)
    assert release_dirs(fleet, "prod-2") == staged  # nothing staged
    assert host_rows(ledger, release_id) == {"prod-1": ("production", "wave-1", SEED, NEXT, "deployed"),
                                             "prod-2": ("production", "wave-1", SEED, NEXT, "failed")}
    assert rollback_rows(ledger, release_id) == {"prod-1": (NEXT, SEED, "rolled back")}
    ticket_says(path, f"prod-2: upload timed out after {BOUND_S} s", "- rollback: rolled back; rolled back: prod-1")
    assert path.message.startswith(f"release failed at wave_1.deploy: DeployError: deploy failed on prod-2: prod-2: "
                                   f"upload timed out after {BOUND_S} s; rollback: rolled back; rolled back: prod-1")


@pytest.mark.fault(name="endless output (populate)", guarantee="a populate that prints for ever is cut at command_s")
def test_a_populate_that_prints_for_ever(fault_fleet, tmp_path, make_context, ledger, release_id):  # noqa: F811
    from conveyor.operators.deploy import PopulateReplicaOperator

    fleet = fault_fleet
    write_fault_service(tmp_path / "services", populate={
        "command": "python3 {release_dir}/populate.py --help >/dev/null; while :; do echo populating...; done"})
    replicas = ["replica-1", "replica-2"]
    op = PopulateReplicaOperator(artifact=artifact(SEED).to_dict(), **operator_kwargs("replica.populate"))

    with pytest.raises(DeployError) as failed:
        returns(lambda: op.execute(make_context()))

    assert str(failed.value) == "; ".join(f"{n}: {n}: populate timed out after {BOUND_S} s" for n in replicas)
    path = failure_path(make_context, op, failed.value, plan=None)  # before plan: no production host planned

    assert path.rollback == {"rolled_back": [], "touched": [], "status": "nothing to roll back"}
    assert_on(fleet, [*PLANNED, "prod-4", "prod-5", "prod-6", *replicas], SEED)
    assert host_rows(ledger, release_id) == {} and rollback_rows(ledger, release_id) == {}
    assert stages(ledger, release_id)["replica.populate"] == "failed"
    assert path.stored["failed_stage"] == "replica.populate" and path.stored["hosts_touched"] == []
    ticket_says(path, f"replica-1: replica-1: populate timed out after {BOUND_S} s", "no production host changed")
    assert path.message.startswith("release failed at replica.populate: DeployError: replica-1: replica-1: populate "
                                   f"timed out after {BOUND_S} s")


@pytest.mark.fault(name="endless output (restart)",
                   guarantee="a restart that prints for ever is cut at command_s, in the wave and in the rollback; "
                             "the ticket reads the hosts and says a person must act")
def test_a_restart_command_that_prints_for_ever(fault_fleet, make_context, ledger, release_id, run_id):  # noqa: F811
    """The restart command follows the app's log after restarting it (``bin/restart; tail -f``-like): it
    never exits, in the wave or in the rollback. Both are cut at ``command_s``; the apps did restart."""
    from conveyor.notifiers import read_notifications

    fleet = fault_fleet
    chatty = {"restart": "bin/restart && while :; do echo following the log...; sleep 0.01; done"}
    plan = wave_plan(prod_1=chatty, prod_2=chatty)

    op, error = deploy_fails(plan, context=make_context())

    assert str(error) == "deploy failed on " + "; ".join(f"{n}: {n}: restart timed out after {BOUND_S} s"
                                                        for n in WAVE)
    path = failure_path(make_context, op, error, plan=plan)

    assert str(path.rollback_error) == "rollback incomplete: " + "; ".join(
        f"{n}: {n}: restart timed out after {BOUND_S} s" for n in WAVE)
    assert_on(fleet, PLANNED, SEED)  # switched back, and bin/restart ran before the output began
    assert rollback_rows(ledger, release_id) == {
        n: (None, SEED, f"failed: {n}: restart timed out after {BOUND_S} s") for n in WAVE}
    assert path.stored["host_versions"] == dict.fromkeys(PLANNED, SEED)  # read over SSH for the ticket
    assert path.stored["action_required"].startswith(ACT)
    alerts = [n for n in read_notifications() if n["run_id"] == run_id and n["event"] == "rollback_failed"]
    assert len(alerts) == 1 and ACT in alerts[0]["text"]
    assert f"prod-1: prod-1: restart timed out after {BOUND_S} s" in path.message and ACT in path.message
    assert "hosts now: prod-1 on v1.0.0, prod-2 on v1.0.0, prod-3 on v1.0.0" in path.message


@pytest.mark.fault(name="commands never start (exec-stall)",
                   guarantee="the hung host fails at command_s; the others roll back; ticket and run name it, "
                             "a person must act")
def test_a_host_whose_commands_never_start(fault_fleet, make_context, ledger, release_id, run_id):  # noqa: F811
    from conveyor.notifiers import read_notifications

    fleet = fault_fleet
    plan = wave_plan()
    fleet.inject("prod-2", "exec-stall")

    op, error = deploy_fails(plan, context=make_context())

    assert str(error) == f"deploy failed on prod-2: prod-2: current timed out after {BOUND_S} s"
    path = failure_path(make_context, op, error, plan=plan)  # still hung during the rollback and the ticket

    assert str(path.rollback_error) == f"rollback incomplete: prod-2: prod-2: current timed out after {BOUND_S} s"
    assert_on(fleet, PLANNED, SEED)  # prod-2 never changed: nothing ran on it
    assert rollback_rows(ledger, release_id) == {
        "prod-1": (NEXT, SEED, "rolled back"), "prod-2": (None, SEED, f"failed: prod-2: current timed out after "
                                                                      f"{BOUND_S} s")}
    assert path.stored["host_versions"]["prod-1"] == SEED and path.stored["host_versions"]["prod-3"] == SEED
    assert path.stored["host_versions"]["prod-2"] == (f"unreachable: StepTimeout: prod-2: current timed out after "
                                                      f"{BOUND_S} s")
    assert path.stored["action_required"].startswith(ACT) and "prod-2 unreachable" in path.stored["action_required"]
    assert [n["event"] for n in read_notifications() if n["run_id"] == run_id].count("rollback_failed") == 1
    assert ACT in path.message and "prod-2 unreachable: StepTimeout" in path.message


# =============================================================================== 7. trickling health
@pytest.mark.fault(name="trickling /health (recovers)",
                   guarantee="each probe is cut at probe_timeout_s, the host fails its health check, rolled back")
def test_a_health_url_that_trickles_during_the_wave(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    with TrickleHealth(fleet.spec.host("prod-2").health_url) as health:
        plan = wave_plan(prod_2={"health_url": health.url})

        op, error = deploy_fails(plan, context=make_context(), kinds=(HealthCheckError,))

        assert str(error) == (f"prod-2 not healthy on {NEXT} after {HEALTH_S} s: no complete answer within "
                              f"{PROBE_S} s")
        assert health.requests >= 2  # it was asked again after each cut
        health.mode = "proxy"  # the path to the host recovers: its real answers go through
        path = failure_path(make_context, op, error, plan=plan)

    assert path.rollback_error is None and path.rollback["rolled_back"] == WAVE
    assert_on(fleet, PLANNED, SEED)
    assert host_rows(ledger, release_id) == dict.fromkeys(WAVE, ("production", "wave-1", SEED, NEXT, "deployed"))
    assert rollback_rows(ledger, release_id) == dict.fromkeys(WAVE, (NEXT, SEED, "rolled back"))
    assert path.message.startswith(f"release failed at wave_1.deploy: HealthCheckError: prod-2 not healthy on {NEXT} "
                                   f"after {HEALTH_S} s: no complete answer within {PROBE_S} s; rollback: rolled back")


@pytest.mark.fault(name="trickling /health (for good)",
                   guarantee="the rollback cannot confirm the host: the ticket reads it over SSH and says a person "
                             "must act")
def test_a_health_url_that_never_finishes(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    with TrickleHealth(fleet.spec.host("prod-2").health_url) as health:
        plan = wave_plan(prod_2={"health_url": health.url})
        op, error = deploy_fails(plan, context=make_context(), kinds=(HealthCheckError,))
        path = failure_path(make_context, op, error, plan=plan)

    assert str(path.rollback_error) == (f"rollback incomplete: prod-2: prod-2 not healthy on {SEED} after {HEALTH_S} "
                                        f"s: no complete answer within {PROBE_S} s")
    assert_on(fleet, PLANNED, SEED)  # it is back: only its health could not be read
    assert rollback_rows(ledger, release_id) == {
        "prod-1": (NEXT, SEED, "rolled back"),
        "prod-2": (NEXT, SEED, f"failed: prod-2 not healthy on {SEED} after {HEALTH_S} s: no complete answer within "
                               f"{PROBE_S} s")}
    assert path.stored["host_versions"] == dict.fromkeys(PLANNED, SEED)
    assert path.stored["action_required"].startswith(ACT) and ACT in path.message
    ticket_says(path, f"- prod-2: {SEED} (its version before the release)")


# ======================================================================================= 8. disk full
@pytest.mark.fault(name="disk full on one host",
                   guarantee="'no space left on <host>', nothing half-staged, the others rolled back")
def test_a_host_whose_disk_is_full(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    from tests.include.remote.disk_support import FILLER, full_disk

    fleet = fault_fleet
    plan = wave_plan()
    home = fleet.host_home("prod-2")
    releases, incoming = home / "app" / "releases", home / ".conveyor" / "incoming"
    shutil.rmtree(releases / NEXT, ignore_errors=True)  # a host that never had it: staging it needs room

    with full_disk(releases, free=8 * 1024):
        op, error = deploy_fails(plan, context=make_context())
        left = sorted(p.name for p in releases.iterdir() if p.name != FILLER)
        path = failure_path(make_context, op, error, plan=plan)

    message = str(error)
    assert message.startswith(f"deploy failed on prod-2: no space left on prod-2: staging {NEXT}: "), message
    assert "corrupted" not in message and "checksum" not in message
    assert NEXT not in left and not [n for n in left if n.startswith(".staging")], left
    name = artifact(NEXT).tarball.name
    assert name not in os.listdir(incoming) and f"{name}.part" not in os.listdir(incoming)
    assert path.rollback_error is None and path.rollback["rolled_back"] == ["prod-1"]
    assert_on(fleet, PLANNED, SEED)
    assert host_rows(ledger, release_id)["prod-2"] == ("production", "wave-1", SEED, NEXT, "failed")
    assert rollback_rows(ledger, release_id) == {"prod-1": (NEXT, SEED, "rolled back")}
    ticket_says(path, "no space left on prod-2")
    assert "no space left on prod-2" in path.message and "rollback: rolled back; rolled back: prod-1" in path.message


# ================================================================================ 9-10. bad artifacts
@pytest.mark.fault(name="tampered artifact", guarantee="refused before any host is contacted; nothing changes")
def test_an_artifact_changed_after_the_build(fault_fleet, tmp_path, make_context, ledger,  # noqa: F811
                                             release_id, calls):  # noqa: F811
    fleet = fault_fleet
    info = artifact(NEXT)
    store = tmp_path / "store"
    stored = store / info.key
    stored.parent.mkdir(parents=True)
    for src in info.tarball.parent.iterdir():
        shutil.copy2(src, stored.parent / src.name)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the stored tarball
    stored.write_bytes(bytes(data))
    write_fault_service(tmp_path / "services", artifact_store={"url": f"file://{store}"})
    plan = wave_plan()
    before = {n: (on_disk(fleet, n), serves(fleet, n), fleet.app_pid(fleet.spec.host(n))) for n in PLANNED}

    op, error = deploy_fails(plan, context=make_context(), kinds=(Exception,))

    assert type(error).__name__ == "ArtifactError"
    assert str(error).startswith(f"artifact {info.key} is corrupted: sha256 ") and info.sha256 in str(error)
    assert calls["connect"] == []  # refused before any SSH connection
    path = failure_path(make_context, op, error, plan=plan)

    assert {n: (on_disk(fleet, n), serves(fleet, n), fleet.app_pid(fleet.spec.host(n))) for n in PLANNED} == before
    assert host_rows(ledger, release_id) == {} and rollback_rows(ledger, release_id) == {}
    assert path.rollback["status"] == "nothing to roll back"
    assert path.stored["hosts_touched"] == [] and path.stored["action_required"] is None
    assert path.message.startswith(f"release failed at wave_1.deploy: ArtifactError: artifact {info.key} is "
                                   "corrupted: sha256 ")


SLIPS = {  # each also carries the real v1.1.0's files; ``outside`` is a directory of the test
    "dotdot": lambda outside: [member("../" * 32 + str(outside / "slipped").lstrip("/"))],
    "absolute": lambda outside: [member(str(outside / "slipped"))],
    "symlink": lambda outside: [member("escape", symlink_to=str(outside)), member("escape/slipped")],
}


@pytest.mark.parametrize("slip", list(SLIPS))
@pytest.mark.fault(name="tar slip", guarantee="an artifact with members outside its directory is refused on every "
                                              "host; nothing is written outside; nothing changes")
def test_an_artifact_whose_members_escape_its_directory(fault_fleet, tmp_path, make_context, ledger,  # noqa: F811
                                                        release_id, slip):  # noqa: F811
    """The store holds a tarball no build made (a member escaping the release directory), with its own
    sha256 in its description, so the checksum matches: the hosts must refuse to unpack it."""
    fleet = fault_fleet
    outside = tmp_path / "outside"
    outside.mkdir()
    version = f"v9.9.9-{slip}{uuid.uuid4().hex[:6]}"
    store = tmp_path / "store"
    info = store_artifact(store, version, SLIPS[slip](outside), base=artifact(NEXT).tarball)
    write_fault_service(tmp_path / "services", artifact_store={"url": f"file://{store}"})
    plan = wave_plan()
    homes = {n: fleet.host_home(n) for n in WAVE}
    try:
        op = deploy(plan, info=info)
        with pytest.raises((DeployError, HealthCheckError)) as failed:
            returns(lambda: op.execute(make_context()))
        error = failed.value
        written = sorted(p for p in fleet.home.parent.rglob("slipped")
                         if not any(p.is_relative_to(h / "app" / "releases" / version) for h in homes.values()))
        switched = versions(fleet, WAVE)
        path = failure_path(make_context, op, error, plan=plan)

        # What must never happen: a member written outside the release directory.
        assert list(outside.iterdir()) == [] and written == [], written
        # Refused on every host: never staged, never switched, never restarted.
        assert switched == dict.fromkeys(WAVE, (SEED, SEED)), f"the artifact went live: {switched}; {error}"
        message = str(error)
        assert isinstance(error, DeployError), message
        assert message.startswith("deploy failed on prod-1: ") and "; prod-2: " in message, message
        assert "checksum mismatch" not in message, message  # the checksum matched: that is not the cause
        for name, home in homes.items():
            assert version not in release_dirs(fleet, name)
            assert not [p for p in (home / "app" / "releases").iterdir() if p.name.startswith(".staging")]
        assert_on(fleet, PLANNED, SEED)
        assert host_rows(ledger, release_id) == dict.fromkeys(WAVE, ("production", "wave-1", SEED, version, "failed"))
        assert path.rollback["status"] == "nothing to roll back" and path.stored["action_required"] is None
    finally:
        for home in homes.values():
            shutil.rmtree(home / "app" / "releases" / version, ignore_errors=True)


# ======================================================================== 11. the rollback fails on a host
@pytest.mark.fault(name="rollback failing on one host",
                   guarantee="ticket and fail_run say which host runs which version and that a person must act; "
                             "an alert is in the notification log")
def test_a_rollback_that_cannot_return_one_host(fault_fleet, make_context, ledger, release_id, run_id):  # noqa: F811
    from conveyor.notifiers import read_notifications
    from conveyor.operators.analysis import CanaryAnalysisOperator

    fleet = fault_fleet
    plan = wave_plan()
    returns(lambda: deploy(plan).execute(make_context()))
    analysis = CanaryAnalysisOperator(plan=plan, wave=0, **operator_kwargs("wave_1.analysis"))
    shutil.rmtree(fleet.host_home("prod-2") / "app" / "releases" / SEED)  # the release it would return to

    path = failure_path(make_context, analysis, AnalysisFailed("wave-1: error rate 5.0% vs 1.0% on the baseline"),
                        plan=plan)

    assert str(path.rollback_error).startswith("rollback incomplete: prod-2: cannot switch back to v1.0.0: prod-2: "
                                               "exit 4: conveyor-remote: unknown version v1.0.0")
    assert versions(fleet, PLANNED) == {"prod-1": (SEED, SEED), "prod-2": (NEXT, NEXT), "prod-3": (SEED, SEED)}
    assert rollback_rows(ledger, release_id)["prod-1"] == (NEXT, SEED, "rolled back")
    assert rollback_rows(ledger, release_id)["prod-2"][2].startswith("failed: cannot switch back to v1.0.0")
    assert stages(ledger, release_id)["rollback"] == "failed"
    assert path.stored["host_versions"] == {"prod-1": SEED, "prod-2": NEXT, "prod-3": SEED}
    assert path.stored["action_required"].startswith(ACT)
    assert f"prod-2 on {NEXT} (still the release's version; it ran {SEED} before)" in path.stored["action_required"]
    ticket_says(path, "## A person must act",
                f"- prod-2: {NEXT} (still the release's version; it ran {SEED} before) **<- not back**")
    alerts = [n for n in read_notifications() if n["run_id"] == run_id and n["event"] == "rollback_failed"]
    assert len(alerts) == 1 and f"prod-2 on {NEXT}" in alerts[0]["text"] and ACT in alerts[0]["text"]
    assert "release failed at wave_1.analysis: AnalysisFailed: wave-1: error rate" in path.message
    assert ACT in path.message and f"hosts now: prod-1 on {SEED}, prod-2 on {NEXT}, prod-3 on {SEED}" in path.message


# ============================================================ 12. a host gone between plan and deploy
@pytest.mark.fault(name="host gone between plan and deploy",
                   guarantee="the gone host fails its deploy, the others roll back; the ticket says it is unreachable")
def test_a_host_that_went_away_after_the_plan(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    port = closed_port()
    plan = wave_plan(prod_2={"ssh_port": port})  # planned, then its SSH port closed

    op, error = deploy_fails(plan, context=make_context())

    message = str(error)
    # Refused at once; with connect_s shorter than the SSH hook's pause between its two attempts (3-5 s),
    # the second attempt is cut by the bound: either way the host and the reason it cannot be reached.
    assert message in (f"deploy failed on prod-2: prod-2: connect timed out after {BOUND_S} s",
                       f"deploy failed on prod-2: [Errno None] Unable to connect to port {port} on 127.0.0.22"), message
    path = failure_path(make_context, op, error, plan=plan)

    assert path.rollback_error is not None and "prod-1" not in str(path.rollback_error)
    assert_on(fleet, PLANNED, SEED)
    assert rollback_rows(ledger, release_id)["prod-1"] == (NEXT, SEED, "rolled back")
    assert host_rows(ledger, release_id)["prod-2"] == ("production", "wave-1", SEED, NEXT, "failed")
    assert path.stored["host_versions"]["prod-1"] == SEED
    assert path.stored["host_versions"]["prod-2"].startswith("unreachable: ")
    assert ACT in path.message and "prod-2 unreachable" in path.message


# ================================================= 13. a retried deploy after a switch whose restart never ran
@pytest.mark.fault(name="retried deploy after an interrupted switch",
                   guarantee="the retry finishes the switch: the host serves the release, one truthful host row")
def test_a_deploy_retried_after_its_first_try_died_between_switch_and_restart(fault_fleet, make_context,  # noqa: F811
                                                                             ledger,  # noqa: F811
                                                                             release_id):  # noqa: F811
    """The first try was killed after ``activate`` and before ``bin/restart`` (the host's own script ran the
    two steps, as the try had): ``current`` names v1.1.0, the app still serves v1.0.0."""
    from conveyor_lab.fleet import layout

    fleet = fault_fleet
    name, info = "prod-2", artifact(NEXT)
    host, home = fleet.spec.host(name), fleet.host_home(name)
    (home / ".conveyor" / "incoming").mkdir(parents=True, exist_ok=True)
    shutil.copy2(info.tarball, home / ".conveyor" / "incoming" / info.tarball.name)
    for step in (["stage", "app", NEXT, info.sha256, f".conveyor/incoming/{info.tarball.name}"],
                 ["activate", "app", NEXT]):
        done = subprocess.run(["bash", str(home / layout.REMOTE_SCRIPT_PATH), *step], cwd=home, capture_output=True,
                              text=True, env=layout.host_env(fleet.paths, fleet.spec, host), timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    ledger.upsert_stage(release_id, "wave_1.deploy", status="running")  # the killed try's row
    assert versions(fleet, [name]) == {name: (NEXT, SEED)}
    plan = plan_of([name], [[name]])

    result = returns(lambda: deploy(plan).execute(make_context()))  # the retry

    assert result["hosts"] == [name] and result["changed"] == [name]
    assert_on(fleet, [name], NEXT)
    assert stages(ledger, release_id)["wave_1.deploy"] == "success"
    assert host_rows(ledger, release_id) == {name: ("production", "wave-1", SEED, NEXT, "deployed")}


# ============================================================== 14. metrics answering garbage or NaN
@pytest.mark.parametrize(("side", "page"), [("canary", "garbage"), ("canary", "nan"), ("baseline", "garbage"),
                                          ("baseline", "nan")])
@pytest.mark.fault(name="metrics answering garbage or NaN",
                   guarantee="the canary analysis never passes on them: inconclusive, recorded in the ledger stage")
def test_metrics_that_say_nothing_never_pass(fault_fleet, tmp_path, make_context, ledger,  # noqa: F811
                                             release_id, side, page):  # noqa: F811
    from airflow.sdk.exceptions import TaskDeferred

    from conveyor.operators.analysis import CanaryAnalysisOperator

    fleet = fault_fleet
    write_fault_service(tmp_path / "services", analysis={"window_s": 3, "interval_s": 0.2, "min_requests": 100,
                                                         "min_fail_requests": 50})
    bad = {"garbage": lambda n: GARBAGE, "nan": nan_exposition}[page]
    canary, baseline = ["prod-1"], ["prod-2", "prod-3"]
    pages = {n: bad if (n in canary) == (side == "canary") else exposition for n in PLANNED}
    with BadMetrics(pages) as metrics:
        plan = plan_of(PLANNED, [canary, baseline])
        for record in plan["hosts"]:
            record["metrics_url"] = metrics.url(record["name"])
        op = CanaryAnalysisOperator(plan=plan, wave=0, **operator_kwargs("wave_1.analysis"))
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(make_context())
        event = returns(lambda: first_event(deferred.value.trigger))
        assert min(metrics.counts.values()) > 0  # every host was scraped

    assert event["status"] == "done" and event["verdict"]["decision"] == "inconclusive", event
    detail = returns(lambda: op.execute_complete(make_context(), event))  # the decide task asks a human next

    assert detail["decision"] == "inconclusive"
    row = next(s for s in ledger.get_release(release_id)["stages"] if s["stage"] == "wave_1.analysis")
    assert row["status"] == "inconclusive" and row["detail"]["decision"] == "inconclusive"
    assert row["detail"]["canary"] == canary
    assert_on(fleet, PLANNED, SEED)


def first_event(trigger) -> dict:
    """The trigger's one event, as the triggerer would take it."""
    import asyncio

    async def run() -> dict:
        events = trigger.run()
        try:
            return (await anext(events)).payload
        finally:
            await events.aclose()

    return asyncio.run(run())


# ====================================================== 15. a rerun after a rollback must not end in success
def _rolled_back_release(fleet, make_context, plan):  # noqa: F811
    """wave 1 deployed, its analysis failed, the failure path rolled it back (the run failed)."""
    from conveyor.operators.analysis import CanaryAnalysisOperator

    returns(lambda: deploy(plan).execute(make_context()))
    analysis = CanaryAnalysisOperator(plan=plan, wave=0, **operator_kwargs("wave_1.analysis"))
    path = failure_path(make_context, analysis, AnalysisFailed("wave-1: latency 40% slower than the baseline"),
                        plan=plan)
    assert path.rollback["rolled_back"] == WAVE
    assert_on(fleet, PLANNED, SEED)


def _finalize(plan):
    from conveyor.operators.release import FinalizeReleaseOperator

    return FinalizeReleaseOperator(artifact=artifact(NEXT).to_dict(), plan=plan, **operator_kwargs("finalize"))


@pytest.mark.fault(name="finalize rerun after a rollback",
                   guarantee="finalize refuses (hosts back on the old version); the release is never a success")
def test_finalize_cleared_after_a_rollback_refuses(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    plan = wave_plan()
    _rolled_back_release(fleet, make_context, plan)

    apps = {n: fleet.app_pid(fleet.spec.host(n)) for n in PLANNED}
    dirs = {n: release_dirs(fleet, n) for n in PLANNED}
    finalize = _finalize(plan)
    with pytest.raises(DeployError) as refused:
        returns(lambda: finalize.execute(make_context()))

    assert str(refused.value) == f"not every production host runs {NEXT}: prod-1 runs {SEED}; prod-2 runs {SEED}; " \
                                 f"prod-3 runs {SEED}"
    assert {n: release_dirs(fleet, n) for n in PLANNED} == dirs  # it pruned nothing either
    path = failure_path(make_context, finalize, refused.value, plan=plan)  # the failure path runs again
    release = ledger.get_release(release_id)
    assert release["status"] == "failed" and stages(ledger, release_id)["finalize"] == "failed"
    assert path.rollback_error is None and path.message.startswith("release failed at ")
    assert_on(fleet, PLANNED, SEED)
    assert {n: fleet.app_pid(fleet.spec.host(n)) for n in PLANNED} == apps  # the second pass restarted nothing
    assert rollback_rows(ledger, release_id) == dict.fromkeys(WAVE, (NEXT, SEED, "rolled back"))


@pytest.mark.fault(name="deploy and finalize rerun after a rollback",
                   guarantee="finalize refuses while a planned host is off the version; the rerun rolls back again")
def test_a_deploy_cleared_after_a_rollback_then_finalize(fault_fleet, make_context, ledger, release_id):  # noqa: F811
    fleet = fault_fleet
    plan = wave_plan()
    _rolled_back_release(fleet, make_context, plan)

    returns(lambda: deploy(plan).execute(make_context()))  # wave_1.deploy cleared: it deploys again
    assert versions(fleet, PLANNED) == {"prod-1": (NEXT, NEXT), "prod-2": (NEXT, NEXT), "prod-3": (SEED, SEED)}
    finalize = _finalize(plan)
    with pytest.raises(DeployError) as refused:
        returns(lambda: finalize.execute(make_context()))

    assert str(refused.value) == f"not every production host runs {NEXT}: prod-3 runs {SEED}"
    path = failure_path(make_context, finalize, refused.value, plan=plan)
    assert path.rollback["rolled_back"] == WAVE
    assert_on(fleet, PLANNED, SEED)
    assert ledger.get_release(release_id)["status"] == "failed"
    assert host_rows(ledger, release_id) == dict.fromkeys(WAVE, ("production", "wave-1", SEED, NEXT, "deployed"))
    assert rollback_rows(ledger, release_id) == dict.fromkeys(WAVE, (NEXT, SEED, "rolled back"))
    assert path.message.startswith("release failed at ")
