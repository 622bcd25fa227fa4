"""The local fleet: real SSH servers on loopback, reached through Airflow's own SSHHook (paramiko).

The session fleet (``local_fleet``) runs on ports chosen at run time under the test session's
CONVEYOR_HOME, so it never meets the fleet of ``make run``. Tests that stop a fleet use their own
small one.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import paramiko
import pytest

from conveyor.exceptions import InvalidInputError
from conveyor_lab.fleet import Fleet, FleetError, FleetSpec, procs
from conveyor_lab.fleet.layout import host_env
from conveyor_lab.fleet.traffic import TrafficGenerator
from tests.fleet_fixtures import fleet_processes, free_fleet_spec, local_fleet, stop_and_check  # noqa: F401

CONN_ID = "conveyor_fleet"


@pytest.fixture
def fleet_conn(local_fleet, monkeypatch):  # noqa: F811
    """The fleet's Airflow connection, as ``make run`` exports it."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", local_fleet.connection_uri())
    return local_fleet


def ssh_hook(fleet, host_name: str, **kwargs):
    from airflow.providers.ssh.hooks.ssh import SSHHook

    host = fleet.spec.host(host_name)
    return SSHHook(ssh_conn_id=CONN_ID, remote_host=host.address, port=host.ssh_port, conn_timeout=10,
                   conn_retry_attempts=1, keepalive_interval=0, **kwargs)


def run(hook, command: str) -> tuple[int, str, str]:
    with hook.get_conn() as client:
        status, out, err = hook.exec_ssh_client_command(client, command, get_pty=False, environment=None,
                                                        timeout=30)
    return status, out.decode(), err.decode()


def requests_served(url: str) -> float:
    """The app's ``shop_http_requests_total`` summed over every label set, read from ``url`` (/metrics)."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("shop_http_requests_total{"))


def other_key(tmp_path, name: str) -> tuple[str, str]:
    """A fresh ed25519 key pair: (private key file, ``ssh-ed25519 AAAA...``)."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / name
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return str(path), " ".join(key.export_public_key("openssh").decode().split()[:2])


# ------------------------------------------------------------------------------- up / status


def test_every_host_is_up_and_healthy_on_the_seed_version(local_fleet):  # noqa: F811
    rows = local_fleet.status()
    assert [r["name"] for r in rows] == ["replica-1", "replica-2", *(f"prod-{i}" for i in range(1, 7)), "dev-1", "dev-2"]
    assert [r["address"] for r in rows] == ["127.0.0.11", "127.0.0.12", *(f"127.0.0.2{i}" for i in range(1, 7)),
                                            "127.0.0.31", "127.0.0.32"]
    for row in rows:
        assert row["version"] == "v1.0.0", row
        assert row["app_alive"], row
        assert row["health"]["status"] == "ok", row
        assert row["health"]["version"] == "v1.0.0", row
    assert {r["environment"] for r in rows[:2]} == {"replica"}
    assert {r["environment"] for r in rows[2:8]} == {"production"}
    assert {r["environment"] for r in rows[8:]} == {"soak"}


def test_state_files_follow_the_documented_layout(local_fleet):  # noqa: F811
    home = local_fleet.home
    inventory = json.loads(local_fleet.inventory_path.read_text())
    assert inventory["username"] == local_fleet.spec.username
    assert inventory["client_key"] == str(home / "id_ed25519")
    assert inventory["host_key"].startswith("ssh-ed25519 AAAA")
    assert len(inventory["host_key"].split()) == 2
    first = inventory["hosts"][0]
    spec = local_fleet.spec
    assert first == {
        "name": "replica-1", "environment": "replica", "address": "127.0.0.11", "ssh_port": spec.ssh_port,
        "app_root": "app", "restart": "bin/restart", "health_url": f"http://127.0.0.11:{spec.app_port}/health",
        "metrics_url": f"http://127.0.0.11:{spec.app_port}/metrics",
    }
    assert stat.S_IMODE((home / "id_ed25519").stat().st_mode) == 0o600
    assert json.loads((home / "spec.json").read_text())["ssh_port"] == spec.ssh_port
    prod = home / "hosts" / "prod-1"
    assert os.readlink(prod / "app" / "current") == "releases/v1.0.0"
    assert (prod / "app" / "releases" / "v1.0.0" / ".conveyor-sha256").is_file()
    assert (prod / ".conveyor" / "conveyor-remote.sh").is_file()
    assert os.access(prod / "bin" / "restart", os.X_OK)


