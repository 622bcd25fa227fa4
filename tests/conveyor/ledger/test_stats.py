"""Release statistics (:mod:`conveyor.ledger.stats`) asserted exactly on a known ledger history.

The history (service ``shop``, seen from 2025-03-31 12:00 over 7 days, i.e. from 2025-03-25):

* A  03-25 success; every phase; approvals waited 600 s and 900 s; an incident recorded afterwards
* B  03-26 failed at tests (caught)             * C  03-27 rolled back at wave 1 of 2 (caught)
* D  03-28 failed at the watch (escaped)        * E  03-29 failed at wave 2 of 2, the last (escaped)
* F  03-29 soaked (a soak service's success)    * G  03-30 soak incident: failed at soak (caught)
* H  03-30 a promotion, success                 * I  03-31 running (undecided)
* J  03-31 failed with no failed stage recorded (unclassified)
* OLD 03-20 success, before the period (its incident does not count); other/X 03-28, another service.
"""

from __future__ import annotations

import datetime as dt

import pytest

from conveyor.ledger import Ledger
from conveyor.ledger.stats import compute_stats, phase_of
from tests.conveyor.ledger import test_ledger
from tests.conveyor.ledger.test_ledger import NOW, T

# the ledger fixtures of test_ledger: every case on SQLite and (marked ``services``) on PostgreSQL
postgres_url, ledger_url, ledger = test_ledger.postgres_url, test_ledger.ledger_url, test_ledger.ledger

PLAN_2 = {"plan": {"waves": [["p1"], ["p2", "p3"]]}}


