"""The canary judge: compare canary hosts with baseline hosts, decide as soon as the evidence allows.

Called after every scrape round with everything scraped so far; stateless (the same input gives
the same verdict). See ``docs/analysis.md`` for the method and :mod:`conveyor.analysis.stats` for
the tests. Per metric:

``errors``
    Live baseline: an exact group-sequential test of canary-vs-baseline error counts per interval
    (conditional binomial), H0 "canary rate <= (1 + error_tolerance) x baseline rate", intersected
    with the same test of H0 "canary rate <= error_floor" (both must reject, so 1 error against 0 is
    not a regression and 5% against 0% is). Static baseline (a pre-deploy snapshot, no live host
    left on the old version): a one-sample test against ``max((1 + tol) x UCB(baseline), floor)``.
``latency``
    Requests slower than a threshold ``tau`` (the histogram bound nearest the baseline's
    ``latency_quantile``, chosen from data seen BEFORE each interval) are events; H0 "the canary's
    share of slow requests is at most the share the baseline would have if all its requests took
    ``1 + latency_tolerance`` times as long (or ``latency_floor_ms`` more)". The same test, with a
    per-interval null ratio read off the baseline's histogram.

``alpha`` is split between the metrics (``errors_alpha_share``); each metric's test spends its part
over the window by an alpha-spending function of calendar time (``alpha_spending``), so looking
after every scrape keeps the false-rollback rate at ``alpha``. A ``fail`` needs ``min_fail_requests``
canary requests; a ``pass`` needs ``min_requests`` on each side and comes at the window's end (or
earlier with ``early_pass``, decided by an e-process). No data is never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from conveyor.analysis import stats
from conveyor.analysis.model import AnalysisSettings, MetricVerdict, Scrape, Verdict
from conveyor.analysis.series import (
    HostCounts,
    align,
    common_bounds,
    host_counts,
    rounds,
    scrape_spacing,
    select_bounds,
)

_REQ, _ERR, _CNT, _SUM = 0, 1, 2, 3
_MIN_HOST_REQUESTS = 100  # a baseline host needs this many requests before it can be called an outlier
_MIN_TAU_COUNT = 50  # baseline latency observations needed to choose the latency threshold
# A baseline host is an outlier only if it is this far (relative: below, above) from the median host
# as well as 3 sampling sds away: normal hosts differ by a few percent, sick ones by a lot. Better-
# than-usual hosts go sooner than worse ones (see stats.outlier_hosts).
_ERROR_HOST_SPREAD = (0.5, 1.0)
_LATENCY_HOST_SPREAD = (0.15, 0.3)
_LATENCY_CV = 1.0  # assumed coefficient of variation of one request's latency (for the sampling sd)


@dataclass
class _Data:
    """Counts aligned into intervals. ``canary``: I x C; ``baseline``: H x I x C (live) or H x C (static)."""

    mode: str  # live | static | none
    canary: np.ndarray
    baseline: np.ndarray
    base_cum: np.ndarray  # live: H x (I+1) x C cumulative at each round start; static: unused
    bounds: tuple[float, ...]
    canary_hosts: list[str]
    baseline_hosts: list[str]
    empty_canary: list[str] = field(default_factory=list)
    empty_baseline: list[str] = field(default_factory=list)
    restarts: int = 0
    interval_ends: np.ndarray = field(default_factory=lambda: np.zeros(0))
    start: float = 0.0  # time of the first round (the analysis's time zero)


def _fmt_rate(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{100 * p:.2f}%" if p < 0.1 else f"{100 * p:.1f}%"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "x?"
    if math.isinf(r):
        return "x inf"
    return f"x{r:.2f}" if r < 10 else f"x{r:.1f}"


def _collect(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]],
             settings: AnalysisSettings) -> _Data:
    c_hosts = {n: host_counts(n, s, settings) for n, s in canary.items() if s}
    empty_c = [n for n, s in canary.items() if not s]
    b_full = {n: host_counts(n, s, settings) for n, s in baseline.items() if s}
    empty_b = [n for n, s in baseline.items() if not s]
    spacing = scrape_spacing(list(c_hosts.values()) + list(b_full.values()))
    with_data = [h for h in c_hosts.values() if len(h.times)]
    restarts = sum(h.restarts for h in c_hosts.values())
    if not with_data:
        return _Data("none", np.zeros((0, 4)), np.zeros((0, 0, 4)), np.zeros((0, 0, 4)), (), [], [],
                     empty_c + list(c_hosts), empty_b, restarts)
    t0 = min(h.times[0] for h in with_data)
    since = t0 - spacing / 2
    live: dict[str, HostCounts] = {}
    static: dict[str, HostCounts] = {}
    for n, h in b_full.items():
        if int(np.sum(h.times >= since)) >= 2:
            live[n] = h if h.times[0] >= since else host_counts(n, baseline[n], settings, since=since)
        elif len(h.times) >= 2:
            static[n] = h
        else:
            empty_b.append(n)
    if live:
        used = with_data + list(live.values())
        bounds = common_bounds(used)
        ends = rounds(used, spacing)
        c_cum = sum(select_bounds(h, bounds, align(h, ends)) for h in with_data)
        b_cum = np.stack([select_bounds(h, bounds, align(h, ends)) for h in live.values()])
        return _Data("live", np.diff(c_cum, axis=0), np.diff(b_cum, axis=1), b_cum, bounds,
                     [h.name for h in with_data], list(live), empty_c, empty_b + list(static),
                     restarts + sum(h.restarts for h in live.values()), ends[1:], float(ends[0]))
    if static:
        bounds = common_bounds(with_data + list(static.values()))
        ends = rounds(with_data, spacing)
        c_cum = sum(select_bounds(h, bounds, align(h, ends)) for h in with_data)
        totals = np.stack([select_bounds(h, bounds, h.values)[-1] for h in static.values()])
        return _Data("static", np.diff(c_cum, axis=0), totals, np.zeros((0, 0, 0)), bounds,
                     [h.name for h in with_data], list(static), empty_c, empty_b, restarts, ends[1:],
                     float(ends[0]))
    ends = rounds(with_data, spacing)
    c_cum = sum(align(h, ends)[:, :4] for h in with_data)
    return _Data("none", np.diff(c_cum, axis=0), np.zeros((0, 0, 4)), np.zeros((0, 0, 4)), (),
                 [h.name for h in with_data], [], empty_c, empty_b, restarts, ends[1:], float(ends[0]))


# ------------------------------------------------------------------------------------------ helpers


def _first_true(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _survival(bounds: np.ndarray, cum: np.ndarray, total: float, v: float) -> float:
    """Share of requests slower than ``v``, interpolated in the baseline's histogram (see below)."""
    if total <= 0:
        return math.nan
    return float(_survival_many(bounds, (cum / total)[None, :], np.array([v]))[0])


