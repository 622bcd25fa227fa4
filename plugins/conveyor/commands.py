"""Running a service's commands (build, suites, CI) and git: bounded in time, output captured.

The one place Conveyor starts a local process. ``run_command`` never raises for a failing or
hung command: it returns the exit code (``-1`` after a timeout) and everything printed, and the
caller says what that means. ``git`` raises :class:`~conveyor.exceptions.BuildError` naming the
command and git's own message. No Airflow import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conveyor.exceptions import BuildError

GIT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CommandOutput:
    exit_code: int  # -1 when the command was stopped at its timeout
    output: str  # stdout then stderr
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.strip().splitlines()[-lines:])


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for service commands: ``python`` is the interpreter running Conveyor."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **extra}


def format_command(command: str | Sequence[str], **values: str) -> str | list[str]:
    """Fill ``{name}`` placeholders: in the whole line of a shell command, in each argument of a list."""
    if isinstance(command, str):
        return command.format(**values)
    return [part.format(**values) for part in command]


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_command(command: str | Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
                timeout: float) -> CommandOutput:
    """Run ``command`` (a string runs through the shell, a list as is) for at most ``timeout`` seconds."""
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, shell=isinstance(command, str), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        return CommandOutput(-1, _text(e.stdout) + _text(e.stderr) + f"\ntimed out after {timeout:g} s", True)
    return CommandOutput(proc.returncode, proc.stdout + proc.stderr)


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = GIT_TIMEOUT_S) -> str:
    """``git args...``'s output (stripped); never prompts for credentials."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})})
    except subprocess.TimeoutExpired:
        raise BuildError(f"git {' '.join(args)} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        raise BuildError(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def git_succeeds(*args: str, cwd: Path, timeout: float = GIT_TIMEOUT_S) -> bool:
    """Whether ``git args...`` exits 0 (for questions git answers with its exit code)."""
    try:
        git(*args, cwd=cwd, timeout=timeout)
    except BuildError:
        return False
    return True