def seed_stats_history(ledger: Ledger) -> None:
    def release(rid, status, started, finished=None, *, stages=(), labels=None, service="shop"):
        ledger.upsert_release(rid, service=service, status=status, started_at=T(started), version=rid[-1],
                              finished_at=T(finished) if finished else None, labels=labels or [],
                              deployed_at=T(finished) if status == "success" else None)
        for stage, stage_status, start, end, *detail in stages:
            ledger.upsert_stage(rid, stage, status=stage_status, started_at=T(start),
                                finished_at=T(end) if end else None, detail=detail[0] if detail else None,
                                error="Boom: it broke" if stage_status == "failed" else None)

    def hosts(rid, environment, names, at):
        for host in names:
            ledger.upsert_host_deployment(rid, host, environment=environment, status="deployed", at=T(at))

    release("shop/A", "success", "2025-03-25T10:00", "2025-03-25T11:00", stages=[
        ("validate", "success", "2025-03-25T10:00", "2025-03-25T10:01"),
        ("build", "success", "2025-03-25T10:01", "2025-03-25T10:05"),
        ("replica.deploy", "success", "2025-03-25T10:05", "2025-03-25T10:07"),
        ("tests", "success", "2025-03-25T10:07", "2025-03-25T10:15"),
        ("qa_signoff.approval_1", "success", "2025-03-25T10:15", "2025-03-25T10:25"),
        ("qa_signoff.approval_2", "success", "2025-03-25T10:25", "2025-03-25T10:40"),
        ("plan", "success", "2025-03-25T10:40", "2025-03-25T10:41", PLAN_2),
        ("wave_1.deploy", "success", "2025-03-25T10:41", "2025-03-25T10:45"),
        ("wave_1.analysis", "success", "2025-03-25T10:45", "2025-03-25T10:50"),
        ("wave_2.deploy", "success", "2025-03-25T10:50", "2025-03-25T10:55"),
        ("watch.analysis", "success", "2025-03-25T10:55", "2025-03-25T10:59"),
        ("finalize", "success", "2025-03-25T10:59", "2025-03-25T11:00"),
    ])
    # recorded out of order: the wait belongs to the k-th approval by time
    ledger.upsert_approval("shop/A", "qa2", decision="Approve", at=T("2025-03-25T10:40"))
    ledger.upsert_approval("shop/A", "qa1", decision="Approve", at=T("2025-03-25T10:25"))
    for test, outcome in (("t1", "passed"), ("t2", "passed"), ("t3", "passed")):
        ledger.upsert_test_result("shop/A", "smoke", test, outcome=outcome)
    ledger.upsert_test_result("shop/A", "e2e", "flaky", outcome="failed", pre_existing=True)
    hosts("shop/A", "replica", ["r1"], "2025-03-25T10:06")
    hosts("shop/A", "production", ["p1", "p2", "p3"], "2025-03-25T10:50")

    release("shop/B", "failed", "2025-03-26T10:00", "2025-03-26T10:20", stages=[
        ("validate", "success", "2025-03-26T10:00", "2025-03-26T10:01"),
        ("build", "success", "2025-03-26T10:01", "2025-03-26T10:05"),
        ("tests", "failed", "2025-03-26T10:05", "2025-03-26T10:15"),
        ("release_failed", "success", "2025-03-26T10:15", "2025-03-26T10:16"),
    ])
    for test, outcome in (("t1", "passed"), ("t2", "passed"), ("t3", "failed"), ("t4", "error"), ("t5", "skipped")):
        ledger.upsert_test_result("shop/B", "smoke", test, outcome=outcome)
    hosts("shop/B", "replica", ["r1"], "2025-03-26T10:04")

    release("shop/C", "rolled_back", "2025-03-27T09:00", "2025-03-27T10:00", stages=[
        ("build", "success", "2025-03-27T09:00", "2025-03-27T09:05"),
        ("qa_signoff.approval_1", "success", "2025-03-27T09:05", "2025-03-27T09:35"),
        ("plan", "success", "2025-03-27T09:35", "2025-03-27T09:36", PLAN_2),
        ("wave_1.deploy", "success", "2025-03-27T09:36", "2025-03-27T09:40"),
        ("wave_1.analysis", "failed", "2025-03-27T09:40", "2025-03-27T09:50"),
        ("rollback", "failed", "2025-03-27T09:50", "2025-03-27T09:55"),  # recovery never "stops" a release
    ])
    ledger.upsert_approval("shop/C", "qa1", decision="Approve", at=T("2025-03-27T09:35"))
    hosts("shop/C", "production", ["p1"], "2025-03-27T09:38")
    ledger.upsert_rollback("shop/C", "p1", status="rolled back", at=T("2025-03-27T09:54"))

    release("shop/D", "failed", "2025-03-28T12:00", "2025-03-28T13:00", stages=[
        ("plan", "success", "2025-03-28T12:00", "2025-03-28T12:01", PLAN_2),
        ("wave_1.deploy", "success", "2025-03-28T12:01", "2025-03-28T12:20"),
        ("wave_2.deploy", "success", "2025-03-28T12:20", "2025-03-28T12:40"),
        ("watch.analysis", "failed", "2025-03-28T12:40", "2025-03-28T12:55"),
    ])
    hosts("shop/D", "production", ["p1", "p2", "p3"], "2025-03-28T12:30")
    for host, status in (("p1", "rolled back"), ("p2", "rolled back"), ("p3", "failed: ssh timeout")):
        ledger.upsert_rollback("shop/D", host, status=status, at=T("2025-03-28T12:58"))

    release("shop/E", "failed", "2025-03-29T08:00", "2025-03-29T09:00", stages=[
        ("plan", "success", "2025-03-29T08:00", "2025-03-29T08:01", PLAN_2),
        ("wave_1.deploy", "success", "2025-03-29T08:01", "2025-03-29T08:20"),
        ("wave_2.deploy", "success", "2025-03-29T08:20", "2025-03-29T08:30"),
        ("wave_2.analysis", "failed", "2025-03-29T08:30", "2025-03-29T08:50"),
    ])
    hosts("shop/E", "production", ["p1", "p2", "p3"], "2025-03-29T08:25")

    release("shop/F", "soaked", "2025-03-29T10:00", "2025-03-30T10:00", stages=[
        ("build", "success", "2025-03-29T10:00", "2025-03-29T10:10"),
        ("wave_1.deploy", "success", "2025-03-29T10:10", "2025-03-29T10:30"),
        ("soak", "success", "2025-03-29T10:30", "2025-03-30T10:00"),
    ])
    hosts("shop/F", "soak", ["d1", "d2"], "2025-03-29T10:20")

    release("shop/G", "failed", "2025-03-30T08:00", "2025-03-30T09:00", stages=[
        ("soak", "failed", "2025-03-30T08:10", "2025-03-30T09:00"),
    ])
    hosts("shop/G", "soak", ["d1"], "2025-03-30T08:05")

    release("shop/H", "success", "2025-03-30T12:00", "2025-03-30T13:00", labels=["promotion"], stages=[
        ("select", "success", "2025-03-30T12:00", "2025-03-30T12:01"),
        ("promotion_signoff.approval_1", "success", "2025-03-30T12:01", "2025-03-30T12:31"),
        ("watch.analysis", "success", "2025-03-30T12:40", "2025-03-30T12:58"),
        ("finalize", "success", "2025-03-30T12:58", "2025-03-30T13:00"),
    ])
    ledger.upsert_approval("shop/H", "mgr1", "promotion", decision="Approve", at=T("2025-03-30T12:31"))
    hosts("shop/H", "production", ["p1", "p2", "p3"], "2025-03-30T12:35")

    release("shop/I", "running", "2025-03-31T08:00", stages=[("validate", "running", "2025-03-31T08:00", None)])
    release("shop/J", "failed", "2025-03-31T09:00", "2025-03-31T09:10")
    release("shop/OLD", "success", "2025-03-20T09:00", "2025-03-20T10:00")
    release("other/X", "success", "2025-03-28T09:00", "2025-03-28T09:30", service="other")

    ledger.add_incident("shop/A", reason="checkout 500s after the release", at=T("2025-03-26T09:00"))
    ledger.add_incident("shop/OLD", reason="before the period", at=T("2025-03-26T09:00"))
    ledger.add_incident("shop/H", reason="reported tomorrow", at=T("2025-04-01T09:00"))  # after now: ignored


