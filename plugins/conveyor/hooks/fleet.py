"""The fleet hook: SSH to the hosts of a service, through the SSH provider's own ``SSHHook``.

One Airflow connection (``conveyor_fleet`` by default, conn type ``ssh``) carries the login, the
private key and the expected host key (``host_key`` extra); a session targets one host by
overriding the address and port. A task opens **one session per host** and takes every step there
on it (one SSH connection; the remote script is installed at most once, by checksum)::

    with FleetHook("conveyor_fleet", command_s=120).session(host) as fleet:
        fleet.deploy(artifact, tarball)        # no-op when the host already runs that version

The session's raw calls (``run``, ``run_shell``, ``upload``, ``remote``, and ``read_bytes`` /
``write_atomic`` for small files such as the flags file) return what the host said;
its release steps (``current_version``, ``deploy``, ``activate``, ``restart``, ``prune``) say what
that means (exit 3 of ``stage`` is a corrupted artifact, exit 5 a full disk) and raise
:class:`DeployError` naming the host. Every step is idempotent, and the switch itself is done on
the host by ``include/remote/conveyor-remote.sh`` (checksum-verified staging, atomic ``current``
symlink), so a task killed halfway leaves either the old or the new version active.

**Every remote step has a wall-clock bound** (the service's ``deploy.timeouts``): connecting
(``connect_s``), each command from start to exit however much it prints (``command_s``; installing
the remote script counts as one), each SFTP upload however slowly the host reads (``upload_s``).
A step that passes its bound raises :class:`StepTimeout` (``prod-3: stage timed out after 120 s``)
and closes the session: the connection is dropped, which ends whatever read or write was waiting
(and, on the lab fleet, the command). The operators treat it as any failed host.
"""

from __future__ import annotations

import hashlib
import logging
import math
import select
import shlex
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from conveyor import validation
from conveyor.exceptions import DeployError, InvalidInputError
from conveyor.hosts import Host
from conveyor.paths import REMOTE_DIR

if TYPE_CHECKING:
    from conveyor.artifacts import ArtifactInfo

REMOTE_SCRIPT = REMOTE_DIR / "conveyor-remote.sh"
REMOTE_SCRIPT_PATH = ".conveyor/conveyor-remote.sh"  # relative to the login directory (docs/interfaces.md)
INCOMING_DIR = ".conveyor/incoming"  # where artifacts are uploaded (relative to the login directory)
CORRUPTED = 3  # conveyor-remote.sh: checksum mismatch, an artifact tar cannot read, or an unsafe member
NO_SPACE = 5  # conveyor-remote.sh's exit code for a full disk (ENOSPC or EDQUOT)
OUTPUT_LIMIT = 1 << 20  # bytes of each output stream a command keeps (its end): a command may print for ever
_CHUNK = 32768
_POLL_S = 1.0  # the longest the exec loop sleeps between two looks at the channel

log = logging.getLogger(__name__)


class StepTimeout(DeployError):
    """A remote step passed its wall-clock bound (``deploy.timeouts``); the session was closed."""

    def __init__(self, host: str, step: str, seconds: float) -> None:
        super().__init__(f"{host}: {step} timed out after {seconds:g} s")
        self.host = host
        self.step = step
        self.seconds = seconds


