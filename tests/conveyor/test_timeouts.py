"""Every task of the release DAG has a finite wall-clock bound from the service file: an
``execution_timeout`` (``conveyor.timeouts.task_timeouts``), or for the human tasks their
``response_timeout`` and no ``execution_timeout``. The DAG is built from variants of the demo's service
file, so changing a timeout in the file must change the bound of the tasks that wait on it.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.config import load_service
from conveyor.timeouts import BOOKKEEPING_S, RUNTIME_INVENTORY_HOSTS, fleet_size, task_timeouts, wave_hosts

ROOT = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
FLEET_TASKS = ["build", "replica.deploy", "replica.populate", "tests", "plan", "wave_1.deploy", "wave_2.deploy",
               "wave_3.deploy", "wave_4.deploy", "finalize", "rollback"]
OTHER_TASKS = ["validate", "wave_1.analysis", "watch.analysis", "release_failed", "ticket", "fail_run"]


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        here = out.get(key)
        out[key] = merged(here if isinstance(here, dict) else {}, value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def variant(tmp_path, monkeypatch):
    """``variant(**changes)``: the release DAG built from the demo's service file with ``changes`` merged in."""
    count = iter(range(100))

    def build(**changes: Any):
        from conveyor.pipeline import release_dag

        directory = tmp_path / f"services-{next(count)}"
        directory.mkdir()
        (directory / "demo_shop.yaml").write_text(yaml.safe_dump(merged(DEMO, changes), sort_keys=False))
        monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(directory))
        return release_dag("demo_shop"), load_service("demo_shop")

    return build


def bounds_of(dag) -> dict[str, timedelta | None]:
    return {t.task_id: t.execution_timeout for t in dag.tasks}


AUDIT = {"audit": {"timeout_s": 120}}


def test_every_task_has_a_finite_bound_from_the_service_file(variant):
    from airflow.providers.standard.operators.hitl import HITLOperator

    dag, service = variant(**AUDIT)
    table = task_timeouts(service)
    humans = [t for t in dag.tasks if isinstance(t, HITLOperator)]
    assert sorted(t.task_id for t in humans) == sorted(
        ["qa_signoff.approval_1", "qa_signoff.approval_2", "manager_signoff.approval_1", "client_signoff.approval_1",
         "watch.decide"] + [f"wave_{i}.decide" for i in range(1, 5)])
    stage_timeouts = {f"{stage.task_group}.": stage.timeout for stage in service.stages}
    for task in dag.tasks:
        if task in humans:  # they wait for a person, as long as their response timeout
            assert task.execution_timeout is None, task.task_id
            want = next((timeout for prefix, timeout in stage_timeouts.items() if task.task_id.startswith(prefix)),
                        service.analysis.decision_timeout)
            assert task.response_timeout == want, task.task_id
        else:
            assert task.task_id in table, f"{task.task_id} has no bound: add it to conveyor.timeouts.task_timeouts"
            assert task.execution_timeout == table[task.task_id], task.task_id
            assert timedelta(seconds=BOOKKEEPING_S) <= task.execution_timeout < timedelta(days=1), task.task_id
    assert "audit" in bounds_of(dag)


def test_the_demo_dag_as_deployed_is_bounded_too():
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["release_demo_shop"]
    table = task_timeouts(load_service(ROOT / "include" / "services" / "demo_shop.yaml"))
    unbounded = [t.task_id for t in dag.tasks
                 if t.execution_timeout is None and getattr(t, "response_timeout", None) is None]
    assert unbounded == []
    assert {t.task_id: t.execution_timeout for t in dag.tasks if t.task_id in table} == table


def test_a_slower_remote_command_lengthens_every_task_that_runs_commands_on_hosts(variant):
    before, _ = variant()
    after, _ = variant(deploy={"timeouts": {"command_s": 300}})
    old, new = bounds_of(before), bounds_of(after)
    assert {t: new[t] > old[t] for t in FLEET_TASKS} == dict.fromkeys(FLEET_TASKS, True)
    assert {t: new[t] for t in OTHER_TASKS} == {t: old[t] for t in OTHER_TASKS}