def test_period_statistics_for_a_known_history(ledger):
    seed_stats_history(ledger)
    stats = ledger.stats("shop", days=7, now=NOW)
    assert stats["service"] == "shop"
    assert stats["period"] == {"start": "2025-03-25T00:00:00+00:00", "end": "2025-03-31T12:00:00+00:00", "days": 7}
    assert stats["releases"] == {
        "count": 10, "per_day": 10 / 7, "per_week": 10.0, "promotions": 1, "succeeded": 3, "failed": 6,
        "undecided": 1, "weeks": [{"week_of": "2025-03-24", "releases": 8}, {"week_of": "2025-03-31", "releases": 2}],
    }
    assert stats["success_rate"] == 3 / 9
    assert stats["duration"] == {"median_seconds": 3600.0, "max_seconds": 86400.0}
    assert stats["phases"] == {"build": 300.0, "test": 600.0, "sign-off": 1800.0, "waves": 1200.0,
                               "soak": 43800.0, "watch": 900.0, "recovery": 180.0}
    assert stats["tests"] == {"run": 8, "failed": 3, "pre_existing": 1}
    assert stats["approvals"] == {"count": 4, "median_wait_seconds": 1350.0, "max_wait_seconds": 1800.0}
    assert stats["rollbacks"] == {"releases": 2, "hosts": 4, "failed": 1}
    assert stats["hosts_touched"] == {"production": 13, "replica": 2, "soak": 3}
    assert stats["failed_changes"] == {
        "count": 7, "caught": 3, "escaped": 3, "unclassified": 1, "caught_rate": 0.5,
        "caught_by_stage": {"soak": 1, "tests": 1, "wave_1": 1},
        "escaped_by_stage": {"incident": 1, "watch": 1, "wave_2": 1}, "incidents": 1,
    }
    series = {day["date"]: day for day in stats["series"]}
    assert list(series) == [f"2025-03-{d}" for d in range(25, 32)]
    assert series["2025-03-25"] == {
        "date": "2025-03-25", "releases": 1, "succeeded": 1, "failed": 0, "build_median_seconds": 300.0,
        "test_median_seconds": 600.0, "sign-off_median_seconds": 1500.0, "waves_median_seconds": 900.0,
        "soak_median_seconds": None, "watch_median_seconds": 300.0, "recovery_median_seconds": None}
    assert (series["2025-03-29"]["releases"], series["2025-03-29"]["succeeded"], series["2025-03-29"]["failed"]) == (
        2, 1, 1)
    assert series["2025-03-29"]["waves_median_seconds"] == 2100.0
    assert (series["2025-03-31"]["releases"], series["2025-03-31"]["failed"]) == (2, 1)


