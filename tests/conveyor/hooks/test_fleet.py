"""``FleetHook.session``: one SSH connection per host, the remote script installed by checksum, and
the release steps (deploy, prune) against the local fleet's real SSH servers.

paramiko's ``SSHClient.connect`` and ``SFTPClient.put`` are wrapped to count calls (measuring, not
mocking: the wrapped method still runs).
"""

from __future__ import annotations

import hashlib
import shutil

import pytest

from conveyor.exceptions import DeployError
from conveyor.hooks.fleet import REMOTE_SCRIPT, REMOTE_SCRIPT_PATH, FleetHook
from tests.conveyor.hooks.fleet_support import (
    SEED,
    app_pid,
    artifact,
    current_link,
    host_home,
    hosts,
    release_dirs,
    served_version,
    state,
)

CONN_ID = "conveyor_fleet"


def test_a_full_deploy_takes_one_ssh_connection(fleet_on_v1_0_0, calls):
    from conveyor.health import wait_healthy

    fleet, name = fleet_on_v1_0_0, "prod-1"
    host, info = hosts()[name], artifact("v1.1.0")
    before = state(fleet, name)

    with FleetHook(CONN_ID).session(host) as session:
        result = session.deploy(info, info.tarball)

    assert calls["connect"] == [host.address]
    assert result == {"host": name, "from": SEED, "to": "v1.1.0", "changed": True}
    wait_healthy(host, "v1.1.0", timeout_s=10, interval_s=0.2)
    after = state(fleet, name)
    assert after["current"] == "v1.1.0" and after["serves"] == "v1.1.0"
    assert after["pid"] is not None and after["pid"] != before["pid"]
    assert calls["put"] == [f".conveyor/incoming/{info.key.rsplit('/', 1)[-1]}.part"]  # the script was there
    assert not (host_home(fleet, name) / ".conveyor" / "incoming" / info.key.rsplit("/", 1)[-1]).exists()


def test_an_identical_remote_script_is_not_uploaded(fleet_env, calls):
    fleet, name = fleet_env, "replica-1"
    script = host_home(fleet, name) / REMOTE_SCRIPT_PATH
    assert script.read_bytes() == REMOTE_SCRIPT.read_bytes()
    inode, mtime = script.stat().st_ino, script.stat().st_mtime_ns

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        assert session.current_version() == SEED
        assert session.remote("current", "app").stdout.strip() == SEED  # installed at most once per session

    assert calls["put"] == []
    assert (script.stat().st_ino, script.stat().st_mtime_ns) == (inode, mtime)


def test_an_altered_remote_script_is_replaced_once_per_session(fleet_env, calls):
    fleet, name = fleet_env, "replica-2"
    script = host_home(fleet, name) / REMOTE_SCRIPT_PATH
    # A copy that would lie about the version if it were run as it is.
    script.write_text("#!/usr/bin/env bash\necho v9.9.9\n")

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        assert session.current_version() == SEED
        assert session.current_version() == SEED

    assert calls["put"] == [f"{REMOTE_SCRIPT_PATH}.part"]
    assert hashlib.sha256(script.read_bytes()).digest() == hashlib.sha256(REMOTE_SCRIPT.read_bytes()).digest()
    assert not script.with_name(script.name + ".part").exists()


def test_a_missing_remote_script_is_installed(fleet_env, calls):
    fleet, name = fleet_env, "replica-2"
    script = host_home(fleet, name) / REMOTE_SCRIPT_PATH
    script.unlink()

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        assert session.current_version() == SEED

    assert calls["put"] == [f"{REMOTE_SCRIPT_PATH}.part"]
    assert script.read_bytes() == REMOTE_SCRIPT.read_bytes()


def test_deploying_the_running_version_changes_nothing(fleet_on_v1_0_0, calls):
    fleet, name = fleet_on_v1_0_0, "prod-2"
    info = artifact(SEED)
    before = state(fleet, name)
    link = host_home(fleet, name) / "app" / "current"
    link_inode = link.lstat().st_ino

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        result = session.deploy(info, info.tarball)

    assert result == {"host": name, "from": SEED, "to": SEED, "changed": False}
    assert state(fleet, name) == before == {"current": SEED, "pid": before["pid"], "serves": SEED}
    assert link.lstat().st_ino == link_inode  # not even re-pointed
    assert calls["put"] == []  # no tarball sent


