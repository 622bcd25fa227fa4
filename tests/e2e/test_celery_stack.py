"""``make run-celery`` for real: Airflow on CeleryExecutor, PostgreSQL and Redis, releases over the REST API.

The stack is started by the very command the Makefile runs (``CONVEYOR_EXECUTOR=celery bash
scripts/run.sh``) and stopped by ``scripts/stop.sh`` (``make stop``), in a private ``AIRFLOW_HOME`` and
``CONVEYOR_HOME``, with its own PostgreSQL databases (metadata and ledger, dropped at the end), a Redis
database and a Celery queue of its own, free ports for everything, and **two schedulers** (Airflow's HA
mode on PostgreSQL) for the whole module. The fleet's spec (free ports) is written into the private
``CONVEYOR_HOME`` first, so the script's ``conveyor fleet up`` starts the local fleet on it.

1. A good release: triggered as ``dev``, two QA approvals (the client of ``conveyor approve``, which
   waits until the request is settled), all waves, success, every production host on the new version.
2. A release during which the Celery worker (and every process under it) is SIGKILLed while a wave's
   deploy is running, then restarted by running ``make run-celery``'s command again. The scheduler finds
   the task without a heartbeat (timeout shortened to seconds here), fails it, and the failure path
   rolls the touched hosts back: every production host ends on one known version, the ledger has each
   stage and host once, and the interrupted try's log and Airflow's event log say what happened.

After each release: no task ran twice (one try per task instance, try number 1, in Airflow's records
through the REST API), with both schedulers alive all along.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import yaml
from psycopg2 import sql

from conveyor.signoff_client import NotAwaiting, SignoffClient, sign_off
from conveyor_lab.fleet.layout import FleetPaths, save_spec
from conveyor_lab.fleet.spec import free_ports
from tests.e2e.airflow_server import DAG_ID, FAST_CONFIG, AirflowServer
from tests.e2e.harness import fleet_state, put_fleet_on
from tests.fleet_fixtures import free_fleet_spec

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.timeout(1800)]  # the stack starts in the first test

ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = 7
PROD = [f"prod-{i}" for i in range(1, 7)]
OLD, NEW = "v1.0.0", "v1.1.0"
SETTLE = 4.0  # seconds a Required Action waits before it is answered (conveyor approve waits 10)
HEARTBEAT_TIMEOUT_S = 20  # Airflow's default is 300: a dead worker's task is failed within seconds here

#: Scheduler loops short (as the other REST e2e tests have them), and a dead task found in seconds.
STACK_CONFIG = {
    **FAST_CONFIG,
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "6",
}


@dataclass
class CeleryStack:
    server: AirflowServer  # the REST clients, the passwords, the home
    env: dict[str, str]  # the environment make run-celery ran with (make stop needs the same)
    conveyor_home: Path
    ledger_url: str
    started_in_s: float

    @property
    def celery_dir(self) -> Path:
        return self.server.home / "celery"

    def run_script(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / script)], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        (self.server.home / f"{script}.out").write_text(proc.stdout + proc.stderr)
        return proc

    def pid(self, component: str) -> int | None:
        path = self.celery_dir / f"{component}.pid"
        return int(path.read_text()) if path.exists() else None

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.celery_dir.glob("*.log")):
            out.append(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def _free_port_pair() -> int:
    """A free port whose successor is free too (the health checks of scheduler 1 and 2)."""
    import socket

    for _ in range(50):
        [port] = free_ports(1)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _pg(database: str = "postgres"):
    conn = psycopg2.connect(f"{PG}/{database}", connect_timeout=5)
    conn.autocommit = True
    return conn


def _drop_databases(names: list[str]) -> None:
    conn = _pg()
    with conn.cursor() as cur:
        for name in names:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


def _processes_with(marker: str) -> list[int]:
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    state = (entry / "stat").read_text().split(")")[-1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return sorted(found)


@pytest.fixture(scope="module")
def celery_stack(e2e_services, session_dir) -> Iterator[CeleryStack]:
    """``make run-celery`` in a private home, with two schedulers; ``make stop`` and the databases dropped at the end."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="celery-stack-", dir=session_dir))
    airflow_home, conveyor_home, services_dir = base / "airflow", base / "conveyor", base / "services"
    airflow_home.mkdir()
    services_dir.mkdir()
    spec = yaml.safe_load((e2e_services / "demo_shop.yaml").read_text())
    spec["deploy"] = {**spec["deploy"], "max_parallel": 1}  # hosts one after the other: a wave to interrupt
    (services_dir / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    save_spec(FleetPaths(conveyor_home / "fleet"), free_fleet_spec())  # the script's `fleet up` uses it

    tag = uuid.uuid4().hex[:10]
    metadata_db, ledger_db = f"conveyor_airflow_t{tag}", f"conveyor_ledger_t{tag}"
    api_port, log_port, trigger_log_port, osv_port, prom_port = free_ports(5)
    marker = f"CONVEYOR_CELERY_TEST={tag}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) and k not in ("AIRFLOW_HOME", "CONVEYOR_HOME")}
    env.update({
        "CONVEYOR_CELERY_TEST": tag,  # every process of the stack inherits it: none may be left at the end
        "AIRFLOW_HOME": str(airflow_home),
        "CONVEYOR_HOME": str(conveyor_home),
        "CONVEYOR_SERVICES_DIR": str(services_dir),
        "CONVEYOR_PG_URL": PG,
        "CONVEYOR_CELERY_DB": metadata_db,
        "CONVEYOR_LEDGER_DB": ledger_db,
        "CONVEYOR_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "CONVEYOR_SCHEDULERS": "2",
        "CONVEYOR_OSV_PORT": str(osv_port),
        "CONVEYOR_PROMETHEUS_PORT": str(prom_port),
        "CONVEYOR_EXECUTOR": "celery",
        # its own queue: another stack on the same Redis (a developer's make run-celery) never takes its tasks
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"conveyor-test-{tag}",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(_free_port_pair()),
        "PYTHONUNBUFFERED": "1",
        **STACK_CONFIG,
    })
    server = AirflowServer(home=airflow_home, port=api_port, env=env, services_dir=services_dir, passwords={})
    stack = CeleryStack(server=server, env=env, conveyor_home=conveyor_home,
                        ledger_url=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{ledger_db}", started_in_s=0)
    try:
        started = time.monotonic()
        proc = stack.run_script("run.sh")
        stack.started_in_s = time.monotonic() - started
        assert proc.returncode == 0, f"make run-celery failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n" \
                                     + stack.log_tails()
        print(f"\n[celery] make run-celery was up in {stack.started_in_s:.0f} s")
        server.passwords.update(json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text()))
        server.wait_ready(timeout=120)  # the DAG parsed and unpaused
        yield stack
    finally:
        stopped = stack.run_script("stop.sh", timeout=300)
        left = _processes_with(marker)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _drop_databases([metadata_db, ledger_db])
        assert stopped.returncode == 0, f"make stop failed:\n{stopped.stdout[-3000:]}\n{stopped.stderr[-3000:]}"
        assert not left, f"make stop left processes of the stack behind: {left}"


@pytest.fixture
def on_the_stack(celery_stack, monkeypatch) -> CeleryStack:
    """This process reads the stack's fleet, service files and home (for the SSH checks of the hosts)."""
    from conveyor_lab.fleet import Fleet

    monkeypatch.setenv("CONVEYOR_HOME", str(celery_stack.conveyor_home))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(celery_stack.server.services_dir))
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_FLEET", Fleet(home=celery_stack.conveyor_home / "fleet").connection_uri())
    return celery_stack


