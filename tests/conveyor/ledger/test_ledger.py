"""The release ledger on SQLite (a temp file) and on the local PostgreSQL server.

Every test that takes the ``ledger`` fixture runs on both; the PostgreSQL cases carry the
``services`` marker (``make test-services``) and each gets its own freshly created database.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conveyor.ledger import Ledger, compute_dora, migrations, schema
from conveyor.ledger.dora import commit_shas

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
UTC = dt.UTC


def T(text: str) -> dt.datetime:
    """A UTC time from a short ISO string."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database on the local server, dropped afterwards."""
    name = f"conveyor_ledger_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc.orig})")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def ledger_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(ledger_url) -> Iterator[Ledger]:
    ledger = Ledger(ledger_url)
    yield ledger
    ledger.dispose()


def row_counts(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in schema.V1_TABLES
        }


# ------------------------------------------------------------------------------------ a release, as the
# operators record it (plugins/conveyor/operators/*.py make exactly these calls)

RID = "demo_shop/manual__2025-03-10T10:00:00+00:00"
MANIFEST_RANGE = {
    "from": "a" * 40,
    "to": "c" * 40,
    "commits": [
        {"sha": "c" * 40, "author": "Carol", "email": "c@x", "date": "2025-03-10T09:00:00+01:00",
         "subject": "Faster checkout"},
        {"sha": "b" * 40, "author": "Bob", "email": "b@x", "date": "2025-03-09T12:00:00+00:00",
         "subject": "Fix cart rounding"},
    ],
}


def record_full_release(ledger: Ledger, rid: str = RID, *, t0: dt.datetime | None = None) -> None:
    """validate -> build -> replica -> tests -> QA approval -> two production waves -> finalize."""
    t0 = t0 or T("2025-03-10T10:00")
    at = lambda minutes: t0 + dt.timedelta(minutes=minutes)  # noqa: E731
    ledger.upsert_release(
        rid, service="demo_shop", git_ref="v1.1.0", change_kind="minor", emergency=False, reason=None,
        author="dev", run_id=rid.split("/", 1)[1], dag_id="release_demo_shop", status="running",
        started_at=at(0), labels=[],
    )
    for minute, stage in enumerate(["validate", "build", "deploy_replica", "tests", "approval", "wave_1",
                                    "wave_2", "finalize"]):
        ledger.upsert_stage(rid, stage, status="running", started_at=at(minute), finished_at=None, error=None)
        if stage == "build":
            ledger.upsert_release(rid, version="v1.1.0", commit_sha="c" * 40, commit_range=MANIFEST_RANGE)
            for c in MANIFEST_RANGE["commits"]:
                ledger.upsert_commit("demo_shop", c["sha"], author=c["author"], message=c["subject"],
                                     committed_at=c["date"])
        if stage == "deploy_replica":
            ledger.upsert_host_deployment(rid, "replica-1", environment="replica", wave="replica",
                                          from_version="v1.0.0", to_version="v1.1.0", status="deployed",
                                          at=at(minute))
        if stage == "tests":
            ledger.upsert_test_result(rid, "smoke", "test_home", outcome="passed", message=None)
            ledger.upsert_test_result(rid, "smoke", "test_cart", outcome="passed", message=None)
            ledger.upsert_test_result(rid, "e2e", "test_flaky_search", outcome="failed", message="timeout",
                                      pre_existing=True)
        if stage == "approval":
            ledger.upsert_approval(rid, "qa1", decision="Approve", comment="looks good", at=at(minute))
            ledger.upsert_approval(rid, "qa2", decision="Approve", at=at(minute))
        if stage.startswith("wave_"):
            hosts = ["prod-1"] if stage == "wave_1" else ["prod-2", "prod-3"]
            for host in hosts:
                ledger.upsert_host_deployment(rid, host, environment="production", wave=stage.replace("_", "-"),
                                              from_version="v1.0.0", to_version="v1.1.0", status="deployed",
                                              at=at(minute))
        if stage == "finalize":
            ledger.upsert_release(rid, status="success", finished_at=at(minute), deployed_at=at(minute))
        ledger.upsert_stage(rid, stage, status="success", finished_at=at(minute) + dt.timedelta(seconds=30),
                            detail={"minute": minute})


