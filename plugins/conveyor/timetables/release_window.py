"""Release windows: scheduled releases only at agreed local times, never during a freeze.

A :class:`ReleaseWindowTimetable` says "10:00 and 16:00, Monday to Friday, Europe/Madrid, except
22 Dec - 6 Jan (year-end freeze)". It is registered by ``plugins/conveyor_plugin.py`` so DAGs that
use it serialize, and its ``summary``/``description`` are what the Airflow UI shows.

Decisions, so nobody has to reverse-engineer them:

* **Data interval.** Every run's data interval is the point ``(slot, slot)``; ``logical_date`` and
  ``run_after`` are the slot itself. A release is an event, not a batch over a period. Manual runs get
  ``(run_after, run_after)`` the same way.
* **Local wall-clock times.** A slot is a local time in the timetable's IANA zone, so 10:00 stays
  10:00 local across the March and October DST changes (the UTC instant moves by an hour).
  A local time that does not exist (the spring-forward gap, e.g. 02:30 on the last Sunday of March
  in Europe) runs at the instant the wall clock would have shown had DST not started, i.e. one hour
  later (03:30 local). A local time that happens twice (the autumn fold) runs once, at the *first*
  occurrence (still on summer time). Two configured times that land on the same instant run once.
* **Freezes.** ``{start, end, reason}``. Dates are whole local days and ``end`` is inclusive
  (``2026-12-22`` .. ``2027-01-06`` freezes both of those days); datetimes are instants and ``end``
  is exclusive (a freeze "until 10:00" lets the 10:00 slot run). A naive datetime is local time in
  the timetable's zone. A slot inside any freeze creates no run at all.
* **Stale-slot guard.** With ``catchup=False`` (Airflow 3's default, and what release DAGs use)
  a slot older than ``now - max_lateness`` is never scheduled. Airflow's own trigger timetables run
  the latest missed slot on first activation or unpause; this one goes to the next slot instead
  (unpaused at 12:40 with the default 30 minutes: the 16:00 slot, not a release at 12:40 for the
  10:00 one). With ``catchup=True`` Airflow's contract is honoured: every missed, unfrozen slot after
  the last run (or ``start_date``) is created, which is also what ``airflow backfill`` relies on.
* **The clock.** ``next_dagrun_info`` reads the time from ``clock`` (a constructor argument that is
  not serialized) or, when none is given, from the module-level :func:`_now`, which tests
  monkeypatch. Nothing here reads the clock at import or construction time.

This module makes no connection, Variable or database call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pendulum
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable

from conveyor.durations import format_duration
from conveyor.exceptions import InvalidInputError
from conveyor.windows import (
    DAYS,
    DEFAULT_MAX_LATENESS,
    Freeze,
    as_utc,
    format_days,
    local_instant,
    parse_days,
    parse_freezes,
    parse_lateness,
    parse_times,
    parse_zone,
)

__all__ = ["Freeze", "ReleaseWindowTimetable", "DEFAULT_MAX_LATENESS"]

# A slot exists on every selected weekday, so one is always found within 8 local days.
_DAYS_TO_SCAN = 8


def _now() -> datetime:
    """The scheduler's clock. Tests monkeypatch this (or pass ``clock=`` to the timetable)."""
    return datetime.now(UTC)


def _to_pendulum(value: datetime) -> pendulum.DateTime:
    return pendulum.instance(value.astimezone(UTC))


# --------------------------------------------------------------------------- the timetable


