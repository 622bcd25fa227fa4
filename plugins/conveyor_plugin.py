"""Registers Conveyor's timetables and UI pages with Airflow (scheduler, dag-processor, api-server)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class ConveyorPlugin(AirflowPlugin):
    name = "conveyor"
    timetables: list = []
