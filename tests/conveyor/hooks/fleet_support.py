"""What the fleet-hook and fleet-operator tests share: the session fleet with its SSH connection, a fast
variant of the demo service, the demo's artifacts, and a way to look at a host without Conveyor's code.

Every test that changes a host uses ``fleet_on_v1_0_0``: it checks that the fleet starts on v1.0.0
and, whatever the test did, puts every host back on v1.0.0 and healthy (through the same
``FleetSession.deploy`` a release uses) so the rest of the session (e2e tests too) finds the fleet as
it started.

Import the fixtures where they are needed, as with ``local_fleet``::

    from tests.conveyor.hooks.fleet_support import fleet_env, fleet_on_v1_0_0  # noqa: F401
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml

from tests.fleet_fixtures import local_fleet  # noqa: F401 - the session fleet fixture

ROOT = Path(__file__).resolve().parents[3]
SEED = "v1.0.0"

#: The demo service, made quick to fail: a short health timeout and a short list of kept releases.
FAST_DEPLOY = {"health": {"timeout_s": 6, "interval_s": 0.2}, "keep_releases": 2, "max_parallel": 4}

#: A call that has not returned after this long never will (the faults of these tests last for ever).
GUARD_S = 60

_artifacts: dict[str, Any] = {}


def returns(call: Callable[[], Any], within: float = GUARD_S) -> Any:
    """``call()``'s result (or its exception), or a test failure if it is still running after ``within``
    seconds: the hang guard of the tests of wall-clock bounds (a guard, not a timing assertion)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the test below
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still waiting after {within} s: the call has no wall-clock bound"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def write_service(directory: Path, **deploy: Any) -> Path:
    """The demo's service file with ``deploy`` overrides, written as ``<directory>/demo_shop.yaml``."""
    spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    spec["deploy"] = {**spec.get("deploy", {}), **FAST_DEPLOY, **deploy}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "demo_shop.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def fleet_env(local_fleet, tmp_path, monkeypatch):  # noqa: F811
    """The fleet's SSH connection and the fast service file in the environment; yields the ``Fleet``."""
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_FLEET", local_fleet.connection_uri())
    write_service(tmp_path / "services")
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path / "services"))
    return local_fleet


def service():
    from conveyor.config import load_service

    return load_service("demo_shop")


def artifact(version: str):
    """The demo's artifact of ``version`` (built once per session, then reused from the store)."""
    from conveyor.artifacts import build_artifact

    if version not in _artifacts:
        _artifacts[version] = build_artifact(service(), version, log_fn=lambda *a: None)
    return _artifacts[version]


def hosts(environment: str | None = None) -> dict[str, Any]:
    """The inventory's hosts by name (``conveyor.inventory.Host``), of one environment or both."""
    from conveyor.inventory import resolve_hosts

    envs = [environment] if environment else ["replica", "production"]
    return {h.name: h for env in envs for h in resolve_hosts(service(), env)}


# ------------------------------------------------------------------------ looking at a host
def host_home(fleet, name: str) -> Path:
    return fleet.host_home(name)


def current_link(fleet, name: str) -> str | None:
    """The version ``app/current`` points to, read on the host's disk (not through Conveyor)."""
    link = host_home(fleet, name) / "app" / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def release_dirs(fleet, name: str) -> set[str]:
    releases = host_home(fleet, name) / "app" / "releases"
    return {p.name for p in releases.iterdir() if not p.name.startswith(".")} if releases.is_dir() else set()


def app_pid(fleet, name: str) -> int | None:
    return fleet.app_pid(fleet.spec.host(name))


def served_version(name: str) -> str | None:
    """What the host's /health says it serves (None when it does not answer 200)."""
    from conveyor.health import probe_health

    health = probe_health(hosts()[name])
    return health["version"] if health["ok"] else None


def state(fleet, name: str) -> dict[str, Any]:
    """A host as a release engineer sees it: ``current``, the app's pid, the version /health serves."""
    return {"current": current_link(fleet, name), "pid": app_pid(fleet, name), "serves": served_version(name)}


# ----------------------------------------------------------------------- putting hosts back
def put_back(names: list[str] | None = None) -> dict[str, Exception]:
    """Every host (or ``names``) back on v1.0.0 and healthy; returns the hosts that would not come back."""
    from conveyor.health import probe_health, wait_healthy
    from conveyor.hooks.fleet import FleetHook
    from conveyor.parallel import for_each_host

    info = artifact(SEED)
    hook = FleetHook("conveyor_fleet")
    targets = [h for n, h in hosts().items() if names is None or n in names]

    def one(host):
        with hook.session(host) as session:
            result = session.deploy(info, info.tarball)
            health = probe_health(host)
            if not result["changed"] and not (health["ok"] and health["version"] == SEED):
                session.restart()  # on v1.0.0 already, but its app is not serving
        return wait_healthy(host, SEED, timeout_s=20, interval_s=0.2)

    _, errors = for_each_host(targets, one, max_parallel=8)
    return errors


def off_seed(fleet) -> list[str]:
    """The hosts whose ``current`` or /health is not v1.0.0 (looked at without SSH, so it is cheap)."""
    from concurrent.futures import ThreadPoolExecutor

    from conveyor.health import probe_health

    by_name = hosts()
    with ThreadPoolExecutor(max_workers=len(by_name)) as pool:
        health = dict(zip(by_name, pool.map(probe_health, by_name.values()), strict=True))
    return [n for n in by_name
            if current_link(fleet, n) != SEED or not health[n]["ok"] or health[n]["version"] != SEED]


@pytest.fixture
def fleet_on_v1_0_0(fleet_env):
    """The fleet on v1.0.0 and healthy before the test, and put back there after it."""
    errors = put_back(off_seed(fleet_env)) if off_seed(fleet_env) else {}
    assert not errors, f"the fleet is not on {SEED} before the test: {errors}"
    yield fleet_env
    moved = off_seed(fleet_env)
    errors = put_back(moved) if moved else {}
    assert not errors, f"could not put the fleet back on {SEED}: {errors}"
    assert not off_seed(fleet_env), f"hosts left off {SEED}"


@pytest.fixture
def calls(monkeypatch):
    """SSH connections opened (host addresses) and files put by SFTP (remote paths), counted by
    wrapping paramiko's own methods: measuring, not mocking (the wrapped method still runs)."""
    counted: dict[str, list] = {"connect": [], "put": []}
    connect, put = paramiko.SSHClient.connect, paramiko.SFTPClient.put

    def counting_connect(self, hostname, *args, **kwargs):
        counted["connect"].append(hostname)
        return connect(self, hostname, *args, **kwargs)

    def counting_put(self, localpath, remotepath, *args, **kwargs):
        counted["put"].append(remotepath)
        return put(self, localpath, remotepath, *args, **kwargs)

    monkeypatch.setattr(paramiko.SSHClient, "connect", counting_connect)
    monkeypatch.setattr(paramiko.SFTPClient, "put", counting_put)
    return counted