class NoSpaceLeft(DeployError):
    """A host's disk is full: exit 5 of ``conveyor-remote.sh``, or an upload the disk had no room for."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"no space left on {host}: {detail}")
        self.host = host


@dataclass(frozen=True)
class StepBounds:
    """Wall-clock bounds of one host's remote steps, in seconds (``deploy.timeouts`` and the health probe)."""

    connect_s: float = 10.0
    command_s: float = 120.0
    upload_s: float = 600.0
    probe_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf):
                raise InvalidInputError(f"fleet bound {name}: expected a positive number of seconds, got {value!r}")


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def describe(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()[-5:]
        return f"{self.host}: exit {self.exit_status}: {' | '.join(text)}"


class _Tail:
    """The last :data:`OUTPUT_LIMIT` bytes of an output stream."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > OUTPUT_LIMIT:
            cut = len(self.data) - OUTPUT_LIMIT
            del self.data[:cut]
            self.dropped += cut

    def text(self) -> str:
        head = f"[... {self.dropped} bytes not kept]\n" if self.dropped else ""
        return head + self.data.decode(errors="replace")


def _says_no_space(message: str) -> bool:
    lowered = message.lower()
    return "no space left" in lowered or "quota exceeded" in lowered or "no space on filesystem" in lowered


class FleetSession:
    """One SSH connection to one host, open for the steps a task takes there (see the module docs)."""

    def __init__(self, host: Host, client: Any, bounds: StepBounds) -> None:
        self.host = host
        self.bounds = bounds
        self._client = client
        self._sftp_client: Any = None
        self._script_installed = False
        self._ended: str | None = None  # why the session was closed early (a step passed its bound)

    # -- bounds --------------------------------------------------------------------------------------------

    @contextmanager
    def _bounded(self, step: str, seconds: float) -> Iterator[float]:
        """Run the block within ``seconds`` of wall-clock time (yields the deadline, ``time.monotonic()``).

        When the time is up a timer drops the connection, which ends any read or write the block is
        waiting on, and :class:`StepTimeout` is raised; the session cannot be used any more.
        """
        if self._ended:
            raise DeployError(f"{self.host.name}: {step}: the session was closed after {self._ended}")
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self._drop()

        deadline = time.monotonic() + seconds
        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            yield deadline
        except StepTimeout:
            raise
        except Exception as e:
            if expired.is_set():
                raise self._timed_out(step, seconds) from e
            raise
        finally:
            timer.cancel()
        if expired.is_set():
            raise self._timed_out(step, seconds)

    def _timed_out(self, step: str, seconds: float) -> StepTimeout:
        error = StepTimeout(self.host.name, step, seconds)
        self._ended = f"{step} timed out after {seconds:g} s"
        self._drop()
        log.warning("%s; the session is closed", error)
        return error

    def _drop(self) -> None:
        """Close the connection at once, without waiting for the host (its transport and every channel)."""
        transport = self._client.get_transport()
        if transport is not None:
            transport.close()

    # -- raw calls: what the host said -------------------------------------------------------------------

    def run_shell(self, command: str, *, step: str = "command") -> CommandResult:
        """Run a trusted command line from the service definition (never from run parameters), within
        ``command_s`` from start to exit; ``step`` names it in a timeout's message."""
        status, out, err = self._exec(command, step)
        return CommandResult(self.host.name, command, status, out, err)

    def run(self, argv: list[str], *, step: str | None = None) -> CommandResult:
        """Run ``argv``; every argument is shell-quoted, nothing is interpolated."""
        return self.run_shell(" ".join(shlex.quote(a) for a in argv), step=step or argv[0])

    def _exec(self, command: str, step: str) -> tuple[int, str, str]:
        """Our own exec loop: read both streams until the command exits, or drop it at the deadline."""
        seconds = self.bounds.command_s
        with self._bounded(step, seconds) as deadline:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise DeployError(f"{self.host.name}: {step}: the SSH connection is closed")
            channel = transport.open_session(timeout=seconds)
            try:
                channel.exec_command(command)
                channel.shutdown_write()  # no input: a command that reads stdin sees its end at once
                out, err = _Tail(), _Tail()
                while True:
                    if channel.recv_ready():
                        out.add(channel.recv(_CHUNK))
                        continue
                    if channel.recv_stderr_ready():
                        err.add(channel.recv_stderr(_CHUNK))
                        continue
                    if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timed_out(step, seconds)
                    if channel.eof_received:  # all output is in; the exit status is on its way
                        channel.status_event.wait(min(remaining, _POLL_S))
                    else:
                        select.select([channel], [], [], min(remaining, _POLL_S))
                status = channel.recv_exit_status()
            finally:
                channel.close()
        return status, out.text(), err.text()

    def _sftp(self) -> Any:
        """The session's SFTP channel (opened on first use, inside the caller's bound)."""
        if self._sftp_client is None:
            self._sftp_client = self._client.open_sftp()
        return self._sftp_client

    def upload(self, local: Path, remote: str) -> None:
        """Copy ``local`` to ``remote`` (relative to the login directory) by SFTP, via a temporary name,
        within ``upload_s``. A failed upload leaves no ``.part`` behind (unless the host stopped
        answering: then the session is closed and ``prune`` removes it later)."""
        try:
            with self._bounded("upload", self.bounds.upload_s):
                self._put(local, remote)
        except StepTimeout:
            raise
        except (OSError, EOFError) as e:
            self._discard(f"{remote}.part")
            need = local.stat().st_size
            if _says_no_space(str(e)) or self._short_of_space(str(Path(remote).parent), need):
                raise NoSpaceLeft(self.host.name, f"uploading {local.name} ({need} bytes) to {remote}: {e}") from e
            raise DeployError(f"{self.host.name}: upload of {local.name} to {remote} failed: {e}") from e

    def _put(self, local: Path, remote: str) -> None:
        sftp = self._sftp()
        parts = Path(remote).parent.parts
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            try:
                sftp.stat(directory)
            except FileNotFoundError:
                sftp.mkdir(directory)
        tmp = f"{remote}.part"
        sftp.put(str(local), tmp)
        try:
            sftp.remove(remote)
        except FileNotFoundError:
            pass
        sftp.rename(tmp, remote)

    def read_bytes(self, remote: str) -> bytes | None:
        """The contents of the small file ``remote`` (relative to the login directory), None when there is
        none; within ``command_s``."""
        with self._bounded("read", self.bounds.command_s):
            try:
                with self._sftp().open(remote, "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                return None

    def write_atomic(self, remote: str, data: bytes) -> None:
        """Replace the small file ``remote`` (relative to the login directory) with ``data`` at once: written
        under a temporary name by SFTP, then renamed with ``mv`` (rename(2)), so a reader on the host sees
        the old file or the new one, never a part, and never no file (as SFTP's own rename would allow)."""
        tmp = f"{remote}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with self._bounded("write", self.bounds.command_s):
                with self._sftp().open(tmp, "wb") as fh:
                    fh.write(data)
        except StepTimeout:
            raise
        except (OSError, EOFError) as e:
            self._discard(tmp)
            raise DeployError(f"{self.host.name}: writing {remote} failed: {e}") from e
        moved = self.run(["mv", "-f", "--", tmp, remote], step="rename")
        if not moved.ok:
            self._discard(tmp)
            raise DeployError(f"{self.host.name}: cannot replace {remote}: {moved.describe()}")

    def _discard(self, *paths: str) -> None:
        """Remove what a failed step left on the host; a failure here is logged, never raised. After a
        timeout the session is closed: ``prune`` removes the files later."""
        if self._ended:
            return
        try:
            result = self.run(["rm", "-f", "--", *paths], step="cleanup")
            if not result.ok:
                log.warning("%s: could not remove %s: %s", self.host.name, ", ".join(paths), result.describe())
        except DeployError as e:
            log.warning("%s: could not remove %s: %s", self.host.name, ", ".join(paths), e)

    def _short_of_space(self, directory: str, need: int) -> bool:
        """Whether the filesystem holding ``directory`` has less than ``need`` bytes free (``df -Pk``);
        OpenSSH's SFTP server reports a full disk only as "Failure"."""
        try:
            result = self.run(["df", "-Pk", "--", directory], step="df")
            available_kib = int(result.stdout.strip().splitlines()[-1].split()[3])
        except (DeployError, ValueError, IndexError):
            return False
        return result.ok and available_kib * 1024 < need

    def remote(self, *args: str) -> CommandResult:
        """Run a subcommand of ``conveyor-remote.sh`` (installed first if the host's copy differs)."""
        self._install_remote_script()
        return self.run(["bash", REMOTE_SCRIPT_PATH, *args], step=args[0] if args else "remote")

    def _install_remote_script(self) -> None:
        if self._script_installed:
            return
        want = hashlib.sha256(REMOTE_SCRIPT.read_bytes()).hexdigest()
        with self._bounded("install", self.bounds.command_s):
            try:
                with self._sftp().open(REMOTE_SCRIPT_PATH, "rb") as fh:
                    have = hashlib.sha256(fh.read()).hexdigest()
            except OSError:  # not there yet (paramiko raises FileNotFoundError / IOError)
                have = None
            if have != want:
                self._put(REMOTE_SCRIPT, REMOTE_SCRIPT_PATH)
        self._script_installed = True

    def close(self) -> None:
        try:
            if self._sftp_client is not None and not self._ended:
                self._sftp_client.close()
        finally:
            self._client.close()

    # -- release steps: what it means ---------------------------------------------------------------------

    def current_version(self) -> str | None:
        """The version ``current`` points to, or None on a host with no release yet."""
        result = self.remote("current", self.host.app_root)
        if not result.ok:
            raise DeployError(f"cannot read the current version: {result.describe()}")
        version = result.stdout.strip()
        return None if version in ("", "none") else version

    def restart(self) -> None:
        result = self.run_shell(self.host.restart, step="restart")
        if not result.ok:
            raise DeployError(f"restart failed: {result.describe()}")

    def serving(self, version: str) -> bool:
        """Whether the host's app answers its health URL on ``version`` right now (one probe)."""
        from conveyor.health import probe_health

        health = probe_health(self.host, timeout=self.bounds.probe_timeout_s)
        return bool(health["ok"]) and health["version"] == version

    def _finish_switch(self, version: str) -> dict[str, Any]:
        """``current`` already names ``version``: leave a host that serves it alone, restart one that does not
        (an earlier try was stopped between the switch and the restart, or the app died)."""
        if self.serving(version):
            log.info("%s already runs %s; leaving it alone", self.host.name, version)
            return {"host": self.host.name, "from": version, "to": version, "changed": False}
        log.warning("%s: current is %s but the app does not serve it; restarting it", self.host.name, version)
        self.restart()
        return {"host": self.host.name, "from": version, "to": version, "changed": True}

    def deploy(self, artifact: ArtifactInfo, tarball: Path) -> dict[str, Any]:
        """Stage, activate and restart ``artifact`` unless the host already runs that version."""
        version = validation.version(artifact.version)
        validation.sha256(artifact.sha256)
        before = self.current_version()
        if before == version:
            return self._finish_switch(version)
        incoming = f"{INCOMING_DIR}/{Path(artifact.key).name}"
        self.upload(tarball, incoming)
        staged = self.remote("stage", self.host.app_root, version, artifact.sha256, incoming)
        if not staged.ok:
            self._discard(incoming, f"{incoming}.part")  # the script removed its staging directory
            if staged.exit_status == NO_SPACE:
                raise NoSpaceLeft(self.host.name, f"staging {version}: {staged.describe()}")
            kind = "staging failed"
            if staged.exit_status == CORRUPTED:
                kind = "unsafe artifact" if "unsafe artifact" in staged.describe() else "corrupted artifact"
            raise DeployError(f"{kind}: {staged.describe()}")
        activated = self.remote("activate", self.host.app_root, version)
        if not activated.ok:
            self._discard(incoming)
            if activated.exit_status == NO_SPACE:
                raise NoSpaceLeft(self.host.name, f"activating {version}: {activated.describe()}")
            raise DeployError(f"activation failed: {activated.describe()}")
        try:
            self.restart()
        finally:
            self._discard(incoming)
        log.info("%s: %s -> %s (%s)", self.host.name, before, version, activated.stdout.strip())
        return {"host": self.host.name, "from": before, "to": version, "changed": True}

    def activate(self, version: str) -> dict[str, Any]:
        """Switch back to an already-staged ``version`` and restart (rollback); no-op if it runs it."""
        validation.version(version)
        before = self.current_version()
        if before == version:
            return self._finish_switch(version)
        activated = self.remote("activate", self.host.app_root, version)
        if not activated.ok:
            if activated.exit_status == NO_SPACE:
                raise NoSpaceLeft(self.host.name, f"switching back to {version}: {activated.describe()}")
            raise DeployError(f"cannot switch back to {version}: {activated.describe()}")
        self.restart()
        return {"host": self.host.name, "from": before, "to": version, "changed": True}

    def prune(self, keep: int) -> str:
        """Remove all but the newest ``keep`` release directories (never the current or previous one),
        and what failed or interrupted steps left behind more than an hour ago (staging directories,
        uploads and their ``.part`` in ``~/.conveyor/incoming``)."""
        result = self.remote("prune", self.host.app_root, str(int(keep)), INCOMING_DIR)
        if not result.ok:
            raise DeployError(f"prune failed: {result.describe()}")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


class FleetHook(BaseHook):
    """SSH sessions to a service's hosts, every step bounded in wall-clock time (see the module docs).

    :param ssh_conn_id: the SSH connection shared by the fleet (login, key, ``host_key`` extra).
    :param connect_s: seconds to establish a connection (``deploy.timeouts.connect_s``).
    :param command_s: seconds one remote command may take, start to exit (``deploy.timeouts.command_s``).
    :param upload_s: seconds one SFTP upload may take (``deploy.timeouts.upload_s``).
    :param probe_timeout_s: seconds one health probe may take, connect to last byte
        (``deploy.health.probe_timeout_s``).
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "conveyor_fleet"
    conn_type = "ssh"
    hook_name = "Conveyor fleet (SSH)"

    def __init__(self, ssh_conn_id: str = default_conn_name, *, connect_s: float = 10.0, command_s: float = 120.0,
                 upload_s: float = 600.0, probe_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.bounds = StepBounds(connect_s=connect_s, command_s=command_s, upload_s=upload_s,
                                 probe_timeout_s=probe_timeout_s)

    def _ssh(self, host: Host):
        from airflow.providers.ssh.hooks.ssh import SSHHook

        connect_s = self.bounds.connect_s
        return SSHHook(
            ssh_conn_id=self.ssh_conn_id, remote_host=host.address, port=host.ssh_port, conn_timeout=connect_s,
            banner_timeout=connect_s, auth_timeout=connect_s, cmd_timeout=None, keepalive_interval=0,
            # One attempt: the provider retries every error after a pause (a refused key or a changed
            # host key too), so a retry would only hide the real cause behind "connect timed out".
            conn_retry_attempts=1,
        )

    def _connect(self, host: Host) -> Any:
        """A connection to ``host`` within ``connect_s`` of wall-clock time, or :class:`StepTimeout`.

        paramiko cannot be interrupted while it connects, so the attempt runs in a thread of its own;
        one still running at the bound is abandoned (it ends by paramiko's own timeouts, and closes
        the connection if it was made after all).
        """
        ssh = self._ssh(host)  # reads the Airflow connection: no network yet
        lock = threading.Lock()
        outcome: list[tuple[bool, Any]] = []
        abandoned: list[bool] = []
        done = threading.Event()

        def attempt() -> None:
            try:
                result: tuple[bool, Any] = (True, ssh.get_conn())
            except Exception as e:  # handed to the caller below
                result = (False, e)
            with lock:
                if abandoned:
                    if result[0]:
                        result[1].close()
                    return
                outcome.append(result)
            done.set()

        threading.Thread(target=attempt, name=f"connect-{host.name}", daemon=True).start()
        done.wait(self.bounds.connect_s)
        with lock:
            if not outcome:
                abandoned.append(True)
                raise StepTimeout(host.name, "connect", self.bounds.connect_s)
        made, value = outcome[0]
        if not made:
            raise value
        return value

    @contextmanager
    def session(self, host: Host) -> Iterator[FleetSession]:
        """One SSH connection to ``host``, closed when the block ends."""
        session = FleetSession(host, self._connect(host), self.bounds)
        try:
            yield session
        finally:
            session.close()

    def test_connection(self) -> tuple[bool, str]:
        try:
            conn = self.get_connection(self.ssh_conn_id)
            if not conn.host:
                return True, "Connection parsed; set a host to test a login (Conveyor targets hosts per inventory)."
            with self.session(Host(name=conn.host, environment="test", address=conn.host,
                                   ssh_port=conn.port or 22)) as session:
                session.run(["true"])
            return True, "Connection successfully tested"
        except Exception as e:
            return False, str(e)
