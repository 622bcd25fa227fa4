"""The local fleet's daemon: one SSH server per host and the traffic generator, in one asyncio loop.

Started detached by :meth:`conveyor_lab.fleet.Fleet.up` as ``python -m conveyor_lab.fleet.daemon --home HOME``.
Each host is a real SSH server (asyncssh) on its own loopback address:

- public-key authentication only, with the fleet's client key and the spec's username;
- an exec request runs ``bash -c <command>`` with the host's home as working directory and login
  environment (:func:`conveyor_lab.fleet.layout.host_env`); stdin, stdout, stderr and the exit status
  (or signal) pass through unchanged, and a command whose client disconnects is killed;
- SFTP is chrooted to the host's home, so relative paths are relative to the login directory and
  ``..`` cannot leave it;
- faults injected with :meth:`conveyor_lab.fleet.Fleet.inject` (``fleet/faults/<host>``): ``exec-stall``
  holds every command before it starts, ``sftp-stall`` every SFTP write before it is done, for as
  long as the fault lasts or the client stays connected (a hung host, a host that stops reading).

The daemon writes ``daemon.ready`` once every server listens, and on SIGTERM closes the servers,
kills the commands still running and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from functools import partial
from pathlib import Path

import asyncssh

from conveyor_lab.fleet.layout import FleetPaths, host_env, host_faults, load_spec, write_atomic
from conveyor_lab.fleet.procs import DAEMON_MODULE
from conveyor_lab.fleet.spec import FleetSpec, HostSpec
from conveyor_lab.fleet.traffic import TrafficGenerator

log = logging.getLogger(DAEMON_MODULE)

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CHUNK = 65536
_FAULT_POLL_S = 0.2


async def stalled(paths: FleetPaths, host: HostSpec, fault: str, channel) -> bool:
    """Wait while ``fault`` is injected into ``host`` and the client is connected; True if it stalled."""
    if fault not in host_faults(paths, host):
        return False
    log.info("%s: %s: holding the request", host.name, fault)
    while fault in host_faults(paths, host) and not channel.is_closing():
        await asyncio.sleep(_FAULT_POLL_S)
    return True


class HostSFTPServer(asyncssh.SFTPServer):
    """SFTP chrooted to the host's home; a write waits while the host has the ``sftp-stall`` fault."""

    def __init__(self, chan, *, paths: FleetPaths, host: HostSpec) -> None:
        super().__init__(chan, chroot=str(paths.host_home(host)).encode())
        self._paths = paths
        self._host = host

    async def write(self, file_obj, offset: int, data: bytes) -> int:
        if await stalled(self._paths, self._host, "sftp-stall", self._chan) and self._chan.is_closing():
            raise asyncssh.SFTPConnectionLost("the client went away")
        return super().write(file_obj, offset, data)


class HostSSHServer(asyncssh.SSHServer):
    """Authentication for one host: the fleet's client key for the spec's username, nothing else."""

    def __init__(self, host: HostSpec, username: str, client_key: asyncssh.SSHKey):
        self.host = host
        self.username = username
        self.client_key = client_key

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._peer = conn.get_extra_info("peername")

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = username == self.username and key.public_data == self.client_key.public_data
        if not ok:
            log.info("%s: refused key %s for user %r from %s", self.host.name, key.get_fingerprint(), username,
                     self._peer)
        return ok


