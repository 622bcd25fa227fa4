"""Is a host up, and on which version? An HTTP GET of its health URL. No Airflow import.

The health URL answers 200 with ``{"version": ...}`` when the app is serving; anything else (no
answer, another status, another version) is "not healthy yet".
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from conveyor.exceptions import HealthCheckError
from conveyor.hosts import Host


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
    while True:
        last = probe_health(host)
        if last["ok"] and (version is None or last["version"] == version):
            return {"host": host.name, **last}
        if time.monotonic() >= deadline:
            why = last["error"] or f"answers version {last['version']!r}, expected {version!r}"
            raise HealthCheckError(f"{host.name} not healthy on {version} after {timeout_s:g} s: {why}")
        time.sleep(interval_s)