def test_the_inventory_is_what_conveyor_resolves_for_the_demo(local_fleet):  # noqa: F811
    from conveyor.config import load_service
    from conveyor.inventory import resolve_hosts

    service = load_service("demo_shop")
    production = resolve_hosts(service, "production")
    assert [h.name for h in production] == [f"prod-{i}" for i in range(1, 7)]
    assert production[0].ssh_port == local_fleet.spec.ssh_port
    assert production[0].health_url == local_fleet.spec.host("prod-1").health_url


def test_up_again_is_a_no_op(local_fleet, capsys):  # noqa: F811
    before = local_fleet.pids()
    local_fleet.up()
    assert "already running" in capsys.readouterr().out
    assert local_fleet.pids() == before


def test_traffic_reaches_every_host(local_fleet):  # noqa: F811
    urls = [h.metrics_url for h in local_fleet.hosts()]
    first = [requests_served(u) for u in urls]
    time.sleep(1.5)
    second = [requests_served(u) for u in urls]
    assert all(b > a for a, b in zip(first, second, strict=True)), (first, second)


# --------------------------------------------------------------------------------- SSH exec


def test_sshhook_runs_commands_as_the_host(fleet_conn):
    host = fleet_conn.spec.host("prod-3")
    home = fleet_conn.home / "hosts" / "prod-3"
    status, out, err = run(ssh_hook(fleet_conn, "prod-3"), (
        'printf "%s\\n" "$HOME" "$PWD" "$USER" "$CONVEYOR_HOST_ADDRESS" "$CONVEYOR_APP_PORT"; '
        'python -c "import pytest, sys; print(sys.prefix)"; echo to-stderr >&2; exit 7'
    ))
    assert status == 7
    lines = out.splitlines()
    assert lines[:5] == [str(home), str(home), fleet_conn.spec.username, host.address, str(host.app_port)]
    assert lines[5] == os.path.dirname(os.path.dirname(fleet_conn.spec.python))  # the venv's python
    assert err == "to-stderr\n"


def test_stdin_and_binary_output_pass_through(fleet_conn):
    hook = ssh_hook(fleet_conn, "replica-1")
    payload = bytes(range(256)) * 1000
    with hook.get_conn() as client:
        stdin, stdout, stderr = client.exec_command("cat")
        stdin.write(payload)
        stdin.channel.shutdown_write()
        assert stdout.read() == payload
        assert stdout.channel.recv_exit_status() == 0


def test_the_remote_script_runs_through_the_fleet_hook(fleet_conn):
    from conveyor.hooks.fleet import FleetHook
    from conveyor.inventory import Host

    spec = fleet_conn.spec.host("prod-2")
    host = Host(name=spec.name, environment=spec.environment, address=spec.address, ssh_port=spec.ssh_port)
    with FleetHook(CONN_ID).session(host) as session:
        result = session.remote("current", "app")  # installs the script first if the host's copy differs
    assert result.ok, result.describe()
    assert result.stdout.strip() == "v1.0.0"


def test_restart_over_ssh_replaces_the_app(fleet_conn):
    host = fleet_conn.spec.host("replica-2")
    before = fleet_conn.app_pid(host)
    status, out, err = run(ssh_hook(fleet_conn, "replica-2"), "bin/restart")
    assert status == 0, err
    assert "started v1.0.0" in out
    after = fleet_conn.app_pid(host)
    assert after
    assert after != before
    assert not procs.alive(before)
    fleet_conn.wait_healthy([host], timeout=15)


# ------------------------------------------------------------------------------------- SFTP


