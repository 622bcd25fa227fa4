"""Durations as people write them in service files: ``90s``, ``15m``, ``24h``, ``7d``. Pure, no Airflow."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``"90s" | "15m" | "24h" | "3d"`` to a timedelta; a ValueError says what is accepted."""
    m = DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"invalid duration {text!r}: use <n>s, <n>m, <n>h or <n>d")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def format_duration(value: timedelta) -> str:
    """The shortest exact ``<n><unit>`` form: ``timedelta(hours=24)`` -> ``"1d"``, 90 s -> ``"90s"``."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
