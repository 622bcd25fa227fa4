"""End-to-end fixtures: the local fleet (real SSH servers on loopback), Airflow's DB, fast bake windows.

The e2e service file is the demo's own with shorter windows, so a full release takes about two
minutes instead of five; everything else (SSH, artifacts, ledger, tickets) is the real path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.fleet_fixtures import local_fleet  # noqa: F401 - the session fleet fixture

ROOT = Path(__file__).resolve().parents[2]

FAST = {
    "analysis": {"window_s": 20, "interval_s": 2, "min_requests": 100, "decision_timeout": "60s"},
    "watch": {"window_s": 10, "interval_s": 2},
    # dag.test() runs are triggered by "dag_test": a releaser and an emergency decider here
    "release": {"allowed": ["@developers", "@operations", "dag_test"], "emergency": ["@operations", "dag_test"]},
}

#: The demo's load suite, shorter, and judged only on running at all: the e2e release of v1.4.0 (+150 ms) is
#: there to reach the canary judge, which the demo's own p95 threshold would stop at the replica.
#: tests/conveyor/operators/test_testing_load.py shows that threshold failing v1.4.0 there.
FAST_LOAD = {"duration": "4s", "thresholds": {"min_rps": 1}}


@pytest.fixture(scope="session")
def lab_osv():
    """The lab's OSV server with the demo's advisories (v1.7.0's lock file has a high one), on a free port."""
    from conveyor_lab.osv import DEMO_ADVISORIES, OsvServer

    with OsvServer(DEMO_ADVISORIES) as server:
        yield server


@pytest.fixture(scope="session")
def e2e_services(session_dir, lab_osv) -> Path:
    services = session_dir / "services"
    services.mkdir(exist_ok=True)
    spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    for section, values in FAST.items():
        spec[section] = {**spec.get(section, {}), **values}
    spec["tests"] = [{**suite, **FAST_LOAD} if suite.get("kind") == "load" else suite for suite in spec["tests"]]
    # the audit asks the session's lab OSV server (`make run` serves the same advisories on a fixed port)
    spec["audit"] = {**spec["audit"], "osv_url": lab_osv.query_url}
    (services / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return services


@pytest.fixture(scope="session")
def release_env(local_fleet, airflow_db, e2e_services):  # noqa: F811
    """Everything a release run needs: the fleet's SSH connection and the e2e service files."""
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_CONVEYOR_FLEET", "CONVEYOR_SERVICES_DIR")}
    os.environ["AIRFLOW_CONN_CONVEYOR_FLEET"] = local_fleet.connection_uri()
    os.environ["CONVEYOR_SERVICES_DIR"] = str(e2e_services)
    yield local_fleet
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
