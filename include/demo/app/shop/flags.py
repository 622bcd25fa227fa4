"""Feature flags read from a JSON file that the release tooling pushes to each host.

The file (``$SHOP_FLAGS_FILE``, default ``~/flags.json``: the login directory on a fleet host) maps a
flag to ``{"enabled": bool, "rollout": 0-100}``. It is re-read only when its modification time or
size changes, so a request costs one ``stat``. A request's variant is sticky by user id: the same
user lands in the same bucket (``hash(flag, user) % 100``) on every host and every request, so a
rollout at 5% and then 25% keeps the first 5% on. A request without a user id gets a flag only at
rollout 100.

With no file (or a flag not in it) every flag is off: the shop behaves exactly as without flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

FLAGS_FILE_ENV = "SHOP_FLAGS_FILE"


def flags_path() -> Path:
    return Path(os.environ.get(FLAGS_FILE_ENV) or Path.home() / "flags.json")


def bucket(flag: str, user: str) -> int:
    """The user's bucket (0-99) for ``flag``: stable across hosts, processes and Python versions."""
    digest = hashlib.sha256(f"{flag}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _state(value: object) -> tuple[bool, int] | None:
    if not isinstance(value, dict):
        return None
    enabled, rollout = value.get("enabled"), value.get("rollout", 100)
    if not isinstance(enabled, bool) or isinstance(rollout, bool) or not isinstance(rollout, int):
        return None
    return enabled, min(100, max(0, rollout))


class Flags:
    """The flags of one file, re-read when it changes. A malformed file keeps the last good flags and
    says so on stderr: a bad push must not switch features on or off by accident."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else flags_path()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._flags: dict[str, tuple[bool, int]] = {}

    def refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp == self._stamp:
                return
            if stamp is None:
                self._flags, self._stamp = {}, None
                return
            try:
                document = json.loads(self.path.read_text())
                if not isinstance(document, dict):
                    raise ValueError("expected an object of flags")
            except (OSError, ValueError) as e:
                print(f"shop: ignoring {self.path}: {e}", file=sys.stderr, flush=True)
                self._stamp = stamp
                return
            self._flags = {name: s for name, value in document.items() if (s := _state(value)) is not None}
            self._stamp = stamp

    def names(self) -> list[str]:
        """The flags the file declares (on or off), sorted: the ones the metrics are labelled with."""
        with self._lock:
            return sorted(self._flags)

    def on(self, flag: str, user: str | None) -> bool:
        """Whether ``flag`` is on for a request of ``user`` (None: no user id)."""
        with self._lock:
            enabled, rollout = self._flags.get(flag, (False, 0))
        if not enabled or rollout <= 0:
            return False
        if rollout >= 100:
            return True
        return user is not None and bucket(flag, user) < rollout
