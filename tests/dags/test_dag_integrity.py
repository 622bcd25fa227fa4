"""The DAG folder parses cleanly, does no I/O at parse time, and follows the project's policies."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def forbid_connections(monkeypatch):
    """Fail if parsing looks up a connection or a Variable (STYLE rule 2)."""
    from airflow.sdk import BaseHook, Variable

    def boom(*args, **kwargs):
        raise AssertionError(f"parse-time lookup: {args} {kwargs}")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(boom))
    monkeypatch.setattr(Variable, "get", staticmethod(boom))
    monkeypatch.setenv("CONVEYOR_HOME", "/nonexistent/conveyor-home")  # parse must not need state


def _bag(folder: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_dag_folder_parses_without_errors_or_lookups(forbid_connections):
    bag = _bag(ROOT / "dags")
    assert bag.import_errors == {}
    assert "release_demo_shop" in bag.dags


def test_release_dag_shape_and_policies(forbid_connections):
    dag = _bag(ROOT / "dags").dags["release_demo_shop"]
    assert dag.max_active_runs == 1
    assert set(dag.params.keys()) == {"git_ref", "change", "emergency", "reason"}
    assert dag.doc_md and "Required Actions" in dag.doc_md
    assert "conveyor" in dag.tags
    ids = set(dag.task_ids)
    assert {"validate", "build", "replica.deploy", "replica.populate", "tests", "qa_signoff.approval_1",
            "qa_signoff.approval_2", "plan",
            "wave_1.deploy", "wave_1.analysis", "wave_1.decide", "wave_4.analysis", "watch.analysis",
            "watch.decide", "finalize",
            "release_failed", "rollback", "ticket"} <= ids
    # failure path: rollback runs after the sentinel, the ticket after the rollback
    assert dag.get_task("rollback").upstream_task_ids == {"release_failed"}
    assert dag.get_task("ticket").upstream_task_ids == {"rollback"}
    assert dag.get_task("fail_run").upstream_task_ids == {"ticket"} and not dag.get_task("fail_run").downstream_task_ids
    assert "watch.decide" in dag.get_task("release_failed").upstream_task_ids
    for task in dag.tasks:
        assert task.owner == "release-eng"
    # QA sign-off: two approvals in sequence, from the QA group, emergency changes need one
    first, second = dag.get_task("qa_signoff.approval_1"), dag.get_task("qa_signoff.approval_2")
    assert second.upstream_task_ids == {"qa_signoff.approval_1"}
    assert dag.get_task("plan").trigger_rule == "none_failed_min_one_success"
    assert first.group == ["qa1", "qa2", "qa3"] and first.required == 2 and first.emergency_required == 1
    assert first.fail_on_reject and str(first.timeout) == "1 day, 0:00:00"
    assert "reason" in first.params
    # then the manager's stage (major changes only) and the client's, in order; plan follows every approval
    manager, client = dag.get_task("manager_signoff.approval_1"), dag.get_task("client_signoff.approval_1")
    assert manager.upstream_task_ids == {"qa_signoff.approval_2"} and manager.trigger_rule == "none_failed"
    assert client.upstream_task_ids == {"manager_signoff.approval_1"} and client.trigger_rule == "none_failed"
    assert (manager.approval_stage, manager.when, manager.group, client.approval_stage, client.when, client.group) == (
        "manager", "major", ["mgr1"], "client", "always", ["client1"])
    assert client.earlier_stages == ["qa", "manager"] and client.fail_on_reject
    assert dag.get_task("plan").upstream_task_ids == {"qa_signoff.approval_1", "qa_signoff.approval_2",
                                                      "manager_signoff.approval_1", "client_signoff.approval_1"}


def _validate_conf(conf: dict, dag_id: str = "release_demo_shop"):
    """What triggering does with a run's conf: copy the DAG's params, apply the conf, validate."""
    dag = _bag(ROOT / "dags").dags[dag_id]
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("bad_ref", ["v1.1.0; rm -rf /", "$(id)", "`id`", "v1 .0", "-rf", "a..b", "x|y", "",
                                     "v1.1.0\nid", "main&&id", "refs/../../etc",
                                     # a JSON-schema "$" also matches before a final newline (re.search)
                                     "v1.1.0\n", "main\n", f"{SHA}\n", "v1.1.0\n\n", "\nv1.1.0"])
def test_git_ref_param_refuses_shell_metacharacters(bad_ref):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validate_conf({"git_ref": bad_ref})


@pytest.mark.parametrize("good_ref", ["v1.1.0", "main", "release/2026-11", "0123abcd", "v2.0.0-rc.1+build.5"])
def test_git_ref_param_accepts_real_refs(good_ref):
    assert _validate_conf({"git_ref": good_ref})["git_ref"] == good_ref


@pytest.mark.parametrize("bad_commit", [f"{SHA}\n", "abc1234\n", f"{SHA}; id", SHA.upper()])
def test_ci_commit_param_refuses_anything_but_a_sha(bad_commit):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validate_conf({"commit": bad_commit}, "ci_demo_shop")
    assert _validate_conf({"commit": SHA}, "ci_demo_shop")["commit"] == SHA


def test_param_patterns_also_hold_in_javascript():
    """The trigger form may check a Param's pattern in the browser: the same pattern must compile as an
    ECMAScript regex (no ``\\Z``, no Python-only syntax) and refuse the trailing newline there too."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    import json
    import subprocess

    dags = _bag(ROOT / "dags").dags
    patterns = {"git_ref": dags["release_demo_shop"].params.get_param("git_ref").schema["pattern"],
                "commit": dags["ci_demo_shop"].params.get_param("commit").schema["pattern"]}
    cases = {"git_ref": {"v1.1.0": True, "main": True, "v1.1.0\n": False, "main\n": False},
             "commit": {SHA: True, f"{SHA}\n": False}}
    script = ("const [patterns, cases] = JSON.parse(process.argv[1]); const out = {};"
              "for (const k in patterns) { const re = new RegExp(patterns[k], 'u'); out[k] = {};"
              "  for (const v in cases[k]) out[k][v] = re.test(v); }"
              "console.log(JSON.stringify(out));")
    result = subprocess.run([node, "-e", script, json.dumps([patterns, cases])], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == cases


def test_change_param_is_an_enum():
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validate_conf({"git_ref": "v1.1.0", "change": "huge"})


def test_malformed_service_file_is_an_import_error_of_its_own(tmp_path, monkeypatch):
    """A broken service file names the file and the field, and breaks no other service's DAG."""
    services = tmp_path / "services"
    shutil.copytree(ROOT / "include" / "services", services)
    broken = (services / "demo_shop.yaml").read_text().replace("id: demo_shop", "id: broken_shop")
    broken = broken.replace('waves: [1, "25%", "50%", "100%"]', 'waves: [1, "150%"]')
    (services / "broken_shop.yaml").write_text(broken)
    dags = tmp_path / "dags"
    dags.mkdir()
    for sid in ("demo_shop", "broken_shop"):
        text = (ROOT / "dags" / "release_demo_shop.py").read_text().replace("demo_shop", sid)
        (dags / f"release_{sid}.py").write_text(text)
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))
    bag = _bag(dags)
    assert "release_demo_shop" in bag.dags
    assert "release_broken_shop" not in bag.dags
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("release_broken_shop.py")
    assert "broken_shop.yaml" in message and "waves[1]" in message