def _quantile(bounds: np.ndarray, cum: np.ndarray, total: float, q: float) -> float | None:
    """Histogram quantile (seconds), linear inside the bucket like PromQL's histogram_quantile."""
    if total <= 0 or len(bounds) == 0:
        return None
    rank = q * total
    j = int(np.searchsorted(cum, rank, side="left"))
    if j >= len(bounds):
        return float(bounds[-1])
    lo_b = 0.0 if j == 0 else float(bounds[j - 1])
    lo_c = 0.0 if j == 0 else float(cum[j - 1])
    hi_c = float(cum[j])
    if hi_c <= lo_c:
        return float(bounds[j])
    return lo_b + (float(bounds[j]) - lo_b) * (rank - lo_c) / (hi_c - lo_c)


def _choose_tau(bounds: np.ndarray, cum: np.ndarray, total: float, q: float) -> int | None:
    """Index of the bound whose baseline CDF is nearest ``q``, among bounds with some slow requests."""
    if total < _MIN_TAU_COUNT or len(bounds) == 0:
        return None
    frac = cum / total
    ok = (frac < 1.0) & (frac > 0.0)
    if not ok.any():
        return None
    dist = np.where(ok, np.abs(frac - q), np.inf)
    return int(np.argmin(dist))


def _thresholds(bounds: np.ndarray, before: np.ndarray, q: float, slack) -> tuple[np.ndarray, np.ndarray]:
    """Per interval: the threshold's bound index (-1: none yet) and the null ratio of slow shares.

    ``before`` (I x C) is the pooled baseline BEFORE each interval, so both are fixed before the
    interval's counts are seen (what keeps the e-process valid while they move).
    """
    n_int = before.shape[0]
    taus = np.full(n_int, -1, dtype=int)
    ratio0 = np.full(n_int, np.nan)
    total = before[:, _CNT]
    if n_int == 0 or len(bounds) == 0:
        return taus, ratio0
    cum = before[:, 4:]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = cum / total[:, None]
    ok = (frac < 1.0) & (frac > 0.0) & (total[:, None] >= _MIN_TAU_COUNT)
    dist = np.where(ok, np.abs(frac - q), np.inf)
    j = np.argmin(dist, axis=1)
    has = np.isfinite(dist[np.arange(n_int), j])
    rows = np.flatnonzero(has)
    if rows.size == 0:
        return taus, ratio0
    jr = j[rows]
    s_tau = 1.0 - frac[rows, jr]
    s_slack = _survival_many(bounds, frac[rows], slack(bounds[jr]))
    good = (s_tau > 0) & np.isfinite(s_slack)
    taus[rows[good]] = jr[good]
    ratio0[rows[good]] = np.maximum(1.0, s_slack[good] / s_tau[good])
    return taus, ratio0


