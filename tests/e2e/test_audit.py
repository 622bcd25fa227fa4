"""A release of the demo's v1.7.0, whose lock file pins jinja2 3.1.4 (a high advisory on the lab's OSV
server): real pip-audit stops it at ``audit``, before any host changes (checked over SSH, replicas
included), and the root-cause ticket lists the advisory."""

from __future__ import annotations

import pytest

from tests.e2e.harness import fleet_state, put_fleet_on, release_record, run_release, ticket_for

pytestmark = [pytest.mark.e2e]

ADVISORY = "jinja2 3.1.4: DEMO-2026-0001, severity high, fixed in 3.1.5"


@pytest.fixture
def fleet_on_v1_0_0(release_env):
    put_fleet_on("v1.0.0")
    state = fleet_state()
    assert {s["health"]["version"] for s in state.values()} == {"v1.0.0"}
    return state


def test_a_vulnerable_dependency_stops_the_release_before_any_host_changes(fleet_on_v1_0_0, lab_osv):
    before = fleet_on_v1_0_0
    queries = lab_osv.queries

    result = run_release({"git_ref": "v1.7.0"}, decisions=[])

    assert result.dag_run.state == "failed", sorted(result.states.items())
    assert sorted(t for t, s in result.states.items() if s == "failed") == ["audit", "fail_run"]
    assert result.states["build"] == "success"
    assert result.states["replica.deploy"] == "upstream_failed"
    assert result.states["qa_signoff.approval_1"] == "upstream_failed"
    assert result.answered == []
    assert lab_osv.queries - queries == 7  # pip-audit asked about each of the 7 pinned packages

    after = fleet_state()  # every host, replicas too: the version `current` points to, and the app's pid
    assert {n: (s["current"], s["pid"]) for n, s in after.items()} == {
        n: (s["current"], s["pid"]) for n, s in before.items()}

    release = release_record(result.dag_run.run_id)
    assert release["status"] == "failed" and release["version"] == "v1.7.0"
    assert release["hosts"] == []
    audit = next(s for s in release["stages"] if s["stage"] == "audit")
    assert audit["status"] == "failed" and ADVISORY in audit["error"]
    assert [a["id"] for a in audit["detail"]["blocking"]] == ["DEMO-2026-0001"]

    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == "audit" and ticket["version"] == "v1.7.0"
    assert f"- {ADVISORY}" in ticket["body"]
    assert "Reports: render order summaries with Jinja2" in ticket["body"]  # the commit range
    assert ticket["hosts_touched"] == [] and ticket["rollback_status"] == "nothing to roll back"