def test_sftp_is_chrooted_to_the_host_home(fleet_conn, tmp_path):
    home = fleet_conn.home / "hosts" / "prod-4"
    local = tmp_path / "payload.txt"
    local.write_text("hello")
    with ssh_hook(fleet_conn, "prod-4").get_conn() as client:
        sftp = client.open_sftp()
        sftp.put(str(local), ".conveyor/payload.part")
        sftp.rename(".conveyor/payload.part", ".conveyor/payload.txt")
        assert (home / ".conveyor" / "payload.txt").read_text() == "hello"
        assert sorted(sftp.listdir("/")) == sorted(sftp.listdir("."))
        assert (fleet_conn.home / "hosts" / "prod-1" / "bin" / "restart").exists()
        with pytest.raises(FileNotFoundError):
            sftp.stat("../prod-1/bin/restart")  # another host's files are out of reach
        with pytest.raises(FileNotFoundError):
            sftp.stat("/etc/passwd")
        sftp.put(str(local), "../../escaped.txt")  # lands in the home, not two levels up
        sftp.close()
    assert (home / "escaped.txt").exists()
    assert not (fleet_conn.home / "escaped.txt").exists()
    assert not (fleet_conn.home / "hosts" / "escaped.txt").exists()
    (home / "escaped.txt").unlink()
    (home / ".conveyor" / "payload.txt").unlink()


# ------------------------------------------------------------------------------- refusals


def test_a_wrong_client_key_is_refused(fleet_conn, tmp_path):
    key_file, _ = other_key(tmp_path, "intruder")
    with pytest.raises(paramiko.AuthenticationException):
        ssh_hook(fleet_conn, "prod-1", key_file=key_file).get_conn()


def test_a_wrong_username_is_refused(fleet_conn):
    with pytest.raises(paramiko.AuthenticationException):
        ssh_hook(fleet_conn, "prod-1", username="root").get_conn()


def test_a_wrong_host_key_is_refused_by_sshhook(local_fleet, monkeypatch, tmp_path):  # noqa: F811
    _, impostor = other_key(tmp_path, "impostor")
    conn = json.loads(local_fleet.connection_uri())
    conn["extra"]["host_key"] = impostor
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_hook(local_fleet, "prod-1").get_conn()


# ------------------------------------------------------------------------- a fleet of its own


@pytest.fixture
def small_fleet(tmp_path):
    """A 1 replica + 1 production fleet in tmp_path, without traffic; stopped (and checked) at the end."""
    fleet = Fleet(free_fleet_spec(replicas=1, production=1, traffic_rate=0), home=tmp_path / "fleet",
                  echo=lambda line: None)
    yield fleet
    stop_and_check(fleet, fleet_processes(fleet))


def test_down_leaves_no_process_behind_and_up_restarts_the_hosts(small_fleet, monkeypatch):
    small_fleet.up(seed_version="v1.0.0")
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", small_fleet.connection_uri())
    # A process started over SSH that outlives its session: `down` must find it too.
    status, _, err = run(ssh_hook(small_fleet, "prod-1"), "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!")
    assert status == 0, err
    pids = fleet_processes(small_fleet)
    assert len(small_fleet.pids()) == 3  # the daemon and two apps
    assert len(pids) >= 4  # ... and the stray sleep

    small_fleet.down()
    assert not [p for p in pids if procs.alive(p)]
    assert small_fleet.leftover_processes() == []
    assert not small_fleet.running()
    assert not small_fleet.inventory_path.exists()
    assert not (small_fleet.home / "daemon.pid").exists()
    assert os.readlink(small_fleet.home / "hosts" / "prod-1" / "app" / "current") == "releases/v1.0.0"

    small_fleet.up()  # the hosts' files stay: each host starts again on its current version
    assert all(r["health"] and r["health"]["version"] == "v1.0.0" for r in small_fleet.status())

    small_fleet.down(purge=True)
    assert not small_fleet.home.exists()


