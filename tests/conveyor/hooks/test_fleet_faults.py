"""A fleet session under real faults on the local fleet: every remote step has a wall-clock bound, and a
full disk is reported as such and leaves nothing behind.

The faults are real: commands that never end or print for ever, run by a host's SSH server; a host
whose SSH server stops answering SFTP writes or stops starting commands (the lab's ``sftp-stall`` and
``exec-stall`` faults, :meth:`conveyor_lab.fleet.Fleet.inject`); a TCP server that accepts and never
speaks SSH; and a host directory on a small filesystem that is really full (a tmpfs mounted over
it, ``tests/include/remote/disk_support.py``). The bounds are small (1 s) so each test is quick; a call
that does not return at all is reported by a hang guard (:func:`returns`), not a timing assertion.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conveyor.exceptions import DeployError
from conveyor.hooks.fleet import FleetHook, NoSpaceLeft, StepTimeout
from conveyor.hosts import Host
from tests.conveyor.hooks.fleet_support import (
    SEED,
    artifact,
    host_home,
    hosts,
    release_dirs,
    returns,
    served_version,
    state,
)

CONN_ID = "conveyor_fleet"
BOUND_S = 1


def bounded_hook(**bounds: float) -> FleetHook:
    return FleetHook(CONN_ID, **{"connect_s": 5, "command_s": BOUND_S, "upload_s": BOUND_S, **bounds})


def gone(pid: int, within: float = 15) -> bool:
    """Whether process ``pid`` ends within ``within`` seconds (the host kills a command whose client left)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def faulty_fleet(fleet_on_v1_0_0) -> Iterator:
    """The fleet, for a test that injects lab faults: every host is healed when the test ends (before the
    fleet is put back on v1.0.0)."""
    yield fleet_on_v1_0_0
    fleet_on_v1_0_0.heal()


# ------------------------------------------------------------------------------------------ commands
def test_a_command_that_never_ends_is_cut_at_its_bound_and_killed_on_the_host(fleet_env):
    fleet, name = fleet_env, "replica-1"
    pid_file = host_home(fleet, name) / "run" / "hang.pid"
    pid_file.unlink(missing_ok=True)

    with bounded_hook().session(hosts()[name]) as session:
        with pytest.raises(StepTimeout) as cut:
            returns(lambda: session.run_shell("echo $$ > run/hang.pid; exec sleep 600", step="populate"))
        assert str(cut.value) == f"{name}: populate timed out after {BOUND_S} s"
        assert isinstance(cut.value, DeployError)
        with pytest.raises(DeployError, match="the session was closed after populate timed out after 1 s"):
            session.current_version()  # the session is closed: nothing more runs on it

    assert gone(int(pid_file.read_text())), "the command still runs on the host"
    pid_file.unlink()


def test_a_command_that_prints_for_ever_is_cut_at_its_bound(fleet_env):
    fleet, name = fleet_env, "replica-2"
    pid_file = host_home(fleet, name) / "run" / "chatty.pid"
    pid_file.unlink(missing_ok=True)

    with bounded_hook().session(hosts()[name]) as session, pytest.raises(StepTimeout) as cut:
        # Never silent for long: a bound on silence would never fire.
        returns(lambda: session.run_shell("echo $$ > run/chatty.pid; while :; do echo tick; sleep 0.01; done"))

    assert str(cut.value) == f"{name}: command timed out after {BOUND_S} s"
    assert gone(int(pid_file.read_text())), "the command still runs on the host"
    pid_file.unlink()


def test_a_command_keeps_only_the_end_of_a_huge_output(fleet_env):
    with FleetHook(CONN_ID).session(hosts()["replica-1"]) as session:
        result = session.run_shell("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END; echo oops >&2")

    assert result.ok and result.stderr == "oops\n"
    assert result.stdout.startswith("[... ") and result.stdout.endswith("x\nEND\n")
    kept = result.stdout.split("\n", 1)[1]
    assert len(kept) == 1 << 20
    assert result.stdout.splitlines()[0] == f"[... {3000000 + 5 - (1 << 20)} bytes not kept]"


def test_quick_steps_pass_under_small_bounds(fleet_env):
    with bounded_hook().session(hosts()["replica-2"]) as session:
        assert session.current_version() == SEED
        assert session.run(["printf", "%s", "a b"]).stdout == "a b"


def test_a_host_whose_commands_never_start_is_cut_at_the_bound(faulty_fleet):
    name = "prod-5"
    faulty_fleet.inject(name, "exec-stall")
    with bounded_hook().session(hosts()[name]) as session, pytest.raises(StepTimeout) as cut:
        returns(lambda: session.current_version())
    assert str(cut.value) == f"{name}: current timed out after {BOUND_S} s"


