"""The Unleash flag store against a real Unleash server (``unleash-server`` from npm, run by node on the
local PostgreSQL in a database of its own). Run by ``make test-services``, which installs the server
into ``.cache/unleash``; without node, the server or PostgreSQL these tests fail, saying which."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor.flags import FlagState, FlagStoreError, InvalidFlagError
from conveyor.hooks.flags import UnleashFlagStore, UnleashHook
from conveyor.paths import PROJECT_ROOT

pytestmark = pytest.mark.services

UNLEASH_DIR = Path(os.environ.get("CONVEYOR_UNLEASH_DIR") or Path(PROJECT_ROOT) / ".cache" / "unleash")
SERVER_MODULE = UNLEASH_DIR / "node_modules" / "unleash-server" / "dist" / "lib" / "server-impl.js"
PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TOKEN = f"*:*.conveyor-test-{uuid.uuid4().hex}"  # an admin token (project *, environment *)
START_S = 120  # the first start migrates an empty database
# unleash-server is an ES module: import it, start it, exit on a failed start.
STARTER = """
const server = await import(process.env.UNLEASH_MODULE);
try {
  await (server.start ?? server.default.start)({
    db: {host: '127.0.0.1', port: 5432, user: 'postgres', password: '', database: process.env.UNLEASH_DB, ssl: false},
    server: {host: '127.0.0.1', port: Number(process.env.UNLEASH_PORT)},
  });
} catch (e) { console.error(e); process.exit(1); }
"""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return json.loads(resp.read()).get("health") == "GOOD"
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def unleash_server(tmp_path_factory):
    """A running Unleash server on a fresh PostgreSQL database; yields its base URL. Stopped, and the
    database dropped, at the end of the session."""
    from conveyor_lab.fleet.spec import free_ports

    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Unleash tests run unleash-server with node (Node 20)")
    if not SERVER_MODULE.exists():
        pytest.fail(f"unleash-server is not installed in {UNLEASH_DIR}: run `make test-services` (or `make unleash`)")
    database = f"conveyor_unleash_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc.orig})")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("unleash") / "unleash.log"
    env = {**os.environ, "UNLEASH_MODULE": str(SERVER_MODULE), "UNLEASH_DB": database, "UNLEASH_PORT": str(port),
           "INIT_ADMIN_API_TOKENS": TOKEN, "LOG_LEVEL": "warn"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([node, "--input-type=module", "-e", STARTER], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=UNLEASH_DIR)
    try:
        deadline = time.monotonic() + START_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not healthy after {START_S} s"
                pytest.fail(f"unleash-server {why}; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def store(unleash_server, monkeypatch):
    port = int(unleash_server.rsplit(":", 1)[1])
    monkeypatch.setenv("AIRFLOW_CONN_UNLEASH_TEST",
                       json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "password": TOKEN}))
    return UnleashFlagStore(UnleashHook("unleash_test"), project="default",
                            environments={"replica": "development", "production": "production"})


def test_connection_checks_the_token(store, unleash_server, monkeypatch):
    assert store.hook.test_connection() == (True, "Unleash answers and accepts the token")
    monkeypatch.setenv("AIRFLOW_CONN_UNLEASH_BAD", json.dumps({"conn_type": "http", "host": unleash_server,
                                                               "password": "*:*.not-a-token"}))
    ok, message = UnleashHook("unleash_bad").test_connection()
    assert not ok and "refuses the token" in message


def test_flag_on_then_gradual_share_then_off(store):
    flag = f"checkout_{uuid.uuid4().hex[:8]}"  # the session's server is shared: a flag of this test's own
    assert store.get(flag, environment="production") == FlagState(flag)  # not created yet: off

    assert store.set(flag, True, 100, environment="production") == FlagState(flag, True, 100)
    assert store.get(flag, environment="replica") == FlagState(flag)  # other environments untouched

    assert store.set(flag, True, 25, environment="production") == FlagState(flag, True, 25)
    status, strategies = store.hook.call(
        "GET", f"/api/admin/projects/default/features/{flag}/environments/production/strategies")
    assert status == 200
    assert [(s["name"], s["parameters"]) for s in strategies] == [
        ("flexibleRollout", {"rollout": "25", "stickiness": "userId", "groupId": flag})]

    assert store.set(flag, False, 25, environment="production") == FlagState(flag, False, 25)
    status, feature = store.hook.call("GET", f"/api/admin/projects/default/features/{flag}")
    assert {e["name"]: e["enabled"] for e in feature["environments"]} == {"development": False, "production": False}


def test_strategies_added_outside_conveyor_are_replaced_by_one_rollout(store):
    flag = f"recs_{uuid.uuid4().hex[:8]}"
    store.set(flag, True, 10, environment="production")
    path = f"/api/admin/projects/default/features/{flag}/environments/production/strategies"
    status, _ = store.hook.call("POST", path, {"name": "default", "parameters": {}})
    assert status == 200
    with pytest.raises(FlagStoreError, match="not one gradual rollout"):
        store.get(flag, environment="production")
    assert store.set(flag, True, 50, environment="production") == FlagState(flag, True, 50)
    assert [s["name"] for s in store.hook.call("GET", path)[1]] == ["flexibleRollout"]


def test_bad_input_is_refused_before_any_call(store):
    with pytest.raises(InvalidFlagError):
        store.set("new-checkout; drop", True, 10, environment="production")
    with pytest.raises(InvalidFlagError):
        store.set("new_checkout", True, 120, environment="production")
    with pytest.raises(FlagStoreError, match="no Unleash environment for 'soak'"):
        store.get("new_checkout", environment="soak")