class ReleaseWindowTimetable(Timetable):
    """Runs at fixed local times on chosen weekdays, skipping freezes and stale slots.

    :param times: local times of day, ``["10:00", "16:00"]`` (or ``"10:00, 16:00"``).
    :param days: weekdays, ``"mon-fri"``, ``"mon,wed,fri"``, ``"daily"`` or ``["mon", "tue"]``.
    :param timezone: IANA zone the times and freeze dates are read in, e.g. ``"Europe/Madrid"``.
    :param freezes: ``[{"start": "2026-12-22", "end": "2027-01-06", "reason": "year-end"}]``; dates
        are inclusive local days, datetimes are instants (end exclusive).
    :param max_lateness: with ``catchup=False``, a slot older than ``now - max_lateness`` is never
        scheduled (default 30 minutes). A timedelta, ``"30m"``/``"2h"``, or seconds.
    :param clock: returns the current aware datetime; for tests. Not serialized.

    Bad input raises :class:`~conveyor.exceptions.InvalidInputError` whose message starts with the
    field, e.g. ``times[1]: '25:00' is not a time of day``.
    """

    # Manual (emergency) runs have no logical date, so order the grid by when runs were due.
    run_ordering: Sequence[str] = ("run_after",)

    def __init__(
        self,
        *,
        times: Sequence[str | time] | str,
        days: Sequence[str] | str = "mon-fri",
        timezone: str | tzinfo = "UTC",
        freezes: Iterable[Mapping[str, Any] | Freeze] | None = None,
        max_lateness: timedelta | str | float | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._times = parse_times(times)
        self._days = parse_days(days)
        self._zone = parse_zone(timezone)
        self._freezes = parse_freezes(freezes, self._zone)
        self._max_lateness = parse_lateness(max_lateness)
        self._clock = clock
        self.description = self._describe()

    # ----------------------------------------------------------------- read-only views

    @property
    def times(self) -> tuple[time, ...]:
        return self._times

    @property
    def days(self) -> tuple[int, ...]:
        """Weekday numbers, Monday = 0."""
        return self._days

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    @property
    def freezes(self) -> tuple[Freeze, ...]:
        return self._freezes

    @property
    def max_lateness(self) -> timedelta:
        return self._max_lateness

    def now(self) -> datetime:
        """The current time by this timetable's clock (aware, UTC)."""
        return as_utc((self._clock or _now)())

    # ----------------------------------------------------------------- Airflow serialization

    def serialize(self) -> dict[str, Any]:
        return {
            "times": [t.strftime("%H:%M") for t in self._times],
            "days": [DAYS[d] for d in self._days],
            "timezone": self._zone.key,
            "freezes": [f.to_dict() for f in self._freezes],
            "max_lateness": self._max_lateness.total_seconds(),
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ReleaseWindowTimetable:
        return cls(
            times=data["times"],
            days=data["days"],
            timezone=data["timezone"],
            freezes=data.get("freezes") or [],
            max_lateness=timedelta(seconds=data.get("max_lateness", DEFAULT_MAX_LATENESS.total_seconds())),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReleaseWindowTimetable):
            return NotImplemented
        return self.serialize() == other.serialize()

    def __hash__(self) -> int:
        data = self.serialize()
        return hash((tuple(data["times"]), tuple(data["days"]), data["timezone"],
                     tuple(tuple(sorted(f.items())) for f in data["freezes"]), data["max_lateness"]))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.summary}>"

    # ----------------------------------------------------------------- what the UI shows

    @property
    def summary(self) -> str:
        """``10:00, 16:00 Mon–Fri Europe/Madrid (1 freeze)``."""
        text = f"{', '.join(t.strftime('%H:%M') for t in self._times)} {format_days(self._days)} {self._zone.key}"
        if self._freezes:
            n = len(self._freezes)
            text += f" ({n} freeze{'s' if n != 1 else ''})"
        return text

    def _describe(self) -> str:
        times = [t.strftime("%H:%M") for t in self._times]
        at = times[0] if len(times) == 1 else f"{', '.join(times[:-1])} and {times[-1]}"
        text = f"Release windows at {at} {self._zone.key} time, {format_days(self._days)}."
        if self._freezes:
            text += " Frozen: " + "; ".join(str(f) for f in self._freezes) + "."
        text += f" Slots more than {format_duration(self._max_lateness)} late are skipped."
        # DagModel.timetable_description is VARCHAR(1000).
        return text if len(text) <= 1000 else text[:997] + "..."

    # ----------------------------------------------------------------- pure helpers

    def freeze_at(self, when: datetime) -> Freeze | None:
        """The freeze covering ``when`` (aware; naive means local to this timetable), or None.

        With overlapping freezes, the one that started first.
        """
        instant = self._instant(when)
        return next((f for f in self._freezes if f.start <= instant < f.end), None)

    def next_slots(self, after: datetime | None = None, n: int = 5) -> list[pendulum.DateTime]:
        """The next ``n`` unfrozen slots strictly after ``after`` (default: now), as UTC datetimes."""
        if n < 0:
            raise InvalidInputError(f"n: {n} must not be negative")
        start = self.now() if after is None else self._instant(after)
        out: list[pendulum.DateTime] = []
        inclusive = False
        while len(out) < n:
            slot = self._next_open_slot(start, inclusive=inclusive)
            if slot is None:
                break
            out.append(_to_pendulum(slot))
            start, inclusive = slot, False
        return out

    def next_slot(self, after: datetime | None = None) -> pendulum.DateTime | None:
        slots = self.next_slots(after, 1)
        return slots[0] if slots else None

    def window_at(self, when: datetime) -> pendulum.DateTime | None:
        """The unfrozen slot whose window ``[slot, slot + max_lateness]`` contains ``when``, or None.

        With several, the latest. Useful to decide whether a manual run is "inside a window".
        """
        instant = self._instant(when)
        found = None
        cursor, inclusive = instant - self._max_lateness, True
        while (slot := self._next_open_slot(cursor, inclusive=inclusive)) is not None and slot <= instant:
            found, cursor, inclusive = slot, slot, False
        return _to_pendulum(found) if found else None

    def is_stale(self, run_after: datetime, now: datetime | None = None) -> bool:
        """True if a scheduled run due at ``run_after`` is more than ``max_lateness`` late by ``now``.

        For a runtime guard in the DAG: the scheduler creates the run it stored as "next" earlier,
        so a scheduler or dag-processor that was down across a slot can still start a late one.
        """
        current = self.now() if now is None else as_utc(now)
        return as_utc(run_after) < current - self._max_lateness

    def manual_run_refusal(
        self, when: datetime, *, emergency: bool, reason: str | None, require_window: bool = False
    ) -> str | None:
        """Why a manual run at ``when`` must not proceed, or None if it may.

        An emergency run needs a reason and may then run at any time, frozen or not. Any other
        manual run is refused inside a freeze (the message carries the freeze's reason) and, with
        ``require_window``, outside a release window.
        """
        if emergency:
            if not (reason or "").strip():
                return "An emergency release needs a reason."
            return None
        if freeze := self.freeze_at(when):
            return (
                f"Releases are frozen {freeze.label}: {freeze.reason}. "
                "Only an emergency run (emergency=true with a reason) may release during a freeze."
            )
        if require_window and self.window_at(when) is None:
            nxt = self.next_slot(when)
            local = nxt.astimezone(self._zone).strftime("%a %Y-%m-%d %H:%M %Z") if nxt else "none"
            return (
                f"Outside the release windows ({self.summary}); next window: {local}. "
                "Run as an emergency (emergency=true with a reason) to release now."
            )
        return None

    # ----------------------------------------------------------------- Airflow's scheduling API

    def infer_manual_data_interval(self, *, run_after: datetime) -> DataInterval:
        at = _to_pendulum(as_utc(run_after))
        return DataInterval(start=at, end=at)

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        # The next slot lies after the most restrictive of these bounds; (instant, inclusive).
        bounds: list[tuple[datetime, bool]] = []
        if last_automated_data_interval is not None:
            bounds.append((as_utc(last_automated_data_interval.end), False))
        if restriction.earliest is not None:
            bounds.append((as_utc(restriction.earliest), True))
        if not restriction.catchup or not bounds:
            # The stale-slot guard (and, with catchup but no history or start date, the start).
            bounds.append((self.now() - self._max_lateness, True))
        # Latest instant wins; on a tie the exclusive bound (False sorts first) is the stricter one.
        start, inclusive = max(bounds, key=lambda b: (b[0], not b[1]))
        latest = as_utc(restriction.latest) if restriction.latest is not None else None
        slot = self._next_open_slot(start, inclusive=inclusive, latest=latest)
        if slot is None:
            return None
        return DagRunInfo.exact(_to_pendulum(slot))

    # ----------------------------------------------------------------- slot arithmetic

    def _instant(self, when: datetime) -> datetime:
        if isinstance(when, datetime) and (when.tzinfo is None or when.utcoffset() is None):
            return when.replace(tzinfo=self._zone, fold=0).astimezone(UTC)
        if not isinstance(when, datetime):
            raise InvalidInputError(f"expected a datetime, got {when!r}")
        return when.astimezone(UTC)

    def _slots_from(self, start: datetime, *, inclusive: bool) -> Iterator[datetime]:
        """Slots (ignoring freezes) at/after ``start``, in order, for the next few local days."""
        first_day = start.astimezone(self._zone).date()
        for offset in range(_DAYS_TO_SCAN):
            day = first_day + timedelta(days=offset)
            if day.weekday() not in self._days:
                continue
            # Sorted and de-duplicated: two times can share an instant across a DST gap.
            for slot in sorted({local_instant(day, t, self._zone) for t in self._times}):
                if slot > start or (inclusive and slot == start):
                    yield slot

    def _next_open_slot(
        self, start: datetime, *, inclusive: bool, latest: datetime | None = None
    ) -> datetime | None:
        """The first unfrozen slot at/after ``start`` and not after ``latest``.

        Frozen stretches are jumped over in one step, so each freeze costs one iteration.
        """
        for _ in range(len(self._freezes) + 2):
            slot = next(self._slots_from(start, inclusive=inclusive), None)
            if slot is None or (latest is not None and slot > latest):
                return None
            covering = [f for f in self._freezes if f.start <= slot < f.end]
            if not covering:
                return slot
            start, inclusive = max(f.end for f in covering), True
        return None  # pragma: no cover - unreachable: every jump passes at least one freeze
