"""The fleet hook: SSH to the hosts of a service, through the SSH provider's own ``SSHHook``.

One Airflow connection (``conveyor_fleet`` by default, conn type ``ssh``) carries the login, the
private key and the expected host key (``host_key`` extra); each call targets one host by
overriding the address and port. The hook holds no run state and returns raw results; what an
exit code means is decided by the caller (:mod:`conveyor.deploy`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from airflow.sdk import BaseHook

from conveyor.inventory import Host
from conveyor.paths import REMOTE_DIR

REMOTE_SCRIPT = REMOTE_DIR / "conveyor-remote.sh"
REMOTE_SCRIPT_PATH = ".conveyor/conveyor-remote.sh"


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


class FleetHook(BaseHook):
    """Run commands on, and copy files to, fleet hosts over SSH.

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

    def run(self, host: Host, argv: list[str]) -> CommandResult:
        """Run ``argv`` on ``host``; every argument is shell-quoted, nothing is interpolated."""
        command = " ".join(shlex.quote(a) for a in argv)
        hook = self._ssh(host)
        with hook.get_conn() as client:
            status, out, err = hook.exec_ssh_client_command(
                client, command, get_pty=False, environment=None, timeout=self.cmd_timeout
            )
        return CommandResult(host.name, command, status, out.decode(errors="replace"), err.decode(errors="replace"))

    def run_shell(self, host: Host, command: str) -> CommandResult:
        """Run a trusted command line from the service definition (not from run parameters)."""
        hook = self._ssh(host)
        with hook.get_conn() as client:
            status, out, err = hook.exec_ssh_client_command(
                client, command, get_pty=False, environment=None, timeout=self.cmd_timeout
            )
        return CommandResult(host.name, command, status, out.decode(errors="replace"), err.decode(errors="replace"))

    def upload(self, host: Host, local: Path, remote: str) -> None:
        """Copy ``local`` to ``remote`` (relative to the login directory) by SFTP, via a temp name."""
        hook = self._ssh(host)
        with hook.get_conn() as client:
            sftp = client.open_sftp()
            try:
                parts = Path(remote).parent.parts
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    try:
                        sftp.stat(d)
                    except FileNotFoundError:
                        sftp.mkdir(d)
                tmp = f"{remote}.part"
                sftp.put(str(local), tmp)
                try:
                    sftp.remove(remote)
                except FileNotFoundError:
                    pass
                sftp.rename(tmp, remote)
            finally:
                sftp.close()

    def remote(self, host: Host, *args: str) -> CommandResult:
        """Run a subcommand of the uploaded ``conveyor-remote.sh`` (see docs/interfaces.md)."""
        return self.run(host, ["bash", REMOTE_SCRIPT_PATH, *args])

    def install_remote_script(self, host: Host) -> None:
        self.upload(host, REMOTE_SCRIPT, REMOTE_SCRIPT_PATH)

    def test_connection(self) -> tuple[bool, str]:
        try:
            conn = self.get_connection(self.ssh_conn_id)
            if not conn.host:
                return True, "Connection parsed; set a host to test a login (Conveyor targets hosts per inventory)."
            hook = self._ssh(Host(name=conn.host, environment="test", address=conn.host, ssh_port=conn.port or 22))
            with hook.get_conn() as client:
                client.exec_command("true")
            return True, "Connection successfully tested"
        except Exception as e:
            return False, str(e)