@pytest.mark.parametrize(("before", "after", "task_id", "grew_s"), [
    ({"build": {"timeout_s": 300}}, {"build": {"timeout_s": 1300}}, "build", 1000),
    # a suite runs once, and once more against production's version for triage
    ({}, {"tests": [{**DEMO["tests"][0], "timeout_s": 1000}, *DEMO["tests"][1:]]}, "tests", 2 * 100),
    ({"triage": {"enabled": False}}, {"triage": {"enabled": False},
                                      "tests": [{**DEMO["tests"][0], "timeout_s": 1000}, *DEMO["tests"][1:]]},
     "tests", 100),
    ({"audit": {"timeout_s": 300}}, {"audit": {"timeout_s": 350}}, "audit", 50),
])
def test_each_timeout_lengthens_the_task_that_waits_on_it(variant, before, after, task_id, grew_s):
    assert DEMO["tests"][0].get("timeout_s") is None  # the default, 900 s
    old, new = bounds_of(variant(**before)[0]), bounds_of(variant(**after)[0])
    assert new[task_id] - old[task_id] == timedelta(seconds=grew_s)
    assert {t: new[t] for t in new if t != task_id} == {t: old[t] for t in old if t != task_id}


def test_the_upload_and_the_health_wait_lengthen_the_deploys(variant):
    base = bounds_of(variant()[0])
    for changes in ({"timeouts": {"upload_s": 1200}}, {"health": {"timeout_s": 200}}, {"timeouts": {"connect_s": 60}}):
        longer = bounds_of(variant(deploy=changes)[0])
        for task_id in ("replica.deploy", "wave_1.deploy", "wave_4.deploy"):
            assert longer[task_id] > base[task_id], (changes, task_id)


def static_hosts(n: int, prefix: str) -> dict[str, Any]:
    return {"inventory": {"hosts": [{"name": f"{prefix}-{i}", "address": f"10.0.0.{i}"} for i in range(1, n + 1)]}}


def test_a_wave_takes_as_many_rounds_as_its_hosts_need(variant):
    environments = {"replica": static_hosts(1, "replica"), "production": static_hosts(8, "prod")}
    dag, service = variant(environments=environments, deploy={"max_parallel": 2})
    assert fleet_size(service, "production") == 8 and wave_hosts(service) == [1, 1, 2, 4]
    bounds = bounds_of(dag)
    # 1, 1 and 2 hosts: one round each; 4 hosts: two rounds
    assert bounds["wave_1.deploy"] == bounds["wave_2.deploy"] == bounds["wave_3.deploy"] < bounds["wave_4.deploy"]
    one_round = bounds["wave_1.deploy"] - timedelta(seconds=BOOKKEEPING_S)
    assert abs(bounds["wave_4.deploy"] - timedelta(seconds=BOOKKEEPING_S) - 2 * one_round) <= timedelta(seconds=1)
    wider = bounds_of(variant(environments=environments, deploy={"max_parallel": 4})[0])
    assert wider["wave_4.deploy"] == wider["wave_1.deploy"]


def test_a_fleet_resolved_at_run_time_is_counted_as_the_largest_one_the_bounds_allow_for(variant):
    _, service = variant()
    assert service.environments.production.inventory.local
    assert fleet_size(service, "production") == RUNTIME_INVENTORY_HOSTS
    assert sum(wave_hosts(service)) == RUNTIME_INVENTORY_HOSTS


def test_a_task_bound_covers_the_steps_it_waits_on(variant):
    _, service = variant()
    table = task_timeouts(service)
    t, health = service.deploy.timeouts, service.deploy.health
    one_host = t.connect_s + t.upload_s + 4 * t.command_s + health.timeout_s  # current, stage, activate, restart
    assert table["wave_1.deploy"] >= timedelta(seconds=one_host + BOOKKEEPING_S)
    assert table["build"] >= timedelta(seconds=service.build.timeout_s + BOOKKEEPING_S)
    assert table["tests"] >= timedelta(seconds=2 * sum(s.timeout_s for s in service.tests) + BOOKKEEPING_S)
