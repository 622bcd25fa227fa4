"""The fleet hook: SSH to the hosts of a service, through the SSH provider's own ``SSHHook``.

One Airflow connection (``conveyor_fleet`` by default, conn type ``ssh``) carries the login, the
private key and the expected host key (``host_key`` extra); a session targets one host by
overriding the address and port. A task opens **one session per host** and takes every step there
on it (one SSH connection; the remote script is installed at most once, by checksum)::

    with FleetHook("conveyor_fleet").session(host) as fleet:
        fleet.deploy(artifact, tarball)        # no-op when the host already runs that version

The session's raw calls (``run``, ``run_shell``, ``upload``, ``remote``) return what the host said;
its release steps (``current_version``, ``deploy``, ``activate``, ``restart``, ``prune``) say what
that means (exit 3 of ``stage`` is a corrupted artifact) and raise :class:`DeployError` naming the
host. Every step is idempotent, and the switch itself is done on the host by
``include/remote/conveyor-remote.sh`` (checksum-verified staging, atomic ``current`` symlink), so a
task killed halfway leaves either the old or the new version active.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from conveyor import validation
from conveyor.exceptions import DeployError
from conveyor.hosts import Host
from conveyor.paths import REMOTE_DIR

if TYPE_CHECKING:
    from conveyor.artifacts import ArtifactInfo

REMOTE_SCRIPT = REMOTE_DIR / "conveyor-remote.sh"
REMOTE_SCRIPT_PATH = ".conveyor/conveyor-remote.sh"  # relative to the login directory (docs/interfaces.md)
CORRUPTED = 3  # conveyor-remote.sh's exit code for a checksum mismatch or an unreadable artifact

log = logging.getLogger(__name__)


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


class FleetSession:
    """One SSH connection to one host, open for the steps a task takes there (see the module docs)."""

    def __init__(self, host: Host, ssh: Any, client: Any, *, cmd_timeout: float) -> None:
        self.host = host
        self._ssh = ssh
        self._client = client
        self._cmd_timeout = cmd_timeout
        self._script_installed = False

    # -- raw calls: what the host said -------------------------------------------------------------------

    def run_shell(self, command: str) -> CommandResult:
        """Run a trusted command line from the service definition (never from run parameters)."""
        status, out, err = self._ssh.exec_ssh_client_command(
            self._client, command, get_pty=False, environment=None, timeout=self._cmd_timeout
        )
        return CommandResult(self.host.name, command, status, out.decode(errors="replace"),
                             err.decode(errors="replace"))

    def run(self, argv: list[str]) -> CommandResult:
        """Run ``argv``; every argument is shell-quoted, nothing is interpolated."""
        return self.run_shell(" ".join(shlex.quote(a) for a in argv))

    @cached_property
    def _sftp(self) -> Any:
        return self._client.open_sftp()

    def upload(self, local: Path, remote: str) -> None:
        """Copy ``local`` to ``remote`` (relative to the login directory) by SFTP, via a temporary name."""
        sftp = self._sftp
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

    def remote(self, *args: str) -> CommandResult:
        """Run a subcommand of ``conveyor-remote.sh`` (installed first if the host's copy differs)."""
        self._install_remote_script()
        return self.run(["bash", REMOTE_SCRIPT_PATH, *args])

    def _install_remote_script(self) -> None:
        if self._script_installed:
            return
        want = hashlib.sha256(REMOTE_SCRIPT.read_bytes()).hexdigest()
        try:
            with self._sftp.open(REMOTE_SCRIPT_PATH, "rb") as fh:
                have = hashlib.sha256(fh.read()).hexdigest()
        except OSError:  # not there yet (paramiko raises FileNotFoundError / IOError)
            have = None
        if have != want:
            self.upload(REMOTE_SCRIPT, REMOTE_SCRIPT_PATH)
        self._script_installed = True

    def close(self) -> None:
        if "_sftp" in self.__dict__:
            self._sftp.close()
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
        result = self.run_shell(self.host.restart)
        if not result.ok:
            raise DeployError(f"restart failed: {result.describe()}")

    def serving(self, version: str) -> bool:
        """Whether the host's app answers its health URL on ``version`` right now (one probe)."""
        from conveyor.health import probe_health

        health = probe_health(self.host)
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
        incoming = f".conveyor/incoming/{Path(artifact.key).name}"
        self.upload(tarball, incoming)
        staged = self.remote("stage", self.host.app_root, version, artifact.sha256, incoming)
        if not staged.ok:
            kind = "corrupted artifact (checksum mismatch)" if staged.exit_status == CORRUPTED else "staging failed"
            raise DeployError(f"{kind}: {staged.describe()}")
        activated = self.remote("activate", self.host.app_root, version)
        if not activated.ok:
            raise DeployError(f"activation failed: {activated.describe()}")
        self.run(["rm", "-f", incoming])
        self.restart()
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
            raise DeployError(f"cannot switch back to {version}: {activated.describe()}")
        self.restart()
        return {"host": self.host.name, "from": before, "to": version, "changed": True}

    def prune(self, keep: int) -> str:
        """Remove all but the newest ``keep`` release directories (never the current or previous one)."""
        result = self.remote("prune", self.host.app_root, str(int(keep)))
        if not result.ok:
            raise DeployError(f"prune failed: {result.describe()}")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


class FleetHook(BaseHook):
    """SSH sessions to a service's hosts.

    :param ssh_conn_id: the SSH connection shared by the fleet (login, key, ``host_key`` extra).
    :param cmd_timeout: seconds a remote command may run.
    :param conn_timeout: seconds to establish a connection.
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "conveyor_fleet"
    conn_type = "ssh"
    hook_name = "Conveyor fleet (SSH)"

    def __init__(self, ssh_conn_id: str = default_conn_name, *, cmd_timeout: float = 120,
                 conn_timeout: int = 10) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.cmd_timeout = cmd_timeout
        self.conn_timeout = conn_timeout

    def _ssh(self, host: Host):
        from airflow.providers.ssh.hooks.ssh import SSHHook

        return SSHHook(
            ssh_conn_id=self.ssh_conn_id, remote_host=host.address, port=host.ssh_port,
            conn_timeout=self.conn_timeout, cmd_timeout=self.cmd_timeout, keepalive_interval=0,
            conn_retry_attempts=2,
        )

    @contextmanager
    def session(self, host: Host) -> Iterator[FleetSession]:
        """One SSH connection to ``host``, closed when the block ends."""
        ssh = self._ssh(host)
        session = FleetSession(host, ssh, ssh.get_conn(), cmd_timeout=self.cmd_timeout)
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
