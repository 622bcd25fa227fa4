"""CI of the release branch and the gate of scheduled releases, on the real demo repository.

Each test gets its own CONVEYOR_HOME (ledger, notification log, mirror) holding a copy of a demo
repository built once for the module; commits are pushed to it the way `conveyor demo commit` does.
"""

from __future__ import annotations

import copy
import datetime as dt
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conveyor import ci
from conveyor.config import load_service, parse_service
from conveyor.exceptions import ServiceConfigError
from conveyor.ledger import Ledger
from conveyor.notifiers import read_notifications
from conveyor_lab.demo import create_demo_repo
from conveyor_lab.demo_commits import push_demo_commit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_home_template(tmp_path_factory):
    """A CONVEYOR_HOME with the demo repository and its mirror, made once for the module."""
    from conveyor.artifacts import mirror

    home = tmp_path_factory.mktemp("ci-template") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVEYOR_HOME", str(home))
        create_demo_repo()  # the lab's job (Fleet.up does it for `make run`): Conveyor only reads it
        mirror(load_service("demo_shop"))
    return home


@pytest.fixture
def home(demo_home_template, tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(demo_home_template, home, symlinks=True)
    monkeypatch.setenv("CONVEYOR_HOME", str(home))
    return home


@pytest.fixture
def service(home):
    return load_service("demo_shop")


@pytest.fixture
def ledger(home):
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    yield ledger
    ledger.dispose()


def _main_head(service) -> str:
    from conveyor.artifacts import mirror

    return ci.branch_head(mirror(service), "main")


def _released(ledger: Ledger, sha: str, run: str = "manual__1") -> None:
    """Seed the ledger with a successful release of ``sha``."""
    now = dt.datetime.now(dt.UTC)
    ledger.upsert_release(f"demo_shop/{run}", service="demo_shop", version="v1.1.0", commit_sha=sha,
                          status="success", started_at=now, finished_at=now, deployed_at=now)


def _status(ledger: Ledger, sha: str) -> str | None:
    return (ci.ci_statuses(ledger, "demo_shop", [sha]).get(sha) or {}).get("ci_status")


def _scheduled_context(run_id: str = "scheduled__2026-11-23T10:00:00+00:00") -> dict:
    return {"dag_run": SimpleNamespace(run_type="scheduled", dag_id="release_demo_shop", run_id=run_id)}


def test_a_new_red_commit_is_caught_recorded_and_announced(service, ledger):
    _released(ledger, _main_head(service))  # v1.1.0 is in production: only what comes after is new
    assert ci.new_commits(service, ledger=ledger) == []
    sha = push_demo_commit(red=True, author="Dev Patel <dev@shop.example>")

    [found] = ci.new_commits(service, ledger=ledger)
    assert found["sha"] == sha
    assert found["author"] == "Dev Patel"
    assert _status(ledger, sha) == ci.PENDING  # found, not judged yet

    result = ci.check_commit(service, found, ledger=ledger)
    assert result["status"] == ci.RED
    assert result["suite"] == "unit"
    assert result["failed"] >= 1
    assert "test_bulk_discount_is_ten_percent" in result["detail"]
    row = ci.ci_statuses(ledger, "demo_shop", [sha])[sha]
    assert row["ci_status"] == "red"
    assert row["author"] == "Dev Patel"
    assert row["checked_at"] is not None
    assert row["message"].startswith("Cart: bulk discount from")
    [note] = [n for n in read_notifications() if n["event"] == "ci_red"]
    assert sha[:12] in note["text"]
    assert "Dev Patel" in note["text"]
    assert ci.new_commits(service, ledger=ledger) == []  # judged: the next poll has nothing to do


def test_gate_red_head_stops_the_line_then_green_releases_then_no_change(service, ledger):
    from airflow.sdk.exceptions import AirflowSkipException

    from conveyor.operators.gate import release_gate

    _released(ledger, _main_head(service))
    assert ci.scheduled_release_gate(service, ledger)[0] == ci.NO_CHANGE
    red = push_demo_commit(red=True, author="Dev Patel")
    ci.run_ci(service, red, ledger=ledger)

    decision, sha, message = ci.scheduled_release_gate(service, ledger)
    assert (decision, sha) == (ci.LINE_STOPPED, red)
    assert message == f"line stopped at {red[:12]} (Dev Patel: Cart: bulk discount from 12 items)"
    with pytest.raises(AirflowSkipException, match=f"line stopped at {red[:12]}"):
        release_gate(_scheduled_context(), service, ledger)
    [note] = [n for n in read_notifications() if n["event"] == "line_stopped"]
    assert red[:12] in note["text"]
    assert "Dev Patel" in note["text"]
    assert note["dag_id"] == "release_demo_shop"

    green = push_demo_commit(red=False, author="Ana Garcia")  # the fix
    assert ci.run_ci(service, green, ledger=ledger)["status"] == ci.GREEN
    assert ci.scheduled_release_gate(service, ledger)[:2] == (ci.RELEASE, green)
    assert release_gate(_scheduled_context(), service, ledger) == green
    # a manual run is not gated: it releases its own git_ref
    manual = {"dag_run": SimpleNamespace(run_type="manual", dag_id="release_demo_shop", run_id="manual__2")}
    assert release_gate(manual, service, ledger) is None

    _released(ledger, green, run="scheduled__2")
    decision, sha, message = ci.scheduled_release_gate(service, ledger)
    assert (decision, sha) == (ci.NO_CHANGE, None)
    assert "nothing new on main" in message
    notes = len(read_notifications())
    with pytest.raises(AirflowSkipException, match="nothing new"):
        release_gate(_scheduled_context(), service, ledger)
    assert len(read_notifications()) == notes  # skipped quietly


def _judged(ledger: Ledger, sha: str, status: str) -> None:
    """Record a CI verdict as ci_demo_shop would (without running the suite: these tests are about the gate)."""
    ledger.upsert_commit("demo_shop", sha, ci_status=status, checked_at=dt.datetime.now(dt.UTC))


def test_commits_not_judged_yet_are_passed_over_for_the_newest_green(service, ledger):
    _released(ledger, _main_head(service))
    green = push_demo_commit(red=False)
    _judged(ledger, green, ci.GREEN)
    red = push_demo_commit(red=True)  # pushed, CI has not run on it yet
    decision, sha, message = ci.scheduled_release_gate(service, ledger)
    assert (decision, sha) == (ci.RELEASE, green)
    assert "1 newer commit(s) still wait for CI" in message
    assert [c["sha"] for c in ci.new_commits(service, ledger=ledger)] == [red]
    _judged(ledger, red, ci.RED)
    assert ci.scheduled_release_gate(service, ledger)[:2] == (ci.LINE_STOPPED, red)
    fix = push_demo_commit(red=False)
    _judged(ledger, fix, ci.GREEN)
    assert ci.scheduled_release_gate(service, ledger)[:2] == (ci.RELEASE, fix)


def test_a_release_off_the_branch_counts_as_released(service, ledger):
    """The demo's v1.2.0 branches off main's v1.1.0: main has nothing newer, so nothing to release."""
    from conveyor.artifacts import mirror, resolve_ref

    _judged(ledger, _main_head(service), ci.GREEN)
    assert ci.scheduled_release_gate(service, ledger)[:2] == (ci.RELEASE, _main_head(service))
    _released(ledger, resolve_ref(mirror(service), "v1.2.0")[0])
    assert ci.scheduled_release_gate(service, ledger)[0] == ci.NO_CHANGE


def test_first_poll_checks_the_branch_oldest_first_up_to_max_commits(service, ledger):
    commits = ci.new_commits(service, ledger=ledger)  # nothing released, nothing judged: the whole branch
    assert [c["subject"] for c in commits] == ["Shop 1.0: catalog, cart and recommendations",
                                               "Catalog: paginate the products API"]
    assert ci.scheduled_release_gate(service, ledger)[0] == ci.NO_CHANGE  # nothing judged yet
    assert [c["sha"] for c in ci.new_commits(service, ledger=ledger, limit=1)] == [commits[-1]["sha"]]


def test_a_broken_build_is_red(service, ledger, monkeypatch):
    broken = service.model_copy(update={"build": service.build.model_copy(update={
        "command": ("python", "-c", "import sys; print('compile error'); sys.exit(3)")})})
    result = ci.run_ci(broken, _main_head(service), ledger=ledger)
    assert result["status"] == ci.RED
    assert result["detail"].startswith("build failed with exit code 3")
    assert "compile error" in result["detail"]


def test_ci_settings_default_to_the_first_suite_and_refuse_an_unknown_one(service):
    assert service.ci_suite.name == "unit"
    assert service.ci.poll_interval == dt.timedelta(minutes=5)
    doc = yaml.safe_load(service.path.read_text())
    doc["ci"] = {"suite": "integration"}
    assert parse_service(doc, service.path).ci_suite.name == "integration"
    doc["ci"]["suite"] = "smoke"
    with pytest.raises(ServiceConfigError, match="ci.suite: 'smoke'"):
        parse_service(doc, service.path)


# ----------------------------------------------------------------------------------------- the DAG


def _ci_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["ci_demo_shop"]


def test_ci_dag_shape_and_params():
    from airflow.sdk.exceptions import ParamValidationError

    dag = _ci_dag()
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.schedule == dt.timedelta(minutes=5)  # ci.poll_interval's default
    assert set(dag.task_ids) == {"find_commits", "ci", "report"}
    assert dag.get_task("ci").upstream_task_ids == {"find_commits"}
    assert {t.owner for t in dag.tasks} == {"release-eng"}
    assert "ci" in dag.tags
    for bad in ("$(id)", "HEAD", "abc", "v1.1.0"):
        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            params.update({"commit": bad})  # what triggering does with a run's conf
    params = copy.deepcopy(dag.params)
    params.update({"commit": "0123abcd"})
    assert params.validate()["commit"] == "0123abcd"


def test_ci_dag_run_on_a_pushed_red_commit(airflow_db, service, ledger):
    from airflow.utils.state import DagRunState

    _released(ledger, _main_head(service))
    red = push_demo_commit(red=True, author="Dev Patel")
    dr = _ci_dag().test(run_conf={"commit": red})  # what a push webhook sends
    assert _status(ledger, red) == ci.RED
    assert dr.state == DagRunState.FAILED  # the report task fails the run: CI is red
    [note] = [n for n in read_notifications() if n["event"] == "ci_red"]
    assert red[:12] in note["text"]
    assert "Dev Patel" in note["text"]
    assert note["dag_id"] == "ci_demo_shop"


def test_with_a_soak_the_schedule_releases_a_commit_once_to_the_soak_cluster(service, ledger):
    """A soaked service's last release is its newest soak (soaking, passed or with an incident): the
    schedule does not send the same commit to the soak cluster again, which would restart its clock."""
    soaked = service.model_copy(update={"soak": parse_service(
        {**yaml.safe_load(service.path.read_text()), "soak": {"inventory": "local", "min": "1h"}}, service.path).soak})
    _released(ledger, _main_head(service))  # production runs main's head
    green = push_demo_commit(red=False)
    _judged(ledger, green, ci.GREEN)
    assert ci.scheduled_release_gate(soaked, ledger)[:2] == (ci.RELEASE, green)

    ledger.upsert_soak("demo_shop/scheduled__3", service="demo_shop", version="v1.1.0-1-g" + green[:7],
                       commit_sha=green, status="incident", started_at=dt.datetime.now(dt.UTC), min_seconds=3600)

    decision, sha, message = ci.scheduled_release_gate(soaked, ledger)
    assert (decision, sha) == (ci.NO_CHANGE, None) and "nothing new on main" in message
    assert ci.scheduled_release_gate(service, ledger)[:2] == (ci.RELEASE, green)  # without a soak: production's
