"""A real Airflow (scheduler, dag-processor, triggerer, API server) for tests that go through its REST API.

``airflow_server`` (module scope) starts the four components as subprocesses, the way
``airflow standalone`` does (LocalExecutor, SQLite), in a private ``AIRFLOW_HOME`` with its own
database, this project's ``dags/`` and ``plugins/``, SimpleAuthManager with the users
``admin, dev, qa1, qa2, qa3, mgr1, client1, ops`` and the read-only service user ``conveyor`` (passwords written
beforehand to the file named by ``[core] simple_auth_manager_passwords_file``), on a free port, the
``conveyor_airflow_api`` connection (the production gate reads the run's Required Actions through
this very API as ``conveyor``, as ``make run`` sets it up), and the e2e environment of
``release_env``: the fleet's SSH connection, ``CONVEYOR_HOME`` and a copy of the fast service files
(``CONVEYOR_SERVICES_DIR``; every component reads it, the dag-processor at parse time and the task
processes at run time). Scheduler intervals are shortened so runs move quickly. The API server
and dag-processor boot while the fleet starts; the scheduler and triggerer once its connection exists.

At the end it stops every process it started (each component in its own process group, plus
anything that inherited the server's marker variable) and fails if one is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conveyor.signoff_client import SignoffClient, SignoffError, settle_delay
from conveyor_lab.fleet.spec import free_ports

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "release_demo_shop"
USERS = {"admin": "admin", "dev": "user", "qa1": "user", "qa2": "user", "qa3": "user", "mgr1": "user",
         "client1": "user", "ops": "user", "conveyor": "viewer"}  # conveyor: the production gate's service user (reads Required Actions)
GATE_USER = "conveyor"
EARLY_COMPONENTS = ("api-server", "dag-processor")  # need neither the fleet nor its connection
LATE_COMPONENTS = ("scheduler", "triggerer")  # run the tasks and triggers: need the fleet's connection
COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")  # stopped in reverse order
MARKER = "CONVEYOR_TEST_AIRFLOW"
SETTLE = 4.0  # seconds; the module's Airflow reaps parked tasks and loops within about a second

#: Shorter loops than Airflow's defaults, so a run does not wait on the scheduler.
FAST_CONFIG = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
    "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",  # also the awaiting_input timeout sweep
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "60",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
    "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    # The task supervisor notices its process exited within this many seconds (it waits in select()
    # for up to this long); a short wait keeps the window of Airflow's answer-right-after-parking
    # race (see conveyor.signoff_client.SETTLE_S) to about a second.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    "AIRFLOW__API__WORKERS": "1",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def marked_processes(marker_value: str) -> list[int]:
    """Every live process whose environment carries ``MARKER=marker_value`` (ours, and their children)."""
    needle = f"{MARKER}={marker_value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


@dataclass
class AirflowServer:
    home: Path
    port: int
    env: dict[str, str]
    services_dir: Path
    passwords: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- clients ---------------------------------------------------------------------------------------
    def client(self, user: str | None = None) -> SignoffClient:
        """An API client, logged in as ``user`` when given."""
        client = SignoffClient(api=self.url, timeout=60)
        if user:
            client.login(user, self.passwords[user])
        return client

    def cli_env(self, user: str) -> dict[str, str]:
        """Environment for ``conveyor approve|reject`` as ``user`` (password in ``CONVEYOR_PASSWORD``)."""
        return {**os.environ, "CONVEYOR_PASSWORD": self.passwords[user]}

    # -- lifecycle -------------------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def launch(self, names: tuple[str, ...], extra_env: dict[str, str] | None = None) -> None:
        """Start components (each in its own process group, output in ``component-logs/<name>.log``)."""
        logs = self.home / "component-logs"
        logs.mkdir(exist_ok=True)
        env = {**self.env, **(extra_env or {})}
        for name in names:
            with open(logs / f"{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", name], env=env, cwd=self.home, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the API answers, the scheduler and dag-processor are healthy and the DAG is parsed and unpaused."""
        deadline = time.monotonic() + timeout
        self._wait(deadline, "the API server to answer", self._api_up)
        admin = self.client("admin")
        self._wait(deadline, "the scheduler and dag-processor to be healthy", lambda: self._healthy(admin))
        self._wait(deadline, f"{DAG_ID} to be parsed", lambda: self._dag(admin) is not None)
        if self._dag(admin).get("is_paused"):
            admin.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}, what="unpausing")
        errors = admin.call("GET", "/api/v2/importErrors")
        assert not errors.get("import_errors"), errors

    def _wait(self, deadline: float, what: str, ready) -> None:
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"Airflow component(s) exited {dead} while waiting for {what}:\n"
                                   + self.log_tails())
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n" + self.log_tails())

    def _api_up(self) -> bool:
        status, _ = SignoffClient(api=self.url, timeout=5).request("GET", "/api/v2/monitor/health", auth=False)
        return status == 200

    @staticmethod
    def _healthy(admin: SignoffClient) -> bool:
        health = admin.call("GET", "/api/v2/monitor/health")
        return all((health.get(c) or {}).get("status") == "healthy" for c in ("metadatabase", "scheduler",
                                                                              "dag_processor"))

    @staticmethod
    def _dag(admin: SignoffClient) -> dict | None:
        status, data = admin.request("GET", f"/api/v2/dags/{DAG_ID}")
        return data if status == 200 else None

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in COMPONENTS:
            path = self.home / "component-logs" / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} ({path}) ---\n" + "\n".join(tail))
        return "\n".join(out)

    def task_log(self, run_id: str, task_id: str, dag_id: str = DAG_ID) -> str:
        """The task's log files (all tries), for assertion messages."""
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(base.rglob("*.log"))) if base.exists() \
            else f"(no log under {base})"

    def stop(self) -> list[int]:
        """Stop everything this server started; returns the pids still alive afterwards (should be none)."""
        marker = self.env[MARKER]
        for name in reversed(COMPONENTS):  # the API server first, the scheduler last
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while time.monotonic() < deadline and marked_processes(marker):
            time.sleep(0.3)
        for proc in self.procs.values():  # the process groups, then stragglers carrying our marker
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for pid in marked_processes(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        return marked_processes(marker)

    # -- service files ---------------------------------------------------------------------------------
    @contextmanager
    def service_override(self, **sections) -> Iterator[Path]:
        """Change the server's ``demo_shop.yaml`` (e.g. ``qa={"timeout": "20s"}``) for the block.

        Task processes read the service file when they start, and the dag-processor on its next
        parse; both see the same file. The original is put back at the end.
        """
        path = self.services_dir / "demo_shop.yaml"
        original = path.read_text()
        spec = yaml.safe_load(original)
        for section, values in sections.items():
            spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        try:
            yield path
        finally:
            path.write_text(original)


# -- runs through the API ------------------------------------------------------------------------------
def trigger(server: AirflowServer, git_ref: str | None = None, user: str = "dev", dag_id: str = DAG_ID,
            **conf) -> str:
    """Trigger ``dag_id`` as ``user`` with ``conf`` (and ``git_ref`` when given); returns the run id."""
    if git_ref is not None:
        conf = {"git_ref": git_ref, **conf}
    # SQLite under a busy scheduler can answer "database is locked" (HTTP 500, nothing created): retry.
    for attempt in range(3):
        try:
            run = server.client(user).trigger(dag_id, conf)
            break
        except SignoffError as e:
            if e.status != 500 or attempt == 2:
                raise
            time.sleep(2)
    assert run["triggering_user_name"] == user
    return run["dag_run_id"]


def task_states(server: AirflowServer, run_id: str, dag_id: str = DAG_ID) -> dict[str, str]:
    data = server.client("admin").call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                                       query={"limit": 200})
    return {ti["task_id"]: ti["state"] for ti in data["task_instances"]}