def test_a_host_without_a_version_is_not_started(small_fleet, monkeypatch):
    small_fleet.up(seed_version=None)
    assert small_fleet.running()
    assert [r["version"] for r in small_fleet.status()] == [None, None]
    assert small_fleet.pids().keys() == {"daemon"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", small_fleet.connection_uri())
    status, _, err = run(ssh_hook(small_fleet, "replica-1"), "bin/restart")
    assert status == 1
    assert "app/current is missing" in err


def test_a_busy_port_fails_up_with_the_reason(small_fleet):
    import socket

    host = small_fleet.spec.hosts()[0]
    with socket.socket() as blocker:
        blocker.bind((host.address, host.ssh_port))
        blocker.listen()
        with pytest.raises(FleetError, match="cannot listen"):
            small_fleet.up(seed_version=None)
    assert not small_fleet.running()


def test_restart_never_kills_a_process_it_did_not_start(small_fleet):
    small_fleet.up(seed_version="v1.0.0")
    host = small_fleet.spec.host("prod-1")
    home = small_fleet.home / "hosts" / "prod-1"
    app = small_fleet.app_pid(host)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (home / "run" / "app.pid").write_text(f"{bystander.pid}\n")  # a stale pid file whose pid was reused
        subprocess.run(["bash", "bin/restart"], cwd=home, env=host_env(small_fleet.paths, small_fleet.spec, host),
                       capture_output=True, text=True, timeout=30)
        assert bystander.poll() is None, "bin/restart killed a process that is not the app"
        assert procs.alive(app)  # not recognisable from the pid file, so left alone (down finds it by marker)
    finally:
        bystander.kill()
        bystander.wait()


# ------------------------------------------------------------------------- the dev (soak) cluster


def test_the_default_fleet_has_a_two_host_soak_cluster_after_production():
    hosts = FleetSpec().hosts()
    assert [(h.name, h.environment, h.address) for h in hosts[-2:]] == [
        ("dev-1", "soak", "127.0.0.31"), ("dev-2", "soak", "127.0.0.32")]
    assert [h.environment for h in hosts] == ["replica"] * 2 + ["production"] * 6 + ["soak"] * 2
    assert FleetSpec().summary() == "2 replica, 6 production, 2 soak hosts"
    assert [h.name for h in FleetSpec(dev=0).hosts()] == ["replica-1", "replica-2", *(f"prod-{i}" for i in range(1, 7))]
    moved = FleetSpec(dev=3, dev_base="127.0.0.201")
    assert moved.host("dev-3").address == "127.0.0.203"


def test_a_spec_saved_before_the_dev_cluster_gains_it():
    """``spec.json`` of an older ``fleet up`` has no ``dev``: the next ``up`` starts the soak hosts too."""
    saved = {k: v for k, v in FleetSpec().to_dict().items() if k not in ("dev", "dev_base")}
    assert [h.name for h in FleetSpec.from_dict(saved).hosts()][-2:] == ["dev-1", "dev-2"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dev": -1}, "fleet dev: expected 0..50 hosts, got -1"),
    ({"dev": 51}, "fleet dev: expected 0..50 hosts, got 51"),
    ({"dev": "2"}, "fleet dev: expected 0..50 hosts, got '2'"),
    ({"dev_base": "127.0.0.25"}, "fleet addresses overlap: prod-5 and dev-1 are both on 127.0.0.25"),
    ({"dev_base": "127.0.0.12"}, "fleet addresses overlap: replica-2 and dev-1 are both on 127.0.0.12"),
    ({"dev_base": "dev.local"}, "fleet dev_base: 'dev.local' is not an IPv4 address"),
    ({"dev_base": "127.255.255.254"}, "fleet dev_base: 2 addresses from 127.255.255.254 leave"),
])
def test_bad_dev_cluster_input_is_refused_with_the_field(overrides, message):
    with pytest.raises(InvalidInputError) as refused:
        FleetSpec(**overrides)
    assert str(refused.value).startswith(message), refused.value


def test_an_overlap_message_names_every_base():
    with pytest.raises(InvalidInputError) as refused:
        FleetSpec(production=12)  # 127.0.0.21-32 runs into the dev cluster at 127.0.0.31
    assert str(refused.value) == (
        "fleet addresses overlap: prod-11 and dev-1 are both on 127.0.0.31 (2 replicas from replica_base "
        "127.0.0.11, 12 production from production_base 127.0.0.21, 2 dev from dev_base 127.0.0.31)")