def test_a_flag_rollout_is_not_a_release(ledger):
    """A ``flag_<service>`` run is in the ledger (its record, its stages) but ships no build: not counted."""
    seed_stats_history(ledger)
    before = ledger.stats("shop", days=7, now=NOW)
    ledger.upsert_release("shop/flag-run", service="shop", status="failed", started_at=T("2025-03-30T10:00"),
                          finished_at=T("2025-03-30T10:30"), version="flag fast", labels=["flag", "fast"])
    ledger.upsert_stage("shop/flag-run", "step_2.analysis", status="failed", started_at=T("2025-03-30T10:10"),
                        finished_at=T("2025-03-30T10:20"), error="AnalysisFailed: errors")
    assert ledger.stats("shop", days=7, now=NOW) == before


def test_per_release_statistics(ledger):
    seed_stats_history(ledger)
    rows = {r["release_id"]: r for r in ledger.stats("shop", days=7, now=NOW)["release_list"]}
    assert list(rows) == ["shop/J", "shop/I", "shop/H", "shop/G", "shop/F", "shop/E", "shop/D", "shop/C", "shop/B",
                          "shop/A"]  # newest first; OLD is before the period, other/X another service
    a = rows["shop/A"]
    assert (a["duration_seconds"], a["stopped_at"], a["incidents"], a["promotion"]) == (3600.0, None, 1, False)
    assert a["phases"] == {"build": 300.0, "test": 600.0, "sign-off": 1500.0, "waves": 900.0, "watch": 300.0}
    assert a["stages"][0] == {"stage": "validate", "status": "success", "seconds": 60.0}
    assert [(x["stage"], x["approver"], x["wait_seconds"]) for x in a["approvals"]] == [
        ("qa", "qa1", 600.0), ("qa", "qa2", 900.0)]
    assert a["tests"] == {"run": 4, "failed": 1, "pre_existing": 1}
    assert a["hosts_touched"] == {"production": 3, "replica": 1}
    assert a["failed_change"] == {"caught": False, "stage": "incident"}
    assert rows["shop/B"]["tests"] == {"run": 4, "failed": 2, "pre_existing": 0}
    assert (rows["shop/B"]["stopped_at"], rows["shop/B"]["failed_change"]) == ("tests", {"caught": True,
                                                                                         "stage": "tests"})
    assert rows["shop/C"]["stopped_at"] == "wave_1.analysis"
    assert rows["shop/C"]["rollbacks"] == {"hosts": 1, "failed": 0}
    assert rows["shop/D"]["failed_change"] == {"caught": False, "stage": "watch"}
    assert rows["shop/D"]["rollbacks"] == {"hosts": 3, "failed": 1}
    assert rows["shop/E"]["failed_change"] == {"caught": False, "stage": "wave_2"}
    assert rows["shop/F"]["failed_change"] is None and rows["shop/F"]["status"] == "soaked"
    assert rows["shop/G"]["failed_change"] == {"caught": True, "stage": "soak"}
    h = rows["shop/H"]
    assert (h["promotion"], h["incidents"], h["failed_change"]) == (True, 0, None)  # its incident is after now
    assert h["approvals"][0]["stage"] == "promotion" and h["approvals"][0]["wait_seconds"] == 1800.0
    assert rows["shop/I"]["duration_seconds"] is None and rows["shop/I"]["failed_change"] is None
    assert rows["shop/J"]["failed_change"] == {"caught": None, "stage": None}