def record_failed_release_with_rollback(ledger: Ledger, rid: str, *, t0: dt.datetime) -> None:
    """The canary fails its analysis: the release fails, the touched host is rolled back, a ticket is filed."""
    ledger.upsert_release(rid, service="demo_shop", git_ref="v1.2.0", change_kind="minor", status="running",
                          started_at=t0)
    ledger.upsert_release(rid, version="v1.2.0", commit_sha="d" * 40, commit_range={"from": "c" * 40,
                          "to": "d" * 40, "commits": [{"sha": "d" * 40, "author": "Dan", "subject": "500s"}]})
    ledger.upsert_host_deployment(rid, "prod-1", environment="production", wave="wave-1", from_version="v1.1.0",
                                  to_version="v1.2.0", status="deployed", at=t0 + dt.timedelta(minutes=5))
    ledger.upsert_stage(rid, "wave_1.analysis", status="running", started_at=t0 + dt.timedelta(minutes=6))
    ledger.upsert_stage(rid, "wave_1.analysis", status="running", detail={"decision": "fail"})
    ledger.upsert_stage(rid, "wave_1.analysis", status="failed", finished_at=t0 + dt.timedelta(minutes=9),
                        error="AnalysisFailed: error rate 5.1% vs 0.1%")
    ledger.upsert_release(rid, status="failed", finished_at=t0 + dt.timedelta(minutes=10))
    ledger.upsert_rollback(rid, "prod-1", from_version="v1.2.0", to_version="v1.1.0", status="rolled back",
                           at=t0 + dt.timedelta(minutes=11))
    ledger.upsert_ticket("RCA-0000000001", release_id=rid, service="demo_shop", path="/tmp/RCA-0000000001.md",
                         title="demo_shop v1.2.0 rolled back: canary error rate", created_at=t0 + dt.timedelta(minutes=12))


# ------------------------------------------------------------------------------------------- schema


def test_migrate_is_idempotent_and_records_the_schema_version(ledger, ledger_url):
    assert ledger.migrate() == [m.version for m in migrations.MIGRATIONS]
    assert ledger.schema_version() == migrations.LATEST_VERSION
    assert ledger.migrate() == []
    other = Ledger(ledger_url)
    try:
        assert other.migrate() == []
        assert other.schema_version() == migrations.LATEST_VERSION
    finally:
        other.dispose()
    inspector = sa.inspect(ledger.engine)
    assert {t.name for t in schema.V1_TABLES} | {"schema_version"} <= set(inspector.get_table_names())
    assert {"ix_releases_service_started", "ix_releases_service_status"} <= {
        i["name"] for i in inspector.get_indexes("releases")
    }
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(schema.schema_version).order_by(schema.schema_version.c.version)).all()
    assert [(r.version, r.name) for r in rows] == [(m.version, m.name) for m in migrations.MIGRATIONS]
    assert all(r.applied_at.tzinfo is not None for r in rows)


def test_concurrent_migrators_apply_each_migration_once(ledger_url):
    ledgers = [Ledger(ledger_url) for _ in range(6)]
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ledgers))

    def migrate(ledger: Ledger) -> None:
        barrier.wait()
        try:
            results.append(ledger.migrate())
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ledger in ledgers:
        ledger.dispose()
    assert errors == []
    assert sorted(v for applied in results for v in applied) == [m.version for m in migrations.MIGRATIONS]


def test_the_first_use_migrates_a_new_ledger(ledger):
    assert ledger.get_release("nope") is None
    assert ledger.schema_version() == migrations.LATEST_VERSION


def test_only_sqlite_and_postgresql_urls_are_accepted():
    with pytest.raises(ValueError, match="sqlite and postgresql"):
        Ledger("mysql://localhost/ledger")