def _corrupted(tmp_path, kind: str):
    """An artifact of a version no host has, whose tarball is broken in the way ``kind`` says."""
    from conveyor.artifacts import ArtifactInfo

    good = artifact("v1.1.0")
    version = f"v0.0.0-{kind}"
    tarball = tmp_path / f"demo_shop-{version}.tar.gz"
    if kind == "mismatch":  # the bytes changed after the checksum was taken
        shutil.copyfile(good.tarball, tarball)
        data = bytearray(tarball.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tarball.write_bytes(bytes(data))
        sha = good.sha256
    else:  # "not-a-tarball": the checksum matches, the bytes are no tar.gz
        tarball.write_bytes(b"this is not a gzip file\n" * 100)
        sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    info = ArtifactInfo(service="demo_shop", version=version, commit="0" * 40, ref=version,
                        key=f"demo_shop/{version}/{tarball.name}", url=str(tarball), sha256=sha,
                        size=tarball.stat().st_size, tarball=tarball)
    return info


@pytest.mark.parametrize("kind", ["mismatch", "not-a-tarball"])
def test_a_corrupted_artifact_is_refused_and_current_stays(fleet_on_v1_0_0, tmp_path, kind):
    fleet, name = fleet_on_v1_0_0, "prod-3"
    info = _corrupted(tmp_path, kind)
    before = state(fleet, name)

    with FleetHook(CONN_ID).session(hosts()[name]) as session, pytest.raises(DeployError) as failed:
        session.deploy(info, info.tarball)

    assert "corrupted artifact" in str(failed.value)
    assert name in str(failed.value)
    assert state(fleet, name) == before
    assert info.version not in release_dirs(fleet, name)
    assert not [p for p in (host_home(fleet, name) / "app" / "releases").iterdir() if p.name.startswith(".staging")]


def _stage(session, version: str) -> None:
    """Stage ``version`` without activating it (the raw calls of the session)."""
    info = artifact(version)
    incoming = f".conveyor/incoming/{info.key.rsplit('/', 1)[-1]}"
    session.upload(info.tarball, incoming)
    staged = session.remote("stage", session.host.app_root, version, info.sha256, incoming)
    assert staged.ok, staged.describe()


def test_prune_keeps_current_previous_and_the_newest_others(fleet_on_v1_0_0):
    fleet, name = fleet_on_v1_0_0, "prod-6"
    releases = host_home(fleet, name) / "app" / "releases"
    for old in release_dirs(fleet, name) - {SEED}:  # a known history: only the seed version staged
        shutil.rmtree(releases / old)

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        for version in ("v1.1.0", "v1.2.0", "v1.4.0", "v1.5.0"):  # staged in this order, oldest first
            _stage(session, version)
        session.deploy(artifact("v1.6.0"), artifact("v1.6.0").tarball)  # current v1.6.0, previous v1.0.0
        assert release_dirs(fleet, name) == {SEED, "v1.1.0", "v1.2.0", "v1.4.0", "v1.5.0", "v1.6.0"}

        summary = session.prune(2)
        assert release_dirs(fleet, name) == {"v1.6.0", SEED, "v1.5.0", "v1.4.0"}
        assert summary == "kept 2 (+ current v1.6.0, previous v1.0.0), pruned 2"

        assert session.prune(2).endswith("pruned 0")  # idempotent
        assert release_dirs(fleet, name) == {"v1.6.0", SEED, "v1.5.0", "v1.4.0"}

    assert current_link(fleet, name) == "v1.6.0"
    assert app_pid(fleet, name) is not None


def test_prune_with_nothing_old_removes_nothing(fleet_on_v1_0_0):
    fleet, name = fleet_on_v1_0_0, "prod-5"
    before = release_dirs(fleet, name)

    with FleetHook(CONN_ID).session(hosts()[name]) as session:
        session.prune(len(before) + 2)

    assert release_dirs(fleet, name) == before
    assert served_version(name) == SEED
