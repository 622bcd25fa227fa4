"""Soak and promotion through a real Airflow (issue 13): a promotion asked for while the build still soaks.

``dag.test()`` cannot run a promotion while a release run is soaking (two at once break Airflow's
in-process supervisor), so this module uses ``airflow_server``: the release of ``v1.1.0`` soaks on the
dev cluster (``dev-1..2``) in the triggerer while ``promote_demo_shop`` runs next to it. A promotion that
names the soaking build is refused with its clock, one that names nothing skips; once the soak has
passed, the promotion asks the operations group for its own approval (never its author) and takes the
build to production, and the soak's row says which release promoted it.

The soak section is written into the server's service file before any run; both DAGs are used only
once the dag-processor has parsed it (``promote_demo_shop`` exists, ``release_demo_shop`` ends in
``soak``).
"""

from __future__ import annotations

import time

import pytest

from conveyor.evidence import release_id_for
from tests.e2e.airflow_server import (  # noqa: F401 - airflow_server: the module's Airflow
    DAG_ID,
    USERS,
    AirflowServer,
    airflow_server,
    answer,
    diagnose,
    task_states,
    trigger,
    wait_for_approval,
    wait_for_run,
)
from tests.e2e.harness import fleet_state, put_fleet_on, release_record, ticket_for, versions

pytestmark = [pytest.mark.e2e]

PROMOTE = "promote_demo_shop"
PROD = [f"prod-{i}" for i in range(1, 7)]
DEV = ["dev-1", "dev-2"]
OPERATIONS = ["ops", "admin"]  # the demo's @operations (include/services/demo_shop.yaml)
SOAK = {"inventory": "local", "min": "40s", "major_min": "60s", "check_interval": "2s", "window": "10s",
        "approval": {"group": ["@operations"], "required": 1, "timeout": "10m"}}
QA_1, QA_2, CLIENT = "qa_signoff.approval_1", "qa_signoff.approval_2", "client_signoff.approval_1"
PROMOTION = "promotion_signoff.approval_1"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def soak_server(airflow_server):  # noqa: F811
    """The module's Airflow with a soak section in its service file, both DAGs parsed with it.

    The test process reads the same file (``CONVEYOR_SERVICES_DIR``), so ``put_fleet_on`` and
    ``fleet_state`` include the dev cluster.
    """
    server = airflow_server
    assert set(OPERATIONS) <= set(USERS)
    with pytest.MonkeyPatch.context() as mp, server.service_override(soak=SOAK, waves=[1, "100%"]):
        mp.setenv("CONVEYOR_SERVICES_DIR", str(server.services_dir))
        admin = server.client("admin")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (_parsed(admin, PROMOTE) and "soak" in _tasks(admin, DAG_ID)):
            time.sleep(2)
        assert _parsed(admin, PROMOTE), f"{PROMOTE} not parsed after the soak section was written:\n" \
                                        + server.log_tails()
        assert "soak" in _tasks(admin, DAG_ID), f"{DAG_ID} has no soak task: {sorted(_tasks(admin, DAG_ID))}"
        if _parsed(admin, PROMOTE).get("is_paused"):
            admin.call("PATCH", f"/api/v2/dags/{PROMOTE}", {"is_paused": False}, what="unpausing")
        assert not admin.call("GET", "/api/v2/importErrors").get("import_errors")
        yield server


def _parsed(admin, dag_id: str) -> dict | None:
    status, data = admin.request("GET", f"/api/v2/dags/{dag_id}")
    return data if status == 200 else None


def _tasks(admin, dag_id: str) -> set[str]:
    status, data = admin.request("GET", f"/api/v2/dags/{dag_id}/tasks")
    return {t["task_id"] for t in data["tasks"]} if status == 200 else set()


def approve(server: AirflowServer, user: str, dag_id: str, run_id: str, task_id: str, reason: str) -> None:
    wait_for_approval(server, run_id, task_id, dag_id=dag_id)
    status, body = answer(server, user, run_id, task_id, "Approve", reason, dag_id=dag_id)
    assert status == 200, (user, task_id, status, body)


def soak_of(run_id: str) -> dict | None:
    from conveyor.ledger.hook import LedgerHook

    return LedgerHook().ledger.get_soak(release_id_for("demo_shop", run_id))


