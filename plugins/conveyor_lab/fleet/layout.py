"""The local fleet on disk: where each file lives, the keys, each host's home and its environment.

Shared by :class:`conveyor_lab.fleet.Fleet` (which writes these files) and the daemon (which reads them),
so both agree on what a host's login environment is: ``bin/restart`` run by ``fleet up`` behaves
exactly as when Conveyor runs it over SSH.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.paths import REMOTE_DIR
from conveyor_lab.fleet.spec import FleetSpec, HostSpec

REMOTE_SCRIPT = REMOTE_DIR / "conveyor-remote.sh"
REMOTE_SCRIPT_PATH = ".conveyor/conveyor-remote.sh"  # relative to a host's home (see docs/interfaces.md)
APP_ROOT = "app"
RESTART = "bin/restart"
SHIM_DIR = "bin-shim"
#: Set in the environment of every process the fleet starts, so ``fleet down`` can find stragglers.
MARKER_ENV = "CONVEYOR_FLEET_HOME"
#: Faults the daemon can inject into one host's SSH server (``Fleet.inject``; ``fleet/faults/<host>``):
#: ``sftp-stall``: SFTP writes are never answered (an upload hangs once the SSH window is full), as if
#: the host stopped reading; ``exec-stall``: commands are accepted but never start (a hung host).
#: The daemon re-reads the file on every request, so a fault can be injected and healed any time.
FAULTS = ("sftp-stall", "exec-stall")


class FleetError(ConveyorError):
    """The local fleet could not be started, stopped or inspected."""


@dataclass(frozen=True)
class FleetPaths:
    """The files of one fleet under ``home`` (``$CONVEYOR_HOME/fleet`` by default)."""

    home: Path

    @property
    def spec(self) -> Path:
        return self.home / "spec.json"

    @property
    def inventory(self) -> Path:
        return self.home / "inventory.json"

    @property
    def client_key(self) -> Path:
        return self.home / "id_ed25519"

    @property
    def client_pub(self) -> Path:
        return self.home / "id_ed25519.pub"

    @property
    def host_key(self) -> Path:
        return self.home / "host_key"

    @property
    def host_pub(self) -> Path:
        return self.home / "host_key.pub"

    @property
    def daemon_pid(self) -> Path:
        return self.home / "daemon.pid"

    @property
    def daemon_ready(self) -> Path:
        return self.home / "daemon.ready"

    @property
    def daemon_log(self) -> Path:
        return self.home / "daemon.log"

    @property
    def hosts(self) -> Path:
        return self.home / "hosts"

    def host_home(self, host: HostSpec | str) -> Path:
        return self.hosts / (host if isinstance(host, str) else host.name)

    @property
    def faults(self) -> Path:
        return self.home / "faults"

    def fault_file(self, host: HostSpec | str) -> Path:
        """The faults injected into ``host``'s SSH server, one name a line (outside the host's home)."""
        return self.faults / (host if isinstance(host, str) else host.name)


def host_faults(paths: FleetPaths, host: HostSpec | str) -> set[str]:
    """The faults injected into ``host`` right now (see :data:`FAULTS`)."""
    try:
        return set(paths.fault_file(host).read_text().split()) & set(FAULTS)
    except OSError:
        return set()


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------- keys


def _public_line(key) -> str:
    """``ssh-ed25519 AAAA...`` without a comment: the form SSHHook's ``host_key`` extra expects."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def ensure_keys(paths: FleetPaths) -> None:
    """Create the client key pair and the host key once; later runs reuse them (a stable connection)."""
    import asyncssh

    paths.home.mkdir(parents=True, exist_ok=True)
    for private, public in ((paths.client_key, paths.client_pub), (paths.host_key, paths.host_pub)):
        if private.exists():
            key = asyncssh.read_private_key(str(private))
        else:
            key = asyncssh.generate_private_key("ssh-ed25519", comment="conveyor-local-fleet")
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key.export_private_key("openssh"))
        os.chmod(private, 0o600)
        if not public.exists():
            write_atomic(public, _public_line(key) + "\n")


def host_public_key(paths: FleetPaths) -> str:
    return paths.host_pub.read_text().strip()


# --------------------------------------------------------------------------------- spec files


def load_spec(paths: FleetPaths) -> FleetSpec | None:
    try:
        return FleetSpec.from_dict(json.loads(paths.spec.read_text()))
    except FileNotFoundError:
        return None


