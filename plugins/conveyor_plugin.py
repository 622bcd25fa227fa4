"""Registers Conveyor's timetables and UI pages with Airflow (scheduler, dag-processor, api-server)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from conveyor.timetables import ReleaseWindowTimetable
from conveyor.web.app import URL_PREFIX, create_app


class ConveyorPlugin(AirflowPlugin):
    name = "conveyor"
    timetables: list = [ReleaseWindowTimetable]
    # The release ledger's pages (DORA metrics, release statistics, releases, changelogs), served by the API
    # server under /conveyor with the UI's own login, and linked from the UI's Browse menu (shown in an iframe).
    fastapi_apps: list = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Conveyor release ledger"}]
    external_views: list = [
        {
            "name": "DORA metrics",
            "href": "conveyor/dora",
            "url_route": "conveyor-dora",
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Release statistics",
            "href": "conveyor/stats",
            "url_route": "conveyor-stats",
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Releases",
            "href": "conveyor/releases",
            "url_route": "conveyor-releases",
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Regression calendar",
            "href": "conveyor/regression",
            "url_route": "conveyor-regression",
            "destination": "nav",
            "category": "browse",
        },
    ]