@pytest.mark.parametrize(("to_replicas", "expected"), [
    (True, ["replica-1", "prod-1", "prod-2", "dev-1", "dev-2"]),
    (False, ["prod-1", "prod-2", "dev-1", "dev-2"]),
])
def test_traffic_goes_to_production_and_soak_always_and_to_replicas_on_request(to_replicas, expected):
    spec = FleetSpec(replicas=1, production=2, dev=2, traffic_to_replicas=to_replicas)
    assert [h.name for h in TrafficGenerator(spec).targets] == expected


def test_soak_hosts_are_configured_like_production(tmp_path):
    """The replica-only drift (``SHOP_PAYMENT_GATEWAY``) stays off the soak hosts, as in production."""
    spec = FleetSpec(replicas=1, production=1, dev=1)
    paths = Fleet(spec, home=tmp_path / "fleet").paths
    envs = {h.name: host_env(paths, spec, h) for h in spec.hosts()}
    assert envs["replica-1"]["SHOP_PAYMENT_GATEWAY"] == "sandbox"
    assert "SHOP_PAYMENT_GATEWAY" not in envs["prod-1"]
    assert "SHOP_PAYMENT_GATEWAY" not in envs["dev-1"]
    assert envs["dev-1"]["CONVEYOR_HOST_ENVIRONMENT"] == "soak"


@pytest.fixture
def soak_fleet(tmp_path):
    """1 replica, 1 production and the 2 dev (soak) hosts in tmp_path, with traffic to production and
    soak only; stopped (and checked) at the end."""
    fleet = Fleet(free_fleet_spec(replicas=1, production=1, dev=2, traffic_rate=5, traffic_to_replicas=False),
                  home=tmp_path / "fleet", echo=lambda line: None)
    yield fleet
    stop_and_check(fleet, fleet_processes(fleet))


def test_a_fleet_with_a_dev_cluster_lists_serves_and_loads_the_soak_hosts(soak_fleet):
    soak_fleet.up(seed_version="v1.0.0", wait=True)
    spec = soak_fleet.spec

    inventory = json.loads(soak_fleet.inventory_path.read_text())
    soak = [h for h in inventory["hosts"] if h["environment"] == "soak"]
    assert [h["name"] for h in inventory["hosts"]] == ["replica-1", "prod-1", "dev-1", "dev-2"]
    assert soak == [
        {"name": f"dev-{i}", "environment": "soak", "address": f"127.0.0.3{i}", "ssh_port": spec.ssh_port,
         "app_root": "app", "restart": "bin/restart", "health_url": f"http://127.0.0.3{i}:{spec.app_port}/health",
         "metrics_url": f"http://127.0.0.3{i}:{spec.app_port}/metrics"}
        for i in (1, 2)
    ]

    rows = {r["name"]: r for r in soak_fleet.status()}
    for name in ("dev-1", "dev-2"):
        assert rows[name]["environment"] == "soak"
        assert rows[name]["app_alive"], rows[name]
        assert rows[name]["health"]["status"] == "ok", rows[name]
        assert rows[name]["health"]["version"] == "v1.0.0", rows[name]

    # Traffic reaches production and the soak hosts: their request counters grow (a bounded wait, no
    # timing assertion). /health and /metrics are not counted, so only the generator moves them.
    urls = {name: spec.host(name).metrics_url for name in ("prod-1", "dev-1", "dev-2")}
    first = {name: requests_served(url) for name, url in urls.items()}
    deadline = time.monotonic() + 30
    grown: dict[str, float] = {}
    while time.monotonic() < deadline and len(grown) < len(urls):
        time.sleep(0.5)
        grown.update({name: now for name, url in urls.items() if (now := requests_served(url)) > first[name]})
    assert grown.keys() == urls.keys(), (first, grown)
    assert requests_served(spec.host("replica-1").metrics_url) == 0  # traffic_to_replicas=False
