"""Registers Conveyor's timetables and UI pages with Airflow (scheduler, dag-processor, api-server)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from conveyor.timetables import ReleaseWindowTimetable


class ConveyorPlugin(AirflowPlugin):
    name = "conveyor"
    timetables: list = [ReleaseWindowTimetable]
