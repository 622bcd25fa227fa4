"""Conveyor's timetables. ``ReleaseWindowTimetable`` is registered by ``plugins/conveyor_plugin.py``.

``timetable_for(service)`` turns a service file's ``schedule:`` section into the DAG's ``schedule``;
a service without one is released by manual runs only (``None``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.exceptions import InvalidInputError, ServiceConfigError
from conveyor.timetables.release_window import DEFAULT_MAX_LATENESS, Freeze, ReleaseWindowTimetable

if TYPE_CHECKING:
    from conveyor.config import ServiceConfig

__all__ = ["DEFAULT_MAX_LATENESS", "Freeze", "ReleaseWindowTimetable", "timetable_for"]


def timetable_for(service: ServiceConfig) -> ReleaseWindowTimetable | None:
    """The release-window timetable of ``service``, or None when it has no ``schedule:`` section.

    Errors name the file and the field, e.g.
    ``include/services/shop.yaml: schedule.freezes[0].end: 2026-12-01 is before start 2026-12-22``.
    """
    schedule = service.raw.get("schedule")
    if not schedule:
        return None
    try:
        return ReleaseWindowTimetable.from_config(schedule)
    except InvalidInputError as e:
        raise ServiceConfigError(f"{service.path}: schedule.{e}") from None
