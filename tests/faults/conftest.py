"""The fault-injection suite (``make faults``): real faults on the loopback fleet and the platform.

Each scenario is a test marked ``@pytest.mark.fault(name, guarantee)``; it injects one real fault
and asserts what Conveyor guarantees under it (every production host on one known version, checked
over SSH; the run or task failed or succeeded as it should; no ledger row lost or duplicated; a
ticket that tells the truth; a clear message). At the end the suite prints one row per scenario and,
last, ``faults_held=N/M``. docs/reliability.md lists the same scenarios (a test keeps the two in step).
"""

from __future__ import annotations

import pytest

from tests.fleet_fixtures import local_fleet  # noqa: F401 - the session fleet fixture

_outcomes: dict[str, dict] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "fault(name, guarantee): a fault-injection scenario of `make faults`")


def pytest_collection_modifyitems(items):
    for item in items:
        marker = item.get_closest_marker("fault")
        if marker is not None:
            item.add_marker(pytest.mark.faults)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Label a scenario's reports with its name and guarantee (they travel with the report, so the
    summary is right when the scenarios run in pytest-xdist workers too)."""
    outcome = yield
    marker = item.get_closest_marker("fault")
    if marker is None:
        return
    name = marker.kwargs.get("name") or (marker.args[0] if marker.args else item.name)
    guarantee = marker.kwargs.get("guarantee") or (marker.args[1] if len(marker.args) > 1 else "")
    key = f"{name} [{item.callspec.id}]" if hasattr(item, "callspec") else name
    outcome.get_result().user_properties.append(("fault", {"name": key, "guarantee": guarantee}))


def pytest_runtest_logreport(report):
    fault = next((value for key, value in report.user_properties if key == "fault"), None)
    if fault is None:
        return
    row = _outcomes.setdefault(fault["name"], {**fault, "held": True, "why": ""})
    if report.failed:
        row["held"] = False
        crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
        text = getattr(crash, "message", None) or (report.longreprtext or "failed").strip().splitlines()[-1]
        row["why"] = " ".join(str(text).split())[:160]
    elif report.skipped and report.when in ("setup", "call"):
        row["held"] = False
        row["why"] = "skipped: " + str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    rows = list(_outcomes.values())
    width = max(len(r["name"]) for r in rows)
    terminalreporter.write_sep("=", "fault-injection scenarios")
    for r in rows:
        status = "held" if r["held"] else "BROKEN"
        terminalreporter.write_line(f"{r['name']:<{width}}  {status:<6}  {r['guarantee']}"
                                    + (f"  -- {r['why']}" if r["why"] else ""))
    held = sum(r["held"] for r in rows)
    terminalreporter.write_line(f"faults_held={held}/{len(rows)}")