def diagnose(server: AirflowServer, run_id: str, dag_id: str = DAG_ID) -> str:
    states = task_states(server, run_id, dag_id)
    failed = [t for t, s in states.items() if s == "failed" and t != "fail_run"]
    logs = "\n".join(f"=== {t} ===\n{server.task_log(run_id, t, dag_id)[-3000:]}" for t in failed)
    return f"{dag_id} {run_id}: task states: {sorted(states.items())}\n{logs}"


def wait_for_run(server: AirflowServer, run_id: str, timeout: float = 600, dag_id: str = DAG_ID) -> str:
    admin = server.client("admin")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = admin.dag_run(dag_id, run_id)["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} still not finished after {timeout}s; " + diagnose(server, run_id, dag_id))


def wait_for_approval(server: AirflowServer, run_id: str, task_id: str, timeout: float = 420,
                      dag_id: str = DAG_ID) -> dict:
    """The Required Action of ``task_id`` once the task is parked waiting for an answer.

    Returns once the request is a few seconds old, like ``conveyor approve`` does
    (``conveyor.signoff_client.SETTLE_S``): an answer within a scheduler loop of the task parking
    hits an Airflow 3.3.2 race that fails the resumed task.
    """
    admin = server.client("admin")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for detail in admin.hitl_details(dag_id, run_id, pending=True):
            ti = detail["task_instance"]
            if ti["task_id"] == task_id and ti["state"] == "awaiting_input":
                time.sleep(settle_delay(detail, SETTLE))
                return detail
        if admin.dag_run(dag_id, run_id)["state"] in ("success", "failed"):
            raise AssertionError(f"run {run_id} ended before {task_id} asked for sign-off; "
                                 + diagnose(server, run_id, dag_id))
        time.sleep(1)
    raise AssertionError(f"{task_id} of {run_id} not awaiting input after {timeout}s; "
                         + diagnose(server, run_id, dag_id))


