"""Putting a version on hosts, taking it back, and checking their health.

Every operation is idempotent: deploying the version a host already runs changes nothing (no
upload, no restart); rolling back a host that is already on its original version changes nothing.
The switch itself is done on the host by ``conveyor-remote.sh`` (checksum-verified staging, atomic
``current`` symlink), so a task killed halfway leaves either the old or the new version active.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from conveyor import validation
from conveyor.artifacts import ArtifactInfo
from conveyor.exceptions import DeployError, HealthCheckError
from conveyor.hooks.fleet import FleetHook
from conveyor.inventory import Host

log = logging.getLogger(__name__)
T = TypeVar("T")


def current_version(hook: FleetHook, host: Host) -> str | None:
    hook.install_remote_script(host)
    result = hook.remote(host, "current", host.app_root)
    if not result.ok:
        raise DeployError(f"cannot read the current version: {result.describe()}")
    version = result.stdout.strip()
    return None if version in ("", "none") else version


def restart(hook: FleetHook, host: Host) -> None:
    result = hook.run_shell(host, host.restart)
    if not result.ok:
        raise DeployError(f"restart failed: {result.describe()}")


def deploy_host(hook: FleetHook, host: Host, artifact: ArtifactInfo, tarball: Path) -> dict[str, Any]:
    """Stage, activate and restart ``artifact`` on ``host`` unless it already runs that version."""
    version = validation.version(artifact.version)
    validation.sha256(artifact.sha256)
    before = current_version(hook, host)
    if before == version:
        log.info("%s already runs %s; leaving it alone", host.name, version)
        return {"host": host.name, "from": before, "to": version, "changed": False}
    incoming = f".conveyor/incoming/{Path(artifact.key).name}"
    hook.upload(host, tarball, incoming)
    staged = hook.remote(host, "stage", host.app_root, version, artifact.sha256, incoming)
    if not staged.ok:
        kind = "corrupted artifact (checksum mismatch)" if staged.exit_status == 3 else "staging failed"
        raise DeployError(f"{kind}: {staged.describe()}")
    activated = hook.remote(host, "activate", host.app_root, version)
    if not activated.ok:
        raise DeployError(f"activation failed: {activated.describe()}")
    hook.run(host, ["rm", "-f", incoming])
    restart(hook, host)
    log.info("%s: %s -> %s (%s)", host.name, before, version, activated.stdout.strip())
    return {"host": host.name, "from": before, "to": version, "changed": True}


def activate_version(hook: FleetHook, host: Host, version: str) -> dict[str, Any]:
    """Switch ``host`` back to an already-staged ``version`` (rollback); no-op if it runs it."""
    validation.version(version)
    before = current_version(hook, host)
    if before == version:
        return {"host": host.name, "from": before, "to": version, "changed": False}
    activated = hook.remote(host, "activate", host.app_root, version)
    if not activated.ok:
        raise DeployError(f"cannot switch back to {version}: {activated.describe()}")
    restart(hook, host)
    return {"host": host.name, "from": before, "to": version, "changed": True}


def probe_health(host: Host, timeout: float = 2.0) -> dict[str, Any]:
    """One HTTP GET of the host's health URL: ``{"ok": bool, "version": str|None, "error": str|None}``."""
    try:
        with urllib.request.urlopen(host.health_url, timeout=timeout) as resp:
            body = resp.read(65536)
            status = resp.status
    except urllib.error.HTTPError as e:
        return {"ok": False, "version": None, "error": f"HTTP {e.code}"}
    except (OSError, ValueError) as e:
        return {"ok": False, "version": None, "error": str(getattr(e, "reason", e))}
    version = None
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        pass
    return {"ok": status == 200, "version": version, "error": None if status == 200 else f"HTTP {status}"}


def wait_healthy(host: Host, version: str | None, *, timeout_s: float, interval_s: float) -> dict[str, Any]:
    """Poll the health URL until it answers 200 (on ``version`` when given) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while True:
        last = probe_health(host)
        if last["ok"] and (version is None or last["version"] == version):
            return {"host": host.name, **last}
        if time.monotonic() >= deadline:
            why = last["error"] or f"answers version {last['version']!r}, expected {version!r}"
            raise HealthCheckError(f"{host.name} not healthy on {version} after {timeout_s:g} s: {why}")
        time.sleep(interval_s)


def for_each_host(hosts: Sequence[Host], fn: Callable[[Host], T], *, max_parallel: int) -> tuple[
    dict[str, T], dict[str, Exception]
]:
    """Run ``fn`` on every host with bounded parallelism; return results and errors by host name."""
    results: dict[str, T] = {}
    errors: dict[str, Exception] = {}
    if not hosts:
        return results, errors
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts)))) as pool:
        futures = {pool.submit(fn, host): host for host in hosts}
        for future, host in futures.items():
            try:
                results[host.name] = future.result()
            except Exception as e:  # collected and reported together by the caller
                errors[host.name] = e
    return results, errors