# ------------------------------------------------------------------------------------------ helpers
def admin(stack: CeleryStack) -> SignoffClient:
    return stack.server.client("admin")


def trigger(stack: CeleryStack, git_ref: str) -> str:
    run = stack.server.client("dev").trigger(DAG_ID, {"git_ref": git_ref})
    assert run["triggering_user_name"] == "dev"
    return run["dag_run_id"]


def tis(stack: CeleryStack, run_id: str) -> dict[str, dict]:
    data = admin(stack).call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", query={"limit": 200})
    return {ti["task_id"]: ti for ti in data["task_instances"]}


def diagnose(stack: CeleryStack, run_id: str) -> str:
    states = {t: ti["state"] for t, ti in tis(stack, run_id).items()}
    failed = [t for t, s in states.items() if s == "failed" and t != "fail_run"]
    logs = "\n".join(f"=== {t} ===\n{stack.server.task_log(run_id, t)[-3000:]}" for t in failed)
    return f"task states: {sorted(states.items())}\n{logs}\n{stack.log_tails(15)}"


def approve(stack: CeleryStack, run_id: str, user: str, timeout: float = 420) -> None:
    """Wait for the run's next approval (any stage) and answer Approve as ``user`` with ``conveyor approve``'s
    client."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sign_off(api=stack.server.url, user=user, password=stack.server.passwords[user], run_id=run_id,
                     decision="Approve", settle_s=SETTLE)
            return
        except NotAwaiting:
            if admin(stack).dag_run(DAG_ID, run_id)["state"] in ("success", "failed"):
                raise AssertionError(f"run {run_id} ended before {user} could approve; "
                                     + diagnose(stack, run_id)) from None
            time.sleep(1)
    raise AssertionError(f"no approval awaited {user} in {run_id} after {timeout}s; " + diagnose(stack, run_id))


def wait_for_run(stack: CeleryStack, run_id: str, timeout: float = 420) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = admin(stack).dag_run(DAG_ID, run_id)["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} not finished after {timeout}s; " + diagnose(stack, run_id))


def production(stack: CeleryStack) -> dict[str, tuple[str | None, str | None]]:
    """Per production host: the version its ``current`` link names (over SSH) and the one /health answers."""
    return {name: (s["current"], s["health"]["version"]) for name, s in fleet_state("production").items()}


def ran_once(stack: CeleryStack, run_id: str) -> None:
    """Every task instance that ran did so once: try number 1 and one try in Airflow's records (retries are 0)."""
    client = admin(stack)
    ran = {t: ti for t, ti in tis(stack, run_id).items() if ti["state"] not in (None, "skipped", "removed",
                                                                                  "upstream_failed")}
    assert ran, "no task ran"
    twice = {t: ti["try_number"] for t, ti in ran.items() if ti["try_number"] != 1}
    assert not twice, f"tasks of {run_id} that ran more than once: {twice}"
    for task_id in ran:
        tries = client.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        numbers = [t["try_number"] for t in tries["task_instances"]]
        assert numbers == [1], f"{task_id} of {run_id}: tries {numbers}"
    jobs = client.call("GET", "/api/v2/jobs", query={"job_type": "SchedulerJob", "is_alive": "true"})
    assert jobs["total_entries"] == 2, f"expected two live schedulers: {jobs}"


