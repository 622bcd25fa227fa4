"""Who may release, who may declare an emergency, and the red line, decided in ``validate`` (issue 10,
item 3) before the release is opened: a refusal is an ``InvalidInputError`` with the reason and leaves
no release in the ledger (``validate`` touches no host either way).

The demo service's own file: ``release.allowed`` is ``@developers @operations`` (dev, ops, admin),
``release.emergency`` is ``@operations`` (ops, admin). Each test has its own ``CONVEYOR_HOME`` holding
a copy of the demo repository (the line check reads its release branch) and its own ledger.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conveyor.exceptions import InvalidInputError
from conveyor.ledger import Ledger
from conveyor.operators.release import ValidateReleaseOperator
from tests.conveyor.operators.operator_support import LEDGER_CONN_ID, SERVICE_ID, operator_kwargs

ROOT = Path(__file__).resolve().parents[3]
RUN_ID = "manual__2026-11-23T10:00:00+00:00"
RELEASE_ID = f"{SERVICE_ID}/{RUN_ID}"


@pytest.fixture(scope="module")
def demo_home_template(tmp_path_factory):
    from conveyor.artifacts import mirror
    from conveyor.config import load_service
    from conveyor_lab.demo import create_demo_repo

    home = tmp_path_factory.mktemp("validate-template") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVEYOR_HOME", str(home))
        mp.setenv("CONVEYOR_SERVICES_DIR", str(ROOT / "include" / "services"))
        create_demo_repo()
        mirror(load_service(SERVICE_ID))
    return home


@pytest.fixture
def services(demo_home_template, tmp_path, monkeypatch) -> Path:
    """This test's CONVEYOR_HOME (the demo repository), ledger and service files (the demo's own)."""
    home = tmp_path / "home"
    shutil.copytree(demo_home_template, home, symlinks=True)
    monkeypatch.setenv("CONVEYOR_HOME", str(home))
    monkeypatch.setenv(f"AIRFLOW_CONN_{LEDGER_CONN_ID.upper()}",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}))
    directory = tmp_path / "services"
    directory.mkdir()
    shutil.copy(ROOT / "include" / "services" / f"{SERVICE_ID}.yaml", directory)
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(directory))
    return directory


@pytest.fixture
def ledger(services, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.dispose()


def override(services: Path, **sections) -> None:
    path = services / f"{SERVICE_ID}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec.update(sections)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def validate(user: str | None, *, emergency: bool = False, run_type: str = "manual", git_ref: str = "v1.1.0"):
    context = {
        "dag_run": SimpleNamespace(run_id=RUN_ID, dag_id=f"release_{SERVICE_ID}", triggering_user_name=user,
                                   run_type=run_type),
        "params": {"git_ref": git_ref, "change": "minor", "emergency": emergency,
                   "reason": "checkout is down" if emergency else ""},
        "dag": None,
    }
    return ValidateReleaseOperator(**operator_kwargs("validate")).execute(context)


def nothing_released(ledger: Ledger) -> bool:
    release = ledger.get_release(RELEASE_ID)
    return release is None


def red_line(ledger: Ledger) -> str:
    """CI judged the release branch's head red: the line is stopped there. Returns the head commit."""
    from conveyor.artifacts import mirror
    from conveyor.ci import branch_head
    from conveyor.config import load_service

    head = branch_head(mirror(load_service(SERVICE_ID)), "main")
    ledger.upsert_commit(SERVICE_ID, head, author="Dana Dev", message="Cart: break the bulk discount",
                         ci_status="red", ci_detail="1 failing test")
    return head


def test_an_allowed_user_opens_the_release(services, ledger):
    result = validate("dev")
    assert (result["author"], result["git_ref"], result["emergency"]) == ("dev", "v1.1.0", False)
    release = ledger.get_release(RELEASE_ID)
    assert (release["status"], release["author"], release["git_ref"]) == ("running", "dev", "v1.1.0")


def test_a_user_outside_release_allowed_is_refused(services, ledger):
    with pytest.raises(InvalidInputError) as refusal:
        validate("qa1")
    assert str(refusal.value) == (f"qa1 may not release demo_shop: release.allowed in {services / 'demo_shop.yaml'} "
                                  "is @developers, @operations (dev, ops, admin)")
    assert nothing_released(ledger)
    with pytest.raises(InvalidInputError, match="a run without a triggering user may not release demo_shop"):
        validate(None)
    assert nothing_released(ledger)


def test_without_release_allowed_anyone_may_release(services, ledger):
    override(services, release={"emergency": ["@operations"]})
    assert validate("qa1")["author"] == "qa1"


def test_only_release_emergency_may_declare_an_emergency(services, ledger):
    with pytest.raises(InvalidInputError) as refusal:
        validate("dev", emergency=True)
    assert str(refusal.value) == (f"dev may not declare an emergency for demo_shop: release.emergency in "
                                  f"{services / 'demo_shop.yaml'} is @operations (ops, admin)")
    assert nothing_released(ledger)

    result = validate("ops", emergency=True)
    assert (result["author"], result["emergency"], result["reason"]) == ("ops", True, "checkout is down")


def test_with_no_release_emergency_emergencies_are_refused(services, ledger):
    override(services, release={"allowed": ["@developers", "@operations"]})
    with pytest.raises(InvalidInputError) as refusal:
        validate("ops", emergency=True)
    assert str(refusal.value) == ("emergency releases of demo_shop are refused: nobody may declare one (set "
                                  f"release.emergency in {services / 'demo_shop.yaml'} to the users or @groups who "
                                  "may)")
    assert nothing_released(ledger)


def test_a_manual_run_while_the_line_is_stopped_is_refused(services, ledger):
    head = red_line(ledger)
    with pytest.raises(InvalidInputError) as refusal:
        validate("dev")
    assert str(refusal.value).startswith(f"line stopped at {head[:12]} (")
    assert "a manual release waits until CI judges a newer commit green (or is declared an emergency)" in str(
        refusal.value)
    assert nothing_released(ledger)

    result = validate("ops", emergency=True)  # an emergency goes through a stopped line
    assert result["emergency"] is True


def test_a_scheduled_run_has_no_user_and_releases_the_newest_green_commit(services, ledger):
    from conveyor.artifacts import mirror
    from conveyor.ci import branch_head
    from conveyor.config import load_service

    head = branch_head(mirror(load_service(SERVICE_ID)), "main")
    ledger.upsert_commit(SERVICE_ID, head, author="Dana Dev", message="green", ci_status="green")
    result = validate(None, run_type="scheduled", git_ref="main")
    assert (result["author"], result["git_ref"]) == (None, head)
