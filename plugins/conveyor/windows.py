"""Release windows, the pure part: times of day, weekdays, time zones and freezes.

What a service file's ``schedule:`` section says, parsed and checked once: the typed service model
(:mod:`conveyor.config`) validates the section with these functions, and
:class:`~conveyor.timetables.ReleaseWindowTimetable` is built from the values they return. Errors are
:class:`~conveyor.exceptions.InvalidInputError` whose message starts with the field, e.g.
``times[1]: '25:00' is not a time of day``. No Airflow import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conveyor.durations import DURATION_RE, parse_duration
from conveyor.exceptions import InvalidInputError

__all__ = [
    "DAYS", "DEFAULT_MAX_LATENESS", "Freeze", "as_utc", "format_days", "local_instant", "parse_days",
    "parse_freezes", "parse_lateness", "parse_times", "parse_zone",
]

DEFAULT_MAX_LATENESS = timedelta(minutes=30)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ALL_DAYS = tuple(range(7))
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RANGE_RE = re.compile(r"\s*(?:-|–|—|\.\.)\s*")


def parse_times(value: Any) -> tuple[time, ...]:
    """``["10:00", "16:00"]`` (or ``"10:00, 16:00"``) to sorted, distinct times of day."""
    if isinstance(value, str | time):
        value = [value] if isinstance(value, time) else [p for p in value.split(",") if p.strip()]
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise InvalidInputError(f"times: expected a list of 'HH:MM' times, got {value!r}")
    parsed: set[time] = set()
    for i, item in enumerate(value):
        if isinstance(item, time):
            if item.tzinfo is not None:
                raise InvalidInputError(f"times[{i}]: {item!r} carries a time zone; use the timezone parameter")
            parsed.add(item.replace(second=0, microsecond=0))
            continue
        m = _TIME_RE.fullmatch(item.strip()) if isinstance(item, str) else None
        if not m:
            hint = " (quote times in YAML: unquoted 10:00 is read as the number 600)" if isinstance(item, int) else ""
            raise InvalidInputError(f"times[{i}]: {item!r} is not a time of day; use 24-hour 'HH:MM'{hint}")
        parsed.add(time(int(m.group(1)), int(m.group(2))))
    if not parsed:
        raise InvalidInputError("times: at least one time of day is required, e.g. ['10:00', '16:00']")
    return tuple(sorted(parsed))


def _day_index(name: str, field: str) -> int:
    key = name.strip().lower()
    if key in DAYS:
        return DAYS.index(key)
    if key in _FULL_DAYS:
        return _FULL_DAYS.index(key)
    raise InvalidInputError(f"{field}: {name!r} is not a day; use mon, tue, wed, thu, fri, sat or sun")


def parse_days(value: Any) -> tuple[int, ...]:
    """``"mon-fri"``, ``"mon,wed,fri"``, ``"daily"`` or a list of names to weekday numbers (Monday = 0)."""
    if isinstance(value, str):
        if value.strip().lower() in ("daily", "*", "every day", "all"):
            return _ALL_DAYS
        parts = [(p, "days") for p in value.split(",")]
    elif isinstance(value, Iterable) and not isinstance(value, Mapping):
        parts = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidInputError(f"days[{i}]: {item!r} is not a day name")
            parts.append((item, f"days[{i}]"))
    else:
        raise InvalidInputError(f"days: expected 'mon-fri', 'mon,wed,fri' or a list of day names, got {value!r}")
    days: set[int] = set()
    for part, field in parts:
        if not part.strip():
            raise InvalidInputError(f"{field}: empty day name in {value!r}")
        bounds = _RANGE_RE.split(part.strip())
        if len(bounds) == 1:
            days.add(_day_index(bounds[0], field))
        elif len(bounds) == 2:
            first, last = _day_index(bounds[0], field), _day_index(bounds[1], field)
            span = (last - first) % 7  # "fri-mon" wraps over the weekend
            days.update((first + k) % 7 for k in range(span + 1))
        else:
            raise InvalidInputError(f"{field}: {part!r} is not a day or a range such as 'mon-fri'")
    if not days:
        raise InvalidInputError("days: at least one day is required")
    return tuple(sorted(days))


def parse_zone(value: Any) -> ZoneInfo:
    """An IANA zone name (or a zone object) to a :class:`ZoneInfo`."""
    name = value
    if isinstance(value, tzinfo):
        # ZoneInfo has .key, pendulum's Timezone has .name; fixed offsets have neither.
        name = getattr(value, "key", None) or getattr(value, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"timezone: {value!r} is not an IANA time zone name such as 'Europe/Madrid'")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInputError(
            f"timezone: unknown time zone {name!r}; use an IANA name such as 'Europe/Madrid' or 'UTC'"
        ) from None


def parse_lateness(value: Any) -> timedelta:
    """``"30m"``, seconds or a timedelta; None is the default, 30 minutes."""
    if value is None:
        return DEFAULT_MAX_LATENESS
    try:
        if isinstance(value, timedelta):
            lateness = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InvalidInputError(f"max_lateness: {value!r} is not a finite number of seconds")
            lateness = timedelta(seconds=value)
        elif isinstance(value, str) and DURATION_RE.fullmatch(value.strip()):
            lateness = parse_duration(value)
        else:
            raise InvalidInputError(f"max_lateness: {value!r} is not a duration; use e.g. '30m', '2h' or a timedelta")
    except OverflowError:
        raise InvalidInputError(f"max_lateness: {value!r} is too long a duration") from None
    if lateness < timedelta(0):
        raise InvalidInputError(f"max_lateness: {value!r} must not be negative")
    return lateness


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time.

    ``fold=0`` makes both DST edge cases deterministic: a time in the spring-forward gap is read
    with the offset in force before the change (so it lands one hour later on the wall clock),
    and a time in the autumn fold is its first occurrence.
    """
    return datetime.combine(day, at, tzinfo=zone).replace(fold=0).astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is refused (it would be read in the machine's zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{value!r} is a naive datetime; pass a time-zone-aware one")
    return value.astimezone(UTC)


# --------------------------------------------------------------------------- freezes


@dataclass(frozen=True)
class Freeze:
    """A period in which scheduled releases do not happen and ordinary manual ones are refused.

    ``start`` is inclusive and ``end`` exclusive, both aware UTC datetimes. ``start_text`` and
    ``end_text`` keep what was configured (``2026-12-22``, or an ISO datetime) for messages and
    serialization; ``label`` is the human form, e.g. ``2026-12-22 – 2027-01-06``.
    """

    start: datetime
    end: datetime
    reason: str
    start_text: str
    end_text: str

    @property
    def label(self) -> str:
        return self.start_text if self.start_text == self.end_text else f"{self.start_text} – {self.end_text}"

    def covers(self, when: datetime) -> bool:
        return self.start <= as_utc(when) < self.end

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start_text, "end": self.end_text, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.label} ({self.reason})"