class HostCommands:
    """Runs exec (and shell) requests on one host as local subprocesses."""

    def __init__(self, paths: FleetPaths, spec: FleetSpec, host: HostSpec):
        self.host = host
        self.paths = paths
        self.home = paths.host_home(host)
        self.env = host_env(paths, spec, host)
        self.running: set[asyncio.subprocess.Process] = set()

    def _environment(self, process: asyncssh.SSHServerProcess) -> dict[str, str]:
        # Like sshd's AcceptEnv: what the client sets is passed on, but never the login's identity.
        env = {}
        for name, value in (process.env or {}).items():
            name = name.decode() if isinstance(name, bytes) else str(name)
            value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if _ENV_NAME_RE.match(name) and name not in self.env:
                env[name] = value
        return {**env, **self.env}

    async def handle(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command
        if await stalled(self.paths, self.host, "exec-stall", process.channel) and process.channel.is_closing():
            return  # the client gave up on a command that never started
        argv = ["bash", "-c", command] if command is not None else ["bash"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.home, env=self._environment(process), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as e:
            process.stderr.write(f"conveyor fleet: cannot run the command: {e}\n".encode())
            process.exit(127)
            return
        self.running.add(proc)
        log.debug("%s: pid %d: %s", self.host.name, proc.pid, command)

        async def pump_out(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter) -> None:
            while chunk := await reader.read(_CHUNK):
                with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
                    writer.write(chunk)
                    await writer.drain()

        async def pump_in() -> None:
            try:
                while chunk := await process.stdin.read(_CHUNK):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionError, asyncssh.Error):
                pass
            finally:
                with contextlib.suppress(Exception):
                    proc.stdin.close()

        feeder = asyncio.create_task(pump_in())
        finished = asyncio.create_task(self._finish(proc, pump_out(proc.stdout, process.stdout),
                                                    pump_out(proc.stderr, process.stderr)))
        closed = asyncio.create_task(process.channel.wait_closed())
        try:
            await asyncio.wait({finished, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not finished.done():  # the client went away: the command goes too, like under sshd
                log.info("%s: client closed the channel; killing pid %d", self.host.name, proc.pid)
                self.kill(proc)
                await finished
                return
            status = finished.result()
            if status >= 0:
                process.exit(status)
            else:
                name = signal.Signals(-status).name.removeprefix("SIG")
                process.exit_with_signal(name)
        finally:
            for task in (feeder, closed, finished):
                task.cancel()
            self.running.discard(proc)

    @staticmethod
    async def _finish(proc: asyncio.subprocess.Process, *pumps) -> int:
        await asyncio.gather(*pumps)
        return await proc.wait()

    @staticmethod
    def kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the command and whatever it started in its session

    def kill_all(self) -> None:
        for proc in list(self.running):
            self.kill(proc)


async def serve(paths: FleetPaths, spec: FleetSpec) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    host_key = asyncssh.read_private_key(str(paths.host_key))
    client_key = asyncssh.read_public_key(str(paths.client_pub))
    servers: list[asyncio.AbstractServer] = []
    commands: list[HostCommands] = []
    for host in spec.hosts():
        home = paths.host_home(host)
        handler = HostCommands(paths, spec, host)
        commands.append(handler)
        try:
            server = await asyncssh.create_server(
                partial(HostSSHServer, host, spec.username, client_key), host.address, host.ssh_port,
                server_host_keys=[host_key], process_factory=handler.handle,
                sftp_factory=partial(HostSFTPServer, paths=paths, host=host),
                encoding=None, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
                reuse_address=True, login_timeout=30, keepalive_interval=0,
            )
        except OSError as e:
            log.error("%s: cannot listen on %s:%d: %s", host.name, host.address, host.ssh_port, e)
            for s in servers:
                s.close()
            return 1
        servers.append(server)
        log.info("%s (%s): ssh on %s:%d, home %s", host.name, host.environment, host.address, host.ssh_port, home)

    traffic = TrafficGenerator(spec)
    traffic.start()
    write_atomic(paths.daemon_ready, f"{os.getpid()}\n")
    log.info("fleet daemon ready (pid %d)", os.getpid())

    async def watch_home() -> None:
        # A fleet directory deleted under us (a purged test run) must not leave a daemon behind.
        while paths.home.is_dir():
            await asyncio.sleep(5)
        log.warning("%s disappeared; stopping", paths.home)
        stop.set()

    watcher = asyncio.create_task(watch_home())
    await stop.wait()
    log.info("stopping: %d requests sent, %d dropped", traffic.sent, traffic.dropped)
    watcher.cancel()
    for server in servers:
        server.close()
    for handler in commands:
        handler.kill_all()
    await traffic.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)), 3)
    paths.daemon_ready.unlink(missing_ok=True)
    log.info("fleet daemon stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {DAEMON_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path, help="the fleet directory (spec.json, keys, hosts/)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    os.umask(0o022)
    paths = FleetPaths(args.home.resolve())
    spec = load_spec(paths)
    if spec is None:
        log.error("%s is missing: start the fleet with `conveyor fleet up`", paths.spec)
        return 1
    return asyncio.run(serve(paths, spec))


if __name__ == "__main__":
    sys.exit(main())
