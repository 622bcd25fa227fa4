"""Wave planning: canary first, cumulative percentages, every host exactly once."""

from __future__ import annotations

import pytest

from conveyor.waves import plan_waves, wave_sizes

DEFAULT = [1, "25%", "50%", "100%"]


@pytest.mark.parametrize(
    ("total", "expected"),
    [(6, [1, 1, 1, 3]), (1, [1]), (2, [1, 1]), (4, [1, 1, 1, 1]), (100, [1, 24, 25, 50]), (0, [])],
)
def test_wave_sizes(total, expected):
    assert wave_sizes(total, DEFAULT) == expected


@pytest.mark.parametrize("total", range(1, 40))
def test_every_host_once_in_order(total):
    hosts = [f"h{i}" for i in range(total)]
    plan = plan_waves(hosts, DEFAULT, n_waves=4)
    assert len(plan) == 4
    assert [h for w in plan for h in w] == hosts
    assert plan[0] == ["h0"]  # the canary is one host


def test_last_wave_always_completes_the_fleet():
    assert sum(wave_sizes(10, [2, "30%"])) == 10
    assert plan_waves(list("abcdef"), [1, 2], n_waves=2) == [["a"], ["b", "c", "d", "e", "f"]]
