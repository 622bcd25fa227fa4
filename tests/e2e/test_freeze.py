"""Freezes on a real release run (issue 5): a normal manual run is refused with the freeze's reason,
an emergency run with a reason goes through, needs one approval, and is labelled everywhere."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml

from conveyor.paths import conveyor_home
from tests.e2e.harness import (
    Decision,
    fleet_state,
    put_fleet_on,
    release_record,
    run_release,
    ticket_for,
    versions,
)

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]
REASON = "Black Friday: no changes to checkout"


@pytest.fixture
def frozen(release_env, e2e_services, tmp_path, monkeypatch):
    """The e2e service with a freeze covering today (and a schedule, so the DAG has the timetable)."""
    put_fleet_on("v1.0.0")
    spec = yaml.safe_load((e2e_services / "demo_shop.yaml").read_text())
    today = dt.datetime.now(dt.UTC).date()
    spec["schedule"] = {"times": ["10:00", "16:00"], "days": "mon-fri", "timezone": "UTC",
                        "freezes": [{"start": str(today - dt.timedelta(days=1)),
                                     "end": str(today + dt.timedelta(days=1)), "reason": REASON}]}
    services = tmp_path / "services"
    services.mkdir()
    (services / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))
    return services


def test_a_normal_manual_run_inside_a_freeze_is_refused_with_its_reason(frozen):
    before = fleet_state()
    result = run_release({"git_ref": "v1.1.0"}, decisions=[])

    assert result.dag_run.state == "failed"
    assert result.states["validate"] == "failed" and result.states["build"] == "upstream_failed"
    release = release_record(result.dag_run.run_id)
    [validate] = [s for s in release["stages"] if s["stage"] == "validate"]
    assert REASON in validate["error"]
    assert {n: (s["current"], s["pid"]) for n, s in fleet_state().items()} == {
        n: (s["current"], s["pid"]) for n, s in before.items()}
    assert REASON in ticket_for(result.dag_run.run_id)["error"]


def test_an_emergency_run_goes_through_the_freeze_with_one_approval_and_is_labelled(frozen):
    why = "hotfix: checkout outage"
    result = run_release({"git_ref": "v1.1.0", "emergency": True, "reason": why},
                         decisions=[Decision("qa1", "Approve")])

    assert result.dag_run.state == "success", sorted(result.states.items())
    assert result.answered == [("qa_signoff.approval_1", "qa1", "Approve"),
                               ("client_signoff.approval_1", "client1", "Approve")]  # the client's, still
    assert result.states["qa_signoff.approval_2"] == "skipped"  # an emergency needs one QA approval
    assert versions("production") == {n: "v1.1.0" for n in PROD}
    release = release_record(result.dag_run.run_id)
    assert release["emergency"] is True and release["reason"] == why and release["labels"] == ["emergency"]
    log = (conveyor_home() / "notifications.log").read_text().splitlines()
    started = [json.loads(line) if line.startswith("{") else line for line in log if "EMERGENCY" in line]
    assert any(why in str(entry) for entry in started)
