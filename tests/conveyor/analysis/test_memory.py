"""FleetMemory: what a service's past releases measured about its fleet, and what the judge does with it."""

from __future__ import annotations

import math

import pytest

from conveyor.analysis import FleetMemory, judge
from conveyor.analysis.model import MEMORY_MAX_DF
from tests.conveyor.analysis.test_judging import _history, series, settings


def test_past_measurements_are_pooled_by_their_degrees_of_freedom_and_junk_is_ignored():
    rows = [  # newest first, as the ledger gives them
        {"spread_estimate": 0.01, "spread_hosts": 3, "moved_estimate": 0.004, "moved_hosts": 3},
        {"spread_estimate": -0.002, "spread_hosts": 6, "moved_estimate": None, "moved_hosts": 0},
        {"spread_estimate": math.nan, "spread_hosts": 6},
        {"spread_estimate": "0.5", "spread_hosts": 6},
        {"spread_estimate": True, "spread_hosts": 6},
        {"spread_estimate": 0.5, "spread_hosts": 1},  # one host: no spread
        {"spread_estimate": 0.5, "spread_hosts": None},
        {},
    ]
    memory = FleetMemory.from_samples(rows)
    # moment estimates are pooled before the cut at 0: (2 x 0.01 + 5 x -0.002) / 7
    assert memory.spread2 == pytest.approx((2 * 0.01 - 5 * 0.002) / 7)
    assert memory.spread_df == 7
    assert (memory.moved, memory.moved_df) == (pytest.approx(0.004), 2)
    assert memory.releases == 2
    # a pool below 0 is no spread, never a negative variance
    assert FleetMemory.from_samples([{"spread_estimate": -0.01, "spread_hosts": 4}]).spread2 == 0.0


def test_the_newest_releases_fill_the_memory_and_older_ones_are_left_out():
    rows = [{"spread_estimate": 0.01, "spread_hosts": 3}] * 10 + [{"spread_estimate": 0.5, "spread_hosts": 3}] * 5
    memory = FleetMemory.from_samples(rows)
    assert memory.spread_df == MEMORY_MAX_DF
    assert memory.spread2 == pytest.approx(0.01)  # the five oldest (0.5) did not fit
    assert memory.releases == 10


def test_nothing_remembered_is_the_empty_memory_and_it_round_trips():
    empty = FleetMemory.from_samples([])
    assert (empty.spread2, empty.moved, empty.releases) == (None, None, 0)
    assert FleetMemory.from_dict(None) == FleetMemory.from_dict({}) == empty
    memory = FleetMemory(spread2=0.02, spread_df=12.0, moved=0.001, moved_df=8.0, releases=5)
    assert FleetMemory.from_dict(memory.to_dict()) == memory


def test_a_fleet_remembered_as_tight_or_wide_narrows_or_keeps_the_host_spread():
    """A canary erring 1.4x three baseline hosts: within the typical fleet's spread (15 %) a first release
    lets it through; a service whose hosts have always erred alike rolls it back; a wide one does not."""
    s = settings(metrics=["errors"])
    baseline = {f"b{i}": series(60, 1000, 10) for i in range(3)}
    canary = {"c1": series(60, 1000, 14)}
    tight = FleetMemory(spread2=0.0, spread_df=20, moved=0.0, moved_df=20, releases=10)
    wide = FleetMemory(spread2=0.09, spread_df=20, moved=0.0, moved_df=20, releases=10)
    assert judge(canary, baseline, s, elapsed_s=600).decision == "pass"
    v = judge(canary, baseline, s, elapsed_s=600, memory=tight)
    assert v.decision == "fail"
    assert v.metrics[0].samples["memory_releases"] == 10
    assert v.metrics[0].samples["memory_spread"] == 0.0
    assert judge(canary, baseline, s, elapsed_s=600, memory=wide).decision == "pass"
    # the judge's own measurement is reported for the next release's memory
    assert v.metrics[0].samples["spread_hosts"] == 3
    assert v.metrics[0].samples["spread_estimate"] is not None


def test_a_fleet_whose_differences_never_lasted_does_not_trust_the_canary_hosts_history():
    """The canary host erred twice the pool's rate before the deploy. Remembered releases in which
    hosts' differences did not survive the deploy make that history worth little; ones in which they
    lasted make it worth what it measured, where a first release's three hosts could not show it."""
    s = settings(metrics=["errors"])
    baseline = {f"b{i}": series(60, 100, 1) for i in range(3)}
    canary = {"c1": series(60, 100, 2)}
    history = {"c1": _history(2.0), **{f"b{i}": _history(1.0) for i in range(3)}}
    first = judge(canary, baseline, s, elapsed_s=600, history=history).metrics[0].samples["history_null_shift"]
    moved = FleetMemory(spread2=0.0225, spread_df=20, moved=0.045, moved_df=20, releases=10)  # 2 tau^2: no carry
    lasted = FleetMemory(spread2=0.0225, spread_df=20, moved=0.0, moved_df=20, releases=10)
    shift_moved = judge(canary, baseline, s, elapsed_s=600, history=history,
                        memory=moved).metrics[0].samples["history_null_shift"]
    shift_lasted = judge(canary, baseline, s, elapsed_s=600, history=history,
                         memory=lasted).metrics[0].samples["history_null_shift"]
    assert first == pytest.approx(1.0)  # three hosts cannot show that differences last (see test_judging)
    assert shift_moved < 1.2 < shift_lasted


def test_memory_is_left_out_when_overdispersion_is_off():
    s = settings(metrics=["errors"], overdispersion=False)
    baseline = {f"b{i}": series(60, 1000, 10) for i in range(3)}
    canary = {"c1": series(60, 1000, 14)}
    tight = FleetMemory(spread2=0.0, spread_df=20, moved=0.0, moved_df=20, releases=10)
    plain = judge(canary, baseline, s, elapsed_s=600)
    remembered = judge(canary, baseline, s, elapsed_s=600, memory=tight)
    assert remembered.metrics[0].boundary == plain.metrics[0].boundary
    assert remembered.metrics[0].samples["memory_releases"] == 0
