"""Is a host up, and on which version? An HTTP GET of its health URL. No Airflow import.

The health URL answers 200 with ``{"version": ...}`` when the app is serving; anything else (no
answer, another status, another version) is "not healthy yet".

One probe has a **wall-clock** bound, from connect to the last byte of the answer
(``deploy.health.probe_timeout_s``): a ``/health`` that trickles its answer one byte at a time is
cut off there, where a per-read timeout would wait for ever. :func:`wait_healthy` probes until its
own ``timeout_s`` (plus at most one interval and one probe) has passed.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from conveyor.exceptions import HealthCheckError
from conveyor.hosts import Host

PROBE_TIMEOUT_S = 5.0  # the service model's default for deploy.health.probe_timeout_s
MAX_BODY = 65536


class _Deadline:
    """A socket whose every read and write must end before ``deadline`` (time.monotonic())."""

    deadline: float | None = None  # set once the socket is made; None: the socket's own timeout

    def _arm(self) -> None:
        if self.deadline is None:
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the probe's deadline passed")
        self.settimeout(remaining)  # type: ignore[attr-defined]

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self._arm()
        return super().recv_into(*args, **kwargs)  # type: ignore[misc]

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self._arm()
        return super().recv(*args, **kwargs)  # type: ignore[misc]

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        return super().sendall(*args, **kwargs)  # type: ignore[misc]


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    pass


def _connection(url: str, deadline: float) -> tuple[http.client.HTTPConnection, str]:
    """An HTTP(S) connection to ``url``'s server whose socket keeps ``deadline``, and the request path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    raw = socket.create_connection((parts.hostname, port), timeout=max(deadline - time.monotonic(), 0.001))
    sock: socket.socket = _DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    sock.deadline = deadline  # type: ignore[attr-defined]
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    if https:
        context = ssl.create_default_context()
        context.sslsocket_class = _DeadlineSSLSocket
        sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        sock.deadline = deadline  # type: ignore[attr-defined]
    conn_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
    conn = conn_class(parts.hostname, port)
    conn.sock = sock
    path = parts.path or "/"
    return conn, f"{path}?{parts.query}" if parts.query else path


def probe_health(host: Host, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """One HTTP GET of the host's health URL, all of it within ``timeout`` seconds:
    ``{"ok": bool, "version": str|None, "error": str|None}``."""
    deadline = time.monotonic() + timeout
    conn = None
    try:
        conn, path = _connection(host.health_url, deadline)
        conn.request("GET", path, headers={"Accept": "application/json", "Connection": "close"})
        resp = conn.getresponse()
        status = resp.status
        body = resp.read(MAX_BODY)
    except TimeoutError:
        return {"ok": False, "version": None, "error": f"no complete answer within {timeout:g} s"}
    except (OSError, ValueError, http.client.HTTPException) as e:
        return {"ok": False, "version": None, "error": str(e) or type(e).__name__}
    finally:
        if conn is not None:
            conn.close()
    if status != 200:
        return {"ok": False, "version": None, "error": f"HTTP {status}"}
    version = None
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        pass
    return {"ok": True, "version": version, "error": None}


def wait_healthy(host: Host, version: str | None, *, timeout_s: float, interval_s: float,
                 probe_timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Poll the health URL until it answers 200 (on ``version`` when given) or ``timeout_s`` passes;
    each probe is cut off after ``probe_timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = probe_health(host, timeout=probe_timeout_s)
        if last["ok"] and (version is None or last["version"] == version):
            return {"host": host.name, **last}
        if time.monotonic() >= deadline:
            why = last["error"] or f"answers version {last['version']!r}, expected {version!r}"
            raise HealthCheckError(f"{host.name} not healthy on {version} after {timeout_s:g} s: {why}")
        time.sleep(interval_s)
