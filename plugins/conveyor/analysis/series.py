"""From per-host cumulative scrapes to per-interval counts, handling restarts, gaps and NaN.

A counter that goes down, or a ``start_time`` that changes, means the process restarted: the new
value is what was counted since the restart (Prometheus ``rate()`` semantics). A NaN reading is "no
reading": the next good reading is compared with the last good one. Scrapes of different hosts
taken in the same round are aligned into common intervals, so that canary and baseline counts
cover the same stretch of time.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from conveyor.analysis.model import AnalysisSettings, Scrape

_CACHE_ATTR = "_conveyor_vector"


@dataclass
class HostCounts:
    """One host's readings as arrays (J scrapes), restart-adjusted and cumulative from its first scrape.

    Columns of ``values``: requests, errors, latency count, latency sum, then one per finite bound.
    """

    name: str
    times: np.ndarray
    values: np.ndarray
    bounds: tuple[float, ...]
    restarts: int
    starts: np.ndarray | None = None  # the process's start time at each scrape (NaN: unknown), for the warm-up

    @property
    def requests(self) -> float:
        return float(self.values[-1, 0]) if len(self.values) else 0.0


def _vector(scrape: Scrape, statuses: tuple[str, ...], settings: AnalysisSettings) -> tuple:
    """The numbers the judge needs from one scrape, cached on the scrape (scrapes are values)."""
    cached = scrape.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] == statuses:
        return cached[1]
    total = 0.0
    errors = 0.0
    for status, value in scrape.requests.items():
        v = float(value)
        total += v
        if settings.is_error(status):
            errors += v
    bounds = []
    counts = []
    inf_count = math.nan
    for le, value in sorted(scrape.latency_buckets.items()):
        le = float(le)
        if math.isinf(le):
            inf_count = float(value)
        else:
            bounds.append(le)
            counts.append(float(value))
    count = float(scrape.latency_count)
    if (not count or math.isnan(count)) and not math.isnan(inf_count):
        count = inf_count
    start = scrape.start_time
    start = float(start) if start is not None and math.isfinite(float(start)) else math.nan
    vec = (float(scrape.t), start, (total, errors, count, float(scrape.latency_sum)), tuple(bounds), counts)
    scrape.__dict__[_CACHE_ATTR] = (statuses, vec)
    return vec


_LRU: OrderedDict[tuple, tuple[list[Scrape], HostCounts, np.ndarray, float]] = OrderedDict()
_LRU_SIZE = 512
_LOCK = threading.Lock()


def host_counts(name: str, scrapes: list[Scrape], settings: AnalysisSettings,
                since: float | None = None) -> HostCounts:
    """Restart-aware cumulative counts of one host, from its first scrape at or after ``since``.

    The judge is called after every scrape with the whole series so far, so results are memoised by
    the identity of the scrapes and a series one scrape longer than a known one is extended by one
    row instead of recomputed (the cache holds the scrapes, so their ids stay unique).
    """
    statuses = tuple(settings.error_statuses)
    objs = list(scrapes) if since is None else [s for s in scrapes if s.t >= since]
    key = (name, statuses, tuple(map(id, objs)))
    with _LOCK:
        hit = _LRU.get(key)
        if hit is not None:
            _LRU.move_to_end(key)
            return hit[1]
    if any(a.t >= b.t for a, b in zip(objs, objs[1:], strict=False)):
        objs.sort(key=lambda s: s.t)
        dedup: list[Scrape] = []
        for s in objs:  # a scrape recorded twice at the same time: keep the later one
            if dedup and s.t == dedup[-1].t:
                dedup[-1] = s
            else:
                dedup.append(s)
        objs = dedup
        key = (name, statuses, tuple(map(id, objs)))
    with _LOCK:
        prev = _LRU.get((name, statuses, key[2][:-1])) if len(objs) > 1 else None
    result = None
    if prev is not None:
        result = _extend(name, prev, _vector(objs[-1], statuses, settings))
    if result is None:
        result = _compute(name, [_vector(s, statuses, settings) for s in objs])
    with _LOCK:
        _LRU[key] = (objs, *result)
        while len(_LRU) > _LRU_SIZE:
            _LRU.popitem(last=False)
    return result[0]


def _row(vec: tuple, bounds: tuple[float, ...]) -> list[float] | None:
    if vec[3] == bounds:
        return [*vec[2], *vec[4]]
    lookup = dict(zip(vec[3], vec[4], strict=True))
    if not all(b in lookup for b in bounds):
        return None
    return [*vec[2], *(lookup[b] for b in bounds)]


def _increments(prev: np.ndarray, cur: np.ndarray, start_moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-interval increments from forward-filled readings (rows), and which rows were restarts."""
    diff = cur - prev
    with np.errstate(invalid="ignore"):
        went_down = (diff[:, 0] < 0) | (diff[:, 2] < 0)
        reset = start_moved | went_down
        diff[reset] = cur[reset]
        neg = diff < 0  # one counter reset on its own (Prometheus rate() semantics)
    diff[neg] = cur[neg]
    diff[np.isnan(diff)] = 0.0
    np.maximum(diff, 0.0, out=diff)
    diff[:, 1] = np.minimum(diff[:, 1], diff[:, 0])  # errors <= requests
    if diff.shape[1] > 4:
        b = diff[:, 4:]
        np.maximum.accumulate(b, axis=1, out=b)  # cumulative buckets are monotone in le
        np.minimum(b, diff[:, 2:3], out=b)
    return diff, reset


