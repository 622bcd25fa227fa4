"""Canary judge benchmark: Conveyor's sequential judge against a Kayenta-style reference, same streams.

A seeded simulation of one canary host and three baseline hosts scraped every 10 s over a 10-minute
window: Poisson request counts (10 req/s per host), binomial errors (baseline ~1%), lognormal
latencies (median ~50 ms) counted into Prometheus' default histogram buckets, per-host noise
(traffic, error rate, latency), per-interval burstiness and a shared drift (diurnal trend) over the
window. Each run produces cumulative :class:`~conveyor.analysis.Scrape` series per host. The
``fleet`` rows look more like a real fleet: 6 baseline hosts whose traffic and error rates are
10-20% apart, error bursts (counts overdispersed, not binomial), 30-100 req/s, 0.1-0.5% errors and
4xx noise; and, per row, a canary warming up after a fresh start, lost scrapes and counter resets,
a tail-only slowdown (p99 x2, p50 unchanged), a canary serving nothing.

Two judges see the SAME streams:

* Conveyor's :func:`conveyor.analysis.judge`, asked after every scrape (it may stop at any one);
* a reference in the style of Kayenta's NetflixACAJudge as run by Spinnaker: fixed intervals with a
  growing lookback (judgments at 200 s, 400 s, 600 s: the "three runs per canary" practice),
  per-metric Mann-Whitney U on the per-scrape values (error ratio, mean latency) of canary vs
  baseline, 98% confidence interval of the Hodges-Lehmann shift, "High" when the whole interval is
  above +25% of |estimate| and the mean ratio >= 1; score = 100 x passed metrics / metrics; a
  score <= marginal (75) at any interval fails at once, the last one must reach pass (95).

Below the table, two references on the original streams, each at our A/A rate, 0.5% and 1%: the
*information limit* (one exact test of the error share after the window, on all its data) and a
*sequential oracle* (that test after every scrape with one constant boundary, calibrated on the very
A/A streams: a decide-early judge that knew the null exactly, with the simplest boundary; ``oracle_ttd_ratio_err2``
is its median time to detect errors x2 over the reference's, at our A/A rate).

Prints one table row per scenario and, last, one ``key=value`` summary line. ``--quick`` for a
smoke run, ``--seed`` for another draw, ``--workers`` to change the process count.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from conveyor.analysis import AnalysisSettings, FleetMemory, Scrape, judge, stats

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
WINDOW_S = 600.0
STEP_S = 10.0
N_BASELINE = 3
REF_INTERVAL_S = 200.0
REF_Z = 2.3263478740408408  # two-sided 98%
REF_TOLERANCE = 0.25
REF_PASS, REF_MARGINAL = 95.0, 75.0
HOST_RPS_SD, HOST_ERR_SD, HOST_LAT_SD = 0.10, 0.05, 0.03  # per-host lognormal spread (traffic, errors, latency)
PAST_RELEASES = 5  # a service's earlier healthy releases, each measured by the judge (its FleetMemory)


@dataclass(frozen=True)
class Scenario:
    """One kind of stream. The defaults are the original simulation; ``fleet`` scenarios change many."""

    name: str
    bad: bool  # True: the canary regressed and should be rolled back
    err_mult: float = 1.0
    lat_mult: float = 1.0
    base_err: float | tuple[float, float] = 0.01  # a pair: drawn uniformly per run
    canary_err: float | None = None  # absolute canary error rate (overrides err_mult)
    rps: float | tuple[float, float] = 10.0  # per host; a pair: drawn uniformly per run
    noisy_host: bool = False
    runs: int = 60
    n_base: int = N_BASELINE
    host_rps_sd: float = HOST_RPS_SD  # lognormal sd of hosts' traffic ...
    host_err_sd: float = HOST_ERR_SD  # ... and error rates (0.15: hosts 10-20% apart)
    burst_sd: float = 0.25  # per host-interval lognormal sd of the error rate (0.8: bursts, overdispersed)
    tail_mult: float = 1.0  # only the slowest ~3% get slower: p99 x this, p50 and p97 unchanged
    cold_start: bool = False  # the canary's process starts at t = -2 s: slow, and erring, for ~20 s
    missing: float = 0.0  # chance that a scrape of a host is lost
    resets: float = 0.0  # chance that a host's process restarts (counters to zero) in the window
    four_xx: float = 0.0  # share of 4xx answers (client errors: never errors by default)
    idle_canary: bool = False  # the canary serves nothing while the baseline does
    history_carry: float = 1.0  # how much of a host's lasting difference its pre-deploy history shows (log-scale correlation)
    never_pass: bool = False  # the row's expectation: anything but pass
    settings: tuple[tuple[str, object], ...] = ()  # judge settings for this row (over the bench's)
    aa: bool = True  # an expect-pass row that counts towards aa_worst
    memory: int = PAST_RELEASES  # past releases of the service the judge remembers (0: its first release)


FLEET = {"n_base": 6, "host_rps_sd": 0.15, "host_err_sd": 0.15, "burst_sd": 0.5, "rps": (30.0, 100.0),
         "base_err": (0.001, 0.005), "four_xx": 0.03}


SCENARIOS = [
    Scenario("A/A", False, runs=500),
    Scenario("err x1.5", True, err_mult=1.5),
    Scenario("err x2", True, err_mult=2.0, runs=200),
    Scenario("err x5", True, err_mult=5.0),
    Scenario("lat +10%", True, lat_mult=1.10),
    Scenario("lat +25%", True, lat_mult=1.25, runs=200),
    Scenario("lat +50%", True, lat_mult=1.50),
    Scenario("zero-err base, canary 1/6000", False, base_err=0.0, canary_err=1 / 6000),
    Scenario("zero-err base, canary 5%", True, base_err=0.0, canary_err=0.05),
    Scenario("1 req/s A/A", False, rps=1.0, runs=500),
    Scenario("1 req/s, err x5", True, rps=1.0, err_mult=5.0),
    Scenario("noisy base host A/A", False, noisy_host=True, runs=500),
    Scenario("noisy base host, err x2", True, noisy_host=True, err_mult=2.0),
    # a fleet that looks real: 6 baseline hosts 10-20% apart, error bursts, 30-100 req/s, 0.1-0.5% errors, 4xx
    Scenario("fleet A/A", False, runs=500, **FLEET),
    Scenario("fleet A/A, binomial (no overdisp.)", False, runs=100, settings=(("overdispersion", False),),
             aa=False, **FLEET),
    Scenario("fleet err x2", True, err_mult=2.0, runs=200, **FLEET),
    Scenario("fleet lat +25%", True, lat_mult=1.25, runs=100, **FLEET),
    Scenario("fleet tail p99 x2", True, tail_mult=2.0, runs=200, **FLEET),
    Scenario("fleet cold start A/A", False, cold_start=True, runs=500, **FLEET),
    Scenario("fleet gaps+resets A/A", False, missing=0.05, resets=0.3, runs=500, **FLEET),
    Scenario("fleet canary serves nothing", True, idle_canary=True, never_pass=True, runs=60, **FLEET),
    # the canary host's difference from the pool before the deploy is not the one after it
    Scenario("fleet A/A, host changed at deploy", False, history_carry=0.0, runs=500, **FLEET),
    Scenario("fleet A/A, host changed, no history", False, history_carry=0.0, runs=500,
             settings=(("host_history", False),), aa=False, **FLEET),
    Scenario("err x2, no history", True, err_mult=2.0, runs=200, settings=(("host_history", False),), aa=False),
    # a service's first release: nothing remembered about its fleet
    Scenario("A/A, first release", False, runs=500, memory=0),
    Scenario("err x2, first release", True, err_mult=2.0, runs=200, memory=0, aa=False),
    Scenario("fleet A/A, first release", False, runs=500, memory=0, **FLEET),
    Scenario("fleet A/A, host changed, first release", False, history_carry=0.0, runs=500, memory=0, **FLEET),
]


# --------------------------------------------------------------------------------------- simulation


Series = dict[str, list[Scrape]]


def _draw(value: float | tuple[float, float], rng: np.random.Generator) -> float:
    return rng.uniform(*value) if isinstance(value, tuple) else value


def simulate(sc: Scenario, rng: np.random.Generator,
             hist_rng: np.random.Generator | None = None) -> tuple[Series, Series, Series, Series, Series]:
    """Cumulative scrapes (t = 0, 10, ..., 600 s) of one canary host and ``sc.n_base`` baseline hosts.

    Returns what the judge reads (canary, baseline: with lost scrapes and restarts), what a
    Prometheus query would give the reference (the same counts, no gaps or resets: ``rate()``
    already smoothed them), and each host's pre-deploy history: its old process's counters from its
    start to t = 0 (the plan's snapshot), drawn from ``hist_rng`` so the window's streams do not
    depend on it.
    """
    hist_rng = hist_rng or np.random.default_rng(0)
    n_int = int(WINDOW_S / STEP_S)
    t_mid = (np.arange(n_int) + 0.5) * STEP_S
    # shared drift over the window: a trend of up to +-15% and a slow wave (load, time of day)
    trend = rng.uniform(-0.15, 0.15)
    phase = rng.uniform(0, 2 * math.pi)
    drift = 1.0 + trend * (t_mid / WINDOW_S - 0.5) * 2 + 0.05 * np.sin(2 * math.pi * t_mid / 400.0 + phase)
    hosts = {"canary-1": "canary", **{f"base-{i + 1}": "baseline" for i in range(sc.n_base)}}
    noisy = f"base-{rng.integers(1, sc.n_base + 1)}" if sc.noisy_host else None
    noisy_worse = bool(rng.random() < 0.5)
    rps, base_err = _draw(sc.rps, rng), _draw(sc.base_err, rng)
    bounds = np.array(BUCKETS)
    judged: Series = {}
    clean: Series = {}
    old_start = -rng.uniform(3600, 86400)  # process start times on the scrapes' clock (t = 0: the analysis starts)
    history: Series = {}
    for name, role in hosts.items():
        host_rps = rps * rng.lognormal(0.0, sc.host_rps_sd)
        traffic = host_rps * drift
        host_err_log = rng.normal(0.0, sc.host_err_sd)
        err = base_err * math.exp(host_err_log) * (0.8 + 0.2 * drift)
        med = 0.050 * rng.lognormal(0.0, HOST_LAT_SD) * (0.9 + 0.1 * drift)
        start_time = old_start
        if role == "canary":
            err = sc.canary_err * (0.8 + 0.2 * drift) if sc.canary_err is not None else err * sc.err_mult
            med = med * sc.lat_mult
            if sc.idle_canary:
                traffic = traffic * 0.0
            if sc.cold_start:  # a fresh process: slow and erring while it warms up (most of it in ~20 s)
                start_time = -2.0
                age = t_mid + 2.0
                med = med * (1.0 + 2.0 * np.exp(-age / 8.0))
                err = err * (1.0 + 9.0 * np.exp(-age / 8.0))
        burst = rng.lognormal(-0.5 * sc.burst_sd**2, sc.burst_sd, n_int)  # per-interval burstiness of errors
        history[name] = _history(sc, hist_rng, host_rps, base_err, host_err_log, old_start)
        wobble = rng.lognormal(0.0, 0.02, n_int)
        if name == noisy:
            if noisy_worse:
                burst = burst * 4.0 * rng.lognormal(-0.5, 1.0, n_int)
                wobble = wobble * 1.4 * rng.lognormal(0.0, 0.3, n_int)
            else:
                burst = burst * 0.25 * rng.lognormal(-0.5, 1.0, n_int)
                wobble = wobble * 0.7 * rng.lognormal(0.0, 0.3, n_int)
        n = rng.poisson(traffic * STEP_S)
        p = np.clip(err * burst, 0.0, 1.0)
        e = rng.binomial(n, p)
        f = rng.binomial(n - e, sc.four_xx * rng.lognormal(-0.125, 0.5, n_int)) if sc.four_xx else np.zeros(n_int, int)
        total = int(n.sum())
        medians = np.repeat(med * wobble, n)
        z = rng.normal(0.0, 1.0, total)
        if sc.tail_mult != 1.0 and role == "canary":  # the slowest 3% only: p97 and below unchanged, p99 x tail_mult
            z = z + np.maximum(z - 1.881, 0.0) * math.log(sc.tail_mult) / 0.5 / (2.326 - 1.881)
        lat = medians * np.exp(0.5 * z)
        which = np.repeat(np.arange(n_int), n)
        bucket_idx = np.searchsorted(bounds, lat, side="left")  # le semantics: lat <= bound
        hist = np.zeros((n_int, len(bounds) + 1))
        np.add.at(hist, (which, bucket_idx), 1.0)
        hist = np.cumsum(hist, axis=1)  # cumulative over le
        lat_sum = np.bincount(which, weights=lat, minlength=n_int)
        counts = np.column_stack([n - e - f, e, f, lat_sum, hist])  # per interval
        restart_at = int(rng.integers(1, n_int)) if sc.resets and rng.random() < sc.resets else None
        clean[name] = _scrapes(np.cumsum(counts, axis=0), start_time)
        if restart_at is None:
            cum = np.cumsum(counts, axis=0)
            starts = np.full(n_int, start_time)
        else:  # the process restarted during interval `restart_at`: counters from zero, a new start time
            cum = np.cumsum(counts, axis=0)
            cum[restart_at:] -= cum[restart_at - 1]
            starts = np.where(np.arange(n_int) >= restart_at, restart_at * STEP_S + 1.0, start_time)
        scrapes = _scrapes(cum, starts)
        if sc.missing:
            lost = rng.random(n_int) < sc.missing
            scrapes = [scrapes[0]] + [s for s, gone in zip(scrapes[1:], lost, strict=True) if not gone]
        judged[name] = scrapes
    def split(series: Series) -> tuple[Series, Series]:
        return ({n: v for n, v in series.items() if hosts[n] == "canary"},
                {n: v for n, v in series.items() if hosts[n] == "baseline"})
    return (*split(judged), *split(clean), history)


def _history(sc: Scenario, rng: np.random.Generator, host_rps: float, base_err: float, host_err_log: float,
             start: float) -> list[Scrape]:
    """One host's old process from ``start`` to t = 0: Poisson requests, errors at the host's rate (its
    lasting difference carried over by ``history_carry``) with the window's bursts summed over the
    lifetime (variance ``T (1 + mu (e^{s^2} - 1))`` for a per-interval mean ``mu``)."""
    lasting = sc.history_carry * host_err_log + math.sqrt(1 - sc.history_carry**2) * rng.normal(0.0, sc.host_err_sd)
    n = float(rng.poisson(host_rps * -start))
    p = base_err * math.exp(lasting)
    mu = host_rps * STEP_S * p
    mean = n * p
    sd = math.sqrt(max(mean * (1.0 + mu * (math.exp(sc.burst_sd**2) - 1.0)), 0.0))
    e = float(min(max(round(rng.normal(mean, sd)), 0), n)) if mean > 0 else 0.0
    zero = {**{b: 0.0 for b in BUCKETS}, math.inf: 0.0}
    return [Scrape(t=start, requests={"200": 0.0, "500": 0.0}, latency_buckets=zero, latency_sum=0.0,
                   latency_count=0.0, start_time=start),
            Scrape(t=0.0, requests={"200": n - e, "500": e}, latency_buckets=zero, latency_sum=0.0,
                   latency_count=0.0, start_time=start)]


def _scrapes(cum: np.ndarray, starts: float | np.ndarray) -> list[Scrape]:
    """Scrapes at t = 0, 10, ... from cumulative rows (ok, 5xx, 4xx, latency sum, cumulative buckets)."""
    starts = np.broadcast_to(np.asarray(starts, dtype=float), (cum.shape[0],))
    out = [Scrape(t=0.0, requests={"200": 0.0, "500": 0.0, "404": 0.0},
                  latency_buckets={**{b: 0.0 for b in BUCKETS}, math.inf: 0.0},
                  latency_sum=0.0, latency_count=0.0, start_time=float(starts[0]))]
    for k, row in enumerate(cum):
        out.append(Scrape(
            t=(k + 1) * STEP_S, requests={"200": float(row[0]), "500": float(row[1]), "404": float(row[2])},
            latency_buckets={**dict(zip(BUCKETS, row[4:-1].tolist(), strict=True)), math.inf: float(row[-1])},
            latency_sum=float(row[3]), latency_count=float(row[-1]), start_time=float(starts[k])))
    return out


# --------------------------------------------------------------------------------------- judges


def run_conveyor(canary, baseline, settings: AnalysisSettings, history: Series | None = None,
                 memory: FleetMemory | None = None) -> tuple[str, float]:
    """Ask the judge after every scrape round, as the trigger does; stop at its first decision."""
    n = int(WINDOW_S / STEP_S)
    times = {h: np.array([x.t for x in s]) for h, s in {**canary, **baseline}.items()}

    def upto(series: Series, t: float) -> Series:  # what was scraped by time t (some scrapes may be lost)
        return {h: s[: int(np.searchsorted(times[h], t, side="right"))] for h, s in series.items()}

    for k in range(1, n + 1):
        elapsed = k * STEP_S
        verdict = judge(upto(canary, elapsed), upto(baseline, elapsed), settings, elapsed_s=elapsed, history=history,
                        memory=memory)
        if verdict.decision != "continue":
            return verdict.decision, elapsed
    raise AssertionError("the judge said continue after the window ended")


def _per_interval(series: dict[str, list[Scrape]], upto: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-scrape values of a server group (all its hosts pooled): error ratio and mean latency."""
    req = sum(np.array([sum(s.requests.values()) for s in v[: upto + 1]]) for v in series.values())
    err = sum(np.array([s.requests.get("500", 0.0) for s in v[: upto + 1]]) for v in series.values())
    lsum = sum(np.array([s.latency_sum for s in v[: upto + 1]]) for v in series.values())
    lcnt = sum(np.array([s.latency_count for s in v[: upto + 1]]) for v in series.values())
    dreq, derr, dsum, dcnt = np.diff(req), np.diff(err), np.diff(lsum), np.diff(lcnt)
    with np.errstate(invalid="ignore", divide="ignore"):
        return derr / dreq, dsum / dcnt  # NaN where no requests: removed below (Kayenta "remove")


def _mw_high(experiment: np.ndarray, control: np.ndarray) -> str:
    """Kayenta's MannWhitneyClassifier for direction=increase: Pass | High | Nodata."""
    x = experiment[np.isfinite(experiment)]
    y = control[np.isfinite(control)]
    if x.size == 0 or y.size == 0:
        return "Nodata"
    if x.size == y.size and np.array_equal(np.sort(x), np.sort(y)):
        return "Pass"
    if np.unique(np.concatenate([x, y])).size == 1:
        return "Pass"
    d = np.sort(np.subtract.outer(x, y).ravel())
    n1, n2 = x.size, y.size
    c = int(math.floor(n1 * n2 / 2 - REF_Z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)))
    if c < 0:
        return "Pass"  # too few points for a 98% interval
    lower = d[c]
    estimate = float(np.median(d))
    bound = REF_TOLERANCE * abs(estimate)
    deviation = 1.0 if y.mean() == 0 else x.mean() / y.mean()
    return "High" if lower > bound and deviation >= 1.0 else "Pass"


