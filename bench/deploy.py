"""SSH connections a release opens per host: the deploy and rollback tasks on a private local fleet.

Starts a local fleet of its own (one production host, no traffic) under a temporary
``CONVEYOR_HOME``, builds the demo's v1.1.0, and runs the release's own tasks on that host as a
wave: ``DeployOperator`` (v1.0.0 -> v1.1.0, then again: a rerun that changes nothing) and
``RollbackOperator`` (back to v1.0.0). Every SSH connection the tasks open is counted where
paramiko opens it (``SSHClient.connect``), per host. Prints one row per task with the count beside
the reference (the same task before hosts got one session per task: measured on commit 6722c27,
where a deploy opened 7 connections to the host: script upload and ``current``, tarball upload,
``stage``, ``activate``, ``rm``, restart), and last one ``key=value`` summary line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

# Measured with the code of 6722c27 (FleetHook.run/upload each opened an SSHHook connection).
REFERENCE = {"deploy": 7, "deploy again (no change)": 2, "rollback": 6}


class _Xcom:
    def __init__(self, values: dict) -> None:
        self.values = values

    def xcom_pull(self, task_ids: str):
        return self.values.get(task_ids)


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-deploy-"))
    os.environ.update({
        "CONVEYOR_HOME": str(home / "conveyor"), "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "AIRFLOW_CONN_BENCH_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(home / "ledger.db")}),
    })
    import paramiko

    from conveyor.artifacts import build_artifact
    from conveyor.config import load_service
    from conveyor.inventory import resolve_hosts
    from conveyor.ledger import Ledger
    from conveyor.operators.deploy import DeployOperator, RollbackOperator
    from conveyor_lab.fleet import Fleet, FleetSpec
    from conveyor_lab.fleet.spec import free_ports

    ssh_port, app_port = free_ports(2)
    fleet = Fleet(FleetSpec(replicas=0, production=1, dev=0, production_base="127.0.0.201", ssh_port=ssh_port,
                            app_port=app_port, traffic_rate=0), home=home / "conveyor" / "fleet", echo=lambda _: None)
    connects: Counter[str] = Counter()
    real_connect = paramiko.SSHClient.connect

    def counting_connect(self, hostname, *args, **kwargs):
        connects[hostname] += 1
        return real_connect(self, hostname, *args, **kwargs)

    paramiko.SSHClient.connect = counting_connect
    rows = []
    started = time.monotonic()
    try:
        fleet.up(seed_version="v1.0.0", wait=True)
        os.environ["AIRFLOW_CONN_CONVEYOR_FLEET"] = fleet.connection_uri()
        service = load_service("demo_shop")
        info = build_artifact(service, "v1.1.0", log_fn=lambda *a: None)
        [host] = resolve_hosts(service, "production")
        plan = {"hosts": [host.to_dict()], "waves": [[host.name]], "original": {host.name: "v1.0.0"},
                "pre_scrapes": {}}
        context = {"dag_run": SimpleNamespace(run_id="bench", dag_id="release_demo_shop"), "params": {},
                   "ti": _Xcom({"plan": plan})}
        common = {"service_id": service.id, "ledger_conn_id": "bench_ledger"}
        # The sign-off a production wave's gate reads: the release, two QA approvals, passing tests.
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        release_id = f"{service.id}/bench"
        ledger.upsert_release(release_id, service=service.id, author="dev", emergency=False, status="running")
        for who in ("qa1", "qa2"):
            ledger.upsert_approval(release_id, who, decision="approved", at=dt.datetime.now(dt.UTC))
        ledger.upsert_stage(release_id, "tests", status="success")
        ledger.dispose()
        deploy = DeployOperator(task_id="deploy", environment="production", artifact=info.to_dict(), plan=plan,
                                wave=0, **common)
        rollback = RollbackOperator(task_id="rollback", plan_task_id="plan", **common)
        for label, task in (("deploy", deploy), ("deploy again (no change)", deploy), ("rollback", rollback)):
            connects.clear()
            task.execute(context)
            rows.append((label, connects[host.address]))
    finally:
        paramiko.SSHClient.connect = real_connect
        fleet.down(purge=True)

    print(f"SSH connections per host, one task on one host ({time.monotonic() - started:.0f} s)")
    print(f"{'task':<28}{'conveyor':>10}{'reference':>11}{'ratio':>8}")
    for label, count in rows:
        print(f"{label:<28}{count:>10}{REFERENCE[label]:>11}{count / REFERENCE[label]:>8.2f}")
    deploy_count = rows[0][1]
    print(f"ssh_connections_per_host_deploy={deploy_count} ref_ssh_connections_per_host_deploy={REFERENCE['deploy']} "
          f"ratio={deploy_count / REFERENCE['deploy']:.2f} goal=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
