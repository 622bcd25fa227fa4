"""Process helpers for the local fleet: is a pid alive, is it ours, stop it, find stragglers.

Only processes proven to belong to a fleet are ever signalled: by their command line (the app of a
host, the daemon of a fleet home) or by the marker variable every fleet process carries in its
environment (:data:`conveyor_lab.fleet.layout.MARKER_ENV`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

#: The daemon's module: ``Fleet.up`` starts it as ``python -m DAEMON_MODULE --home HOME``, and
#: :func:`is_daemon` recognises it by this name in its command line.
DAEMON_MODULE = "conveyor_lab.fleet.daemon"


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (a test process starts the daemon itself)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a killed app may wait for its reaper a while)."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ_has(pid: int, name: str, value: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{name}={value}".encode() in raw.split(b"\0")


def is_app(pid: int, address: str, port: int) -> bool:
    """Is ``pid`` the demo app of the host at ``address:port``?"""
    args = cmdline(pid)
    joined = " " + " ".join(args) + " "
    return " -m shop " in joined and f" --host {address} --port {port} " in joined


def is_daemon(pid: int, home: Path) -> bool:
    """Is ``pid`` the daemon of the fleet in ``home`` (``python -m DAEMON_MODULE --home HOME``)?"""
    args = cmdline(pid)
    return DAEMON_MODULE in args and str(home) in args


def marked_processes(name: str, value: str) -> list[int]:
    """Every live process (but this one) whose environment has ``name=value``."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and environ_has(int(entry.name), name, value):
            if alive(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def terminate(pids: Iterable[int], timeout: float = 5.0, group: bool = False) -> list[int]:
    """TERM every pid (or its process group), wait up to ``timeout``, then KILL what is left.

    Returns the pids that were still alive at the end (should be none).
    """
    pids = [p for p in set(pids) if p > 1 and alive(p)]

    def send(sig: int) -> None:
        for pid in pids:
            try:
                if group:
                    try:
                        os.killpg(pid, sig)
                        continue
                    except OSError:
                        pass
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        if not pids:
            return []
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        if not pids:
            return []
        time.sleep(0.05)
    return pids
