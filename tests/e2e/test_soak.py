"""Soak and promotion (issue 13), with ``dag.test()`` on the local fleet's dev cluster (``dev-1..2``).

The service file is the e2e one with a ``soak`` section of seconds (``min`` 20 s, ``major_min`` 45 s):
a good build soaks on the dev cluster and the release run ends there; ``promote_demo_shop`` takes it
to production with no second sign-off and marks the soak promoted. A major change soaks for
``major_min``: past ``min`` it is still soaking, and a promotion of it is refused with its clock. A
host that hangs during the soak is an incident: the soak stops for good, the dev cluster goes back,
the ticket says why, and the build is never promoted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime

import pytest
import yaml

from tests.e2e.harness import fleet_state, put_fleet_on, release_record, run_release, ticket_for

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]
DEV = ["dev-1", "dev-2"]
SOAK = {"inventory": "local", "min": "20s", "major_min": "45s", "check_interval": "2s", "window": "10s",
        "incidents": {"unhealthy_for": "6s"}}
PROMOTE = "promote_demo_shop"


@pytest.fixture
def soak_service(release_env, e2e_services, tmp_path, monkeypatch):
    """The e2e service with a soak of seconds and two waves; every host (dev cluster too) on v1.0.0."""
    spec = yaml.safe_load((e2e_services / "demo_shop.yaml").read_text())
    spec["soak"] = SOAK
    spec["waves"] = [1, "100%"]
    services = tmp_path / "services"
    services.mkdir()
    (services / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))
    put_fleet_on("v1.0.0")
    return fleet_state()


def ledger():
    from conveyor.ledger.hook import LedgerHook

    return LedgerHook().ledger


def soak_of(run_id: str) -> dict | None:
    from conveyor.evidence import release_id_for

    return ledger().get_soak(release_id_for("demo_shop", run_id))


def running(state: dict, names: list[str]) -> dict[str, str]:
    return {n: state[n]["health"]["version"] for n in names}


def promote(conf: dict | None = None):
    return run_release(conf or {}, decisions=[], dag_id=PROMOTE, stages={})


def test_a_good_build_soaks_on_the_dev_cluster_then_is_promoted_to_production(soak_service):
    soaked = run_release({"git_ref": "v1.1.0"})

    assert soaked.dag_run.state == "success", sorted(soaked.states.items())
    assert soaked.states["soak"] == "success" and "finalize" not in soaked.states  # the release ends at the soak
    after = fleet_state()
    assert running(after, DEV) == {n: "v1.1.0" for n in DEV}
    assert running(after, PROD) == {n: "v1.0.0" for n in PROD}  # production untouched by the release
    soak = soak_of(soaked.dag_run.run_id)
    assert soak["status"] == "passed" and soak["version"] == "v1.1.0" and soak["min_seconds"] == 20
    assert (soak["watched_until"] - soak["started_at"]).total_seconds() >= 20
    assert release_record(soaked.dag_run.run_id)["status"] == "soaked"
    assert {h["host"]: (h["environment"], h["to_version"]) for h in release_record(soaked.dag_run.run_id)["hosts"]
            if h["environment"] == "soak"} == {n: ("soak", "v1.1.0") for n in DEV}

    promoted = promote()

    assert promoted.dag_run.state == "success", sorted(promoted.states.items())
    assert not [t for t in promoted.states if t.startswith("promotion_signoff")]  # no second sign-off
    assert running(fleet_state(), PROD) == {n: "v1.1.0" for n in PROD}
    soak = soak_of(soaked.dag_run.run_id)
    record = release_record(promoted.dag_run.run_id)
    assert soak["status"] == "promoted" and soak["promoted_release_id"] == record["release_id"]
    assert (record["status"], record["version"], record["labels"]) == ("success", "v1.1.0", ["promotion"])
    select = next(s for s in record["stages"] if s["stage"] == "select")
    assert select["detail"]["soak_release_id"] == soak["release_id"]

    again = promote()  # nothing newer has soaked: the run skips (no release is opened, nothing changes)

    assert again.states["select"] == "skipped" and again.states.get("wave_1.deploy") == "skipped"
    assert release_record(again.dag_run.run_id) is None
    assert soak_of(soaked.dag_run.run_id)["promoted_release_id"] == record["release_id"]


def test_a_major_change_waits_major_min_and_an_incident_stops_its_soak_for_good(soak_service):
    from conveyor.paths import fleet_dir
    from conveyor.soak import pick_candidate, soak_clocks

    book = ledger()  # made here: Airflow's connection lookup is not for a second thread during dag.test
    seen: dict = {}

    def during_the_soak():
        """Past ``min`` (20 s) but before ``major_min`` (45 s): still soaking, not promotable; then dev-1 hangs.

        (A promotion *run* at this point needs a second run beside the release's: tests/e2e/test_soak_api.py
        does it on a real Airflow; dag.test runs one at a time.)"""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            rows = book.list_soaks("demo_shop")
            row = next((r for r in rows if r["version"] == "v1.6.0" and r["status"] == "soaking"), None)
            if row and (datetime.now(UTC) - row["started_at"]).total_seconds() > 25:
                seen.update(row)
                seen["choice"] = pick_candidate(soak_clocks(rows, production_version="v1.0.0", now=datetime.now(UTC)),
                                                "v1.6.0")
                pid = int((fleet_dir() / "hosts" / "dev-1" / "run" / "app.pid").read_text())
                seen["pid"] = pid
                os.kill(pid, signal.SIGSTOP)  # the app hangs: health probes time out
                return
            time.sleep(1)

    watcher = threading.Thread(target=during_the_soak, daemon=True)
    watcher.start()
    try:
        result = run_release({"git_ref": "v1.6.0", "change": "major"})
    finally:
        watcher.join(timeout=300)
        if "pid" in seen:
            try:
                os.kill(seen["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass

    assert seen["status"] == "soaking" and seen["min_seconds"] == 45 and seen["change_kind"] == "major"
    clock, why = seen["choice"]
    assert clock is None and why.startswith("v1.6.0 may not be promoted: soaking:") and "of 45s" in why

    assert result.dag_run.state == "failed", sorted(result.states.items())
    assert result.states["soak"] == "failed" and result.states["rollback"] == "success"
    soak = soak_of(result.dag_run.run_id)
    assert soak["status"] == "incident" and soak["incident"].startswith("dev-1 unhealthy for")
    assert soak["promoted_release_id"] is None
    ticket = ticket_for(result.dag_run.run_id)
    assert ticket["failed_stage"] == "soak"
    assert "incident during the soak of v1.6.0: dev-1 unhealthy" in ticket["body"]
    assert running(fleet_state(), PROD) == {n: "v1.0.0" for n in PROD}

    never = promote({"version": "v1.6.0"})

    assert never.dag_run.state == "failed" and never.states["select"] == "failed"
    error = next(s for s in release_record(never.dag_run.run_id)["stages"] if s["stage"] == "select")["error"]
    assert "never promoted: incident during soak: dev-1 unhealthy" in error