# ------------------------------------------------------------------------------------------- uploads
def test_an_upload_to_a_host_that_stops_reading_is_cut_at_its_bound(faulty_fleet):
    fleet, name = faulty_fleet, "prod-4"
    info = artifact("v1.1.0")
    before = state(fleet, name)
    fleet.inject(name, "sftp-stall")

    with bounded_hook().session(hosts()[name]) as session:
        assert session.current_version() == SEED  # commands still work: only SFTP writes hang
        with pytest.raises(StepTimeout) as cut:
            returns(lambda: session.deploy(info, info.tarball))

    assert str(cut.value) == f"{name}: upload timed out after {BOUND_S} s"
    assert state(fleet, name) == before  # never staged, never switched, never restarted


@contextmanager
def mute_ssh_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never says a word (no SSH banner)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_a_host_that_never_answers_the_connection_is_cut_at_connect_s(fleet_env):
    with mute_ssh_server() as port:
        host = Host(name="mute-1", environment="production", address="127.0.0.1", ssh_port=port)
        with pytest.raises(StepTimeout) as cut:
            returns(lambda: bounded_hook(connect_s=1).session(host).__enter__())
    assert str(cut.value) == "mute-1: connect timed out after 1 s"


# --------------------------------------------------------------------------------------- full disks
def test_a_full_disk_is_no_space_left_and_the_failed_stage_leaves_nothing(fleet_on_v1_0_0):
    from tests.include.remote.disk_support import FILLER, full_disk

    fleet, name = fleet_on_v1_0_0, "prod-6"
    info = artifact("v1.1.0")
    home = host_home(fleet, name)
    releases, incoming = home / "app" / "releases", home / ".conveyor" / "incoming"
    before = state(fleet, name)

    with full_disk(releases, free=8 * 1024), FleetHook(CONN_ID).session(hosts()[name]) as session:
        with pytest.raises(NoSpaceLeft) as full:
            session.deploy(info, info.tarball)
        left_in_releases = sorted(p.name for p in releases.iterdir() if p.name != FILLER)

    message = str(full.value)
    assert message.startswith(f"no space left on {name}: staging v1.1.0: {name}: exit 5: "), message
    assert "no space left on device" in message
    assert "corrupted" not in message and "checksum" not in message
    assert ".staging" not in " ".join(left_in_releases) and "v1.1.0" not in left_in_releases
    upload = info.tarball.name
    assert upload not in os.listdir(incoming) and f"{upload}.part" not in os.listdir(incoming)  # both removed
    assert state(fleet, name) == before  # current, the running app and what it serves: unchanged
    assert "v1.1.0" not in release_dirs(fleet, name)


def test_an_upload_to_a_full_disk_is_no_space_left_and_leaves_no_part(fleet_on_v1_0_0):
    from tests.include.remote.disk_support import FILLER, full_disk

    fleet, name = fleet_on_v1_0_0, "prod-6"
    info = artifact("v1.1.0")
    incoming = host_home(fleet, name) / ".conveyor" / "incoming"
    before = state(fleet, name)

    with full_disk(incoming, free=0), FleetHook(CONN_ID).session(hosts()[name]) as session:
        with pytest.raises(NoSpaceLeft) as full:
            session.deploy(info, info.tarball)
        left = sorted(p.name for p in incoming.iterdir() if p.name != FILLER)

    assert str(full.value).startswith(f"no space left on {name}: uploading {info.tarball.name}"), str(full.value)
    assert info.tarball.name not in left and f"{info.tarball.name}.part" not in left
    assert state(fleet, name) == before


# ----------------------------------------------------------------------------------------- leftovers
def test_prune_removes_what_failed_steps_left_more_than_an_hour_ago(fleet_on_v1_0_0):
    fleet, name = fleet_on_v1_0_0, "prod-5"
    home = host_home(fleet, name)
    incoming, releases = home / ".conveyor" / "incoming", home / "app" / "releases"
    incoming.mkdir(parents=True, exist_ok=True)
    old = [incoming / "demo_shop-v0.9.0.tar.gz", incoming / "demo_shop-v0.9.1.tar.gz.part",
           releases / ".staging-v0.9.2.aB3dE"]
    fresh = incoming / "demo_shop-v0.9.3.tar.gz.part"  # perhaps an upload in progress
    for path in [*old, fresh]:
        if path.name.startswith(".staging"):
            path.mkdir()
        else:
            path.write_bytes(b"\0" * 4096)
    two_hours_ago = time.time() - 7200
    for path in old:
        os.utime(path, (two_hours_ago, two_hours_ago))

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        summary = session.prune(5)

    assert summary.endswith("removed 3 leftover(s)"), summary
    assert [p for p in old if p.exists()] == []
    assert fresh.exists()
    fresh.unlink()
    assert served_version(name) == SEED


def test_the_lab_refuses_a_fault_it_does_not_know(fleet_env):
    from conveyor_lab.fleet import FleetError

    with pytest.raises(FleetError, match="unknown fault 'disk-melt': the fleet can inject sftp-stall, exec-stall"):
        fleet_env.inject("prod-1", "disk-melt")
    assert fleet_env.faults("prod-1") == set()
