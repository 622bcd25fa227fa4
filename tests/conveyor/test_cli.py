"""The ``conveyor`` command, run as users run it: the installed console script, in a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.ledger import Ledger
from conveyor.tickets import LocalTicketBackend, render_ticket
from tests.fleet_fixtures import local_fleet  # noqa: F401 - the session fleet fixture

CONVEYOR = Path(sys.executable).with_name("conveyor")


def conveyor(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONVEYOR_HOME": str(home), **(env or {})}
    return subprocess.run([str(CONVEYOR), *args], env=env, capture_output=True, text=True, timeout=60)


def file_ticket(home: Path, ticket_id: str, service: str, version: str, created_at: str) -> None:
    evidence = {"service": service, "version": version, "git_ref": version, "release_id": f"{service}-{version}",
                "failed_stage": "wave_1.analysis", "error": f"{version}: error rate 5.1% vs 0.0%",
                "rollback": {"status": "rolled back", "rolled_back": ["prod-1"]}}
    LocalTicketBackend(home / "tickets").file(render_ticket(ticket_id, evidence), created_at=created_at)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "conveyor"


def test_the_console_script_is_installed():
    assert CONVEYOR.exists(), "run `make venv`: the conveyor console script is missing"


def test_tickets_list_on_an_empty_backend(home):
    result = conveyor(home, "tickets", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "No tickets."
    result = conveyor(home, "tickets", "list", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == []


def test_tickets_list_and_show(home):
    file_ticket(home, "RCA-00000000A1", "demo_shop", "v1.2.0", "2026-11-22T10:00:00")
    file_ticket(home, "RCA-00000000B2", "billing", "v3.0.0", "2026-11-22T11:00:00")

    result = conveyor(home, "tickets", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "SERVICE"]
    assert [line.split()[0] for line in lines[1:]] == ["RCA-00000000B2", "RCA-00000000A1"]  # newest first
    assert "wave_1.analysis" in lines[1]
    assert "rolled back" in lines[1]

    result = conveyor(home, "tickets", "list", "--service", "demo_shop", "--json")
    assert result.returncode == 0
    [ticket] = json.loads(result.stdout)
    assert ticket["ticket_id"] == "RCA-00000000A1"
    assert ticket["version"] == "v1.2.0"

    result = conveyor(home, "tickets", "show", "RCA-00000000A1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# [demo_shop] release v1.2.0 failed at wave_1.analysis")
    assert "v1.2.0: error rate 5.1% vs 0.0%" in result.stdout

    result = conveyor(home, "tickets", "show", "RCA-00000000A1", "--json")
    assert json.loads(result.stdout)["body"].startswith("# [demo_shop]")


def test_tickets_show_errors(home):
    result = conveyor(home, "tickets", "show", "RCA-404")
    assert result.returncode == 1
    assert "no ticket RCA-404" in result.stderr
    result = conveyor(home, "tickets", "show", "../../etc/passwd")
    assert result.returncode == 2
    assert "invalid ticket id" in result.stderr


def seed_soaks(home: Path) -> None:
    """The local ledger ($CONVEYOR_HOME/ledger.db): production runs demo_shop v1.1.0, three builds soaked."""
    t0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
    home.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    ledger.upsert_release("demo_shop/r1", service="demo_shop", version="v1.1.0", status="success", started_at=t0)
    ledger.upsert_release("other/r1", service="other", version="v3.0.0", status="success", started_at=t0)
    for version, hours, status, min_hours, watched, incident in [
        ("v1.0.5", 0, "passed", 1, 2, None), ("v1.2.0", 3, "incident", 1, 0.5, "error rate 4.2% vs 0.3%"),
        ("v1.3.0", 6, "passed", 24, 25, None),
    ]:
        started = t0 + dt.timedelta(hours=hours)
        ledger.upsert_soak(f"demo_shop/soak-{version}", service="demo_shop", version=version, status=status,
                           change_kind="major" if min_hours == 24 else "minor", started_at=started,
                           min_seconds=min_hours * 3600, watched_until=started + dt.timedelta(hours=watched),
                           incident=incident)
    ledger.dispose()


def test_soak_status_shows_each_builds_clock(home):
    seed_soaks(home)
    result = conveyor(home, "soak", "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "VERSION", "STATUS", "STARTED", "(UTC)", "MINIMUM", "SOAKED", "REMAINING",
                                "ELIGIBLE", "WHY"]
    assert [line.split()[1:3] for line in lines[1:]] == [["v1.3.0", "passed"], ["v1.2.0", "incident"],
                                                         ["v1.0.5", "passed"]]
    assert lines[1].split()[3:] == ["2026-11-20", "15:00", "1d", "1d", "1h", "0s", "yes", "eligible:", "soaked", "1d",
                                    "1h", "with", "no", "incident"]
    assert re.search(r" no +never promoted: incident during soak: error rate 4\.2% vs 0\.3%$", lines[2]), lines[2]
    assert re.search(r" no +never promoted: older than v1\.1\.0, which production runs$", lines[3]), lines[3]

    result = conveyor(home, "soak", "status", "--service", "demo_shop", "--json")
    assert result.returncode == 0, result.stderr
    clocks = json.loads(result.stdout)
    assert [(c["version"], c["eligible"], c["minimum"], c["soaked"]) for c in clocks] == [
        ("v1.3.0", True, "1d", "1d 1h"), ("v1.2.0", False, "1h", "30m"), ("v1.0.5", False, "1h", "2h")]
    assert clocks[0]["started_at"] == "2026-11-20T15:00:00+00:00"
    assert clocks[1]["incident"] == "error rate 4.2% vs 0.3%"


def test_soak_status_of_a_service_without_soaks(home):
    seed_soaks(home)
    result = conveyor(home, "soak", "status", "--service", "other")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "No soaks are recorded for other."
    result = conveyor(home, "soak", "status", "--service", "other", "--json")
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(("service", "message"), [
    ("nope", "unknown service 'nope': no service file"),
    ("Bad-Id", "invalid --service 'Bad-Id'"),
])
def test_soak_status_of_an_unknown_service(home, service, message):
    seed_soaks(home)
    result = conveyor(home, "soak", "status", "--service", service)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_soak_status_without_a_ledger(home):
    result = conveyor(home, "soak", "status")
    assert result.returncode == 1
    assert f"no release ledger at {home / 'ledger.db'}" in result.stderr
    assert "conveyor_ledger connection" in result.stderr
    assert not (home / "ledger.db").exists()  # a status query does not create an empty ledger


@pytest.mark.parametrize(("connection", "message"), [
    ("postgresql://conveyor:secret@127.0.0.1:1/conveyor_ledger", "cannot read the release ledger"),
    ("mysql://conveyor@127.0.0.1/ledger", "the release ledger (connection conveyor_ledger) is misconfigured"),
])
def test_soak_status_when_the_ledger_is_unreachable(home, connection, message):
    result = conveyor(home, "soak", "status", "--json", env={"AIRFLOW_CONN_CONVEYOR_LEDGER": connection})
    assert result.returncode == 1
    assert message in result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_incident_add_records_an_incident_of_a_release(home):
    seed_soaks(home)
    result = conveyor(home, "incident", "add", "demo_shop", "demo_shop/r1", "--reason", "checkout 500s",
                      "--at", "2026-11-21T08:30:00Z")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Recorded an incident of demo_shop/r1 at 2026-11-21 08:30 UTC: checkout 500s"
    result = conveyor(home, "incident", "add", "demo_shop", "demo_shop/r1", "--reason", "and slow", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["reason"] == "and slow"
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    try:
        incidents = ledger.list_incidents("demo_shop")
    finally:
        ledger.dispose()
    assert [(i["release_id"], i["reason"]) for i in incidents] == [("demo_shop/r1", "checkout 500s"),
                                                                   ("demo_shop/r1", "and slow")]
    assert incidents[0]["at"] == dt.datetime(2026, 11, 21, 8, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["demo_shop", "demo_shop/nope", "--reason", "x"], 1, "release 'demo_shop/nope' is not in the ledger"),
    (["demo_shop", "other/r1", "--reason", "x"], 1, "release 'other/r1' is a release of 'other', not of 'demo_shop'"),
    (["demo_shop", "demo_shop/r1", "--reason", "  "], 2, "--reason must say what went wrong"),
    (["demo_shop", "demo_shop/r1", "--reason", "x", "--at", "tomorrow"], 2, "invalid --at 'tomorrow'"),
    (["Bad-Id", "demo_shop/r1", "--reason", "x"], 2, "invalid service 'Bad-Id'"),
    (["demo_shop", "demo_shop/r1"], 2, "the following arguments are required: --reason"),
])
def test_incident_add_errors(home, args, code, message):
    seed_soaks(home)
    result = conveyor(home, "incident", "add", *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    try:
        assert ledger.list_incidents() == []
    finally:
        ledger.dispose()


def test_fleet_status_when_the_fleet_is_not_running(home):
    for args in (("fleet", "status"), ("fleet", "status", "--json")):
        result = conveyor(home, *args)
        assert result.returncode == 1
        assert "The local fleet is not running" in result.stderr
        assert "conveyor fleet up" in result.stderr
        assert result.stdout == ""


def test_fleet_connection_before_the_first_up(home):
    result = conveyor(home, "fleet", "connection")
    assert result.returncode == 1
    assert "conveyor fleet up" in result.stderr


def test_fleet_down_when_nothing_runs(home):
    result = conveyor(home, "fleet", "down")
    assert result.returncode == 0, result.stderr
    assert "not set up" in result.stdout


@pytest.mark.parametrize("args", [(), ("fleet",), ("fleet", "launch"), ("tickets", "show"), ("bogus",)])
def test_usage_errors_exit_2(home, args):
    result = conveyor(home, *args)
    assert result.returncode == 2
    assert "usage: conveyor" in result.stderr


@pytest.mark.parametrize("args", [("fleet", "--help"), ("demo", "commit", "--help")])
def test_the_lab_commands_are_there(home, args):
    result = conveyor(home, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: conveyor {' '.join(args[:-1])}")


def test_demo_commit_pushes_to_main_of_the_demo_repository(home):
    result = conveyor(home, "demo", "commit", "--red", "--author", "Dev Patel")
    assert result.returncode == 0, result.stderr
    sha = result.stdout.split()[0]
    assert re.fullmatch(r"[0-9a-f]{40}", sha), result.stdout
    assert "(red: a unit test fails)" in result.stdout
    head = subprocess.run(["git", "log", "-1", "--format=%H %an", "main"], cwd=home / "repos" / "demo_shop.git",
                          capture_output=True, text=True, check=True)
    assert head.stdout.strip() == f"{sha} Dev Patel"


def test_demo_commit_when_git_fails(home):
    from conveyor_lab.demo import FINGERPRINT_FILE, fingerprint

    repo = home / "repos" / "demo_shop.git"  # current in create_demo_repo's eyes, but not a git repository
    repo.mkdir(parents=True)
    (repo / FINGERPRINT_FILE).write_text(fingerprint() + "\n")
    result = conveyor(home, "demo", "commit", "--green")
    assert result.returncode == 1
    assert result.stderr.startswith("conveyor: error: git clone"), result.stderr
    assert "Traceback" not in result.stderr


def test_fleet_status_and_connection_of_a_running_fleet(local_fleet):  # noqa: F811
    home = local_fleet.home.parent  # the session's CONVEYOR_HOME
    result = conveyor(home, "fleet", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["running"] is True
    assert [h["version"] for h in status["hosts"]] == ["v1.0.0"] * 10  # 2 replicas, 6 production, dev-1..2
    result = conveyor(home, "fleet", "status")
    assert result.returncode == 0
    assert "prod-6" in result.stdout
    assert "ok v1.0.0" in result.stdout
    result = conveyor(home, "fleet", "connection")
    assert json.loads(result.stdout) == json.loads(local_fleet.connection_uri())
    result = conveyor(home, "fleet", "up")
    assert result.returncode == 0
    assert "already running" in result.stdout