def ledger_release(stack: CeleryStack, run_id: str) -> dict:
    from conveyor.evidence import release_id_for
    from conveyor.ledger.core import Ledger

    release = Ledger(stack.ledger_url).get_release(release_id_for("demo_shop", run_id))
    assert release is not None, f"no ledger record of {run_id} in {stack.ledger_url}"
    return release


def task_log(stack: CeleryStack, run_id: str, task_id: str, try_number: int = 1) -> str:
    """The try's log as the REST API serves it (what the UI shows)."""
    data = admin(stack).call(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        query={"full_content": "true"})
    content = data.get("content")
    if isinstance(content, list):
        return "\n".join(line.get("event", "") if isinstance(line, dict) else str(line) for line in content)
    return str(content)


# ---------------------------------------------------------------------------------------------- tests
def test_a_release_on_celery_reaches_every_production_host(on_the_stack):
    stack = on_the_stack
    started = time.monotonic()
    assert set(production(stack).values()) == {(OLD, OLD)}

    run_id = trigger(stack, NEW)
    approve(stack, run_id, "qa1")
    approve(stack, run_id, "qa2")
    approve(stack, run_id, "client1")  # the demo's client stage (a minor change: no manager's)
    assert wait_for_run(stack, run_id) == "success", diagnose(stack, run_id)

    assert production(stack) == dict.fromkeys(PROD, (NEW, NEW))
    states = {t: ti["state"] for t, ti in tis(stack, run_id).items()}
    assert all(states[f"wave_{i}.deploy"] == "success" for i in range(1, 5)), states
    ran_once(stack, run_id)
    release = ledger_release(stack, run_id)
    assert (release["status"], release["author"]) == ("success", "dev")
    assert sorted((a["stage"], a["approver"]) for a in release["approvals"]) == [
        ("client", "client1"), ("qa", "qa1"), ("qa", "qa2")]
    assert {h["host"]: (h["from_version"], h["to_version"], h["status"]) for h in release["hosts"]} == \
        dict.fromkeys(["replica-1", "replica-2", *PROD], (OLD, NEW, "deployed"))
    print(f"\n[celery] a good release took {time.monotonic() - started:.0f} s")


