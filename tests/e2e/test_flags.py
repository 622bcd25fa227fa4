"""Feature-flag rollouts (issue 14) with ``dag.test()`` on the local fleet, the flags file pushed to every
host over SSH: ``new_checkout`` reaches 100% of production's users after the replica tests and QA; a
rerun of it changes nothing; ``fast_recommendations`` (about 5% HTTP 500 on flag-on traffic) is turned off
everywhere at the first step whose judge fails, with a ticket naming the flag and the step."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Decision, put_fleet_on, release_record, run_release, ticket_for

pytestmark = [pytest.mark.e2e]

DAG_ID = "flag_demo_shop"
QA = [Decision("qa1", "Approve", {"reason": "flag checked"}), Decision("qa2", "Approve", {"reason": "ok"})]


@pytest.fixture
def flags(release_env):
    """Every host on v1.0.0 and every flag off (the rollouts start from nothing); the flag store."""
    from conveyor.config import load_service
    from conveyor.hooks.flags import flag_store

    put_fleet_on("v1.0.0")
    store = flag_store(load_service("demo_shop"))
    for flag in ("new_checkout", "fast_recommendations"):
        for environment in ("replica", "production"):
            store.set(flag, False, 0, environment=environment)
    return store


def rollout(conf: dict) -> object:
    return run_release(conf, decisions=list(QA), dag_id=DAG_ID, stages={})


def changes(run_id: str) -> list[tuple[str, str, bool, int]]:
    from conveyor.evidence import release_id_for
    from conveyor.ledger.hook import LedgerHook

    rows = LedgerHook().ledger.list_flag_changes("demo_shop")
    mine = [r for r in rows if r["release_id"] == release_id_for("demo_shop", run_id)]
    return sorted((r["environment"], r["step"], r["enabled"], r["rollout"]) for r in mine)


def test_new_checkout_reaches_every_user_after_the_replica_and_qa_and_a_rerun_changes_nothing(flags):
    result = rollout({"flag": "new_checkout", "steps": [10, 100]})

    assert result.dag_run.state == "success", sorted(result.states.items())
    assert result.states["tests"] == "success" and result.states["step_3.set"] == "skipped"
    assert [a[1] for a in result.answered] == ["qa1", "qa2"]
    state = flags.get("new_checkout", environment="production")
    assert (state.enabled, state.rollout) == (True, 100)
    assert flags.get("new_checkout", environment="replica").enabled is False  # on for its tests only
    assert changes(result.dag_run.run_id) == [
        ("production", "step-1", True, 10), ("production", "step-2", True, 100),
        ("replica", "replica", True, 100), ("replica", "replica-off", False, 100)]
    record = release_record(result.dag_run.run_id)
    assert (record["status"], record["labels"]) == ("success", ["flag", "new_checkout"])
    analyses = {s["stage"]: s for s in record["stages"] if s["stage"].endswith(".analysis")}
    assert set(analyses) == {"step_1.analysis", "step_2.analysis"}
    assert analyses["step_2.analysis"]["detail"]["decision"] in ("pass", "inconclusive")

    again = rollout({"flag": "new_checkout", "steps": [100], "test_on_replica": False})

    assert again.dag_run.state == "success", sorted(again.states.items())
    assert again.states["replica.deploy"] == "skipped" and again.states["tests"] == "skipped"
    state = flags.get("new_checkout", environment="production")
    assert (state.enabled, state.rollout) == (True, 100)


def test_fast_recommendations_is_turned_off_everywhere_at_the_first_failing_step(flags):
    result = rollout({"flag": "fast_recommendations", "steps": [10, 50, 100]})

    assert result.dag_run.state == "failed", sorted(result.states.items())
    failed = sorted(t for t, s in result.states.items() if s == "failed" and t != "fail_run")
    assert len(failed) == 1 and failed[0].startswith("step_") and failed[0].endswith(".analysis"), failed
    step = int(failed[0].split("_")[1].split(".")[0])
    assert all(result.states[f"step_{k}.set"] == "upstream_failed" for k in range(step + 1, 4))
    assert result.states["flag_off"] == "success"
    for environment in ("production", "replica"):
        assert flags.get("fast_recommendations", environment=environment).enabled is False
    assert ("production", "off", False, 0) in changes(result.dag_run.run_id)

    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == failed[0]
    assert "fast_recommendations" in ticket["title"] + ticket["body"]
    assert f"step-{step} (fast_recommendations on for" in ticket["body"]
