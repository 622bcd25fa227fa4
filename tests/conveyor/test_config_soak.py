"""The ``soak`` section (issue 13): the soak cluster, its durations, what an incident is, the promotion's
approval; refused at parse time, naming the file and the field, when it cannot work. And the DAGs it
gives: the release ends in the soak, ``promote_<service>`` exists only with a soak."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from conveyor.config import load_service
from conveyor.exceptions import ServiceConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"
SOAK = {"inventory": "local", "min": "30s", "major_min": "2m"}


def _write(tmp_path: Path, mutate) -> Path:
    doc = yaml.safe_load(DEMO.read_text())
    mutate(doc)
    path = tmp_path / "demo_shop.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _refused(tmp_path: Path, soak) -> str:
    with pytest.raises(ServiceConfigError) as refusal:
        load_service(_write(tmp_path, lambda d: d.update(soak=soak)))
    message = str(refusal.value)
    assert message.startswith(f"{tmp_path / 'demo_shop.yaml'}: "), message
    return message.split(": ", 1)[1]


def test_defaults_are_a_week_and_two_weeks_and_durations_go_down_to_seconds(tmp_path):
    service = load_service(_write(tmp_path, lambda d: d.update(soak={"inventory": "local"})))
    assert (service.soak.min, service.soak.major_min) == (timedelta(days=7), timedelta(days=14))
    assert service.soak.minimum("minor") == timedelta(days=7) and service.soak.minimum("major") == timedelta(days=14)
    assert service.soak.incidents.judge and service.soak.incidents.health and service.soak.approval is None

    short = load_service(_write(tmp_path, lambda d: d.update(soak=SOAK)))
    assert short.soak.minimum("minor") == timedelta(seconds=30) and short.soak.minimum("major") == timedelta(minutes=2)
    assert short.environment("soak").inventory.local
    assert load_service(DEMO).soak is None


def test_the_promotion_approval_is_a_stage_named_promotion(tmp_path):
    service = load_service(_write(tmp_path, lambda d: d.update(
        soak={**SOAK, "approval": {"group": ["@operations"], "required": 2, "timeout": "4h"}})))
    stage = service.soak.approval
    assert (stage.name, stage.task_group, service.people(stage.group), stage.required, stage.timeout) == (
        "promotion", "promotion_signoff", ("ops", "admin"), 2, timedelta(hours=4))


@pytest.mark.parametrize(("soak", "field", "words"), [
    ({"inventory": {"hosts": []}}, "soak.inventory.hosts", "no hosts: the environment needs at least one host"),
    ({**SOAK, "min": "0s"}, "soak.min", "must be longer than 0s"),
    ({**SOAK, "min": "a week"}, "soak.min", "invalid duration 'a week'"),
    ({**SOAK, "min": "14d", "major_min": "7d"}, "soak", "major_min (7d) is shorter than min (14d)"),
    ({**SOAK, "check_interval": "0m"}, "soak.check_interval", "must be longer than 0s"),
    ({"min": "1d"}, "soak.inventory", "Field required"),
    ({**SOAK, "approval": {"group": ["@nobody"]}}, "soak.approval.group", "unknown group(s) @nobody"),
    ({**SOAK, "approval": {"group": ["@managers"], "required": 2}}, "soak.approval.required",
     "2 approvals required but the group has only 1 member(s) (mgr1)"),
    ({**SOAK, "approval": {"group": []}}, "soak.approval.group", "no approvers"),
    ({**SOAK, "approval": {"group": ["@operations"], "when": "major"}}, "soak.approval.when", "every promotion"),
    ({**SOAK, "incidents": {"unhealthy_for": "soon"}}, "soak.incidents.unhealthy_for", "invalid duration"),
    ({**SOAK, "colour": "green"}, "soak", "unknown field 'colour'"),
])
def test_a_soak_that_cannot_work_is_refused_naming_the_field(tmp_path, soak, field, words):
    message = _refused(tmp_path, soak)
    assert message.startswith(f"{field}: ") or message.startswith(f"{field} "), message
    assert words in message, message


def test_the_release_of_a_soaked_service_ends_in_the_soak_and_promote_exists_only_with_a_soak(tmp_path, monkeypatch):
    from conveyor.pipeline import promote_dag, release_dag

    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path))
    _write(tmp_path, lambda d: d.update(soak={**SOAK, "approval": {"group": ["@operations"]}}))
    release, promote = release_dag("demo_shop"), promote_dag("demo_shop")

    assert "soak" in release.task_ids and "finalize" not in release.task_ids and "watch.analysis" not in release.task_ids
    assert release.get_task("plan").environment == "soak"
    assert {release.get_task(f"wave_{i}.deploy").environment for i in range(1, 5)} == {"soak"}
    assert [t.task_id for t in release.get_task("soak").downstream_list] == ["release_failed"]
    assert promote.dag_id == "promote_demo_shop" and promote.max_active_runs == 1
    assert "promotion_signoff.approval_1" in promote.get_task("select").downstream_task_ids
    assert promote.get_task("promotion_signoff.approval_1").downstream_task_ids >= {"plan"}
    assert promote.get_task("plan").environment == "production"
    assert all(promote.get_task(f"wave_{i}.deploy").promotion for i in range(1, 5))
    assert promote.get_task("finalize").promotion and "watch.analysis" in promote.task_ids
    assert {"rollback", "ticket", "fail_run"} <= set(promote.task_ids)
    humans = [t.task_id for t in promote.tasks if t.execution_timeout is None]
    assert sorted(humans) == ["promotion_signoff.approval_1", "watch.decide"] + [f"wave_{i}.decide" for i in range(1, 5)]

    _write(tmp_path, lambda d: None)
    assert promote_dag("demo_shop") is None
    assert "finalize" in release_dag("demo_shop").task_ids


def test_the_soak_example_is_the_demo_with_a_soak_of_minutes():
    example = load_service(ROOT / "include" / "services" / "examples" / "soak" / "demo_shop.yaml")
    demo = load_service(DEMO)
    assert example.soak.minimum("minor") == timedelta(minutes=10) and example.soak.minimum("major") == timedelta(
        minutes=30)
    assert example.soak.approval.name == "promotion" and example.people(example.soak.approval.group) == ("ops", "admin")
    assert example.model_dump(exclude={"soak"}) == demo.model_dump(exclude={"soak"})
