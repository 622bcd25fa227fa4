"""Feature flags behind one small interface, :class:`FlagStore`, and its embedded backend for the local fleet.

A flag is on or off in an environment, and when on, on for ``rollout`` percent of users (sticky by
user id, so raising the share keeps the users who already had it). Two backends:

- :class:`LocalFlagStore` (``flag_store.backend: local``, the default): the flags live in a JSON file
  on each host of the environment (``flags.json`` in the login directory, what the demo shop reads),
  written over the fleet's SSH sessions to a temporary name and renamed, so the app never reads half a
  file.
- :class:`conveyor.hooks.flags.UnleashFlagStore` (``flag_store.backend: unleash``): an Unleash
  server's admin API, the flag's ``flexibleRollout`` strategy sticky by ``userId``.

Pure module: the local backend is handed its hosts and a way to open a session on one, so it imports
no Airflow; :func:`conveyor.hooks.flags.flag_store` builds either backend from a service definition.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor.exceptions import ConveyorError, InvalidInputError
from conveyor.hosts import Host
from conveyor.validation import strict

#: A flag's name: a Python-ish identifier, which is also a valid Unleash name and safe in a shell, a
#: JSON key and a Prometheus label value.
FLAG_NAME_RE = strict(r"[a-z][a-z0-9_]{0,62}")
FLAGS_FILE = "flags.json"  # on each host, relative to the login directory (the shop's default)


class InvalidFlagError(InvalidInputError):
    """A flag name or rollout share that Conveyor refuses before touching any backend."""


class FlagStoreError(ConveyorError):
    """A backend could not read or change a flag (the message names the host or the server)."""


def flag_name(value: Any) -> str:
    if not isinstance(value, str) or not FLAG_NAME_RE.fullmatch(value):
        raise InvalidFlagError(f"flag name {value!r} must match {FLAG_NAME_RE.pattern} (lowercase letters, digits, "
                               "underscores; starting with a letter)")
    return value


def rollout_share(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidFlagError(f"rollout {value!r} must be a whole percentage from 0 to 100")
    return value


@dataclass(frozen=True)
class FlagState:
    """A flag in one environment. ``rollout`` is kept while the flag is off, so turning it on again
    restores the share it had."""

    name: str
    enabled: bool = False
    rollout: int = 0

    def __post_init__(self) -> None:
        flag_name(self.name)
        rollout_share(self.rollout)
        if not isinstance(self.enabled, bool):
            raise InvalidFlagError(f"flag {self.name}: enabled must be true or false, got {self.enabled!r}")

    @property
    def share(self) -> int:
        """The percentage of users that get the flag right now (0 when it is off)."""
        return self.rollout if self.enabled else 0


class FlagStore(Protocol):
    """Where a service's flags live. Both calls validate their input and are idempotent."""

    def get(self, flag: str, *, environment: str) -> FlagState: ...

    def set(self, flag: str, enabled: bool, rollout: int, *, environment: str) -> FlagState: ...


# ------------------------------------------------------------------------- the flags file
def parse_flags_file(text: str, *, where: str = FLAGS_FILE) -> dict[str, FlagState]:
    """A flags file (``{"<flag>": {"enabled": bool, "rollout": 0-100}}``) as states; empty text: no flags."""
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except ValueError as e:
        raise FlagStoreError(f"{where}: not JSON: {e}") from None
    if not isinstance(document, dict):
        raise FlagStoreError(f"{where}: expected an object of flags, got {type(document).__name__}")
    states = {}
    for name, value in document.items():
        if not isinstance(value, dict) or set(value) - {"enabled", "rollout"}:
            raise FlagStoreError(f"{where}: {name}: expected {{\"enabled\": bool, \"rollout\": 0-100}}, got {value!r}")
        try:
            states[name] = FlagState(name, value.get("enabled", False), value.get("rollout", 0))
        except InvalidFlagError as e:
            raise FlagStoreError(f"{where}: {e}") from None
    return states