def _survival_many(bounds: np.ndarray, frac: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_survival`: row ``r`` of ``frac`` (CDF at ``bounds``) evaluated at ``v[r]``."""
    n = len(bounds)
    surv = 1.0 - frac
    j = np.searchsorted(bounds, v, side="left")
    beyond = j >= n
    jc = np.minimum(j, n - 1)
    r = np.arange(len(v))
    hi_b, hi_s = bounds[jc], surv[r, jc]
    lo_b = np.where(jc > 0, bounds[np.maximum(jc - 1, 0)], 0.0)
    lo_s = np.where(jc > 0, surv[r, np.maximum(jc - 1, 0)], 1.0)
    # Inside a bucket, the normal quantile of the survival is taken as linear in log(latency): exact
    # when latencies are lognormal, the usual first approximation; plain linear interpolation where
    # that is undefined (the first bucket, an empty or a full side).
    with np.errstate(divide="ignore", invalid="ignore"):
        probit = (lo_b > 0) & (lo_s > 0) & (lo_s < 1) & (hi_s > 0) & (hi_s < 1)
        frac_log = (np.log(v) - np.log(lo_b)) / (np.log(hi_b) - np.log(lo_b))
        out_lin = lo_s + (v - lo_b) / (hi_b - lo_b) * (hi_s - lo_s)
    out = out_lin
    if probit.any():
        z_lo, z_hi = np.split(stats.ndtri(np.concatenate([lo_s[probit], hi_s[probit]])), 2)
        out = out_lin.copy()
        out[probit] = stats.ndtr(z_lo + frac_log[probit] * (z_hi - z_lo))
    out = np.where(v >= hi_b, hi_s, out)
    return np.where(beyond, surv[r, n - 1], out)


class _Budget:
    """How one metric's share of ``alpha`` is spent: the baseline's bound (static), then the window.

    The sequential test may have spent ``test * (t / window) ** alpha_spending`` by time ``t``, and
    all of ``test`` once the window is over (the last look takes what is left).
    """

    def __init__(self, settings: AnalysisSettings, static: bool, metric: str) -> None:
        if len(settings.metrics) == 1:
            per_metric = settings.alpha
        elif metric == "errors":
            per_metric = settings.alpha * settings.errors_alpha_share
        else:
            per_metric = settings.alpha * (1.0 - settings.errors_alpha_share)
        self.ucb = per_metric / 2 if static else 0.0  # spent on the baseline's upper confidence bound
        self.test = per_metric - self.ucb
        self.settings = settings
        self.threshold = 1.0 / self.test  # the early pass's e-value threshold
        self.log_threshold = math.log(self.threshold)

    def spend(self, data: _Data, over: bool) -> np.ndarray:
        t = np.clip((data.interval_ends - data.start) / self.settings.window_s, 0.0, 1.0)
        out = self.test * t ** self.settings.alpha_spending
        if over and out.size:
            out[-1] = self.test
        return out


def _first_rejection(tests: list[stats.SequentialTest], requests: np.ndarray, settings: AnalysisSettings) -> int | None:
    """The first look where every test has rejected and the canary has served ``min_fail_requests``."""
    if any(t.first is None for t in tests):
        return None
    k = max(t.first for t in tests)
    return _first_true((np.arange(requests.size) >= k) & (np.cumsum(requests) >= settings.min_fail_requests))


def _limit(test: stats.SequentialTest, k: int | None) -> str:
    s, b = test.at(k)
    if s >= b:
        return f"{s:.0f}, at or over the limit {b:.0f}"
    return f"{s:.0f}, limit {b:.0f}" if math.isfinite(b) else f"{s:.0f}, no limit yet"


# ------------------------------------------------------------------------------------------ metrics


def _no_data(metric: str, data: _Data, settings: AnalysisSettings, over: bool, what: str) -> MetricVerdict:
    decision = "inconclusive" if over else "continue"
    return MetricVerdict(metric=metric, decision=decision, reason=what,
                         samples={"mode": data.mode, "canary_hosts": data.canary_hosts,
                                  "baseline_hosts": data.baseline_hosts,
                                  "no_data": data.empty_canary + data.empty_baseline})


def _finish(metric: str, *, settings: AnalysisSettings, over: bool, failed: bool, early_pass: bool,
            enough: bool, fail_reason: str, summary: str, short_reason: str, **kw) -> MetricVerdict:
    if failed:
        return MetricVerdict(metric=metric, decision="fail", reason=fail_reason, **kw)
    if over:
        if enough:
            return MetricVerdict(metric=metric, decision="pass", reason=f"no regression: {summary}", **kw)
        return MetricVerdict(metric=metric, decision="inconclusive", reason=f"too little traffic: {short_reason}",
                             **kw)
    if early_pass and enough:
        return MetricVerdict(metric=metric, decision="pass", reason=f"no regression: {summary}", **kw)
    return MetricVerdict(metric=metric, decision="continue", reason=f"collecting: {summary}", **kw)


def _errors(data: _Data, settings: AnalysisSettings, over: bool) -> MetricVerdict:
    if data.mode == "none" or data.canary.shape[0] == 0:
        what = "no canary data yet" if not data.canary_hosts else "no baseline data"
        return _no_data("errors", data, settings, over, what)
    budget = _Budget(settings, data.mode == "static", "errors")
    r0 = 1.0 + settings.error_tolerance
    nc, xc = data.canary[:, _REQ], data.canary[:, _ERR]
    n_int = nc.size
    dropped: list[str] = []
    if data.mode == "live":
        nb_h, xb_h = data.baseline[:, :, _REQ], data.baseline[:, :, _ERR]
        keep = np.ones((nb_h.shape[0], n_int + 1), dtype=bool)
        if settings.outlier_hosts and nb_h.shape[0] >= 3:
            cum_n = data.base_cum[:, :, _REQ]  # column i: totals before interval i (the last: whole window)
            cum_x = data.base_cum[:, :, _ERR]
            with np.errstate(invalid="ignore", divide="ignore"):
                rates = np.where(cum_n >= _MIN_HOST_REQUESTS, cum_x / cum_n, np.nan)
            keep = ~stats.outlier_hosts(rates, cum_n, _ERROR_HOST_SPREAD[0], rel_floor_high=_ERROR_HOST_SPREAD[1])
            dropped = [data.baseline_hosts[i] for i in np.flatnonzero(~keep[:, -1])]
        # The sequential test pools the hosts chosen BEFORE each interval (predictable, so the
        # e-process stays valid); the window-end test and the reported rates use the final choice.
        nb = (nb_h * keep[:, :-1]).sum(axis=0)
        xb = (xb_h * keep[:, :-1]).sum(axis=0)
        nb_f = (nb_h * keep[:, -1:]).sum(axis=0)
        xb_f = (xb_h * keep[:, -1:]).sum(axis=0)
        spend = budget.spend(data, over)
        tests = [stats.sequential_test(xc, xc + xb, stats.null_share(r0, nc, nb), spend)]
        if tests[0].first is not None:
            # intersection-union: a regression must also be above the absolute floor, each at full level
            tests.append(stats.sequential_test(xc, nc, np.full(n_int, settings.error_floor), spend))
        total_nb, total_xb = float(nb_f.sum()), float(xb_f.sum())
        null_desc = f"> x{r0:g} baseline and > {_fmt_rate(settings.error_floor)}"
    else:
        keep_h = np.ones(data.baseline.shape[0], dtype=bool)
        if settings.outlier_hosts and data.baseline.shape[0] >= 3:
            n_h, x_h = data.baseline[:, _REQ], data.baseline[:, _ERR]
            with np.errstate(invalid="ignore", divide="ignore"):
                rates = np.where(n_h >= _MIN_HOST_REQUESTS, x_h / n_h, np.nan)[:, None]
            drop = stats.outlier_hosts(rates, n_h[:, None], _ERROR_HOST_SPREAD[0],
                                       rel_floor_high=_ERROR_HOST_SPREAD[1])[:, 0]
            keep_h = ~drop
            dropped = [data.baseline_hosts[i] for i in np.flatnonzero(drop)]
        total_nb = float(data.baseline[keep_h, _REQ].sum())
        total_xb = float(data.baseline[keep_h, _ERR].sum())
        ucb = stats.binom_upper(total_xb, total_nb, budget.ucb) if total_nb > 0 else 1.0
        p_ref = max(r0 * ucb, settings.error_floor)
        tests = [stats.sequential_test(xc, nc, np.full(n_int, p_ref), budget.spend(data, over))]
        null_desc = f"> {_fmt_rate(p_ref)} (x{r0:g} the baseline's upper bound, floor {_fmt_rate(settings.error_floor)})"
    total_nc, total_xc = float(nc.sum()), float(xc.sum())
    first = _first_rejection(tests, nc, settings)
    p_c = total_xc / total_nc if total_nc > 0 else None
    p_b = total_xb / total_nb if total_nb > 0 else None
    effect = (p_c / p_b if p_b else (math.inf if p_c else None)) if p_c is not None and p_b is not None else None
    p_value = None
    if (over or first is not None) and total_nc > 0:  # nominal: as if the whole window were one look
        if data.mode == "live":
            p_a = stats.poisson_binomial_sf(total_xc, xc + xb_f, stats.null_share(r0, nc, nb_f, missing=0.0))
            p_b_floor = stats.binom_sf(total_xc, total_nc, settings.error_floor) if settings.error_floor > 0 else (
                0.0 if total_xc > 0 else 1.0)
            p_value = max(p_a, p_b_floor)
        else:
            p_value = stats.binom_sf(total_xc, total_nc, p_ref)
    early = False
    if settings.early_pass and not over and data.mode == "live" and n_int:
        log_ni = stats.ratio_e_process(xc, xb, nc, nb, settings.early_pass_margin, upper=False)
        early = bool(log_ni.max() >= budget.log_threshold)
    enough = total_nc >= settings.min_requests and total_nb >= settings.min_requests
    interval = None
    if total_nb > 0 and (over or early or first is not None):  # evidence for a decision, not for every look
        interval = stats.ratio_interval(total_xc, total_xb, total_nc, total_nb, settings.alpha)
    rates = f"error rate {_fmt_rate(p_c)} vs {_fmt_rate(p_b)} ({_fmt_ratio(effect)}"
    if first is not None:
        when = float(data.interval_ends[first] - data.start)
        fail_reason = f"{rates}; canary errors {_limit(tests[0], first)})"
    else:
        when = None
        fail_reason = ""
    summary = f"{rates}; canary errors {_limit(tests[0], None)})"
    short = f"canary {total_nc:.0f} requests, baseline {total_nb:.0f} (need {settings.min_requests} each)"
    samples = {"mode": data.mode, "canary_requests": total_nc, "canary_errors": total_xc,
               "baseline_requests": total_nb, "baseline_errors": total_xb, "intervals": n_int,
               "canary_hosts": data.canary_hosts, "baseline_hosts": data.baseline_hosts,
               "baseline_hosts_dropped": dropped, "no_data": data.empty_canary + data.empty_baseline,
               "restarts": data.restarts, "regression_if": null_desc,
               "alpha_spent": max(t.spent for t in tests) if tests else 0.0}
    if when is not None:
        samples["decided_after_s"] = when
    events, limit = tests[0].at(first) if tests else (0.0, math.inf)
    return _finish("errors", settings=settings, over=over, failed=first is not None,
                   early_pass=early, enough=enough and total_nc > 0, fail_reason=fail_reason, summary=summary,
                   short_reason=short, canary=p_c, baseline=p_b, effect=effect, interval=interval, threshold=r0,
                   events=events, boundary=limit, p_value=p_value, samples=samples)


def _latency(data: _Data, settings: AnalysisSettings, over: bool) -> MetricVerdict:
    if data.mode == "none" or data.canary.shape[0] == 0:
        what = "no canary data yet" if not data.canary_hosts else "no baseline data"
        return _no_data("latency", data, settings, over, what)
    if not data.bounds:
        return _no_data("latency", data, settings, over, "no latency histogram buckets shared by all hosts")
    budget = _Budget(settings, data.mode == "static", "latency")
    bounds = np.array(data.bounds)
    q = settings.latency_quantile
    scale = 1.0 + settings.latency_tolerance
    floor_s = settings.latency_floor_ms / 1000.0
    cc = data.canary[:, _CNT]
    cb_buckets = data.canary[:, 4:]
    n_int = cc.size
    dropped: list[str] = []

    def slack(tau):  # the latency a baseline request would need to count as slow at ``tau``
        return np.minimum(tau / scale, tau - floor_s)

    if data.mode == "live":
        base_cum = data.base_cum  # H x (I+1) x C
        h = base_cum.shape[0]
        keep = np.ones((h, n_int + 1), dtype=bool)
        if settings.outlier_hosts and h >= 3:
            cnt = base_cum[:, :, _CNT]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(cnt >= _MIN_HOST_REQUESTS, base_cum[:, :, _SUM] / cnt, np.nan)
            keep = ~stats.outlier_hosts(mean, cnt, _LATENCY_HOST_SPREAD[0], cv=_LATENCY_CV,
                                        rel_floor_high=_LATENCY_HOST_SPREAD[1])
            dropped = [data.baseline_hosts[i] for i in np.flatnonzero(~keep[:, -1])]
        weights = keep[:, :-1].astype(float)  # predictable choice for the sequential test
        pooled_before = np.einsum("hi,hic->ic", weights, base_cum[:, :-1, :])  # I x C
        inc = data.baseline  # H x I x C
        pooled_inc = np.einsum("hi,hic->ic", weights, inc)
        final_inc = np.einsum("h,hic->ic", keep[:, -1].astype(float), inc)  # final choice: window-end test
        taus, ratio0 = _thresholds(bounds, pooled_before, q, slack)
        used = taus >= 0
        idx = np.where(used, taus, 0)
        rows = np.arange(n_int)
        x = np.where(used, cc - cb_buckets[rows, idx], 0.0)
        nb = np.where(used, pooled_inc[:, _CNT], 0.0)
        y = np.where(used, pooled_inc[:, _CNT] - pooled_inc[rows, 4 + idx], 0.0)
        nc = np.where(used, cc, 0.0)
        x, y = np.maximum(x, 0.0), np.maximum(y, 0.0)
        # nc and nb are 0 where no threshold was set yet (``used`` false): those intervals carry no data
        tests = [stats.sequential_test(x, x + y, stats.null_share(ratio0, nc, nb), budget.spend(data, over))]
        nb_f = np.where(used, final_inc[:, _CNT], 0.0)
        y_f = np.maximum(np.where(used, final_inc[:, _CNT] - final_inc[rows, 4 + idx], 0.0), 0.0)
        base_final = np.einsum("h,hc->c", keep[:, -1].astype(float), base_cum[:, -1, :])
        tau_now = float(bounds[taus[used][-1]]) if used.any() else None
        r_now = float(ratio0[used][-1]) if used.any() else None
    else:
        keep_h = np.ones(data.baseline.shape[0], dtype=bool)
        if settings.outlier_hosts and data.baseline.shape[0] >= 3:
            cnt = data.baseline[:, _CNT]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(cnt >= _MIN_HOST_REQUESTS, data.baseline[:, _SUM] / cnt, np.nan)
            keep_h = ~stats.outlier_hosts(mean[:, None], cnt[:, None], _LATENCY_HOST_SPREAD[0], cv=_LATENCY_CV,
                                         rel_floor_high=_LATENCY_HOST_SPREAD[1])[:, 0]
            dropped = [data.baseline_hosts[i] for i in np.flatnonzero(~keep_h)]
        base_final = data.baseline[keep_h].sum(axis=0)
        total = float(base_final[_CNT])
        j = _choose_tau(bounds, base_final[4:], total, q)
        used = np.zeros(n_int, dtype=bool)
        x = y = nc = nb = y_f = nb_f = np.zeros(n_int)
        tests = [stats.SequentialTest(None, np.zeros(n_int), np.full(n_int, math.inf), 0.0)]  # no threshold: no test
        tau_now = r_now = None
        p_ref = None
        if j is not None:
            tau_now = float(bounds[j])
            v = float(slack(tau_now))
            # upper confidence bounds of the baseline's survival at the bucket edges around v
            jj = int(np.searchsorted(bounds, v, side="left"))
            ucb_cum = base_final[4:].copy()
            for k in {max(jj - 1, 0), min(jj, len(bounds) - 1)}:
                slow = total - base_final[4 + k]
                s_up = stats.binom_upper(slow, total, budget.ucb / 2)
                ucb_cum[k] = total * (1.0 - s_up)
            p_ref = _survival(bounds, ucb_cum, total, v)
            used = np.ones(n_int, dtype=bool)
            nc = cc
            x = np.maximum(cc - cb_buckets[:, j], 0.0)
            tests = [stats.sequential_test(x, nc, np.full(n_int, min(p_ref, 1.0)), budget.spend(data, over))]
            s_tau = 1.0 - base_final[4 + j] / total
            r_now = p_ref / s_tau if s_tau > 0 else None
    total_nc = float(cc.sum())
    total_nb = float(base_final[_CNT])
    used_nc, used_x = float(nc[used].sum()), float(x[used].sum())
    used_nb, used_y = float(nb_f[used].sum()), float(y_f[used].sum())
    first = _first_rejection(tests, cc, settings)
    # display values: the canary's and baseline's latency quantile q (ms)
    c_cum = data.canary.sum(axis=0)
    q_c = _quantile(bounds, c_cum[4:], float(c_cum[_CNT]), q)
    q_b = _quantile(bounds, base_final[4:], float(base_final[_CNT]), q)
    share_c = used_x / used_nc if used_nc > 0 else None
    if data.mode == "live":
        share_b = used_y / used_nb if used_nb > 0 else None
    else:
        share_b = (1.0 - base_final[4 + j] / float(base_final[_CNT])) if tau_now is not None else None
    effect = share_c / share_b if share_c is not None and share_b else None
    p_value = None
    if (over or first is not None) and used.any():  # nominal: as if the whole window were one look
        if data.mode == "live":
            p_value = stats.poisson_binomial_sf(used_x, x + y_f, stats.null_share(ratio0, nc, nb_f, missing=0.0))
        else:
            p_value = stats.binom_sf(used_x, used_nc, p_ref)
    early = False
    if settings.early_pass and not over and data.mode == "live" and used.any():
        log_ni = stats.ratio_e_process(x, y, nc, nb, settings.early_pass_margin * np.where(used, ratio0, 1.0),
                                       upper=False)
        early = bool(log_ni.max() >= budget.log_threshold)
    interval = None
    if data.mode == "live" and used_nb > 0 and used_nc > 0 and (over or early or first is not None):
        interval = stats.ratio_interval(used_x, used_y, used_nc, used_nb, settings.alpha)

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{1000 * v:.0f} ms" if v >= 0.01 else f"{1000 * v:.1f} ms"

    qname = f"p{100 * q:g}"
    head = f"latency {qname} {ms(q_c)} vs {ms(q_b)}"
    if tau_now is not None and share_c is not None:
        head += f" ({_fmt_rate(share_c)} vs {_fmt_rate(share_b)} slower than {ms(tau_now)}, {_fmt_ratio(effect)}"
    else:
        head += " (threshold not set yet"
    fail_reason = f"{head}; slow canary requests {_limit(tests[0], first)})" if first is not None else ""
    summary = f"{head}; slow canary requests {_limit(tests[0], None)})"
    enough = total_nc >= settings.min_requests and total_nb >= settings.min_requests and used.any()
    short = f"canary {total_nc:.0f} timed requests, baseline {total_nb:.0f} (need {settings.min_requests} each)"
    samples = {"mode": data.mode, "canary_requests": total_nc, "baseline_requests": total_nb,
               "canary_slow": used_x, "baseline_slow": used_y if data.mode == "live" else None,
               "threshold_s": tau_now, "null_ratio": r_now, "intervals": int(used.sum()),
               "canary_hosts": data.canary_hosts, "baseline_hosts": data.baseline_hosts,
               "baseline_hosts_dropped": dropped, "no_data": data.empty_canary + data.empty_baseline,
               "quantile": q, "alpha_spent": tests[0].spent}
    if first is not None and n_int:
        samples["decided_after_s"] = float(data.interval_ends[first] - data.start)
    events, limit = tests[0].at(first)
    return _finish("latency", settings=settings, over=over, failed=first is not None,
                   early_pass=early, enough=enough, fail_reason=fail_reason, summary=summary, short_reason=short,
                   canary=None if q_c is None else 1000 * q_c, baseline=None if q_b is None else 1000 * q_b,
                   effect=effect, interval=interval, threshold=r_now, events=events, boundary=limit,
                   p_value=p_value,
                   samples=samples)


# ------------------------------------------------------------------------------------------ judge


def judge(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]], settings: AnalysisSettings,
          *, elapsed_s: float) -> Verdict:
    """Compare the canary hosts with the baseline hosts over everything scraped so far.

    :param canary: host name -> that host's scrapes in time order (cumulative counters); a host
        with no data has an empty list.
    :param baseline: the same for baseline hosts; may be a pre-deploy snapshot (a two-point series
        per host: zero at process start, then one scrape) when no live baseline exists.
    :param settings: :class:`AnalysisSettings`.
    :param elapsed_s: seconds since the analysis began. Before ``settings.window_s`` the verdict
        may be ``continue`` (ask again after the next scrape); from then on it is ``pass``,
        ``fail`` or ``inconclusive``.
    """
    over = elapsed_s >= settings.window_s
    data = _collect(canary, baseline, settings)
    verdicts = []
    for metric in settings.metrics:
        verdicts.append(_errors(data, settings, over) if metric == "errors" else _latency(data, settings, over))
    decisions = [v.decision for v in verdicts]
    if "fail" in decisions:
        decision = "fail"
        reason = "; ".join(v.reason for v in verdicts if v.decision == "fail")
    elif all(d == "pass" for d in decisions):
        decision = "pass"
        reason = "; ".join(v.reason.removeprefix("no regression: ") for v in verdicts)
        reason = f"no regression: {reason}" + ("" if over else " (early pass: strong evidence of no regression)")
    elif over:
        decision = "inconclusive"
        reason = "; ".join(f"{v.metric}: {v.reason}" for v in verdicts if v.decision != "pass")
    else:
        decision = "continue"
        reason = "; ".join(v.reason.removeprefix("collecting: ") for v in verdicts)
    details = {"mode": data.mode, "window_s": settings.window_s, "alpha": settings.alpha,
               "intervals": int(data.canary.shape[0])}
    return Verdict(decision=decision, metrics=verdicts, reason=reason, elapsed_s=float(elapsed_s), details=details)