def test_test_connection_reports_the_dialect_and_version(ledger):
    ok, message = ledger.test_connection()
    assert ok, message
    assert f"({ledger.dialect}), schema version {migrations.LATEST_VERSION}" in message
    broken = Ledger("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    ok, message = broken.test_connection()
    assert not ok
    assert "OperationalError" in message


# --------------------------------------------------------------------------------------- recording


def test_a_full_release_reads_back_completely(ledger):
    record_full_release(ledger)
    release = ledger.get_release(RID)
    assert release is not None
    assert {k: release[k] for k in ("service", "version", "git_ref", "change_kind", "emergency", "author",
                                    "status", "commit_sha", "labels", "dag_id")} == {
        "service": "demo_shop", "version": "v1.1.0", "git_ref": "v1.1.0", "change_kind": "minor",
        "emergency": False, "author": "dev", "status": "success", "commit_sha": "c" * 40, "labels": [],
        "dag_id": "release_demo_shop",
    }
    assert release["started_at"] == T("2025-03-10T10:00")
    assert release["deployed_at"] == release["finished_at"] == T("2025-03-10T10:07")
    assert release["commit_range"] == MANIFEST_RANGE
    assert [s["stage"] for s in release["stages"]] == [
        "validate", "build", "deploy_replica", "tests", "approval", "wave_1", "wave_2", "finalize"]
    assert all(s["status"] == "success" and s["error"] is None for s in release["stages"])
    assert release["stages"][5]["detail"] == {"minute": 5}
    assert release["stages"][5]["finished_at"] == T("2025-03-10T10:05:30")
    assert [(h["host"], h["environment"], h["wave"], h["status"]) for h in release["hosts"]] == [
        ("prod-1", "production", "wave-1", "deployed"),
        ("prod-2", "production", "wave-2", "deployed"),
        ("prod-3", "production", "wave-2", "deployed"),
        ("replica-1", "replica", "replica", "deployed"),
    ]
    assert [(a["approver"], a["decision"], a["comment"]) for a in release["approvals"]] == [
        ("qa1", "Approve", "looks good"), ("qa2", "Approve", None)]
    assert [(t["suite"], t["test"], t["outcome"], t["pre_existing"]) for t in release["tests"]] == [
        ("e2e", "test_flaky_search", "failed", True),
        ("smoke", "test_cart", "passed", False),
        ("smoke", "test_home", "passed", False),
    ]
    assert release["rollbacks"] == release["tickets"] == []
    assert ledger.list_releases("demo_shop")[0]["release_id"] == RID
    assert ledger.last_successful_release("demo_shop")["release_id"] == RID
    assert ledger.last_successful_release("other") is None
    assert ledger.services() == ["demo_shop"]


def test_a_rollback_is_recorded_with_its_ticket(ledger):
    record_full_release(ledger)
    rid = "demo_shop/manual__2025-03-11T10:00:00+00:00"
    record_failed_release_with_rollback(ledger, rid, t0=T("2025-03-11T10:00"))
    release = ledger.get_release(rid)
    assert release["status"] == "failed"
    assert [(r["host"], r["from_version"], r["to_version"], r["status"]) for r in release["rollbacks"]] == [
        ("prod-1", "v1.2.0", "v1.1.0", "rolled back")]
    assert [(t["ticket_id"], t["title"]) for t in release["tickets"]] == [
        ("RCA-0000000001", "demo_shop v1.2.0 rolled back: canary error rate")]
    (analysis,) = release["stages"]
    assert analysis["status"] == "failed"
    assert analysis["detail"] == {"decision": "fail"}
    assert analysis["started_at"] == T("2025-03-11T10:06")
    assert analysis["error"].startswith("AnalysisFailed")
    # The rolled-back release is not the last good one; the one before it still is.
    assert ledger.last_successful_release("demo_shop")["release_id"] == RID
    assert ledger.previous_successful_release(rid)["release_id"] == RID
    numbers = ledger.dora("demo_shop", days=2, now=T("2025-03-11T12:00"))
    assert numbers["deployment_frequency"]["count"] == 1
    assert numbers["change_failure_rate"] == {"rate": 0.5, "failed": 1, "total": 2}
    assert numbers["time_to_restore"] == {"median_seconds": None, "incidents": 0, "open_incidents": 1}


def test_a_rerun_of_every_write_duplicates_nothing(ledger):
    record_full_release(ledger)
    rid = "demo_shop/manual__2025-03-11T10:00:00+00:00"
    record_failed_release_with_rollback(ledger, rid, t0=T("2025-03-11T10:00"))
    before_counts = row_counts(ledger)
    before = {r: ledger.get_release(r) for r in (RID, rid)}
    # The same run again, later: every task reruns and writes its rows again.
    record_full_release(ledger, t0=T("2025-03-10T11:00"))
    record_failed_release_with_rollback(ledger, rid, t0=T("2025-03-11T11:00"))
    assert row_counts(ledger) == before_counts
    assert before_counts == {"releases": 2, "stages": 9, "host_deployments": 5, "approvals": 2,
                             "test_results": 3, "rollbacks": 1, "tickets": 1, "commits": 2}
    after = {r: ledger.get_release(r) for r in (RID, rid)}
    # First-wins fields keep the first run's times; the rest follow the latest run.
    assert after[RID]["started_at"] == before[RID]["started_at"] == T("2025-03-10T10:00")
    assert after[RID]["deployed_at"] == T("2025-03-10T10:07")
    assert after[RID]["finished_at"] == T("2025-03-10T11:07")
    assert [s["started_at"] for s in after[RID]["stages"]] == [s["started_at"] for s in before[RID]["stages"]]
    assert after[rid]["tickets"][0]["created_at"] == T("2025-03-11T10:12")


def test_merge_rules(ledger):
    ledger.upsert_release("svc/r1", service="svc", version="v1", reason="first", status="running",
                          started_at=T("2025-01-01T10:00"))
    # None never erases; an omitted field is left alone.
    ledger.upsert_release("svc/r1", version=None, reason=None, author="ann")
    release = ledger.get_release("svc/r1")
    assert (release["version"], release["reason"], release["author"]) == ("v1", "first", "ann")
    # started_at keeps its first value.
    ledger.upsert_release("svc/r1", started_at=T("2025-01-01T11:00"))
    assert ledger.get_release("svc/r1")["started_at"] == T("2025-01-01T10:00")
    # A final status is not replaced by a non-final one, but a final one replaces it.
    ledger.upsert_release("svc/r1", status="success")
    ledger.upsert_release("svc/r1", status="running")
    assert ledger.get_release("svc/r1")["status"] == "success"
    ledger.upsert_release("svc/r1", status="failed")
    assert ledger.get_release("svc/r1")["status"] == "failed"
    # reset=True writes exactly what is given.
    ledger.upsert_release("svc/r1", status="running", started_at=T("2025-01-02T00:00"), reason=None, reset=True)
    release = ledger.get_release("svc/r1")
    assert (release["status"], release["started_at"], release["reason"], release["version"]) == (
        "running", T("2025-01-02T00:00"), None, "v1")

    # Stages: a rerun after a failure goes running (kept failed) -> success; start time stays.
    ledger.upsert_stage("svc/r1", "deploy", status="running", started_at=T("2025-01-01T10:00"))
    ledger.upsert_stage("svc/r1", "deploy", status="failed", finished_at=T("2025-01-01T10:05"), error="boom")
    ledger.upsert_stage("svc/r1", "deploy", status="running", started_at=T("2025-01-01T12:00"),
                        finished_at=None, error=None)
    (stage,) = ledger.get_release("svc/r1")["stages"]
    assert (stage["status"], stage["started_at"], stage["error"]) == ("failed", T("2025-01-01T10:00"), "boom")
    ledger.upsert_stage("svc/r1", "deploy", status="success", finished_at=T("2025-01-01T12:05"))
    (stage,) = ledger.get_release("svc/r1")["stages"]
    # The successful rerun's row no longer carries the first attempt's error.
    assert (stage["status"], stage["finished_at"], stage["error"]) == ("success", T("2025-01-01T12:05"), None)
    ledger.upsert_stage("svc/r1", "deploy", status="running", reset=True)
    (stage,) = ledger.get_release("svc/r1")["stages"]
    assert (stage["status"], stage["started_at"], stage["finished_at"], stage["error"]) == (
        "running", None, None, None)

    # Hosts: from_version keeps the version the host ran before the release; a rerun that finds the host
    # already on the new version ("unchanged") does not hide that the first run deployed it.
    ledger.upsert_host_deployment("svc/r1", "h1", environment="production", from_version="v0", to_version="v1",
                                  status="deployed", at=T("2025-01-01T10:01"))
    ledger.upsert_host_deployment("svc/r1", "h1", environment="production", from_version="v1", to_version="v1",
                                  status="unchanged", at=T("2025-01-01T12:01"))
    ledger.upsert_host_deployment("svc/r1", "h2", environment="production", from_version="v1", to_version="v1",
                                  status="unchanged")
    h1, h2 = ledger.get_release("svc/r1")["hosts"]
    assert (h1["from_version"], h1["status"], h1["at"]) == ("v0", "deployed", T("2025-01-01T12:01"))
    assert h2["status"] == "unchanged"

    # Test results: the latest outcome wins; pre_existing follows the latest triage.
    ledger.upsert_test_result("svc/r1", "s", "t", outcome="failed", message="x", pre_existing=True)
    ledger.upsert_test_result("svc/r1", "s", "t", outcome="passed")
    (test,) = ledger.get_release("svc/r1")["tests"]
    assert (test["outcome"], test["message"], test["pre_existing"]) == ("passed", "x", False)

    # Approvals: one row per approver, the latest decision.
    ledger.upsert_approval("svc/r1", "qa1", decision="Reject", comment="no", at=T("2025-01-01T10:00"))
    ledger.upsert_approval("svc/r1", "qa1", decision="Approve", at=T("2025-01-01T10:30"))
    (approval,) = ledger.get_release("svc/r1")["approvals"]
    assert (approval["decision"], approval["comment"], approval["at"]) == ("Approve", "no", T("2025-01-01T10:30"))

    # Unknown fields are refused rather than silently dropped.
    with pytest.raises(ValueError, match="unknown releases field"):
        ledger.upsert_release("svc/r1", colour="red")


def test_a_release_first_written_without_its_service_takes_it_from_the_id(ledger):
    # ReleaseFailedOperator runs even when validation failed before the release row was written.
    ledger.upsert_release("demo_shop/manual__x", status="failed", finished_at=T("2025-01-01T10:00"))
    release = ledger.get_release("demo_shop/manual__x")
    assert (release["service"], release["status"]) == ("demo_shop", "failed")
    # A later write without the service (the build) updates the row and keeps the service.
    ledger.upsert_release("demo_shop/manual__x", version="v9")
    assert ledger.get_release("demo_shop/manual__x")["service"] == "demo_shop"


def test_times_are_stored_in_utc(ledger):
    plus_two = dt.timezone(dt.timedelta(hours=2))
    ledger.upsert_release("svc/tz", service="svc", started_at=dt.datetime(2025, 1, 1, 12, 0, tzinfo=plus_two),
                          finished_at="2025-01-01T12:30:00+02:00", deployed_at=dt.datetime(2025, 1, 1, 10, 40))
    release = ledger.get_release("svc/tz")
    assert release["started_at"] == T("2025-01-01T10:00")
    assert release["started_at"].utcoffset() == dt.timedelta(0)
    assert release["finished_at"] == T("2025-01-01T10:30")
    assert release["deployed_at"] == T("2025-01-01T10:40")  # naive is taken as UTC


def test_list_releases_filters_and_orders(ledger):
    for i, (svc, status) in enumerate([("a", "success"), ("b", "failed"), ("a", "failed"), ("a", "running")]):
        ledger.upsert_release(f"{svc}/r{i}", service=svc, status=status, started_at=T(f"2025-01-0{i + 1}T00:00"))
    assert [r["release_id"] for r in ledger.list_releases()] == ["a/r3", "a/r2", "b/r1", "a/r0"]
    assert [r["release_id"] for r in ledger.list_releases("a", limit=2)] == ["a/r3", "a/r2"]
    assert [r["release_id"] for r in ledger.list_releases(since=T("2025-01-02T00:00"), status=["failed"])] == [
        "a/r2", "b/r1"]
    assert ledger.services() == ["a", "b"]


def test_concurrent_writers_do_not_error(ledger_url):
    """Airflow runs mapped deploy tasks in parallel: many writers, one ledger file."""
    shared = Ledger(ledger_url)
    shared.migrate()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        own = Ledger(ledger_url) if n % 2 else shared  # a worker process has its own engine
        barrier.wait()
        try:
            for i in range(15):
                own.upsert_release("svc/concurrent", service="svc", status="running",
                                   started_at=T("2025-01-01T00:00") + dt.timedelta(minutes=n))
                own.upsert_host_deployment("svc/concurrent", f"host-{n}", environment="production",
                                           to_version="v2", status="deployed", at=T("2025-01-01T00:00"))
                own.upsert_stage("svc/concurrent", f"wave-{i % 3}", status="running",
                                 started_at=T("2025-01-01T00:00"))
                own.upsert_test_result("svc/concurrent", "suite", f"test-{n}-{i}", outcome="passed")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            if own is not shared:
                own.dispose()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        release = shared.get_release("svc/concurrent")
        assert len(release["hosts"]) == 8
        assert len(release["stages"]) == 3
        assert len(release["tests"]) == 8 * 15
        # First wins: whichever writer got there first, and never changed afterwards.
        assert release["started_at"] in {T("2025-01-01T00:00") + dt.timedelta(minutes=n) for n in range(8)}
    finally:
        shared.dispose()


# -------------------------------------------------------------------------------------------- DORA
#
# A hand-made history of "shop" over the 7 days 2025-03-25 .. 2025-03-31 (now = 03-31 12:00 UTC):
#
#   R0  success, deployed 03-20 (before the period)                          c0
#   R1  success, deployed 03-25 10:00                                        c1 (-2 h), c2 (-24 h)
#   R2  failed, prod host deployed then rolled back, finished 03-26 12:00   c3      -> opens incident A
#   R3  success, deployed 03-27 12:00  (ships c3 again: it counts here)      c4 (-1 h), c3 (-27 h) -> closes A (24 h)
#   R4  failed in tests, only the replica touched: not a production change
#   R5  failed, a production host failed to deploy, finished 03-29 00:00                -> opens incident B
#   R6  failed, only a rollback recorded, finished 03-29 06:00                          -> joins B
#   R7  success, deployed 03-29 12:00                                        c5 (-2 h), c6 (no time) -> closes B (12 h)
#   R8  running since 03-31 (undecided: counts nowhere)
#   R11 failed, production touched, finished 03-31 06:00                               -> incident C, still open
#   O1  service "other": success, deployed 03-28 01:00                        o1 (-1 h)
#
# Deployments: R1, R3, R7 = 3 (3/7 a day). Failed changes: R2, R5, R6, R11 = 4 -> rate 4/7.
# Lead times: 2 h, 24 h, 27 h, 1 h, 2 h -> median 2 h = 7200 s; p90 = 24 h + 0.6 * 3 h = 92880 s.
# Time to restore: 24 h and 12 h -> median 18 h = 64800 s; one incident still open.

NOW = T("2025-03-31T12:00")


def seed_dora_history(ledger: Ledger) -> None:
    commits = {
        "c0": "2025-03-19T00:00", "c1": "2025-03-25T08:00", "c2": "2025-03-24T10:00",
        "c3": "2025-03-26T09:00", "c4": "2025-03-27T11:00", "c5": "2025-03-29T10:00",
    }
    for sha, when in commits.items():
        ledger.upsert_commit("shop", sha, author="dev", message=f"commit {sha}", committed_at=T(when))
    ledger.upsert_commit("other", "o1", author="dev", message="other commit", committed_at=T("2025-03-28T00:00"))

    def release(rid, status, *, started, finished=None, deployed=None, commits=(), service="shop", version=None):
        ledger.upsert_release(rid, service=service, status=status, started_at=T(started),
                              finished_at=T(finished) if finished else None,
                              deployed_at=T(deployed) if deployed else None, version=version or rid.split("/")[1],
                              commit_range={"from": None, "to": commits[0] if commits else None,
                                            "commits": [{"sha": c, "subject": f"commit {c}"} for c in commits]})

    def prod_host(rid, host, status, at):
        ledger.upsert_host_deployment(rid, host, environment="production", wave="wave-1", status=status, at=T(at))

    release("shop/R0", "success", started="2025-03-20T09:00", finished="2025-03-20T10:00",
            deployed="2025-03-20T10:00", commits=["c0"])
    prod_host("shop/R0", "p1", "deployed", "2025-03-20T09:30")
    release("shop/R1", "success", started="2025-03-25T09:00", finished="2025-03-25T10:00",
            deployed="2025-03-25T10:00", commits=["c1", "c2"])
    prod_host("shop/R1", "p1", "deployed", "2025-03-25T09:30")
    release("shop/R2", "failed", started="2025-03-26T10:00", finished="2025-03-26T12:00", commits=["c3"])
    prod_host("shop/R2", "p1", "deployed", "2025-03-26T11:00")
    ledger.upsert_rollback("shop/R2", "p1", from_version="R2", to_version="R1", status="rolled back",
                           at=T("2025-03-26T11:50"))
    release("shop/R3", "success", started="2025-03-27T10:00", finished="2025-03-27T12:00",
            deployed="2025-03-27T12:00", commits=["c4", "c3"])
    prod_host("shop/R3", "p1", "deployed", "2025-03-27T11:00")
    release("shop/R4", "failed", started="2025-03-28T10:00", finished="2025-03-28T11:00", commits=["c5"])
    ledger.upsert_host_deployment("shop/R4", "r1", environment="replica", status="deployed", at=T("2025-03-28T10:10"))
    ledger.upsert_stage("shop/R4", "tests", status="failed", error="1 failing test")
    release("shop/R5", "failed", started="2025-03-28T23:00", finished="2025-03-29T00:00", commits=["c5"])
    prod_host("shop/R5", "p1", "failed", "2025-03-28T23:30")
    release("shop/R6", "failed", started="2025-03-29T05:00", finished="2025-03-29T06:00", commits=["c5"])
    ledger.upsert_rollback("shop/R6", "p1", from_version="R6", to_version="R3", status="rolled back",
                           at=T("2025-03-29T05:50"))
    release("shop/R7", "success", started="2025-03-29T11:00", finished="2025-03-29T12:00",
            deployed="2025-03-29T12:00", commits=["c5", "c6"])
    prod_host("shop/R7", "p1", "deployed", "2025-03-29T11:30")
    release("shop/R8", "running", started="2025-03-31T08:00")
    release("shop/R11", "failed", started="2025-03-31T05:00", finished="2025-03-31T06:00")
    prod_host("shop/R11", "p1", "deployed", "2025-03-31T05:30")
    release("other/O1", "success", started="2025-03-28T00:30", finished="2025-03-28T01:00",
            deployed="2025-03-28T01:00", commits=["o1"], service="other")
    prod_host("other/O1", "o-p1", "deployed", "2025-03-28T00:45")


def test_dora_numbers_for_a_known_history(ledger):
    seed_dora_history(ledger)
    numbers = ledger.dora("shop", days=7, now=NOW)
    assert numbers["service"] == "shop"
    assert numbers["period"] == {"start": "2025-03-25T00:00:00+00:00", "end": "2025-03-31T12:00:00+00:00",
                                 "days": 7}
    assert numbers["deployment_frequency"] == {"count": 3, "per_day": 3 / 7}
    assert numbers["lead_time"] == {"median_seconds": 7200.0, "p90_seconds": 92880.0, "commits": 5,
                                    "commits_without_time": 1}
    assert numbers["change_failure_rate"] == {"rate": 4 / 7, "failed": 4, "total": 7}
    assert numbers["time_to_restore"] == {"median_seconds": 64800.0, "incidents": 2, "open_incidents": 1}
    series = {day["date"]: day for day in numbers["series"]}
    assert list(series) == [f"2025-03-{d}" for d in range(25, 32)]
    assert series["2025-03-25"] == {"date": "2025-03-25", "deployments": 1, "failed_changes": 0,
                                    "change_failure_rate": 0.0, "lead_time_median_seconds": 46800.0,
                                    "time_to_restore_median_seconds": None}
    assert series["2025-03-26"]["failed_changes"] == 1
    assert series["2025-03-26"]["change_failure_rate"] == 1.0
    assert series["2025-03-27"]["time_to_restore_median_seconds"] == 86400.0
    assert series["2025-03-27"]["lead_time_median_seconds"] == (3600 + 97200) / 2
    assert series["2025-03-28"] == {"date": "2025-03-28", "deployments": 0, "failed_changes": 0,
                                    "change_failure_rate": None, "lead_time_median_seconds": None,
                                    "time_to_restore_median_seconds": None}
    assert (series["2025-03-29"]["deployments"], series["2025-03-29"]["failed_changes"]) == (1, 2)
    assert series["2025-03-29"]["change_failure_rate"] == 2 / 3
    assert series["2025-03-29"]["time_to_restore_median_seconds"] == 43200.0
    assert series["2025-03-31"]["failed_changes"] == 1
    assert sum(day["deployments"] for day in numbers["series"]) == 3


def test_a_soak_incident_is_not_a_failed_change_of_production(ledger):
    """A release whose soak had an incident deployed to the soak cluster and rolled it back: production
    never changed, so DORA's change failure rate does not count it (nor is it a deployment)."""
    seed_dora_history(ledger)
    before = ledger.dora("shop", days=7, now=NOW)
    ledger.upsert_release("shop/S1", service="shop", status="failed", started_at=T("2025-03-30T09:00"),
                          finished_at=T("2025-03-30T10:00"), commit_range=["c7"])
    for host in ("dev-1", "dev-2"):
        ledger.upsert_host_deployment("shop/S1", host, environment="soak", wave="soak-wave-1", status="deployed",
                                      at=T("2025-03-30T09:10"))
        ledger.upsert_rollback("shop/S1", host, from_version="S1", to_version="R7", status="rolled back",
                               at=T("2025-03-30T09:50"))
    after = ledger.dora("shop", days=7, now=NOW)
    assert after["change_failure_rate"] == before["change_failure_rate"] == {"rate": 4 / 7, "failed": 4, "total": 7}
    assert after["deployment_frequency"] == before["deployment_frequency"]


def test_dora_over_all_services_and_other_periods(ledger):
    seed_dora_history(ledger)
    everything = ledger.dora(None, days=7, now=NOW)
    assert everything["service"] is None
    assert everything["deployment_frequency"]["count"] == 4
    assert everything["change_failure_rate"] == {"rate": 0.5, "failed": 4, "total": 8}
    assert everything["lead_time"]["commits"] == 6
    assert everything["lead_time"]["median_seconds"] == 7200.0
    assert ledger.dora("other", days=7, now=NOW)["lead_time"]["median_seconds"] == 3600.0

    today = ledger.dora("shop", days=1, now=NOW)
    assert today["deployment_frequency"] == {"count": 0, "per_day": 0.0}
    assert today["change_failure_rate"] == {"rate": 1.0, "failed": 1, "total": 1}
    assert today["time_to_restore"] == {"median_seconds": None, "incidents": 0, "open_incidents": 1}
    assert today["lead_time"]["median_seconds"] is None

    # Seen from 03-27 00:00, R3 has not happened yet: incident A is still open.
    earlier = ledger.dora("shop", days=3, now=T("2025-03-27T00:00"))
    assert earlier["deployment_frequency"]["count"] == 1
    assert earlier["change_failure_rate"] == {"rate": 0.5, "failed": 1, "total": 2}
    assert earlier["time_to_restore"] == {"median_seconds": None, "incidents": 0, "open_incidents": 1}
    assert earlier["lead_time"]["median_seconds"] == (7200 + 86400) / 2

    empty = ledger.dora("nobody", days=30, now=NOW)
    assert empty["deployment_frequency"] == {"count": 0, "per_day": 0.0}
    assert empty["change_failure_rate"]["rate"] is None
    assert len(empty["series"]) == 30


def test_compute_dora_is_pure_and_matches_the_ledger(ledger):
    seed_dora_history(ledger)
    with ledger.engine.connect() as conn:
        releases = [dict(r._mapping) for r in conn.execute(sa.select(schema.releases))]
        commits = [dict(r._mapping) for r in conn.execute(sa.select(schema.commits))]
    production = {"shop/R0", "shop/R1", "shop/R2", "shop/R3", "shop/R5", "shop/R6", "shop/R7", "shop/R11",
                  "other/O1"}
    for release in releases:
        release["production_changed"] = release["release_id"] in production
    shop = [r for r in releases if r["service"] == "shop"]
    assert compute_dora(shop, commits, now=NOW, days=7) == {
        k: v for k, v in ledger.dora("shop", days=7, now=NOW).items() if k != "service"}
    with pytest.raises(ValueError, match="at least 1"):
        compute_dora([], [], now=NOW, days=0)


def test_commit_shas_reads_every_stored_form():
    assert commit_shas(None) == []
    assert commit_shas(["a", "b"]) == ["a", "b"]
    assert commit_shas([{"sha": "a"}, {"commit_sha": "b"}]) == ["a", "b"]
    assert commit_shas(MANIFEST_RANGE) == ["c" * 40, "b" * 40]
    assert commit_shas({"from": None, "to": None, "commits": []}) == []


# ---------------------------------------------------------------------------------------- changelog


def test_changelog_lists_the_commits_since_the_previous_successful_release(ledger):
    record_full_release(ledger)
    ledger.upsert_commit("demo_shop", "b" * 40, ci_status="success", checked_at=T("2025-03-10T09:30"))
    rid = "demo_shop/manual__2025-03-11T10:00:00+00:00"
    record_failed_release_with_rollback(ledger, rid, t0=T("2025-03-11T10:00"))
    log = ledger.changelog(RID)
    assert log["previous"] is None
    assert (log["from_commit"], log["to_commit"]) == ("a" * 40, "c" * 40)
    assert [(c["sha"], c["author"], c["message"], c["committed_at"], c["ci_status"]) for c in log["commits"]] == [
        ("c" * 40, "Carol", "Faster checkout", T("2025-03-10T08:00"), None),
        ("b" * 40, "Bob", "Fix cart rounding", T("2025-03-09T12:00"), "success"),
    ]
    log = ledger.changelog(rid)
    assert log["previous"]["release_id"] == RID
    assert [c["sha"] for c in log["commits"]] == ["d" * 40]
    assert ledger.changelog("demo_shop/none") is None


def test_changelog_of_a_release_that_stored_only_shas(ledger):
    ledger.upsert_commit("svc", "s1", author="Ann", message="one", committed_at=T("2025-01-01T00:00"))
    ledger.upsert_release("svc/r1", commit_range=["s1", "s2"], commit_sha="s1")
    log = ledger.changelog("svc/r1")
    assert [(c["sha"], c["author"], c["message"]) for c in log["commits"]] == [("s1", "Ann", "one"),
                                                                              ("s2", None, None)]
    assert (log["from_commit"], log["to_commit"]) == (None, "s1")


# -------------------------------------------------------------------------------------------- hook


def test_the_hook_falls_back_to_the_local_sqlite_ledger(monkeypatch, tmp_path):
    from conveyor.ledger.hook import LedgerHook

    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_CONVEYOR_LEDGER", raising=False)
    url = LedgerHook().ledger_url()
    assert url.get_backend_name() == "sqlite"
    assert url.database == str(tmp_path / "ledger.db")


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        ({"conn_type": "sqlite", "host": "/data/ledger.db"}, "sqlite:////data/ledger.db"),
        ({"conn_type": "postgres", "host": "db", "port": 5433, "login": "u", "password": "p", "schema": "ledger",
          "extra": {"sslmode": "require", "ignored": "x"}},
         "postgresql+psycopg2://u:p@db:5433/ledger?sslmode=require"),
        ({"conn_type": "generic", "extra": {"sqlalchemy_url": "postgresql+psycopg2://a@b/c"}},
         "postgresql+psycopg2://a@b/c"),
        # The URI form docker-compose.yaml uses.
        ("postgresql://airflow:airflow@postgres:5432/conveyor_ledger",
         "postgresql+psycopg2://airflow:airflow@postgres:5432/conveyor_ledger"),
    ],
)
def test_the_hook_builds_the_url_from_the_connection(monkeypatch, conn, expected):
    import json

    from conveyor.ledger.hook import LedgerHook

    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_LEDGER", conn if isinstance(conn, str) else json.dumps(conn))
    assert LedgerHook().ledger_url().render_as_string(hide_password=False) == expected


