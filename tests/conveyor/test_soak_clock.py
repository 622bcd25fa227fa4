"""Soak clocks (:mod:`conveyor.soak`): eligibility for promotion, and why, from the ledger's ``soaks`` rows.

Most rows go through a real SQLite ledger, so the clocks are judged on what the ledger gives back
(aware UTC datetimes, the status merge rules), as the pages, the CLI and the promote DAG see them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from conveyor.ledger import Ledger
from conveyor.soak import pick_candidate, soak_clocks, version_key

T0 = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
HOUR = 3600.0


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.dispose()


def soak(ledger: Ledger, version: str, *, started: float, status: str = "passed", min_seconds: float = HOUR,
         watched: float | None = None, change: str = "minor", **fields) -> str:
    """Record a build's soak that started ``started`` minutes after T0 (watched until ``watched`` minutes)."""
    release_id = f"demo_shop/manual__{version}"
    ledger.upsert_soak(release_id, service="demo_shop", version=version, change_kind=change, status=status,
                       started_at=at(started), min_seconds=min_seconds,
                       watched_until=at(watched) if watched is not None else None, **fields)
    return release_id


def update(ledger: Ledger, release_id: str, **fields) -> None:
    """A later write to a soak gives only what changes (every column but the key may be NULL)."""
    ledger.upsert_soak(release_id, **fields)


def clocks(ledger: Ledger, production: str | None = None, now: dt.datetime | None = None):
    return {c.version: c for c in soak_clocks(ledger.list_soaks("demo_shop"), production_version=production,
                                              now=now or at(24 * 60))}


def test_a_build_that_passed_its_minimum_is_eligible(ledger):
    soak(ledger, "v1.1.0", started=0, watched=60)
    clock = clocks(ledger)["v1.1.0"]
    assert clock.eligible is True
    assert clock.why == "eligible: soaked 1h with no incident"
    assert (clock.soaked_seconds, clock.remaining_seconds) == (HOUR, 0.0)
    assert (clock.minimum, clock.soaked, clock.remaining) == ("1h", "1h", "0s")
    assert clock.started_at == T0


def test_a_build_is_not_eligible_before_its_minimum(ledger):
    soak(ledger, "v1.1.0", started=0, status="soaking")
    clock = clocks(ledger, now=at(30))["v1.1.0"]
    assert clock.eligible is False
    assert clock.remaining_seconds == 30 * 60
    assert clock.why == "soaking: 30m of 1h, 30m to go"

    # Past the minimum, still soaking: the watch has not closed the soak, so not yet.
    clock = clocks(ledger, now=at(90))["v1.1.0"]
    assert (clock.eligible, clock.remaining_seconds) == (False, 0.0)
    assert clock.why.startswith("soaking: the minimum has passed but the watch has not closed the soak yet")


def test_a_soak_marked_passed_without_a_full_watch_is_not_eligible(ledger):
    soak(ledger, "v1.1.0", started=0, watched=50)  # a soak task marked success by hand: the clock stays short
    clock = clocks(ledger)["v1.1.0"]
    assert clock.eligible is False
    assert clock.remaining_seconds == 10 * 60
    assert clock.why == "not soaked: the watch covered 50m of 1h"


def test_an_incident_is_final_even_if_passed_is_written_later(ledger):
    rid = soak(ledger, "v1.2.0", started=0, status="soaking")
    update(ledger, rid, status="incident", incident="error rate 4.2% vs 0.3%", ended_at=at(20),
           watched_until=at(19))
    update(ledger, rid, status="passed", watched_until=at(120))  # a rerun of the watch, say
    assert ledger.get_soak(rid)["status"] == "incident"

    clock = clocks(ledger)["v1.2.0"]
    assert clock.status == "incident"
    assert clock.eligible is False
    assert clock.incident == "error rate 4.2% vs 0.3%"
    assert clock.why == "never promoted: incident during soak: error rate 4.2% vs 0.3%"
    assert clock.remaining_seconds == 0.0
    assert pick_candidate(clocks(ledger).values()) == (
        None, "no build is eligible for promotion (v1.2.0: never promoted: incident during soak: "
              "error rate 4.2% vs 0.3%)")


def test_a_superseded_build_is_not_eligible(ledger):
    soak(ledger, "v1.1.0", started=0, status="superseded", ended_at=at(20))
    clock = clocks(ledger)["v1.1.0"]
    assert clock.eligible is False
    assert clock.soaked_seconds == 20 * 60
    assert clock.why == "soak ended after 20m of 1h: another build replaced it on the soak cluster"


def test_a_soak_aborted_by_its_release_is_not_eligible_and_says_why(ledger):
    rid = soak(ledger, "v1.1.0", started=0, status="soaking")
    update(ledger, rid, status="aborted", ended_at=at(30), detail={"aborted": "the soak cluster was rolled back"})
    update(ledger, rid, status="passed", watched_until=at(70))  # a late write does not revive it
    clock = clocks(ledger)["v1.1.0"]
    assert (clock.status, clock.eligible) == ("aborted", False)
    assert clock.why == "soak aborted after 30m of 1h: the soak cluster was rolled back"


