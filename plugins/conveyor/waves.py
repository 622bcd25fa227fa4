"""Wave planning: which hosts go in which wave. Pure functions, no Airflow import."""

from __future__ import annotations

import math
from collections.abc import Sequence


def wave_sizes(total: int, waves: Sequence[int | str]) -> list[int]:
    """Cumulative wave targets to per-wave host counts.

    Each entry is an absolute host count (``1``) or a share of the fleet (``"25%"``), cumulative,
    rounded up; every wave adds at least one host while hosts remain, and the last wave always
    reaches the whole fleet. ``wave_sizes(6, [1, "25%", "50%", "100%"]) == [1, 1, 1, 3]``.
    Waves that would add nobody (a small fleet) are dropped.
    """
    if total <= 0:
        return []
    sizes: list[int] = []
    done = 0
    for i, wave in enumerate(waves):
        if isinstance(wave, str):
            target = math.ceil(total * int(wave.rstrip("%")) / 100)
        else:
            target = int(wave)
        if i == len(waves) - 1:
            target = total
        target = min(total, max(target, done + 1))
        if target > done:
            sizes.append(target - done)
            done = target
        if done >= total:
            break
    if done < total:
        sizes.append(total - done)
    return sizes


def plan_waves(hosts: Sequence[str], waves: Sequence[int | str], n_waves: int | None = None) -> list[list[str]]:
    """Split ``hosts`` (in order) into waves; padded with empty waves up to ``n_waves``."""
    plan: list[list[str]] = []
    i = 0
    for size in wave_sizes(len(hosts), waves):
        plan.append(list(hosts[i:i + size]))
        i += size
    if n_waves is not None:
        if len(plan) > n_waves:  # more hosts than waves can hold: the last wave takes the rest
            plan = plan[: n_waves - 1] + [[h for w in plan[n_waves - 1:] for h in w]]
        plan += [[] for _ in range(n_waves - len(plan))]
    return plan