def test_the_hook_refuses_an_unknown_connection_type(monkeypatch):
    import json

    from conveyor.ledger.hook import LedgerHook

    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_LEDGER", json.dumps({"conn_type": "mysql", "host": "x"}))
    with pytest.raises(ValueError, match="not sqlite or postgres"):
        LedgerHook().ledger_url()


@pytest.mark.services
def test_the_hook_reaches_the_local_postgresql(monkeypatch, postgres_url):
    import json

    from conveyor.ledger.hook import LedgerHook

    db = postgres_url.rsplit("/", 1)[1]
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_LEDGER", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": db}))
    hook = LedgerHook()
    ok, message = hook.test_connection()
    assert ok, message
    assert message == f"Ledger reachable (postgresql), schema version {migrations.LATEST_VERSION}"
    hook.ledger.dispose()


def test_analysis_measurements_are_the_services_live_error_samples_newest_first(ledger):
    """What FleetMemory is built from: the errors samples of the waves' and the watch's analyses of the
    service's other releases; not a flag rollout's steps, not an analysis against a snapshot."""
    def analysis(rid: str, service: str, stage: str, label: str, minute: int, mode: str = "live",
                 spread: float = 0.01) -> None:
        ledger.upsert_release(rid, service=service, status="success", started_at=T("2025-03-10T10:00"))
        samples = {"mode": mode, "spread_estimate": spread, "spread_hosts": 3}
        ledger.upsert_stage(rid, stage, status="success", finished_at=T("2025-03-10T10:00") + dt.timedelta(minutes=minute),
                            detail={"label": label, "decision": "pass",
                                    "metrics": [{"metric": "latency", "samples": {"mode": mode}},
                                                {"metric": "errors", "samples": samples}]})

    analysis("demo_shop/r1", "demo_shop", "analyze_wave_1", "wave-1", 1, spread=0.01)
    analysis("demo_shop/r1", "demo_shop", "watch", "watch", 2, spread=0.02)
    analysis("demo_shop/r2", "demo_shop", "analyze_wave_1", "wave-1", 3, spread=0.03)
    analysis("demo_shop/r2", "demo_shop", "analyze_wave_2", "wave-2", 4, mode="static", spread=0.9)
    analysis("demo_shop/f1", "demo_shop", "step_1", "step-1", 5, spread=0.9)  # a flag rollout's step
    analysis("other/r1", "other", "analyze_wave_1", "wave-1", 6, spread=0.9)
    ledger.upsert_stage("demo_shop/r2", "build", status="success", detail={"label": "wave-9", "metrics": "junk"})
    ledger.upsert_stage("demo_shop/r2", "tests", status="success", detail={"label": "wave-8", "metrics": [None, 3]})

    rows = ledger.analysis_measurements("demo_shop")
    assert [r["spread_estimate"] for r in rows] == [0.03, 0.02, 0.01]
    assert [r["spread_estimate"] for r in ledger.analysis_measurements("demo_shop", exclude_release="demo_shop/r2")] \
        == [0.02, 0.01]
    assert ledger.analysis_measurements("nobody") == []