def test_a_promoted_build_is_not_eligible_again(ledger):
    rid = soak(ledger, "v1.1.0", started=0, watched=60)
    update(ledger, rid, status="promoted", promoted_release_id="demo_shop/promote__1", promoted_at=at(120))
    clock = clocks(ledger)["v1.1.0"]
    assert (clock.status, clock.eligible) == ("promoted", False)
    assert clock.promoted_release_id == "demo_shop/promote__1"
    assert clock.why == "promoted (demo_shop/promote__1)"


def test_a_build_older_than_production_by_build_order(ledger):
    # Versions that are not release numbers: only the order in which they soaked tells which is older.
    soak(ledger, "g1a2b3c", started=0, watched=60)
    soak(ledger, "g4d5e6f", started=90, watched=150)  # promoted to production from its soak
    soak(ledger, "g7a8b9c", started=180, watched=240)
    found = clocks(ledger, production="g4d5e6f")
    assert found["g1a2b3c"].eligible is False
    assert found["g1a2b3c"].why == "never promoted: older than g4d5e6f, which production runs (built after it)"
    assert found["g4d5e6f"].why == "production already runs g4d5e6f"
    assert found["g7a8b9c"].eligible is True
    assert [c.version for c in soak_clocks(ledger.list_soaks("demo_shop"), production_version="g4d5e6f",
                                           now=at(300))] == ["g7a8b9c", "g4d5e6f", "g1a2b3c"]  # newest first


def test_a_build_older_than_production_by_version_number(ledger):
    # Production's version never soaked here (released before soaks existed): the numbers decide.
    soak(ledger, "v1.9.5", started=0, watched=60)
    soak(ledger, "v1.10.0", started=90, watched=150)
    found = clocks(ledger, production="v1.10.0-rc")  # not a release number: nothing to compare with
    assert found["v1.9.5"].eligible is True
    found = clocks(ledger, production="v1.10.0")
    assert found["v1.10.0"].why == "production already runs v1.10.0"
    found = clocks(ledger, production="v1.9.9")
    assert found["v1.9.5"].why == "never promoted: older than v1.9.9, which production runs"
    assert found["v1.10.0"].eligible is True  # 10 > 9: numbers, not text
    assert version_key("v1.10.0") == (1, 10, 0)
    assert version_key("1.10.0-dirty") is None


def test_pick_candidate_newest_eligible_and_a_named_version(ledger):
    soak(ledger, "v1.1.0", started=0, watched=60)
    rid = soak(ledger, "v1.2.0", started=90, status="soaking")
    update(ledger, rid, status="incident", incident="p99 latency 900ms vs 120ms", ended_at=at(100))
    soak(ledger, "v1.3.0", started=120, status="soaking")
    found = list(clocks(ledger, now=at(150)).values())

    clock, why = pick_candidate(found)
    assert (clock.version, why) == ("v1.1.0", "eligible: soaked 1h with no incident")
    clock, why = pick_candidate(found, "v1.2.0")
    assert clock is None
    assert why == "v1.2.0 may not be promoted: never promoted: incident during soak: p99 latency 900ms vs 120ms"
    clock, why = pick_candidate(found, "v1.3.0")
    assert clock is None
    assert why == "v1.3.0 may not be promoted: soaking: 30m of 1h, 30m to go"
    assert pick_candidate(found, "v9.9.9") == (None, "v9.9.9 has not soaked on the soak cluster (no soak recorded)")
    assert pick_candidate([]) == (None, "no build has soaked yet")


def test_a_major_change_is_judged_by_its_recorded_minimum(ledger):
    soak(ledger, "v2.0.0", started=0, watched=120, change="major", min_seconds=24 * HOUR)
    soak(ledger, "v1.9.0", started=-180, watched=-60)  # minor: 1h, passed
    found = clocks(ledger)
    major = found["v2.0.0"]
    assert (major.change, major.minimum, major.eligible) == ("major", "1d", False)
    assert major.remaining_seconds == 22 * HOUR
    assert major.why == "not soaked: the watch covered 2h of 1d"
    assert found["v1.9.0"].eligible is True
    assert pick_candidate(found.values())[0].version == "v1.9.0"


def test_to_dict_is_json_ready():
    rows = [{"release_id": "demo_shop/r1", "service": "demo_shop", "version": "v1.1.0", "change_kind": "minor",
             "status": "passed", "started_at": "2026-11-20T12:00:00+02:00", "min_seconds": 1800,
             "watched_until": "2026-11-20T10:45:00+00:00"}]
    [clock] = soak_clocks(rows, production_version=None, now=at(60))
    assert clock.started_at == T0 and clock.started_at.tzinfo == dt.UTC  # shown as UTC on the pages
    assert clock.to_dict() == {
        "release_id": "demo_shop/r1", "service": "demo_shop", "version": "v1.1.0", "change": "minor",
        "status": "passed", "started_at": "2026-11-20T10:00:00+00:00", "min_seconds": 1800.0,
        "soaked_seconds": 2700.0, "remaining_seconds": 0.0, "incident": None, "eligible": True,
        "why": "eligible: soaked 45m with no incident", "promoted_release_id": None,
        "minimum": "30m", "soaked": "45m", "remaining": "0s",
    }
