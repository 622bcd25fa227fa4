"""Analysis details as the ``CanaryAnalysisOperator`` records them, from a real ``judge()`` verdict on
simulated scrapes, with the per-interval timeline of the same scrapes (``details["timeline"]``).

The judge records the timeline itself; it is also computed here from the scrapes (per-interval deltas
of the summed counters, latency quantiles interpolated in the interval's histogram as PromQL's
``histogram_quantile`` does) for a verdict without one, so the chart tests draw the same data either way.
"""

from __future__ import annotations

import math
from typing import Any

from conveyor.analysis import AnalysisSettings, Scrape, Verdict, judge
from tests.conveyor.analysis.test_judging import SLOW_SHAPE, series

STEP_S = 10.0


def decide(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]],
           settings: AnalysisSettings) -> tuple[Verdict, int]:
    """Ask the judge after every scrape, as the trigger does, until it decides: the verdict and the scrapes seen."""
    n = max(len(s) for s in [*canary.values(), *baseline.values()])
    for k in range(1, n + 1):
        verdict = judge({h: s[:k] for h, s in canary.items()}, {h: s[:k] for h, s in baseline.items()}, settings,
                        elapsed_s=(k - 1) * STEP_S)
        if verdict.decision != "continue":
            return verdict, k
    raise AssertionError("the judge never decided")


def _quantile_ms(before: Scrape, after: Scrape, q: float) -> float | None:
    bounds = sorted(after.latency_buckets)
    total = after.latency_count - before.latency_count
    if total <= 0:
        return None
    rank, low_bound, low_count = q * total, 0.0, 0.0
    for bound in bounds:
        count = after.latency_buckets[bound] - before.latency_buckets.get(bound, 0.0)
        if count >= rank:
            if math.isinf(bound):
                return 1000 * low_bound
            share = (rank - low_count) / (count - low_count) if count > low_count else 1.0
            return 1000 * (low_bound + (bound - low_bound) * share)
        low_bound, low_count = bound, count
    return None


def _side(scrapes: dict[str, list[Scrape]], k: int) -> dict[str, list[float | None]]:
    """Per interval (1..k-1): requests, errors (5xx), latency p75/p99 (ms) of the hosts pooled."""
    out: dict[str, list[float | None]] = {"requests": [], "errors": [], "p75_ms": [], "p99_ms": []}
    for i in range(1, k):
        requests = sum(sum(s[i].requests.values()) - sum(s[i - 1].requests.values()) for s in scrapes.values())
        errors = sum(sum(v for c, v in s[i].requests.items() if c.startswith("5"))
                     - sum(v for c, v in s[i - 1].requests.items() if c.startswith("5")) for s in scrapes.values())
        out["requests"].append(requests)
        out["errors"].append(errors)
        # hosts pooled: one combined histogram per interval (every host has the same bounds here)
        pooled_before = _pool([s[i - 1] for s in scrapes.values()])
        pooled_after = _pool([s[i] for s in scrapes.values()])
        out["p75_ms"].append(_quantile_ms(pooled_before, pooled_after, 0.75))
        out["p99_ms"].append(_quantile_ms(pooled_before, pooled_after, 0.99))
    return out


def _pool(scrapes: list[Scrape]) -> Scrape:
    buckets: dict[float, float] = {}
    for s in scrapes:
        for b, c in s.latency_buckets.items():
            buckets[b] = buckets.get(b, 0.0) + c
    return Scrape(t=scrapes[0].t, requests={}, latency_buckets=buckets,
                  latency_sum=sum(s.latency_sum for s in scrapes), latency_count=sum(s.latency_count for s in scrapes))


def timeline_of(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]], k: int) -> dict[str, Any]:
    """``details["timeline"]`` of the first ``k`` scrapes: interval ends in seconds since the first scrape."""
    t0 = min(s[0].t for s in canary.values())
    first = next(iter(canary.values()))
    return {"t": [first[i].t - t0 for i in range(1, k)], "canary": _side(canary, k), "baseline": _side(baseline, k)}


def recorded(verdict: Verdict, timeline: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """The detail the analysis operator records: ``{label, canary, baseline, elapsed_s, **verdict}``.

    The judge's own timeline is kept when it records one (``timeline`` stands in for a judge that does not);
    ``timeline=None`` makes an older ledger row, without one.
    """
    detail = {"label": "wave-1", "canary": ["prod-1"], "baseline": ["prod-2", "prod-3", "prod-4"],
              "elapsed_s": verdict.elapsed_s, **verdict.to_dict(), **extra}
    if timeline is not None:
        detail["details"] = {"timeline": timeline, **detail["details"]}
    else:
        detail["details"] = {k: v for k, v in detail["details"].items() if k != "timeline"}  # an older row
    return detail


def failing_errors(**extra: Any) -> tuple[dict[str, Any], int]:
    """A canary erring at 5% against three baseline hosts at 1%: the recorded detail and the scrapes seen."""
    canary = {"prod-1": series(60, 100, 5)}
    baseline = {f"prod-{i}": series(60, 100, 1) for i in range(2, 5)}
    verdict, k = decide(canary, baseline, AnalysisSettings(window_s=600))
    return recorded(verdict, timeline_of(canary, baseline, k), **extra), k


def slow_canary() -> tuple[dict[str, Any], int]:
    """A canary with no more errors but clearly slower (``SLOW_SHAPE``)."""
    canary = {"prod-1": series(60, 100, 1, shape=SLOW_SHAPE)}
    baseline = {f"prod-{i}": series(60, 100, 1) for i in range(2, 5)}
    verdict, k = decide(canary, baseline, AnalysisSettings(window_s=600))
    return recorded(verdict, timeline_of(canary, baseline, k)), k


def too_little_traffic(**extra: Any) -> tuple[dict[str, Any], int]:
    """Five requests per interval per host over a one-minute window: inconclusive at the window's end."""
    canary = {"prod-1": series(6, 5, 0)}
    baseline = {f"prod-{i}": series(6, 5, 0) for i in range(2, 5)}
    verdict, k = decide(canary, baseline, AnalysisSettings(window_s=60))
    return recorded(verdict, timeline_of(canary, baseline, k), **extra), k
