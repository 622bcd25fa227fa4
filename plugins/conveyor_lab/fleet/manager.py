"""Start, stop and inspect the local fleet: :class:`Fleet`.

``Fleet.up()`` creates the demo repository (:func:`conveyor_lab.demo.create_demo_repo`, which the
demo service's ``repo.url: local:demo_shop`` names), prepares every host's home (``hosts/<name>/``),
seeds the demo shop where no version is active, starts the daemon (:mod:`conveyor_lab.fleet.daemon`: the SSH servers and the traffic generator)
and runs each host's ``bin/restart``; ``Fleet.down()`` stops the apps, then the daemon, and checks
that nothing it started is left. Hosts' files stay between runs, so the next ``up`` restarts each
host on the version it last ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conveyor.paths import fleet_dir
from conveyor_lab.demo import create_demo_repo
from conveyor_lab.fleet import layout, procs
from conveyor_lab.fleet.layout import FleetError, FleetPaths
from conveyor_lab.fleet.spec import FleetSpec, HostSpec

SEED_SERVICE = "demo_shop"
DAEMON_START_TIMEOUT_S = 20.0
HEALTH_TIMEOUT_S = 30.0


def fetch_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET ``url`` and parse its JSON body (raises OSError or ValueError)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


class Fleet:
    """The local fleet: ``spec.replicas`` replica, ``spec.production`` production and ``spec.dev`` dev
    (soak) hosts on loopback.

    :param spec: the fleet's shape. None means the one saved by the last ``up`` (``spec.json``), or
        the defaults (2 replicas on 127.0.0.11-12, 6 production hosts on 127.0.0.21-26, 2 dev hosts
        on 127.0.0.31-32, ports 2222/8000).
    :param home: the fleet directory; default ``$CONVEYOR_HOME/fleet``.
    :param echo: where progress lines go (``print`` by default; ``lambda _: None`` for silence).
    """

    def __init__(self, spec: FleetSpec | None = None, home: Path | None = None, *,
                 echo: Callable[[str], None] | None = None) -> None:
        self.home = Path(home or fleet_dir()).resolve()
        self.paths = FleetPaths(self.home)
        self._explicit_spec = spec is not None
        self.spec = spec or layout.load_spec(self.paths) or FleetSpec()
        self.echo = echo or (lambda line: print(line, flush=True))
        self._daemon: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------ state

    @property
    def inventory_path(self) -> Path:
        return self.paths.inventory

    def hosts(self) -> list[HostSpec]:
        return self.spec.hosts()

    def host_home(self, name: str) -> Path:
        return self.paths.host_home(self.spec.host(name))

    def daemon_pid(self) -> int | None:
        """The daemon's pid if it is running (checked by its command line, not only the pid file)."""
        try:
            pid = int(self.paths.daemon_pid.read_text().strip())
        except (OSError, ValueError):
            return None
        if procs.alive(pid) and procs.is_daemon(pid, self.home):
            return pid
        return None

    def running(self) -> bool:
        return self.daemon_pid() is not None

    def app_pid(self, host: HostSpec) -> int | None:
        """The pid of ``host``'s app if it is running."""
        pid = layout.app_pid(self.paths, host)
        if pid and procs.alive(pid) and procs.is_app(pid, host.address, host.app_port):
            return pid
        return None

    def pids(self) -> dict[str, int]:
        """Every live process of this fleet: ``{"daemon": pid, "<host>": app pid, ...}``."""
        out = {}
        if pid := self.daemon_pid():
            out["daemon"] = pid
        for host in self.hosts():
            if pid := self.app_pid(host):
                out[host.name] = pid
        return out

    # ------------------------------------------------------------------------------ faults

    def inject(self, name: str, fault: str) -> None:
        """Make host ``name`` misbehave as ``fault`` says (:data:`conveyor_lab.fleet.layout.FAULTS`),
        until :meth:`heal`; the running daemon picks it up at the host's next request."""
        host = self.spec.host(name)
        if fault not in layout.FAULTS:
            raise FleetError(f"unknown fault {fault!r}: the fleet can inject {', '.join(layout.FAULTS)}")
        faults = layout.host_faults(self.paths, host) | {fault}
        layout.write_atomic(self.paths.fault_file(host), "".join(f"{f}\n" for f in sorted(faults)))

    def heal(self, name: str | None = None) -> None:
        """Remove every fault of host ``name`` (of every host when None)."""
        for host in self.hosts() if name is None else [self.spec.host(name)]:
            self.paths.fault_file(host).unlink(missing_ok=True)

    def faults(self, name: str) -> set[str]:
        return layout.host_faults(self.paths, self.spec.host(name))

    def leftover_processes(self) -> list[int]:
        """Processes carrying this fleet's marker in their environment (should be none after ``down``)."""
        return procs.marked_processes(layout.MARKER_ENV, str(self.home))

    def connection(self) -> dict[str, Any]:
        """The Airflow SSH connection for this fleet (one connection; callers override host and port)."""
        if not self.paths.client_key.exists() or not self.paths.host_pub.exists():
            raise FleetError(f"the local fleet has no keys in {self.home}: start it with `conveyor fleet up`")
        first = self.hosts()[0] if self.hosts() else None
        conn: dict[str, Any] = {
            "conn_type": "ssh",
            "description": "Conveyor's local fleet (conveyor fleet up)",
            "login": self.spec.username,
            "extra": {
                "key_file": str(self.paths.client_key),
                "host_key": layout.host_public_key(self.paths),
                "no_host_key_check": False,
                "allow_host_key_change": False,
                "look_for_keys": False,
                "compress": False,
            },
        }
        if first is not None:  # lets "Test connection" reach a host; tasks pass each host explicitly
            conn["host"], conn["port"] = first.address, first.ssh_port
        return conn

    def connection_uri(self) -> str:
        """The connection as JSON, the form Airflow accepts in ``AIRFLOW_CONN_<ID>``."""
        return json.dumps(self.connection(), sort_keys=True)

    # ----------------------------------------------------------------------------- status

    def _host_status(self, host: HostSpec) -> dict[str, Any]:
        pid = self.app_pid(host)
        row: dict[str, Any] = {
            "name": host.name, "environment": host.environment, "address": host.address,
            "ssh_port": host.ssh_port, "app_port": host.app_port,
            "version": layout.current_version(self.paths, host),
            "app_pid": pid or layout.app_pid(self.paths, host), "app_alive": pid is not None,
            "health_url": host.health_url, "health": None, "health_error": None,
        }
        try:
            row["health"] = fetch_json(host.health_url)
        except (OSError, ValueError) as e:
            row["health_error"] = str(getattr(e, "reason", e))
        return row

    def status(self) -> list[dict[str, Any]]:
        """One row per host: version from ``app/current``, app pid and liveness, ``/health`` or its error."""
        hosts = self.hosts()
        if not hosts:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
            return list(pool.map(self._host_status, hosts))

    # --------------------------------------------------------------------------------- up

    def up(self, seed_version: str | None = "v1.0.0", wait: bool = True) -> None:
        """Start the fleet (idempotent: a running fleet is left as it is).

        :param seed_version: the demo shop version installed on hosts that have none active; None
            leaves such hosts empty (their ``bin/restart`` then fails until a release deploys one).
        :param wait: wait until every host with a version answers ``/health``.

        The demo repository is created (or re-created when ``include/demo`` changed) first, even when
        the fleet runs already: seeding builds from it, and so do releases of the demo service.
        """
        create_demo_repo()
        if pid := self.daemon_pid():
            self.echo(f"The local fleet is already running (daemon pid {pid}, {self.home}).")
            return
        saved = layout.load_spec(self.paths)
        if saved is not None and not self._explicit_spec:
            self.spec = saved
        self.home.mkdir(parents=True, exist_ok=True)
        self._stop_leftovers()  # a daemon or apps of a previous run that died uncleanly
        self.heal()  # a fleet starts healthy
        layout.save_spec(self.paths, self.spec)
        layout.ensure_keys(self.paths)
        hosts = self.hosts()
        self.echo(f"Preparing {len(hosts)} hosts in {self.paths.hosts}")
        for host in hosts:
            layout.prepare_host(self.paths, self.spec, host)
        empty = [h for h in hosts if layout.current_version(self.paths, h) is None]
        if empty and seed_version:
            self._seed(empty, seed_version)
        self._start_daemon()
        layout.write_atomic(self.paths.inventory,
                            json.dumps(layout.inventory(self.paths, self.spec), indent=2) + "\n")
        startable = [h for h in hosts if layout.current_version(self.paths, h) is not None]
        if len(startable) < len(hosts):
            self.echo(f"No version active on {', '.join(h.name for h in hosts if h not in startable)}: not started")
        self._restart(startable)
        if wait:
            self.wait_healthy(startable)
        self.echo(f"The local fleet is up: {self.spec.summary()}, SSH on port {self.spec.ssh_port}, "
                  f"apps on port {self.spec.app_port}, traffic {self.spec.traffic_rate:g} req/s per host.")

    def _seed(self, hosts: list[HostSpec], version: str) -> None:
        from conveyor.artifacts import build_artifact
        from conveyor.config import load_service

        self.echo(f"Building the demo shop {version} to seed {len(hosts)} hosts")
        info = build_artifact(load_service(SEED_SERVICE), version, log_fn=lambda *a: None)
        if info.tarball is None:
            raise FleetError(f"the {version} artifact has no local copy to install")
        for host in hosts:
            home = self.paths.host_home(host)
            for args in (["stage", layout.APP_ROOT, info.version, info.sha256, str(info.tarball)],
                         ["activate", layout.APP_ROOT, info.version]):
                proc = subprocess.run(
                    ["bash", str(home / layout.REMOTE_SCRIPT_PATH), *args], cwd=home,
                    env=layout.host_env(self.paths, self.spec, host), capture_output=True, text=True, timeout=120,
                )
                if proc.returncode != 0:
                    raise FleetError(f"{host.name}: conveyor-remote.sh {args[0]} failed with exit code "
                                     f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        self.echo(f"Seeded {', '.join(h.name for h in hosts)} with {info.version}")

    def _start_daemon(self) -> None:
        self.paths.daemon_ready.unlink(missing_ok=True)
        env = {**os.environ, layout.MARKER_ENV: str(self.home), "PYTHONUNBUFFERED": "1"}
        env.pop("AIRFLOW_CONN_CONVEYOR_FLEET", None)
        with open(self.paths.daemon_log, "ab") as log:
            self._daemon = subprocess.Popen(
                [sys.executable, "-m", procs.DAEMON_MODULE, "--home", str(self.home)],
                cwd=self.home, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        layout.write_atomic(self.paths.daemon_pid, f"{self._daemon.pid}\n")
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._daemon.poll() is not None:
                self.paths.daemon_pid.unlink(missing_ok=True)
                raise FleetError(f"the fleet daemon exited with code {self._daemon.returncode}; "
                                 f"the end of {self.paths.daemon_log}:\n{self._log_tail()}")
            if self.paths.daemon_ready.exists():
                self.echo(f"SSH servers listening on port {self.spec.ssh_port} (daemon pid {self._daemon.pid}, "
                          f"log {self.paths.daemon_log})")
                return
            time.sleep(0.05)
        procs.terminate([self._daemon.pid], group=True)
        self.paths.daemon_pid.unlink(missing_ok=True)
        raise FleetError(f"the fleet daemon did not become ready in {DAEMON_START_TIMEOUT_S:g} s; "
                         f"the end of {self.paths.daemon_log}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.paths.daemon_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _run_restart(self, host: HostSpec, *args: str) -> subprocess.CompletedProcess:
        home = self.paths.host_home(host)
        return subprocess.run(
            ["bash", str(home / layout.RESTART), *args], cwd=home, env=layout.host_env(self.paths, self.spec, host),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )

    def _restart(self, hosts: list[HostSpec]) -> None:
        if not hosts:
            return
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            results = list(pool.map(self._run_restart, hosts))
        failed = []
        for host, proc in zip(hosts, results, strict=True):
            if proc.returncode != 0:
                failed.append(f"{host.name}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        if failed:
            raise FleetError("bin/restart failed on " + "\n".join(failed))
        self.echo(f"Started the app on {len(hosts)} hosts")

    def restart(self, name: str) -> None:
        """Run one host's ``bin/restart`` (as Conveyor would over SSH)."""
        host = self.spec.host(name)
        proc = self._run_restart(host)
        if proc.returncode != 0:
            raise FleetError(f"{name}: bin/restart exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")

    def wait_healthy(self, hosts: list[HostSpec] | None = None, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Wait until every host's ``/health`` answers ``{"status": "ok"}``."""
        pending = {h.name: h for h in (self.hosts() if hosts is None else hosts)}
        if not pending:
            return
        deadline = time.monotonic() + timeout
        errors: dict[str, str] = {}
        while pending:
            for name, host in list(pending.items()):
                try:
                    health = fetch_json(host.health_url, timeout=1.0)
                except (OSError, ValueError) as e:
                    errors[name] = str(getattr(e, "reason", e))
                    continue
                if health.get("status") == "ok":
                    del pending[name]
                else:
                    errors[name] = json.dumps(health)
            if not pending:
                break
            if time.monotonic() > deadline:
                detail = "; ".join(f"{n}: {errors.get(n, '?')}" for n in sorted(pending))
                raise FleetError(f"not healthy after {timeout:g} s: {detail} (see hosts/<name>/log/app.log)")
            time.sleep(0.1)
        self.echo("Every host answers /health")

    # ------------------------------------------------------------------------------- down

    def down(self, purge: bool = False) -> None:
        """Stop every app and the daemon; leave no process behind. ``purge`` also deletes the fleet directory."""
        if not self.home.exists():
            self.echo(f"The local fleet is not set up ({self.home} does not exist).")
            return
        stopped = self._stop_leftovers()
        self.paths.inventory.unlink(missing_ok=True)
        left = self.leftover_processes()
        if left:
            raise FleetError(f"processes of the fleet are still running after down: {left}")
        self.echo(f"The local fleet is stopped ({stopped} processes ended)." if stopped
                  else "The local fleet was not running.")
        if purge:
            shutil.rmtree(self.home)
            self.echo(f"Deleted {self.home}")

    def _stop_leftovers(self) -> int:
        """Stop apps (by pid file), the daemon, then any process still marked as this fleet's."""
        count = 0
        apps = {h.name: pid for h in self.hosts() if (pid := self.app_pid(h))}
        if apps:
            still = procs.terminate(apps.values(), timeout=5.0)
            if still:
                raise FleetError(f"could not stop apps {still}")
            count += len(apps)
        for host in self.hosts():
            (self.paths.host_home(host) / "run" / "app.pid").unlink(missing_ok=True)
        if pid := self.daemon_pid():
            still = procs.terminate([pid], timeout=5.0)
            if still:
                raise FleetError(f"could not stop the fleet daemon (pid {still})")
            count += 1
        if self._daemon is not None:
            self._daemon.poll()  # reap our own child
            self._daemon = None
        self.paths.daemon_pid.unlink(missing_ok=True)
        self.paths.daemon_ready.unlink(missing_ok=True)
        stray = self.leftover_processes()
        if stray:
            procs.terminate(stray, timeout=3.0)
            count += len(stray)
        return count