def test_statistics_over_all_services_and_other_periods(ledger):
    seed_stats_history(ledger)
    everything = ledger.stats(None, days=7, now=NOW)
    assert everything["service"] is None
    assert everything["releases"]["count"] == 11 and everything["releases"]["succeeded"] == 4
    today = ledger.stats("shop", days=1, now=NOW)
    assert today["releases"]["count"] == 2
    assert today["success_rate"] == 0.0
    assert today["failed_changes"]["caught_rate"] is None  # J is unclassified, I undecided
    # seen from 03-27 00:00, A's incident (03-26) is known and B was caught: half caught
    earlier = ledger.stats("shop", days=3, now=T("2025-03-27T00:00"))
    assert earlier["releases"]["count"] == 2
    assert earlier["failed_changes"]["caught_rate"] == 0.5
    empty = ledger.stats("nobody", days=30, now=NOW)
    assert empty["releases"]["count"] == 0 and empty["success_rate"] is None
    assert len(empty["series"]) == 30
    with pytest.raises(ValueError, match="at least 1"):
        ledger.stats("shop", days=0, now=NOW)


def test_compute_stats_is_pure_and_matches_the_ledger(ledger):
    seed_stats_history(ledger)
    releases = [ledger.get_release(r["release_id"]) for r in ledger.list_releases("shop", limit=None)]
    incidents = ledger.list_incidents("shop")
    assert compute_stats(releases, now=NOW, days=7, incidents=incidents) == {
        k: v for k, v in ledger.stats("shop", days=7, now=NOW).items() if k != "service"}


def test_an_incident_needs_a_known_release_and_a_reason(ledger):
    seed_stats_history(ledger)
    with pytest.raises(LookupError, match="release 'shop/nope' is not in the ledger"):
        ledger.add_incident("shop/nope", reason="x")
    with pytest.raises(ValueError, match="needs a reason"):
        ledger.add_incident("shop/A", reason="   ")
    row = ledger.add_incident("shop/A", reason="again, reworded", at=T("2025-03-26T09:00"), recorded_by="ops")
    assert (row["service"], row["reason"]) == ("shop", "again, reworded")
    shop_a = [i for i in ledger.list_incidents("shop") if i["release_id"] == "shop/A"]
    assert [(i["reason"], i["recorded_by"]) for i in shop_a] == [("again, reworded", "ops")]  # an upsert
    assert ledger.list_incidents("other") == []


@pytest.mark.parametrize(("stage", "phase"), [
    ("validate", "build"), ("replica.populate", "test"), ("client_signoff.approval_1", "sign-off"),
    ("wave_12.decide", "waves"), ("watch.decide", "watch"), ("fail_run", "recovery"), ("mystery", None)])
def test_phase_of(stage, phase):
    assert phase_of(stage) == phase


def test_a_naive_now_is_utc_and_times_are_compared_as_utc():
    release = {"release_id": "s/1", "service": "s", "status": "success", "started_at": "2025-03-31T01:00:00+02:00",
               "finished_at": dt.datetime(2025, 3, 31, 0, 30), "stages": []}
    # 01:00+02:00 on 03-31 is 23:00 UTC on 03-30: not in the last day, in the last two
    assert compute_stats([release], now=dt.datetime(2025, 3, 31, 12), days=1)["releases"]["count"] == 0
    assert compute_stats([release], now=dt.datetime(2025, 3, 31, 12), days=2)["release_list"][0][
        "duration_seconds"] == 5400.0