def _freeze_bound(value: Any, field: str, zone: ZoneInfo, *, is_end: bool) -> tuple[datetime, str, bool]:
    """Return (UTC instant, canonical text, was_a_date). A date ``end`` means the end of that day."""
    parsed: date | datetime
    if isinstance(value, datetime | date):
        parsed = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            parsed = date.fromisoformat(text) if _DATE_RE.fullmatch(text) else datetime.fromisoformat(text)
        except ValueError:
            parsed = None  # type: ignore[assignment]
        if parsed is None:
            raise InvalidInputError(f"{field}: {value!r} is not a date (YYYY-MM-DD) or an ISO datetime")
    else:
        raise InvalidInputError(f"{field}: {value!r} is not a date (YYYY-MM-DD) or an ISO datetime")
    if isinstance(parsed, datetime):
        if parsed.tzinfo is None:
            instant = parsed.replace(tzinfo=zone, fold=0).astimezone(UTC)
        else:
            instant = parsed.astimezone(UTC)
        return instant, parsed.isoformat(), False
    day = parsed + timedelta(days=1) if is_end else parsed
    return local_instant(day, time(0, 0), zone), parsed.isoformat(), True


def parse_freezes(value: Any, zone: ZoneInfo) -> tuple[Freeze, ...]:
    """``[{start, end, reason}]`` (dates are whole local days in ``zone``, end inclusive) to freezes."""
    if value is None:
        return ()
    if isinstance(value, Mapping) or isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInputError(f"freezes: expected a list of {{start, end, reason}}, got {value!r}")
    freezes = []
    for i, item in enumerate(value):
        if isinstance(item, Freeze):
            item = item.to_dict()
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"freezes[{i}]: expected a mapping with start, end and reason, got {item!r}")
        unknown = sorted(set(item) - {"start", "end", "reason"})
        if unknown:
            raise InvalidInputError(f"freezes[{i}]: unknown field(s) {', '.join(map(str, unknown))}")
        for key in ("start", "end"):
            if item.get(key) in (None, ""):
                raise InvalidInputError(f"freezes[{i}].{key}: required")
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInputError(
                f"freezes[{i}].reason: a reason is required; it is shown to anyone whose release is refused"
            )
        start, start_text, _ = _freeze_bound(item["start"], f"freezes[{i}].start", zone, is_end=False)
        end, end_text, end_is_date = _freeze_bound(item["end"], f"freezes[{i}].end", zone, is_end=True)
        if end <= start:
            what = "before" if end_is_date or end < start else "not after"
            raise InvalidInputError(f"freezes[{i}].end: {end_text} is {what} start {start_text}")
        freezes.append(Freeze(start=start, end=end, reason=reason.strip(), start_text=start_text, end_text=end_text))
    return tuple(sorted(freezes, key=lambda f: (f.start, f.end)))


def format_days(days: Sequence[int]) -> str:
    """(0, 1, 2, 3, 4) -> 'Mon–Fri'; (0, 2, 4) -> 'Mon, Wed, Fri'; all seven -> 'daily'."""
    if len(days) == 7:
        return "daily"
    chosen = set(days)
    # Start the walk just after the last unchosen day before Monday, so the text starts as early
    # in the week as it can while runs such as Sat–Mon stay together.
    first = next(d for d in (6, 5, 4, 3, 2, 1, 0) if d not in chosen)
    runs: list[list[int]] = []
    for k in range(1, 8):
        d = (first + k) % 7
        if d in chosen:
            if runs and (runs[-1][-1] + 1) % 7 == d:
                runs[-1].append(d)
            else:
                runs.append([d])
    parts = []
    for run in runs:
        names = [DAYS[d].capitalize() for d in run]
        parts.append(f"{names[0]}–{names[-1]}" if len(run) >= 3 else ", ".join(names))
    return ", ".join(parts)