def run_reference(canary, baseline) -> tuple[str, float]:
    """Kayenta-style: judge at fixed intervals over a growing lookback; fail fast on a low score."""
    n_int = len(next(iter(canary.values()))) - 1
    per_judgment = int(REF_INTERVAL_S / STEP_S)
    ends = list(range(per_judgment, n_int + 1, per_judgment))
    if ends[-1] != n_int:
        ends.append(n_int)
    c_err, c_lat = _per_interval(canary, n_int)
    b_err, b_lat = _per_interval(baseline, n_int)
    for j, end in enumerate(ends):
        labels = [_mw_high(c_err[:end], b_err[:end]), _mw_high(c_lat[:end], b_lat[:end])]
        nodata = labels.count("Nodata")
        scored = [lab for lab in labels if lab != "Nodata"]
        if nodata * 2 >= len(labels) or not scored:
            score = 0.0
        else:
            score = 100.0 * scored.count("Pass") / len(scored)
        if score <= REF_MARGINAL:
            return "fail", end * STEP_S
        if j == len(ends) - 1:
            return ("pass" if score >= REF_PASS else "fail"), end * STEP_S
    raise AssertionError("unreachable")


def share_p(canary, baseline, looks: bool = False) -> float | np.ndarray:
    """The information limit's statistic: one exact test of the canary's share of errors, no tolerance.

    On the window's totals (``looks=False``): no sequential judge that must also decide early can beat
    this test, run once after the window has ended, at the same false-rollback rate; the report
    compares detections at equal A/A rates. With ``looks=True``, the same test's p-value after every
    scrape (for the sequential oracle in the report).
    """
    def cum(series: Series, key: str | None) -> np.ndarray:
        return sum(np.array([s.requests.get(key, 0.0) if key else sum(s.requests.values()) for s in v[1:]])
                   for v in series.values())
    x, n_c, y, n_b = cum(canary, "500"), cum(canary, None), cum(baseline, "500"), cum(baseline, None)
    ks = range(x.size) if looks else [x.size - 1]
    p = np.array([stats.binom_sf(x[k], x[k] + y[k], n_c[k] / (n_c[k] + n_b[k])) if x[k] + y[k] > 0 else 1.0
                  for k in ks])
    return p if looks else float(p[-1])


