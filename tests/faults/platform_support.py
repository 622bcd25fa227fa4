"""What the platform fault scenarios (tests/faults/test_platform.py) share: the truth about hosts read
without Conveyor, the faulty platform pieces (a Slack answering 500, an S3 on moto's server that is
stopped, a PostgreSQL ledger that stops taking connections), and a task run in its own process so it
can be killed mid-step.

A task killed with SIGKILL is a task process: ``python -m tests.faults.platform_support <spec.json>``
runs one operator's ``execute`` with the context of a task try (the same one the operator tests build),
in the environment of the test (the fleet's SSH connection, the ledger's connection, the service files).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROD = [f"prod-{i}" for i in range(1, 7)]
REPLICAS = ["replica-1", "replica-2"]


# ------------------------------------------------------------------------- the truth about hosts
def health_version(url: str) -> str | None:
    """The version a host's /health answers (plain urllib, not Conveyor's probe); None when not 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read(65536)).get("version") if resp.status == 200 else None
    except Exception:  # no answer, an error status, not JSON: not serving
        return None


def truth(fleet, names: list[str] | None = None) -> dict[str, tuple[str | None, str | None]]:
    """Per host: (the version ``app/current`` names on its disk, the version its /health serves)."""
    from tests.conveyor.hooks.fleet_support import current_link, hosts

    by_name = hosts()
    return {n: (current_link(fleet, n), health_version(by_name[n].health_url)) for n in (names or PROD)}


def on_version(fleet, version: str, names: list[str] | None = None) -> dict[str, tuple[str | None, str | None]]:
    """The hosts (production by default) NOT on ``version`` on disk and on /health: empty when all are."""
    return {n: t for n, t in truth(fleet, names).items() if t != (version, version)}


# ------------------------------------------------------------------------------- the ledger's rows
def rows(release: dict[str, Any] | None, table: str, key: str) -> dict[str, dict[str, Any]]:
    """A release's rows of ``table`` (``hosts``, ``rollbacks``, ``stages``...) by ``key``; a key seen twice
    fails here (a duplicated row)."""
    found: dict[str, dict[str, Any]] = {}
    for row in (release or {}).get(table, []):
        assert row[key] not in found, f"duplicated {table} row for {row[key]}: {found[row[key]]} and {row}"
        found[row[key]] = row
    return found


# --------------------------------------------------------------------------------- service files
def release_service(directory: Path, **sections: Any) -> Path:
    """The demo's service file for a whole ``dag.test()`` release: the fast deploy of the fleet tests, the
    e2e tests' short bake windows and releasers, no dependency audit (it needs the lab's OSV server and is
    not what these scenarios are about), then ``sections`` (merged into a section given as a dict)."""
    from tests.conveyor.hooks.fleet_support import write_service
    from tests.e2e.conftest import FAST

    path = write_service(directory)
    spec = yaml.safe_load(path.read_text())
    spec.pop("audit", None)
    for section, values in {**FAST, **sections}.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def edit_service(directory: Path, **sections: Any) -> Path:
    """Change sections of ``<directory>/demo_shop.yaml`` (a dict merges into the section; None removes it)."""
    path = directory / "demo_shop.yaml"
    spec = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        if values is None:
            spec.pop(section, None)
        else:
            spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ Slack, down
class FailingWebhook:
    """A Slack incoming-webhook endpoint on 127.0.0.1 that answers 500 to every POST and keeps what it got."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts.append({"path": self.path, "json": json.loads(body or b"{}")})
                self.send_response(500)
                self.send_header("Content-Length", "14")
                self.end_headers()
                self.wfile.write(b"internal_error")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def connection(self) -> str:
        """A ``slackwebhook`` connection to this endpoint (for ``AIRFLOW_CONN_<ID>``)."""
        return json.dumps({"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{self.server.server_port}/services",
                           "password": "T000/B000/XYZ"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------- S3 on moto's server
class MotoS3:
    """moto's S3 server on a fixed free port of 127.0.0.1: ``stop()`` takes it down (connection refused),
    ``start()`` brings it back on the same port with what it held (moto keeps its state in the process)."""

    def __init__(self) -> None:
        from conveyor_lab.fleet.spec import free_ports

        [self.port] = free_ports(1)
        self.server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        import boto3

        return boto3.client("s3", region_name="us-east-1", endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def connection(self) -> str:
        """An ``aws`` connection to this server (for ``AIRFLOW_CONN_<ID>``)."""
        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                           "extra": {"region_name": "us-east-1", "endpoint_url": self.endpoint}})


# ------------------------------------------------------------------ PostgreSQL, not taking connections
PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextmanager
def database_down(name: str) -> Iterator[None]:
    """The database ``name`` refuses every new connection and its open ones are cut, for the block
    (``ALLOW_CONNECTIONS false`` and ``pg_terminate_backend``: what clients see of a database that went
    away). It takes connections again afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name "
                                 "AND pid <> pg_backend_pid()"), {"name": name})
        yield
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.dispose()


# -------------------------------------------------------------------- a task in its own process
def start_task(spec: dict[str, Any], directory: Path) -> tuple[subprocess.Popen, Path]:
    """Run one operator (``spec``: see :func:`main`) in a new process; returns it and its output file."""
    spec_file = directory / f"task-{time.monotonic_ns()}.json"
    spec_file.write_text(json.dumps(spec))
    output = spec_file.with_suffix(".log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(output, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults.platform_support", str(spec_file)], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc, output


def kill_when(proc: subprocess.Popen, output: Path, condition: Callable[[], bool], within: float = 120) -> None:
    """SIGKILL the task process (its whole process group) as soon as ``condition()`` holds.

    Fails the test if the process ended first (the fault was never injected) or the condition never came.
    """
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if condition():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            if proc.poll() is not None:
                raise AssertionError(f"the task ended (exit {proc.returncode}) before it could be killed mid-step:\n"
                                     + output.read_text(errors="replace")[-3000:])
            time.sleep(0.01)
        raise AssertionError(f"the moment to kill the task never came within {within}s:\n"
                             + output.read_text(errors="replace")[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class _XComs:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> Any:
        return self.values.get(task_ids)


def main(argv: list[str]) -> int:
    """Run the operator a spec file describes: ``{"operator": "deploy"|"rollback", "task_id", "run_id",
    "ledger_conn_id", "artifact", "plan", "wave", "xcoms"}``."""
    spec = json.loads(Path(argv[0]).read_text())
    from conveyor.operators.deploy import DeployOperator, RollbackOperator

    common = {"task_id": spec["task_id"], "service_id": "demo_shop", "ledger_conn_id": spec["ledger_conn_id"]}
    if spec["operator"] == "deploy":
        op = DeployOperator(artifact=spec["artifact"], environment="production", plan=spec["plan"], wave=spec["wave"],
                            **common)
    else:
        op = RollbackOperator(plan_task_id="plan", **common)
    dag_run = SimpleNamespace(run_id=spec["run_id"], dag_id="release_demo_shop", triggering_user_name="dev")
    result = op.execute({"dag_run": dag_run, "ti": _XComs(spec.get("xcoms") or {}), "params": {}})
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