def test_a_worker_killed_mid_wave_leaves_every_host_on_one_known_version(on_the_stack):
    from conveyor_lab.fleet.layout import current_version

    stack = on_the_stack
    started = time.monotonic()
    fleet_paths = FleetPaths(stack.conveyor_home / "fleet")
    from conveyor_lab.fleet import Fleet

    hosts = {h.name: h for h in Fleet(home=stack.conveyor_home / "fleet").hosts()}
    put_fleet_on(OLD)  # over SSH, as a release does it
    assert production(stack) == dict.fromkeys(PROD, (OLD, OLD))

    run_id = trigger(stack, NEW)
    approve(stack, run_id, "qa1")
    approve(stack, run_id, "qa2")
    approve(stack, run_id, "client1")  # the demo's client stage (a minor change: no manager's)

    # Kill the worker and everything under it once wave_2's deploy runs and has switched a host of its own.
    target, deadline = "wave_2.deploy", time.monotonic() + 420
    while True:
        assert time.monotonic() < deadline, f"{target} never ran with a host switched; " + diagnose(stack, run_id)
        state = tis(stack, run_id).get(target, {}).get("state")
        on_new = [n for n in PROD if current_version(fleet_paths, hosts[n]) == NEW]
        if state == "running" and len(on_new) >= 2:
            break
        assert state in (None, "scheduled", "queued", "running"), f"{target} is {state}; " + diagnose(stack, run_id)
        time.sleep(0.2)
    worker = stack.pid("worker")
    tree = [worker, *_descendants(worker)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = time.monotonic()
    touched = sorted(n for n in PROD if current_version(fleet_paths, hosts[n]) == NEW)
    print(f"\n[celery] killed the worker (pids {tree}) during {target}; hosts on {NEW}: {touched}")

    restarted = stack.run_script("run.sh")  # make run-celery again: starts what is not running, the worker
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert "worker: pid" in restarted.stdout and "api-server is already running" in restarted.stdout, restarted.stdout
    assert stack.pid("worker") != worker

    assert wait_for_run(stack, run_id) == "failed", diagnose(stack, run_id)
    print(f"[celery] the run ended {time.monotonic() - killed_at:.0f} s after the kill")
    states = {t: ti["state"] for t, ti in tis(stack, run_id).items()}
    assert states[target] == "failed" and states["rollback"] == "success", states
    assert states["wave_1.deploy"] == "success" and states["wave_3.deploy"] != "success", states

    # Every production host on one known version: the one before the release, read over SSH and on /health.
    assert production(stack) == dict.fromkeys(PROD, (OLD, OLD))
    ran_once(stack, run_id)  # the killed try was not run again, by the restarted worker or either scheduler

    # The ledger: every stage that ran once, the interrupted one failed; one row per host it moved, each rolled back.
    # The killed task's stage is closed by its failure callback, which Airflow runs in the dag-processor
    # after the scheduler has failed the task: on its own time, possibly after the run has ended.
    deadline = time.monotonic() + 180
    while True:
        release = ledger_release(stack, run_id)
        closing = [s for s in release["stages"] if s["stage"] == target and s["status"] == "running"]
        if not closing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert release["status"] == "failed"
    stages = {s["stage"]: s for s in release["stages"]}
    assert len(stages) == len(release["stages"])
    recorded = {"validate", "build", "audit", "replica.deploy", "replica.populate", "tests", "plan", "wave_1.deploy",
                "wave_1.analysis", target, "rollback"}  # the tasks of this run that keep a stage row
    lost = sorted(recorded - set(stages))
    assert not lost, f"stages that ran but have no ledger row: {lost}; rows: {sorted(stages)}"
    ran = {t for t, s in states.items() if s in ("success", "failed")}
    assert set(stages) <= ran, f"ledger rows of stages that never ran: {sorted(set(stages) - ran)}"
    assert stages[target]["status"] == "failed", stages[target]
    assert stages["rollback"]["status"] == "success", stages["rollback"]
    assert len({h["host"] for h in release["hosts"]}) == len(release["hosts"])
    moved = {h["host"]: (h["from_version"], h["to_version"]) for h in release["hosts"] if h["host"] in PROD}
    assert set(touched) <= set(moved) and all(v == (OLD, NEW) for v in moved.values()), (touched, moved)
    rolled = {r["host"]: r for r in release["rollbacks"]}
    assert len(rolled) == len(release["rollbacks"]), release["rollbacks"]
    assert set(touched) <= set(rolled) <= set(moved), (touched, moved, release["rollbacks"])
    assert {r["to_version"] for r in rolled.values()} == {OLD}

    # What happened, where people look: the try's log (REST) stops mid-deploy, Airflow's event log says why.
    log = task_log(stack, run_id, target)
    assert f"Deploying {NEW} to wave-2" in log, log[-3000:]
    assert f"wave-2 healthy on {NEW}" not in log, log[-3000:]
    events = admin(stack).call("GET", "/api/v2/eventLogs", query={"dag_id": DAG_ID, "run_id": run_id,
                                                                   "task_id": target, "event": "heartbeat timeout"})
    [event] = events["event_logs"]
    assert f"Task did not emit heartbeat within time limit ({HEARTBEAT_TIMEOUT_S} seconds)" in event["extra"], event
    assert "Rollback:" in task_log(stack, run_id, "rollback")
    print(f"[celery] the interrupted releases took {time.monotonic() - started:.0f} s")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out