def _moved(a: float, b: float) -> bool:
    return not math.isnan(a) and not math.isnan(b) and abs(a - b) > 1.0


def _extend(name: str, prev: tuple, vec: tuple) -> tuple[HostCounts, np.ndarray, float] | None:
    """One more scrape: the same arithmetic as :func:`_increments`, on one row, in plain Python."""
    _, hc, last_filled, last_start = prev
    row = _row(vec, hc.bounds)
    if row is None or len(hc.times) == 0 or vec[0] <= hc.times[-1]:
        return None
    last = last_filled.tolist()
    cur = [c if c == c else p for c, p in zip(row, last, strict=True)]  # NaN: keep the last good reading
    reset = _moved(vec[1], last_start) or cur[0] < last[0] or cur[2] < last[2]
    diff = []
    for c, p in zip(cur, last, strict=True):
        d = c if reset else c - p
        if d < 0:
            d = c
        if d != d or d < 0:
            d = 0.0
        diff.append(d)
    diff[1] = min(diff[1], diff[0])
    top = 0.0
    for i in range(4, len(diff)):
        top = max(top, diff[i])
        diff[i] = min(top, diff[2])
    values = np.vstack([hc.values, hc.values[-1] + np.array(diff)])
    start = vec[1] if not math.isnan(vec[1]) else last_start
    out = HostCounts(name, np.append(hc.times, vec[0]), values, hc.bounds, hc.restarts + int(reset),
                     np.append(hc.starts, start))
    return out, np.array(cur), start


def _compute(name: str, vecs: list[tuple]) -> tuple[HostCounts, np.ndarray, float]:
    if not vecs:
        return HostCounts(name, np.zeros(0), np.zeros((0, 4)), (), 0, np.zeros(0)), np.zeros(4), math.nan
    # Bounds present in every scrape of this host (a new version may change its buckets).
    bounds = set(vecs[0][3])
    for v in vecs[1:]:
        if v[3] != vecs[0][3]:
            bounds &= set(v[3])
    bounds_t = tuple(sorted(bounds))
    raw = np.array([_row(v, bounds_t) for v in vecs], dtype=float)
    times = np.array([v[0] for v in vecs])
    starts = np.array([v[1] for v in vecs])
    j = len(vecs)
    filled = raw
    if np.isnan(filled).any():  # forward-fill NaN readings (a leading NaN stays: no reference yet)
        filled = raw.copy()
        for c in range(filled.shape[1]):
            col = filled[:, c]
            for i in range(1, j):
                if math.isnan(col[i]):
                    col[i] = col[i - 1]
    known = starts[~np.isnan(starts)]
    last_start = float(known[-1]) if known.size else math.nan
    starts_filled = starts.copy()  # a scrape without a start time: the last one known
    for i in range(1, j):
        if math.isnan(starts_filled[i]):
            starts_filled[i] = starts_filled[i - 1]
    if j == 1:
        return (HostCounts(name, times, np.zeros((1, raw.shape[1])), bounds_t, 0, starts_filled), filled[-1],
                last_start)
    # a restart: the process start time moved, or the request or histogram count went down
    start_moved = (~np.isnan(starts[1:])) & (~np.isnan(starts[:-1])) & (np.abs(starts[1:] - starts[:-1]) > 1.0)
    diff, reset = _increments(filled[:-1], filled[1:], start_moved)
    values = np.vstack([np.zeros((1, diff.shape[1])), np.cumsum(diff, axis=0)])
    return HostCounts(name, times, values, bounds_t, int(reset.sum()), starts_filled), filled[-1], last_start


def scrape_spacing(hosts: list[HostCounts]) -> float:
    """Typical seconds between two scrapes of one host (median), 1.0 if unknown."""
    gaps = [np.diff(h.times) for h in hosts if len(h.times) > 1]
    gaps = [g[g > 0] for g in gaps]
    allgaps = np.sort(np.concatenate(gaps)) if gaps else np.zeros(0)
    return float(allgaps[allgaps.size // 2]) if allgaps.size else 1.0


def rounds(hosts: list[HostCounts], spacing: float) -> np.ndarray:
    """Round end times: all hosts' scrape times, a new round after a gap of more than spacing/2."""
    times = np.sort(np.concatenate([h.times for h in hosts])) if hosts else np.zeros(0)
    if times.size == 0:
        return times
    last_of_round = np.append(np.diff(times) > spacing / 2, True)
    return times[last_of_round]


def align(host: HostCounts, ends: np.ndarray) -> np.ndarray:
    """The host's cumulative values at each round end (K x C); zero before its first scrape."""
    idx = np.searchsorted(host.times, ends, side="right") - 1
    out = np.zeros((len(ends), host.values.shape[1]))
    ok = idx >= 0
    out[ok] = host.values[idx[ok]]
    return out


def common_bounds(hosts: list[HostCounts]) -> tuple[float, ...]:
    """Finite histogram bounds every host reports (the latency test needs the same thresholds)."""
    sets = [set(h.bounds) for h in hosts if len(h.times)]
    if not sets:
        return ()
    common = set.intersection(*sets)
    return tuple(sorted(common))


def select_bounds(host: HostCounts, bounds: tuple[float, ...], cumulative: np.ndarray) -> np.ndarray:
    """Columns requests, errors, count, sum, then the buckets at ``bounds`` (a subset of the host's)."""
    if host.bounds == bounds:
        return cumulative
    index = {b: i for i, b in enumerate(host.bounds)}
    cols = [0, 1, 2, 3, *(4 + index[b] for b in bounds)]
    return cumulative[:, cols]
