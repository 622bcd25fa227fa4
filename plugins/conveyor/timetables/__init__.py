"""Conveyor's timetables. ``ReleaseWindowTimetable`` is registered by ``plugins/conveyor_plugin.py``.

``timetable_for(service)`` turns a service file's ``schedule:`` section (validated by the service
model) into the DAG's ``schedule``; a service without one is released by manual runs only (``None``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.timetables.release_window import DEFAULT_MAX_LATENESS, Freeze, ReleaseWindowTimetable
from conveyor.windows import DAYS

if TYPE_CHECKING:
    from conveyor.config import ServiceConfig

__all__ = ["DEFAULT_MAX_LATENESS", "Freeze", "ReleaseWindowTimetable", "timetable_for"]


def timetable_for(service: ServiceConfig) -> ReleaseWindowTimetable | None:
    """The release-window timetable of ``service``, or None when it has no ``schedule:`` section."""
    schedule = service.schedule
    if schedule is None:
        return None
    return ReleaseWindowTimetable(times=schedule.times, days=[DAYS[d] for d in schedule.days], timezone=schedule.timezone,
                                  freezes=schedule.freezes, max_lateness=schedule.max_lateness)