def sequential_oracle(aa: np.ndarray, bad: np.ndarray, allowed: int) -> tuple[float, float]:
    """The exact share test after every scrape with the one constant boundary (Pocock-like: no shape
    fitted to a time) that exactly ``allowed`` of these A/A streams cross: the share of bad streams it
    catches and their median time to it. An optimistic reference: the null share is known exactly,
    there is no tolerance or host spread, and the boundary is calibrated on the very A/A streams it
    is scored against."""
    strongest = np.sort(aa.min(axis=1))  # each A/A stream's smallest p-value over its looks
    cut = strongest[allowed] if allowed < strongest.size else 1.0  # reject p < cut: exactly `allowed` A/A streams
    hit = bad < cut
    caught = hit.any(axis=1)
    first = (np.argmax(hit, axis=1) + 1) * STEP_S
    return float(caught.mean()), _median(first[caught].tolist())


def remembered(sc: Scenario, settings: AnalysisSettings, seed: int, index: int, rep: int) -> FleetMemory:
    """What the judge measured on the service's ``sc.memory`` earlier, healthy releases (the scenario's
    fleet without the regression, fresh draws), as the operator reads it from the ledger."""
    healthy = replace(sc, bad=False, err_mult=1.0, lat_mult=1.0, canary_err=None, tail_mult=1.0, idle_canary=False)
    errors_only = settings.model_copy(update={"metrics": ["errors"]})
    rows = []
    for past in range(sc.memory):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, rep, 2, past]))
        hist_rng = np.random.default_rng(np.random.SeedSequence([seed, index, rep, 3, past]))
        canary, baseline, _, _, history = simulate(healthy, rng, hist_rng)
        verdict = judge(canary, baseline, errors_only, elapsed_s=WINDOW_S, history=history)
        rows.append(verdict.metrics[0].samples)
    return FleetMemory.from_samples(rows[::-1])  # newest first