def render_flags_file(states: Mapping[str, FlagState]) -> bytes:
    """The flags file for ``states``, sorted so that the same flags give the same bytes."""
    document = {name: {"enabled": s.enabled, "rollout": s.rollout} for name, s in sorted(states.items())}
    return (json.dumps(document, indent=2) + "\n").encode()


class FileSession(Protocol):
    """What the local backend needs of a host's session (:class:`conveyor.hooks.fleet.FleetSession`)."""

    def read_bytes(self, remote: str) -> bytes | None: ...

    def write_atomic(self, remote: str, data: bytes) -> None: ...


class LocalFlagStore:
    """Flags in ``flags.json`` on every host of an environment (see the module docs).

    :param hosts: the hosts of an environment (``conveyor.inventory.resolve_hosts``, or a subset).
    :param session: opens one session on a host (``FleetHook.session``).

    ``set`` reads each host's file, changes the one flag and writes the file back (the other flags are
    kept), on every host even when one fails; it then raises :class:`FlagStoreError` naming the hosts
    that failed, and a rerun finishes the job. ``get`` reads every host and refuses to answer when they
    disagree (a half-finished ``set``), rather than report one host's state as the environment's.
    """

    def __init__(self, hosts: Callable[[str], Sequence[Host]],
                 session: Callable[[Host], AbstractContextManager[FileSession]]) -> None:
        self._hosts = hosts
        self._session = session

    def _targets(self, environment: str) -> Sequence[Host]:
        hosts = self._hosts(environment)
        if not hosts:
            raise FlagStoreError(f"no hosts in environment {environment!r} to keep flags on")
        return hosts

    def _read(self, session: FileSession, host: Host) -> dict[str, FlagState]:
        data = session.read_bytes(FLAGS_FILE)
        return parse_flags_file((data or b"").decode(errors="replace"), where=f"{host.name}:{FLAGS_FILE}")

    def get(self, flag: str, *, environment: str) -> FlagState:
        flag_name(flag)
        seen: dict[FlagState, list[str]] = {}
        for host in self._targets(environment):
            with self._session(host) as session:
                state = self._read(session, host).get(flag, FlagState(flag))
            seen.setdefault(state, []).append(host.name)
        if len(seen) > 1:
            detail = "; ".join(f"{', '.join(names)}: enabled={s.enabled} rollout={s.rollout}"
                               for s, names in seen.items())
            raise FlagStoreError(f"flag {flag} differs between the hosts of {environment} ({detail}); set it again")
        return next(iter(seen))

    def set(self, flag: str, enabled: bool, rollout: int, *, environment: str) -> FlagState:
        want = FlagState(flag_name(flag), enabled, rollout_share(rollout))
        failed: list[str] = []
        for host in self._targets(environment):
            try:
                with self._session(host) as session:
                    states = self._read(session, host)
                    if states.get(flag) != want:
                        session.write_atomic(FLAGS_FILE, render_flags_file({**states, flag: want}))
            except Exception as e:  # any host's failure (SSH, disk, a bad file) is reported below
                failed.append(f"{host.name}: {e}")
        if failed:
            raise FlagStoreError(f"flag {flag} not set on every host of {environment}: " + "; ".join(failed))
        return want


def rollout_steps(value: Any, *, at_most: int) -> tuple[int, ...]:
    """A flag run's ``steps`` param: 1 to ``at_most`` whole percentages from 1 to 100, increasing."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise InvalidFlagError(f"steps {value!r} must be a list of percentages, e.g. [1, 10, 50, 100]")
    steps = tuple(rollout_share(v) for v in value)
    if len(steps) > at_most:
        raise InvalidFlagError(f"steps {list(steps)}: at most {at_most} steps (the DAG's step groups; "
                               "flag_rollout.steps in the service file sets how many)")
    if steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise InvalidFlagError(f"steps {list(steps)} must increase, from 1 to 100 percent")
    return steps