def wait_for_soaking(server: AirflowServer, run_id: str, timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = soak_of(run_id)
        if row and row["status"] == "soaking":
            return row
        if server.client("admin").dag_run(DAG_ID, run_id)["state"] in ("success", "failed"):
            break
        time.sleep(1)
    raise AssertionError(f"no soaking row for {run_id} (row: {soak_of(run_id)}); " + diagnose(server, run_id))


def stage_error(run_id: str, stage: str) -> str:
    return next(s for s in release_record(run_id)["stages"] if s["stage"] == stage)["error"] or ""


def changed(before: dict, after: dict) -> dict:
    """Hosts whose active version or app process differs between two ``fleet_state`` snapshots."""
    return {n: (before[n]["current"], before[n]["pid"], after[n]["current"], after[n]["pid"])
            for n in before if (before[n]["current"], before[n]["pid"]) != (after[n]["current"], after[n]["pid"])}


# -------------------------------------------------------------------------------------- test


def test_a_soaking_build_is_refused_then_promoted_with_the_operations_approval(soak_server):
    server = soak_server
    put_fleet_on("v1.0.0")
    assert {s["health"]["version"] for s in fleet_state().values()} == {"v1.0.0"}
    assert set(fleet_state("soak")) == set(DEV)

    # The release: signed off, deployed to the dev cluster, soaking there.
    release = trigger(server, "v1.1.0", "dev")
    approve(server, "qa1", DAG_ID, release, QA_1, "Checked the cart")
    approve(server, "qa2", DAG_ID, release, QA_2, "Checked the search")
    approve(server, "client1", DAG_ID, release, CLIENT, "Accepted")
    row = wait_for_soaking(server, release)
    assert (row["version"], row["min_seconds"], row["hosts"]) == ("v1.1.0", 40, DEV)
    assert versions("soak") == {n: "v1.1.0" for n in DEV}
    before = fleet_state("production")

    # While it soaks: naming it is refused with its clock; naming nothing finds nothing to promote.
    refused = trigger(server, user="ops", dag_id=PROMOTE, version="v1.1.0")
    nothing = trigger(server, user="ops", dag_id=PROMOTE)  # queued behind the first (one promotion at a time)
    assert wait_for_run(server, refused, dag_id=PROMOTE) == "failed"
    states = task_states(server, refused, PROMOTE)
    assert states["select"] == "failed", diagnose(server, refused, PROMOTE)
    assert (states[PROMOTION], states["wave_1.deploy"]) == ("upstream_failed", "upstream_failed")
    error = stage_error(refused, "select")
    assert "promotion refused: v1.1.0 may not be promoted: soaking:" in error and "of 40s" in error, error
    assert "promotion refused: v1.1.0 may not be promoted" in ticket_for(refused)["error"]
    # Both are judged within about 15 s of the soak's 40 s; a soak that passed first would park this run at
    # its approval, hence the short wait.
    assert wait_for_run(server, nothing, timeout=180, dag_id=PROMOTE) == "success"
    states = task_states(server, nothing, PROMOTE)
    assert states["select"] == "skipped", diagnose(server, nothing, PROMOTE)
    assert {states[t] for t in (PROMOTION, "plan", "wave_1.deploy", "wave_2.deploy", "finalize")} == {"skipped"}
    assert release_record(nothing) is None
    assert soak_of(release)["status"] == "soaking", "the soak passed before both promotions were judged"
    assert changed(before, fleet_state("production")) == {}

    # The soak passes: the release run ends there, production untouched.
    assert wait_for_run(server, release) == "success", diagnose(server, release)
    assert task_states(server, release)["soak"] == "success"
    assert soak_of(release)["status"] == "passed"
    assert release_record(release)["status"] == "soaked"
    assert changed(before, fleet_state("production")) == {}

    # The promotion, asked for by dev: only operations approve it, dev (its author) cannot.
    promotion = trigger(server, user="dev", dag_id=PROMOTE)
    detail = wait_for_approval(server, promotion, PROMOTION, dag_id=PROMOTE)
    assert {u["id"] for u in detail["assigned_users"]} == set(OPERATIONS)
    assert "v1.1.0" in detail["subject"]
    status, body = answer(server, "dev", promotion, PROMOTION, "Approve", "mine", dag_id=PROMOTE)
    assert status == 403, (status, body)
    assert "User=dev" in body["detail"] and "not a respondent" in body["detail"]
    status, body = answer(server, "ops", promotion, PROMOTION, "Approve", "Soaked clean on the dev cluster",
                          dag_id=PROMOTE)
    assert status == 200, body
    assert body["responded_by"]["id"] == "ops"

    assert wait_for_run(server, promotion, dag_id=PROMOTE) == "success", diagnose(server, promotion, PROMOTE)
    assert versions("production") == {n: "v1.1.0" for n in PROD}
    record = release_record(promotion)
    assert record["release_id"] == release_id_for("demo_shop", promotion)
    assert (record["status"], record["version"], record["author"]) == ("success", "v1.1.0", "dev")
    assert [(a["stage"], a["approver"], a["decision"], a["comment"]) for a in record["approvals"]] == [
        ("promotion", "ops", "approved", "Soaked clean on the dev cluster")]
    soak = soak_of(release)
    assert (soak["status"], soak["promoted_release_id"]) == ("promoted", record["release_id"])