def one_run(args: tuple[Scenario, int, int, dict]) -> tuple[str, float, str, float, float | np.ndarray]:
    sc, seed, rep, settings_dict = args
    index = next((i for i, s in enumerate(SCENARIOS) if s.name == sc.name), len(SCENARIOS))  # --quick copies keep their streams
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, rep]))
    hist_rng = np.random.default_rng(np.random.SeedSequence([seed, index, rep, 1]))
    canary, baseline, canary_clean, baseline_clean, history = simulate(sc, rng, hist_rng)
    settings = AnalysisSettings.from_dict({**settings_dict, **dict(sc.settings)})
    memory = remembered(sc, settings, seed, index, rep) if sc.memory else None
    ours = run_conveyor(canary, baseline, settings, history, memory)
    ref = run_reference(canary_clean, baseline_clean)
    looks = sc.name in ("A/A", "err x2")  # the sequential oracle's rows
    return (*ours, *ref, share_p(canary_clean, baseline_clean, looks=looks))


# --------------------------------------------------------------------------------------- report


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else math.nan


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _sec(x: float) -> str:
    return "   n/a" if not math.isfinite(x) else f"{x:5.0f}s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the runs (at least 12): a smoke test")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default=None, help="run scenarios whose name contains this text ('|' between alternatives)")
    args = ap.parse_args(argv)
    settings = AnalysisSettings(window_s=WINDOW_S, min_requests=200)
    scenarios = [s for s in SCENARIOS if args.only is None or any(part in s.name for part in args.only.split("|"))]
    if args.quick:
        scenarios = [replace(s, runs=max(12, s.runs // 5)) for s in scenarios]
    started = time.time()
    tasks = [(sc, args.seed, rep, settings.to_dict()) for sc in scenarios for rep in range(sc.runs)]
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(one_run, tasks, chunksize=8))
    else:
        results = [one_run(t) for t in tasks]
    by_scenario: dict[str, list] = {}
    for (sc, *_), res in zip(tasks, results, strict=True):
        by_scenario.setdefault(sc.name, []).append(res)

    print(f"Canary judge benchmark: 1 canary + {N_BASELINE} baseline hosts, scrape every {STEP_S:g}s, "
          f"window {WINDOW_S:g}s, seed {args.seed}")
    print(f"Conveyor: alpha={settings.alpha}, looks after every scrape.  Reference (Kayenta-style): "
          f"MW 98% CI, +-{REF_TOLERANCE:.0%} HL tolerance, pass {REF_PASS:g} / marginal {REF_MARGINAL:g}, "
          f"judgments every {REF_INTERVAL_S:g}s")
    head = (f"{'scenario':<29} {'expect':>6} {'runs':>4} | {'ours: fail':>10} {'pass':>6} {'incon':>6} {'med t':>6} | "
            f"{'ref: fail':>9} {'pass':>6} {'med t':>6} | {'t ratio':>7}")
    print(head)
    print("-" * len(head))
    summary: dict[str, float] = {}
    worst_name = ""
    for sc in scenarios:
        res = by_scenario[sc.name]
        n = len(res)
        o_fail = [r for r in res if r[0] == "fail"]
        o_pass = sum(r[0] == "pass" for r in res) / n
        o_inc = sum(r[0] == "inconclusive" for r in res) / n
        r_fail = [r for r in res if r[2] == "fail"]
        r_pass = sum(r[2] == "pass" for r in res) / n
        if sc.bad:
            o_t, r_t = _median([r[1] for r in o_fail]), _median([r[3] for r in r_fail])
        else:
            o_t, r_t = _median([r[1] for r in res]), _median([r[3] for r in res])
        ratio = o_t / r_t if sc.bad and r_t and math.isfinite(o_t) and math.isfinite(r_t) else math.nan
        expect = "!pass" if sc.never_pass else "fail" if sc.bad else "pass"
        print(f"{sc.name:<29.29} {expect:>6} {n:>4} | {_pct(len(o_fail) / n):>10} {_pct(o_pass):>6} "
              f"{_pct(o_inc):>6} {_sec(o_t):>6} | {_pct(len(r_fail) / n):>9} {_pct(r_pass):>6} {_sec(r_t):>6} | "
              f"{'' if not math.isfinite(ratio) else f'{ratio:.2f}':>7}".rstrip())
        if not sc.bad and sc.aa:  # every A/A row: the worst false-rollback rate, ours and the reference's
            if len(o_fail) / n >= summary.get("aa_worst", -1.0):
                summary["aa_worst"], worst_name = len(o_fail) / n, sc.name
            summary["ref_aa_worst"] = max(summary.get("ref_aa_worst", 0.0), len(r_fail) / n)
            summary["aa_over_ref"] = max(summary.get("aa_over_ref", 0.0), len(o_fail) / n - len(r_fail) / n)
        if sc.never_pass:
            summary["idle_canary_pass"] = o_pass
        key = {"A/A": "aa", "err x2": "err2", "lat +25%": "lat25", "fleet tail p99 x2": "tail"}.get(sc.name)
        if key == "tail":
            summary["detect_tail"] = len(o_fail) / n
        elif key == "aa":
            summary["aa_false_rollback"] = len(o_fail) / n
            summary["ref_aa_false_rollback"] = len(r_fail) / n
        elif key:
            summary[f"detect_{key}"] = len(o_fail) / n
            summary[f"ttd_ratio_{key}"] = ratio
    print("-" * len(head))
    if "A/A" in by_scenario and "err x2" in by_scenario:
        # the information limit: the window-end test's p-value threshold that keeps A/A at our rate (and at 0.5%, 1%);
        # the sequential oracle: the same test at every look, one constant boundary, at the same rates
        aa_looks = np.array([r[4] for r in by_scenario["A/A"]])
        e2_looks = np.array([r[4] for r in by_scenario["err x2"]])
        aa_p, e2_p = np.sort(aa_looks[:, -1]), e2_looks[:, -1]
        # A/A streams it may reject: as many as ours did, and as many as 0.5% and the 1% target allow
        ours = int(math.floor(summary["aa_false_rollback"] * aa_p.size + 1e-9))
        for allowed in sorted({ours, *(int(math.floor(rate * aa_p.size + 1e-9)) for rate in (0.005, 0.01))}):
            cut = aa_p[allowed] if allowed < aa_p.size else 1.0  # reject p < cut: exactly `allowed` A/A streams
            print(f"information limit: one exact test after the window on all its data, rejecting {allowed / aa_p.size:.1%} "
                  f"of these A/A streams (p < {cut:.2g}), detects {np.mean(e2_p < cut):.1%} of the err x2 streams")
            caught, med = sequential_oracle(aa_looks, e2_looks, allowed)
            print(f"sequential oracle: the same test after every scrape, one constant boundary rejecting {allowed / aa_p.size:.1%} "
                  f"of these A/A streams, detects {caught:.1%} of the err x2 streams, median {_sec(med).strip()}")
            if allowed == ours:
                summary["info_err2"] = float(np.mean(e2_p < cut))  # at our A/A rate
                ref_t = _median([r[3] for r in by_scenario["err x2"] if r[2] == "fail"])
                summary["oracle_ttd_ratio_err2"] = med / ref_t if ref_t else math.nan
    print("fail = rolled back: a false rollback where 'expect' is pass, a detection where it is fail; "
          "incon = inconclusive (stop, ask a human); med t = median time to the decision (to the rollback "
          "where 'expect' is fail); t ratio = ours / reference")
    print(f"runtime {time.time() - started:.1f}s with {args.workers} worker(s)")
    if "aa_worst" in summary:
        print(f"worst A/A row: {worst_name}; aa_over_ref = the largest (ours - reference's) over the A/A rows")
    keys = ["aa_false_rollback", "ref_aa_false_rollback", "aa_worst", "ref_aa_worst", "aa_over_ref", "detect_err2",
            "info_err2", "detect_lat25", "detect_tail", "ttd_ratio_err2", "ttd_ratio_lat25", "idle_canary_pass", "oracle_ttd_ratio_err2"]
    print(" ".join(f"{k}={summary.get(k, math.nan):.4g}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