def save_spec(paths: FleetPaths, spec: FleetSpec) -> None:
    write_atomic(paths.spec, json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")


def inventory(paths: FleetPaths, spec: FleetSpec) -> dict[str, Any]:
    """The inventory document (``docs/interfaces.md``) for this fleet."""
    return {
        "username": spec.username,
        "client_key": str(paths.client_key),
        "host_key": host_public_key(paths),
        "hosts": [
            {"name": h.name, "environment": h.environment, "address": h.address, "ssh_port": h.ssh_port,
             "app_root": APP_ROOT, "restart": RESTART, "health_url": h.health_url, "metrics_url": h.metrics_url}
            for h in spec.hosts()
        ],
    }


# ------------------------------------------------------------------------------------ hosts


def host_env(paths: FleetPaths, spec: FleetSpec, host: HostSpec) -> dict[str, str]:
    """The environment of a login on ``host``: what an SSH command (or ``bin/restart``) runs with."""
    home = paths.host_home(host)
    python_dir = str(Path(spec.python).parent)
    return {
        "HOME": str(home),
        "USER": spec.username,
        "LOGNAME": spec.username,
        "SHELL": "/bin/bash",
        "PATH": os.pathsep.join([str(home / SHIM_DIR), python_dir, "/usr/bin", "/bin"]),
        "LANG": "C.UTF-8",
        "CONVEYOR_HOST_NAME": host.name,
        "CONVEYOR_HOST_ENVIRONMENT": host.environment,
        "CONVEYOR_HOST_ADDRESS": host.address,
        "CONVEYOR_APP_PORT": str(host.app_port),
        MARKER_ENV: str(paths.home),
        # Configuration drift for the demo: only the replica has the payment gateway set, so v1.3.0
        # (which needs it) passes the replica and fails to start in production. The soak hosts are
        # configured like production (catching what the replica hides is what a soak is for).
        **({"SHOP_PAYMENT_GATEWAY": "sandbox"} if host.environment == "replica" else {}),
    }


RESTART_SCRIPT = r"""#!/usr/bin/env bash
# bin/restart: (re)start the demo shop from ~/app/current. Written by `conveyor fleet up`.
#   bin/restart         stop the running app (if any) and start ~/app/current
#   bin/restart stop    only stop it
# Exits 0 once the new process is running; the caller checks /health.
set -uo pipefail
cd "$HOME" || exit 1
ADDRESS=__ADDRESS__
PORT=__PORT__
PIDFILE=$HOME/run/app.pid
LOG=$HOME/log/app.log
mkdir -p "$HOME/run" "$HOME/log" "$HOME/data"

alive() { # a live (not zombie) process
  local state
  [[ -r /proc/$1/stat ]] || return 1
  state=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

ours() { # the app of this host, not a process that happens to have the same pid now
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *" -m shop "*"--host $ADDRESS --port $PORT "* ]]
}

stop_app() {
  [[ -f $PIDFILE ]] || return 0
  local pid
  pid=$(<"$PIDFILE")
  if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      echo "restart: app (pid $pid) ignored TERM for 5 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null
      for _ in $(seq 1 20); do alive "$pid" || break; sleep 0.1; done
    fi
    echo "stopped app (pid $pid)"
  fi
  rm -f -- "$PIDFILE"
}

case ${1:-start} in
  stop) stop_app; exit 0 ;;
  start) ;;
  *) echo "usage: bin/restart [stop]" >&2; exit 2 ;;
esac

if [[ ! -d $HOME/app/current ]]; then
  echo "restart: ~/app/current is missing: no version is active on this host (stage and activate one first)" >&2
  exit 1
fi
stop_app
version=$(readlink -- "$HOME/app/current"); version=${version##*/}
echo "$(date -u +%FT%TZ) starting $version on $ADDRESS:$PORT" >>"$LOG"
# A subshell that is not a process-group leader, so setsid gives the app its own session without
# forking again: $! is the app's pid. Its output goes to the log, its stdin is /dev/null, so the SSH
# session that ran this script ends as soon as the script does.
(cd "$HOME/app/current" && exec setsid python -m shop --host "$ADDRESS" --port "$PORT" --data-dir "$HOME/data") \
  </dev/null >>"$LOG" 2>&1 &
pid=$!
echo "$pid" >"$PIDFILE.tmp" && mv -f -- "$PIDFILE.tmp" "$PIDFILE"
# Wait until the app listens or exits (at most 10 s): an app that cannot start says why here, in the
# deploy's error, however slowly it gets to its settings check on a busy machine.
for _ in $(seq 100); do
  alive "$pid" || break
  (exec 3<>"/dev/tcp/$ADDRESS/$PORT") 2>/dev/null && break
  sleep 0.1
done
if ! alive "$pid"; then
  echo "restart: the app exited right after starting; the end of ~/log/app.log:" >&2
  tail -n 20 "$LOG" >&2
  rm -f -- "$PIDFILE"
  exit 1
fi
echo "started $version (pid $pid) on $ADDRESS:$PORT"
"""


def restart_script(host: HostSpec) -> str:
    return RESTART_SCRIPT.replace("__ADDRESS__", host.address).replace("__PORT__", str(host.app_port))


def prepare_host(paths: FleetPaths, spec: FleetSpec, host: HostSpec) -> Path:
    """Create (or refresh) a host's home: directories, ``bin/restart``, the python shim, the remote script."""
    home = paths.host_home(host)
    for sub in ("app", "bin", "run", "log", "data", ".conveyor", SHIM_DIR):
        (home / sub).mkdir(parents=True, exist_ok=True)
    write_atomic(home / RESTART, restart_script(host), mode=0o755)
    # Scripts rather than symlinks: a symlink to a virtualenv's python does not activate the
    # virtualenv (Python looks for pyvenv.cfg next to the path it was started as).
    shim = f"#!/bin/sh\nexec {shlex.quote(spec.python)} \"$@\"\n"
    for name in ("python", "python3"):
        path = home / SHIM_DIR / name
        if path.is_symlink() or not path.is_file() or path.read_text() != shim:
            path.unlink(missing_ok=True)
            write_atomic(path, shim, mode=0o755)
    remote = home / REMOTE_SCRIPT_PATH
    tmp = remote.with_name(remote.name + ".tmp")
    shutil.copyfile(REMOTE_SCRIPT, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, remote)
    return home


def current_version(paths: FleetPaths, host: HostSpec) -> str | None:
    """The version ``app/current`` points to, or None."""
    link = paths.host_home(host) / APP_ROOT / "current"
    try:
        return os.readlink(link).rstrip("/").rsplit("/", 1)[-1]
    except OSError:
        return None


def app_pid(paths: FleetPaths, host: HostSpec) -> int | None:
    try:
        text = (paths.host_home(host) / "run" / "app.pid").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