def answer(server: AirflowServer, user: str, run_id: str, task_id: str, option: str,
           reason: str | None = None, params_input: dict | None = None, dag_id: str = DAG_ID) -> tuple[int, dict]:
    """``PATCH .../hitlDetails`` as ``user``; returns Airflow's status and body."""
    if params_input is None:
        params_input = {"reason": reason} if reason else {}
    return server.client(user).request(
        "PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
        {"chosen_options": [option], "params_input": params_input},
    )


def server_env(home: Path, port: int, services_dir: Path, passwords_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k not in ("AIRFLOW_HOME",)}
    env.update({
        MARKER: uuid.uuid4().hex,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": r"(airflow|conveyor)\..*",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "CONVEYOR_SERVICES_DIR": str(services_dir),
        "PYTHONUNBUFFERED": "1",
        **FAST_CONFIG,
    })
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    env.pop("AIRFLOW_CONN_CONVEYOR_FLEET", None)  # given to the scheduler and triggerer once the fleet is up
    assert env.get("CONVEYOR_HOME"), "CONVEYOR_HOME must be set (tests/conftest.py does it)"
    return env


def prepare_airflow_server(base: Path, services_src: Path) -> AirflowServer:
    """A server under ``base`` (its AIRFLOW_HOME) with a copy of the service files in ``services_src``,
    its database migrated, not started."""
    home = base / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    services_dir = base / "services"
    shutil.copytree(services_src, services_dir, dirs_exist_ok=True)
    passwords = {u: f"{u}-{secrets.token_hex(4)}" for u in USERS}
    passwords_file = home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    [port] = free_ports(1)
    env = server_env(home, port, services_dir, passwords_file)
    # The production gate cross-checks the sign-off with Airflow's own records through this API.
    env["AIRFLOW_CONN_CONVEYOR_AIRFLOW_API"] = json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{port}", "login": GATE_USER, "password": passwords[GATE_USER]})
    server = AirflowServer(home=home, port=port, env=env, services_dir=services_dir, passwords=passwords)
    server.airflow("db", "migrate")
    return server


@pytest.fixture(scope="module")
def airflow_server(e2e_services, session_dir, request) -> Iterator[AirflowServer]:
    """A running Airflow for this module, on the e2e fleet and service files; stopped at the end.

    The API server and dag-processor boot while the local fleet starts (``release_env``); the
    scheduler (whose task processes deploy over SSH) and the triggerer start once the fleet's
    connection exists. Its home is under the test session's directory (not pytest's ``tmp_path``,
    whose old numbered directories other pytest runs on the machine delete), so logs stay readable
    after a failure.
    """
    import tempfile

    server = prepare_airflow_server(Path(tempfile.mkdtemp(prefix="airflow-server-", dir=session_dir)), e2e_services)
    try:
        server.launch(EARLY_COMPONENTS)
        request.getfixturevalue("release_env")  # the fleet, AIRFLOW_CONN_CONVEYOR_FLEET
        server.env["AIRFLOW_CONN_CONVEYOR_FLEET"] = os.environ["AIRFLOW_CONN_CONVEYOR_FLEET"]
        server.launch(LATE_COMPONENTS)
        server.wait_ready()
        yield server
    finally:
        left = server.stop()
        assert not left, f"Airflow processes left behind: {left}"
