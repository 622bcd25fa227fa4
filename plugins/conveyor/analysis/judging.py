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
from conveyor.analysis.formatting import fmt_ms, fmt_rate, fmt_ratio
from conveyor.analysis.model import AnalysisSettings, FleetMemory, MetricVerdict, Scrape, Verdict
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
# Overdispersion (see stats.dispersion). The canary is one more host drawn from the fleet: its lasting
# difference from the pool has sd tau * sqrt(1/C + 1/H) (C canary, H baseline hosts). Against live hosts
# that difference is added to the test's variance (_host_phi); against a snapshot the null ratio is
# widened by _TAU_Z such sds. With too few live baseline hosts to estimate them, typical fleet values
# are assumed: host rates 10% apart, interval counts 1.5x as variable as binomial (fail safe).
_TAU_Z = 2.0
_TAU_FALLBACK = 0.10
_PHI_FALLBACK = 1.5
_TAU_PRIOR_DF = 4.0  # pseudo-hosts of the typical spread behind the measured one
# Error rates against live hosts: the typical spread their estimate is shrunk towards. Real fleets' hosts
# err 10-20 % apart (a noisy 6-host estimate shrunk towards 10 % under-covers them); 15 % keeps a fleet
# whose differences do not survive a deploy at the false-rollback rate allowed, and the canary host's
# own history, where it holds, narrows the spread again.
_TAU_ERRORS_LIVE = 0.15
_PHI_SAFETY = 1.5  # the measured bursts' excess over binomial, counted 1.5 times (their tails are heavy)
# The canary host's own pre-deploy history (difference in differences): its error rate before the deploy,
# against the pool's over the same snapshot, measures its lasting difference from the pool instead of
# assuming it. A host's difference may move a little across a deploy: this sd (log scale) is added to the
# measurement's sampling variance, so a long history narrows the spread to this, never to nothing.
_CARRY_SD = 0.05
# How far hosts' differences moved since their snapshots is a DerSimonian-Laird variance over the few
# pooled hosts: from 3 hosts it is 0 or large by chance alone, so a healthy fleet would often distrust
# its own history. It is shrunk towards "they lasted" (0) by this many pseudo-hosts' degrees of freedom.
_MOVED_PRIOR_DF = 4.0
# Until a service's past releases have measured that movement, its first release has only the pool's few
# hosts to show that differences last, and a fleet whose differences do not survive a deploy would be
# rolled back for its canary host's history (pool chance, not evidence). There the movement is taken at
# its upper confidence bound (this many sds, one-sided: 80 %), sampling noise included, not at the
# shrunk estimate: the history narrows the test only as far as the pool shows that differences last.
_MOVED_BOUND_Z = 0.84
# Past releases of the service (FleetMemory) measured both: the typical spread and "they lasted" above are
# then each pooled with the measured values, weighted by degrees of freedom. "They lasted" is an
# assumption that measured movements replace: its pseudo-df, and the carry's hedge (variance), fade by
# _MOVED_PRIOR_DF / (_MOVED_PRIOR_DF + measured df).


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
    warming: int = 0  # host intervals left out as warm-up (the host's process had just started)
    history: dict[str, tuple[float, float]] = field(default_factory=dict)  # host -> pre-deploy (requests, errors)
    memory: FleetMemory = field(default_factory=FleetMemory)  # what the service's past releases measured


def _collect(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]],
             settings: AnalysisSettings, history: dict[str, list[Scrape]] | None = None) -> _Data:
    """Counts in common intervals; baseline hosts scraped since the canary began are live, else a snapshot."""
    data = _collect_counts(canary, baseline, settings)
    if settings.host_history and settings.overdispersion:
        data.history = _history(history or {}, settings)
    return data


def _history(history: dict[str, list[Scrape]], settings: AnalysisSettings) -> dict[str, tuple[float, float]]:
    """Each host's pre-deploy requests and errors (restart-aware), for hosts whose snapshot counted some."""
    out = {}
    for name, scrapes in history.items():
        if len(scrapes) < 2:
            continue
        h = host_counts(f"history:{name}", scrapes, settings)
        requests, errors = float(h.values[-1, _REQ]), float(h.values[-1, _ERR])
        if math.isfinite(requests) and math.isfinite(errors) and requests > 0:
            out[name] = (requests, errors)
    return out


def _collect_counts(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]],
                    settings: AnalysisSettings) -> _Data:
    """The canary's and baseline's counts per common interval: live when some baseline host has two or
    more scrapes since the canary's first, else its hosts' last scrapes as a snapshot, else none."""
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
    warmup = settings.warmup_s
    if live:
        used = with_data + list(live.values())
        bounds = common_bounds(used)
        ends = rounds(used, spacing)
        c_inc, c_warm = _judged(with_data, bounds, ends, warmup)
        b_inc, b_warm = _judged(list(live.values()), bounds, ends, warmup)
        b_cum = np.concatenate([np.zeros((b_inc.shape[0], 1, b_inc.shape[2])), np.cumsum(b_inc, axis=1)], axis=1)
        return _Data("live", c_inc.sum(axis=0), b_inc, b_cum, bounds,
                     [h.name for h in with_data], list(live), empty_c, empty_b + list(static),
                     restarts + sum(h.restarts for h in live.values()), ends[1:], float(ends[0]), c_warm + b_warm)
    if static:
        bounds = common_bounds(with_data + list(static.values()))
        ends = rounds(with_data, spacing)
        c_inc, c_warm = _judged(with_data, bounds, ends, warmup)
        totals = np.stack([select_bounds(h, bounds, h.values)[-1] for h in static.values()])
        return _Data("static", c_inc.sum(axis=0), totals, np.zeros((0, 0, 0)), bounds,
                     [h.name for h in with_data], list(static), empty_c, empty_b, restarts, ends[1:],
                     float(ends[0]), c_warm)
    ends = rounds(with_data, spacing)
    c_inc, c_warm = _judged(with_data, (), ends, warmup)
    return _Data("none", c_inc.sum(axis=0)[:, :4], np.zeros((0, 0, 4)), np.zeros((0, 0, 4)), (),
                 [h.name for h in with_data], [], empty_c, empty_b, restarts, ends[1:], float(ends[0]), c_warm)


def _judged(hosts: list[HostCounts], bounds: tuple[float, ...], ends: np.ndarray,
            warmup: float) -> tuple[np.ndarray, int]:
    """Each host's counts per interval (H x I x C), zero in the intervals that began within its warm-up.

    An interval is judged when it begins ``warmup`` seconds or more after the process that counted
    it started (its start time at the interval's end; unknown: judged). So a restart mid-window
    warms up again. Also returns how many host intervals were left out.
    """
    out = []
    warming = 0
    for h in hosts:
        cum = select_bounds(h, bounds, align(h, ends)) if bounds else align(h, ends)[:, :4]
        inc = np.diff(cum, axis=0)
        if warmup > 0 and h.starts is not None and len(h.times) and inc.shape[0]:
            idx = np.searchsorted(h.times, ends[1:], side="right") - 1
            start = np.where(idx >= 0, h.starts[np.maximum(idx, 0)], np.nan)
            at = np.where(idx >= 0, h.times[np.maximum(idx, 0)], -np.inf)
            start = np.where(start <= at, start, np.nan)  # a start after its own scrape is not credible
            with np.errstate(invalid="ignore"):
                cold = ends[:-1] < start + warmup  # NaN start: False (judged)
            cold &= inc[:, _REQ] + inc[:, _CNT] > 0
            warming += int(cold.sum())
            inc[cold] = 0.0
        out.append(inc)
    return np.stack(out), warming


# ------------------------------------------------------------------------------------------ helpers


def _first_true(mask: np.ndarray) -> int | None:
    """Index of the first true entry, or None."""
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
        """The metric's share of ``alpha`` (latency's split between its quantiles); half for a static bound."""
        if len(settings.metrics) == 1:
            per_metric = settings.alpha
        elif metric == "errors":
            per_metric = settings.alpha * settings.errors_alpha_share
        else:
            per_metric = settings.alpha * (1.0 - settings.errors_alpha_share)
        if metric == "latency":
            per_metric /= len(settings.latency_quantiles)
        self.ucb = per_metric / 2 if static else 0.0  # spent on the baseline's upper confidence bound
        self.test = per_metric - self.ucb
        self.settings = settings
        self.threshold = 1.0 / self.test  # the early pass's e-value threshold
        self.log_threshold = math.log(self.threshold)

    def spend(self, data: _Data, over: bool) -> np.ndarray:
        """The type-I error the sequential test may have spent by each interval's end."""
        t = np.clip((data.interval_ends - data.start) / self.settings.window_s, 0.0, 1.0)
        out = self.test * t ** self.settings.alpha_spending
        if over and out.size:
            out[-1] = self.test
        return out

    def early_pass(self, over: bool, x: np.ndarray, y: np.ndarray, n_c: np.ndarray, n_b: np.ndarray,
                   margin: np.ndarray | float) -> bool:
        """Whether the e-process already shows no regression (only before the window's end, if enabled)."""
        if not self.settings.early_pass or over:
            return False
        log_ni = stats.ratio_e_process(x, y, n_c, n_b, margin, upper=False)
        return bool(log_ni.max() >= self.log_threshold)


def _first_rejection(tests: list[stats.SequentialTest], requests: np.ndarray, settings: AnalysisSettings) -> int | None:
    """The first look where every test has rejected and the canary has served ``min_fail_requests``."""
    if any(t.first is None for t in tests):
        return None
    k = max(t.first for t in tests)
    return _first_true((np.arange(requests.size) >= k) & (np.cumsum(requests) >= settings.min_fail_requests))


def _limit(test: stats.SequentialTest, k: int | None) -> str:
    """The canary's total at look ``k`` against the test's limit, for a reason."""
    s, b = test.at(k)
    if s >= b:
        return f"{s:.0f}, at or over the limit {b:.0f}"
    return f"{s:.0f}, limit {b:.0f}" if math.isfinite(b) else f"{s:.0f}, no limit yet"


# ------------------------------------------------------------------------------------------ metrics


@dataclass
class _Outcome:
    """What one metric's test found: its sequential tests, the first look where all reject, the evidence."""

    tests: list[stats.SequentialTest]
    first: int | None
    dropped: list[str]  # baseline hosts left out of the pool as outliers
    p_value: float | None = None  # nominal: as if the whole window were one look
    early: bool = False


def _errors(data: _Data, settings: AnalysisSettings, over: bool) -> MetricVerdict:
    """The errors verdict: wait for data, else test against live baseline hosts or the snapshot."""
    if data.mode == "none" or data.canary.shape[0] == 0:
        return _no_data("errors", data, over)
    return (_errors_live if data.mode == "live" else _errors_static)(data, settings, over)


@dataclass
class _Widening:
    """How the tests are widened for overdispersion, per interval (fixed before it) and at the end."""

    phi: np.ndarray  # I: the counts' variance over a binomial's (the tests run on counts / phi)
    factor: np.ndarray  # I: the null ratio's multiplier for the canary host's own lasting difference
    phi_end: float
    tau_end: float | None  # the hosts' spread (sd of log rates) estimated at the end; None: assumed
    hosts: int
    tau2: np.ndarray = field(default_factory=lambda: np.zeros(0))  # I: the spread used (0: none)
    base_hosts: np.ndarray = field(default_factory=lambda: np.ones(0))  # I: baseline hosts behind it
    tau2_raw_end: float | None = None  # the measured spread's moment estimate (may be < 0), for FleetMemory

    def describe(self) -> dict[str, float | int | None]:
        return {"overdispersion": float(self.phi_end), "host_spread": self.tau_end,
                "null_widened_by": float(self.factor[-1]) if self.factor.size else 1.0,
                "spread_hosts": self.hosts, "spread_estimate": self.tau2_raw_end}


def _widening(settings: AnalysisSettings, n_int: int, events: np.ndarray | None = None,
              exposure: np.ndarray | None = None, keep: np.ndarray | None = None,
              typical_tau: float = _TAU_FALLBACK, prior_df: float = _TAU_PRIOR_DF) -> _Widening:
    """Overdispersion and host spread from the live baseline hosts' counts (H x I), or assumed values.

    ``None`` counts (a static baseline) or too few hosts: the fallback values (a typical fleet's).
    ``typical_tau``: the spread a live estimate is shrunk towards (and used when it cannot be made),
    with ``prior_df`` degrees of freedom.
    """
    if not settings.overdispersion:
        return _Widening(np.ones(n_int), np.ones(n_int), 1.0, None, 0, np.zeros(n_int), np.ones(n_int))
    if events is None or exposure is None:
        phi = np.full(n_int + 1, _PHI_FALLBACK)
        tau2 = np.full(n_int + 1, _TAU_FALLBACK**2)
        hosts = np.zeros(n_int + 1)
        measured_tau = False
    else:
        d = stats.dispersion(events, exposure, keep)
        phi = np.where(np.isfinite(d.phi), 1.0 + _PHI_SAFETY * (d.phi - 1.0), _PHI_FALLBACK)
        measured_tau = bool(np.isfinite(d.tau2[-1]))
        tau2 = np.where(np.isfinite(d.tau2), d.tau2, typical_tau**2)
        hosts = d.hosts
        raw_end = float(d.tau2_raw[-1]) if measured_tau else None
    tau_end = float(math.sqrt(tau2[-1])) if measured_tau else None
    if events is None:  # a snapshot: no live hosts to add variance for, the null ratio is widened instead
        factor = np.exp(_TAU_Z * np.sqrt(tau2 * (1.0 + 1.0 / np.maximum(hosts, 1))))
        return _Widening(phi[:-1], factor[:-1], float(phi[-1]), tau_end, int(hosts[-1]), np.zeros(n_int),
                         np.ones(n_int))
    # A few hosts say little about their spread (DerSimonian-Laird often says 0 for hosts 15% apart):
    # the estimate is shrunk towards the typical fleet's, weighted by its degrees of freedom.
    df = np.maximum(np.asarray(hosts, dtype=float) - 1.0, 0.0)
    tau2 = (df * tau2 + prior_df * typical_tau**2) / (df + prior_df)
    return _Widening(phi[:-1], np.ones(n_int), float(phi[-1]), tau_end, int(hosts[-1]), tau2[:-1],
                     np.maximum(np.asarray(hosts, dtype=float)[:-1], 1.0), raw_end)


def _with_memory(typical: float, typical_df: float, measured: float | None, measured_df: float) -> tuple[float, float]:
    """A prior: the typical value (``typical_df`` pseudo-df) pooled with what the service's past releases
    measured (``measured_df``, see :class:`FleetMemory`); and its degrees of freedom."""
    df = typical_df + measured_df
    return (typical_df * typical + measured_df * (measured or 0.0)) / df, df


def _canary_spread(wide: _Widening, canary_hosts: int, tolerance: np.ndarray | float = 1.0) -> np.ndarray:
    """Per interval, the variance (log scale) of the canary's lasting difference from the pool, as one more
    host of the fleet: ``tau^2 (1/C + 1/H)``, less what the null's ``tolerance`` (a ratio) already covers,
    ``log(tolerance) / _TAU_Z`` sds (a 10 % latency tolerance is there for hosts' usual speeds)."""
    tol = np.asarray(tolerance, dtype=float)
    covered = np.where(np.isfinite(tol) & (tol > 1.0), np.log(np.where(tol > 1.0, tol, 1.0)) / _TAU_Z, 0.0) ** 2
    return np.maximum(wide.tau2 - covered, 0.0) * (1.0 / max(canary_hosts, 1) + 1.0 / wide.base_hosts)


def _host_phi(wide: _Widening, theta: np.ndarray, m: np.ndarray, teff2: np.ndarray) -> tuple[np.ndarray, float]:
    """Per interval, the variance of the canary's count over a binomial's, with the canary's own lasting
    difference from the pool (variance ``teff2``, see :func:`_canary_spread`) added to the bursts' ``phi``.

    A shared effect ``u`` on the canary's log rate moves its cumulative count by ``u * V`` (``V``: the
    binomial variance summed so far), so the cumulative variance is ``V * (phi + tau_eff^2 * V)``; giving
    interval ``i`` the factor ``phi + tau_eff^2 * (2 V_<i + v_i)`` makes every look's total match it.
    """
    th = np.where(np.isfinite(theta), theta, 0.0)
    v = np.asarray(m, dtype=float) * th * (1.0 - th)
    before = np.concatenate([[0.0], np.cumsum(v)[:-1]])
    phi = wide.phi + teff2 * (2.0 * before + v)
    total = float(v.sum())
    end = wide.phi_end + (float(teff2[-1]) * total if teff2.size else 0.0)
    return phi, end


@dataclass
class _Own:
    """The canary host's lasting difference from the pool after its pre-deploy history (per interval)."""

    shift: np.ndarray  # I: log of the null ratio's multiplier (the difference's posterior mean)
    teff2: np.ndarray  # I: its remaining variance (posterior)
    measured: float | None = None  # the history's canary-vs-pool error-rate ratio (the last pool)
    moved: float | None = None  # how far the pooled hosts' differences moved since the snapshot (moment estimate)
    moved_hosts: int = 0  # hosts behind ``moved``

    def describe(self) -> dict[str, float | int | None]:
        used = float(math.exp(self.shift[-1])) if self.shift.size else 1.0
        return {"history_ratio": self.measured, "history_null_shift": used, "moved_estimate": self.moved,
                "moved_hosts": self.moved_hosts}


def _own_history(data: _Data, keep: np.ndarray, wide: _Widening, teff2: np.ndarray) -> _Own:
    """Difference in differences: the canary hosts' pre-deploy error rate against the pool's (the hosts
    kept before each interval, from the same snapshot) measures the canary's lasting difference ``u``.

    The spread ``teff2`` is the prior of ``u`` (mean 0); the history's log ratio measures it with
    variance ``phi (1/x_c + 1/x_b) + _CARRY_SD^2`` (sampling, and a little movement across a deploy;
    the hedge fades as the service's past releases measure the movement, see ``FleetMemory``).
    Whether hosts' differences last at all is read off the pooled hosts: their rates now against
    their own snapshots (``stats.persistence``, from the data before each interval) move apart by
    ``2 tau^2 (1 - rho)`` when then and now correlate by ``rho`` (on a first release, with no movement
    remembered, at its upper bound: see ``_MOVED_BOUND_Z``). The test then uses the posterior
    scaled by ``rho``: the null ratio moved by ``rho`` x its mean and the spread narrowed to
    ``teff2 (1 - rho^2 gain)``; differences that did not last (``rho`` 0) leave the test as it was.
    Without a history for every canary host and for at least 2 and every pooled baseline host, or
    with no errors in it on either side, nothing changes.
    """
    none = _Own(np.zeros(teff2.size), teff2)
    hist = data.history
    if not hist or not all(h in hist for h in data.canary_hosts) or not teff2.size:
        return none
    nc_h = sum(hist[h][0] for h in data.canary_hosts)
    xc_h = sum(hist[h][1] for h in data.canary_hosts)
    has = np.array([h in hist for h in data.baseline_hosts])
    n_b = np.array([hist.get(h, (0.0, 0.0))[0] for h in data.baseline_hosts])
    x_b = np.array([hist.get(h, (0.0, 0.0))[1] for h in data.baseline_hosts])
    pool = keep[:, :-1]  # H x I: the hosts pooled before each interval
    complete = np.all(has[:, None] | ~pool, axis=0) & (pool.sum(axis=0) >= 2)
    nb_h, xb_h = (n_b[:, None] * pool).sum(axis=0), (x_b[:, None] * pool).sum(axis=0)
    mem = data.memory
    fade = _MOVED_PRIOR_DF / (_MOVED_PRIOR_DF + mem.moved_df)  # measured movements replace the assumption
    prior_moved, prior_df = _with_memory(0.0, _MOVED_PRIOR_DF * fade, mem.moved, mem.moved_df)  # "they lasted"
    moves = stats.persistence(data.base_cum[:, :-1, _ERR], data.base_cum[:, :-1, _REQ], x_b, n_b,
                              pool & has[:, None], wide.phi, prior_df=prior_df, prior=prior_moved)
    moved, raw, hosts = moves.moved, moves.raw, moves.hosts
    if not mem.moved_df:  # a first release: "they lasted" only as far as the pool shows it (an upper bound)
        upper = stats.variance_upper(raw, moves.noise, np.maximum(hosts - 1.0, 0.0), _MOVED_BOUND_Z)
        moved = np.where(np.isfinite(moved), upper, moved)
    carry2 = _CARRY_SD**2 * fade
    ok = complete & (xb_h > 0) & (nb_h > 0) & (xc_h > 0) & np.isfinite(moved)
    if not ok.any():
        return none
    last_moved = float(raw[-1]) if np.isfinite(raw[-1]) else None
    with np.errstate(divide="ignore", invalid="ignore"):
        r_hat = np.log((xc_h / nc_h) / (xb_h / nb_h))
        # hosts' differences then and now correlate by rho: var(now - then) = 2 tau^2 (1 - rho)
        rho = np.clip(1.0 - np.where(np.isfinite(moved), moved, 0.0) / (2.0 * np.maximum(wide.tau2, 1e-12)), 0.0, 1.0)
        s2 = wide.phi * (1.0 / xc_h + 1.0 / xb_h) + carry2
        gain = np.where(teff2 > 0, teff2 / (teff2 + s2), 0.0)
    shift = np.where(ok, rho * gain * r_hat, 0.0)
    post = np.where(ok, teff2 * (1.0 - rho**2 * gain), teff2)
    measured = float(math.exp(r_hat[-1])) if ok[-1] else None
    return _Own(shift, post, measured, last_moved, int(hosts[-1]) if last_moved is not None else 0)


def _errors_live(data: _Data, settings: AnalysisSettings, over: bool) -> MetricVerdict:
    """Errors vs live baseline hosts: does the canary err over (1 + tolerance) x their rate, and the floor?"""
    budget = _Budget(settings, False, "errors")
    r0 = 1.0 + settings.error_tolerance
    nc, xc = data.canary[:, _REQ], data.canary[:, _ERR]
    keep, dropped = _pool_hosts(data, data.base_cum, settings, "errors")  # column i: before interval i
    # The sequential test pools the hosts chosen BEFORE each interval (predictable, so the
    # e-process stays valid); the window-end test and the reported rates use the final choice.
    nb_h, xb_h = data.baseline[:, :, _REQ], data.baseline[:, :, _ERR]
    nb, xb = _pooled(nb_h, keep[:, :-1]), _pooled(xb_h, keep[:, :-1])
    nb_f, xb_f = _pooled(nb_h, keep[:, -1:]), _pooled(xb_h, keep[:, -1:])
    mem = data.memory
    typical2, prior_df = _with_memory(_TAU_ERRORS_LIVE**2, _TAU_PRIOR_DF, mem.spread2, mem.spread_df)
    wide = _widening(settings, nc.size, xb_h, nb_h, keep, typical_tau=math.sqrt(typical2), prior_df=prior_df)
    spend = budget.spend(data, over)
    sx, sy = stats.scaled_counts(xc, xb, wide.phi)  # quasi-binomial counts, for the early pass's e-process
    own = _own_history(data, keep, wide, _canary_spread(wide, len(data.canary_hosts), r0))
    null = r0 * wide.factor * np.exp(own.shift)
    theta = stats.null_share(null, nc, nb)
    phi_i, phi_end = _host_phi(wide, theta, xc + xb, own.teff2)
    tests = [stats.sequential_test(xc, xc + xb, theta, spend, phi_i)]
    if tests[0].first is not None:
        # intersection-union: a regression must also be above the absolute floor, each at full level
        tests.append(stats.sequential_test(xc, nc, np.full(nc.size, settings.error_floor), spend, wide.phi))
    out = _Outcome(tests, _first_rejection(tests, nc, settings), dropped)
    total_nc, total_xc = float(nc.sum()), float(xc.sum())
    if (over or out.first is not None) and total_nc > 0:
        phi, r_end = phi_end, float(null[-1])
        p_ratio = stats.poisson_binomial_sf(total_xc / phi, (xc + xb_f) / phi,
                                            stats.null_share(r_end, nc, nb_f, missing=0.0))
        p_floor = (stats.binom_sf(total_xc / phi, total_nc / phi, settings.error_floor) if settings.error_floor > 0
                   else 0.0 if total_xc > 0 else 1.0)
        out.p_value = max(p_ratio, p_floor)
    out.early = budget.early_pass(over, sx, sy, nc, nb, settings.early_pass_margin * wide.factor * np.exp(own.shift))
    widened = f", x{wide.factor[-1]:.2f} for host spread" if wide.factor.size and wide.factor[-1] > 1.005 else ""
    if own.shift.size and abs(own.shift[-1]) > 0.005:
        widened += f", x{math.exp(own.shift[-1]):.2f} for the canary host's own history"
    null_desc = f"> x{r0:g} baseline{widened} and > {fmt_rate(settings.error_floor)}"
    return _errors_verdict(data, settings, over, out, float(nb_f.sum()), float(xb_f.sum()), r0, null_desc,
                           {**wide.describe(), **own.describe(), **mem.describe()})


def _errors_static(data: _Data, settings: AnalysisSettings, over: bool) -> MetricVerdict:
    """Errors vs the snapshot: does the canary err more than (1 + tolerance) x its bound, or the floor?"""
    budget = _Budget(settings, True, "errors")
    r0 = 1.0 + settings.error_tolerance
    nc, xc = data.canary[:, _REQ], data.canary[:, _ERR]
    keep, dropped = _pool_hosts(data, data.baseline[:, None, :], settings, "errors")
    total_nb = float(data.baseline[keep[:, 0], _REQ].sum())
    total_xb = float(data.baseline[keep[:, 0], _ERR].sum())
    ucb = stats.binom_upper(total_xb, total_nb, budget.ucb) if total_nb > 0 else 1.0
    # no live hosts to measure the spread on: the canary is compared with the fleet's assumed one
    wide = _widening(settings, nc.size)
    factor = float(wide.factor[0]) if wide.factor.size else 1.0
    p_ref = min(max(r0 * ucb * factor, settings.error_floor), 1.0)
    tests = [stats.sequential_test(xc, nc, np.full(nc.size, p_ref), budget.spend(data, over), wide.phi)]
    out = _Outcome(tests, _first_rejection(tests, nc, settings), dropped)
    total_nc, total_xc = float(nc.sum()), float(xc.sum())
    if (over or out.first is not None) and total_nc > 0:
        out.p_value = stats.binom_sf(total_xc / wide.phi_end, total_nc / wide.phi_end, p_ref)
    floor = fmt_rate(settings.error_floor)
    null_desc = f"> {fmt_rate(p_ref)} (x{r0 * factor:.3g} the baseline's upper bound, floor {floor})"
    return _errors_verdict(data, settings, over, out, total_nb, total_xb, r0, null_desc, wide.describe())


def _errors_verdict(data: _Data, settings: AnalysisSettings, over: bool, out: _Outcome, total_nb: float,
                    total_xb: float, r0: float, null_desc: str, widening: dict | None = None) -> MetricVerdict:
    """The errors decision from the test's outcome, with the rates, effect and interval that explain it."""
    nc = data.canary[:, _REQ]
    total_nc, total_xc = float(nc.sum()), float(data.canary[:, _ERR].sum())
    p_c = total_xc / total_nc if total_nc > 0 else None
    p_b = total_xb / total_nb if total_nb > 0 else None
    effect = None
    if p_c is not None and p_b is not None:
        effect = p_c / p_b if p_b else (math.inf if p_c else None)
    interval = None
    if total_nb > 0 and (over or out.early or out.first is not None):  # evidence for a decision only
        interval = stats.ratio_interval(total_xc, total_xb, total_nc, total_nb, settings.alpha)
    rates = f"error rate {fmt_rate(p_c)} vs {fmt_rate(p_b)} ({fmt_ratio(effect)}"
    fail_reason = "" if out.first is None else f"{rates}; canary errors {_limit(out.tests[0], out.first)})"
    summary = f"{rates}; canary errors {_limit(out.tests[0], None)})"
    enough = total_nc >= settings.min_requests and total_nb >= settings.min_requests and total_nc > 0
    short = f"canary {total_nc:.0f} requests, baseline {total_nb:.0f} (need {settings.min_requests} each)"
    samples = {"mode": data.mode, "canary_requests": total_nc, "canary_errors": total_xc,
               "baseline_requests": total_nb, "baseline_errors": total_xb, "intervals": nc.size,
               "canary_hosts": data.canary_hosts, "baseline_hosts": data.baseline_hosts,
               "baseline_hosts_dropped": out.dropped, "no_data": data.empty_canary + data.empty_baseline,
               "restarts": data.restarts, "warmup_intervals_skipped": data.warming, "regression_if": null_desc,
               "alpha_spent": max(t.spent for t in out.tests), **(widening or {})}
    if out.first is not None:
        samples["decided_after_s"] = float(data.interval_ends[out.first] - data.start)
    events, limit = out.tests[0].at(out.first)
    return _finish("errors", settings=settings, over=over, failed=out.first is not None,
                   early_pass=out.early, enough=enough, fail_reason=fail_reason, summary=summary,
                   short_reason=short, canary=p_c, baseline=p_b, effect=effect, interval=interval,
                   threshold=r0, events=events, boundary=limit, p_value=out.p_value, samples=samples)


def _latency(data: _Data, settings: AnalysisSettings, over: bool) -> list[MetricVerdict]:
    """One latency verdict per quantile: wait for data and shared buckets, else test against live hosts or the snapshot."""
    out = []
    for q in settings.latency_quantiles:
        if data.mode == "none" or data.canary.shape[0] == 0:
            v = _no_data("latency", data, over)
        elif not data.bounds:
            v = _no_data("latency", data, over, "no latency histogram buckets shared by all hosts")
        else:
            v = (_latency_live if data.mode == "live" else _latency_static)(data, settings, over, q)
        v.samples["quantile"] = q
        out.append(v)
    return out


@dataclass
class _Slow:
    """The latency test's counts of slow requests: slower than ``tau`` (seconds; None: not chosen yet)."""

    tau: float | None
    null_ratio: float | None  # the latest null ratio of the slow shares
    canary: float  # slow canary requests, in the intervals with a threshold
    canary_timed: float  # all canary requests in those intervals
    baseline_share: float | None  # the baseline's share of slow requests
    baseline: float | None  # slow baseline requests (live baseline only)
    intervals: int  # intervals with a threshold
    base: np.ndarray  # the pooled baseline's cumulative counts at the end (C)
    interval: tuple[float, float] | None = None  # of the ratio of slow shares (live baseline only)
    widening: dict = field(default_factory=dict)  # overdispersion and host spread (see _Widening)


def _latency_live(data: _Data, settings: AnalysisSettings, over: bool, q: float) -> MetricVerdict:
    """Latency vs live baseline hosts: more canary requests over the baseline's ~``q`` quantile than
    theirs would be at (1 + tolerance) x latency?"""
    budget = _Budget(settings, False, "latency")
    bounds = np.array(data.bounds)
    keep, dropped = _pool_hosts(data, data.base_cum, settings, "latency")
    # As for errors: the hosts chosen before each interval for the sequential test, the final choice after.
    before = _pooled(data.base_cum[:, :-1], keep[:, :-1])  # I x C: the pool's totals before each interval
    taus, ratio0 = _thresholds(bounds, before, q, lambda tau: _slack(settings, tau))
    used = taus >= 0
    idx = np.where(used, taus, 0)
    # nc and nb are 0 where no threshold was set yet (``used`` false): those intervals carry no data
    nc, x = _timed_and_slow(data.canary, used, idx)
    per_host = [_timed_and_slow(data.baseline[h], used, idx) for h in range(data.baseline.shape[0])]
    nb_h = np.array([t for t, _ in per_host])
    yb_h = np.array([sl for _, sl in per_host])
    nb, y = _pooled(nb_h, keep[:, :-1]), _pooled(yb_h, keep[:, :-1])
    nb_f, y_f = _pooled(nb_h, keep[:, -1:]), _pooled(yb_h, keep[:, -1:])
    wide = _widening(settings, nc.size, yb_h, nb_h, keep)
    null = np.where(used, ratio0, np.nan) * wide.factor
    sx, sy = stats.scaled_counts(x, y, wide.phi)
    theta = stats.null_share(null, nc, nb)
    phi_i, phi_end = _host_phi(wide, theta, x + y, _canary_spread(wide, len(data.canary_hosts), null))
    wide.phi_end = phi_end
    tests = [stats.sequential_test(x, x + y, theta, budget.spend(data, over), phi_i)]
    out = _Outcome(tests, _first_rejection(tests, data.canary[:, _CNT], settings), dropped)
    used_x, used_nc = float(x[used].sum()), float(nc[used].sum())
    used_y, used_nb = float(y_f[used].sum()), float(nb_f[used].sum())
    if (over or out.first is not None) and used.any():
        theta = stats.null_share(np.where(used, null, 1.0), nc, nb_f, missing=0.0)
        out.p_value = stats.poisson_binomial_sf(used_x / wide.phi_end, (x + y_f) / wide.phi_end, theta)
    margin = settings.early_pass_margin * np.where(used, null, 1.0)
    out.early = bool(used.any()) and budget.early_pass(over, sx, sy, nc, nb, margin)
    interval = None
    if used_nb > 0 and used_nc > 0 and (over or out.early or out.first is not None):
        interval = stats.ratio_interval(used_x, used_y, used_nc, used_nb, settings.alpha)
    slow = _Slow(float(bounds[taus[used][-1]]) if used.any() else None,
                 float(null[used][-1]) if used.any() else None, used_x, used_nc,
                 used_y / used_nb if used_nb > 0 else None, used_y, int(used.sum()),
                 _pooled(data.base_cum[:, -1:], keep[:, -1:])[0], interval, wide.describe())
    return _latency_verdict(data, settings, over, out, slow, q)


def _latency_static(data: _Data, settings: AnalysisSettings, over: bool, q: float) -> MetricVerdict:
    """Latency vs the snapshot: more slow canary requests than its bound at (1 + tolerance) x latency?"""
    budget = _Budget(settings, True, "latency")
    bounds = np.array(data.bounds)
    n_int = data.canary.shape[0]
    keep, dropped = _pool_hosts(data, data.baseline[:, None, :], settings, "latency")
    base = data.baseline[keep[:, 0]].sum(axis=0)
    total = float(base[_CNT])
    j = _choose_tau(bounds, base[4:], total, q)
    if j is None:  # no threshold: no test
        no_test = stats.SequentialTest(None, np.zeros(n_int), np.full(n_int, math.inf), 0.0)
        return _latency_verdict(data, settings, over, _Outcome([no_test], None, dropped),
                                _Slow(None, None, 0.0, 0.0, None, None, 0, base), q)
    tau = float(bounds[j])
    wide = _widening(settings, n_int)
    factor = float(wide.factor[0]) if wide.factor.size else 1.0
    p_ref = min(_survival_upper(bounds, base, total, float(_slack(settings, tau)), budget.ucb / 2) * factor, 1.0)
    nc, x = _timed_and_slow(data.canary, np.ones(n_int, dtype=bool), np.full(n_int, j))
    tests = [stats.sequential_test(x, nc, np.full(n_int, p_ref), budget.spend(data, over), wide.phi)]
    out = _Outcome(tests, _first_rejection(tests, data.canary[:, _CNT], settings), dropped)
    slow_c, timed_c = float(x.sum()), float(nc.sum())
    if over or out.first is not None:
        out.p_value = stats.binom_sf(slow_c / wide.phi_end, timed_c / wide.phi_end, p_ref)
    s_tau = 1.0 - base[4 + j] / total
    slow = _Slow(tau, p_ref / s_tau if s_tau > 0 else None, slow_c, timed_c, s_tau, None, n_int, base,
                 widening=wide.describe())
    return _latency_verdict(data, settings, over, out, slow, q)


def _latency_verdict(data: _Data, settings: AnalysisSettings, over: bool, out: _Outcome,
                     slow: _Slow, q: float) -> MetricVerdict:
    """The latency decision from the test's outcome, with the quantiles and slow shares that explain it."""
    bounds = np.array(data.bounds)
    total_nc, total_nb = float(data.canary[:, _CNT].sum()), float(slow.base[_CNT])
    c_cum = data.canary.sum(axis=0)  # display values: the canary's and baseline's latency quantile q (ms)
    q_c = _quantile(bounds, c_cum[4:], float(c_cum[_CNT]), q)
    q_b = _quantile(bounds, slow.base[4:], float(slow.base[_CNT]), q)
    share_c = slow.canary / slow.canary_timed if slow.canary_timed > 0 else None
    share_b = slow.baseline_share
    effect = share_c / share_b if share_c is not None and share_b else None
    head = f"latency p{100 * q:g} {fmt_ms(q_c)} vs {fmt_ms(q_b)}"
    if slow.tau is not None and share_c is not None:
        head += (f" ({fmt_rate(share_c)} vs {fmt_rate(share_b)} slower than {fmt_ms(slow.tau)}, "
                 f"{fmt_ratio(effect)}")
    else:
        head += " (threshold not set yet"
    fail_reason = ""
    if out.first is not None:
        fail_reason = f"{head}; slow canary requests {_limit(out.tests[0], out.first)})"
    summary = f"{head}; slow canary requests {_limit(out.tests[0], None)})"
    enough = total_nc >= settings.min_requests and total_nb >= settings.min_requests and slow.intervals > 0
    short = (f"canary {total_nc:.0f} timed requests, baseline {total_nb:.0f} "
             f"(need {settings.min_requests} each)")
    samples = {"mode": data.mode, "canary_requests": total_nc, "baseline_requests": total_nb,
               "canary_slow": slow.canary, "baseline_slow": slow.baseline,
               "threshold_s": slow.tau, "null_ratio": slow.null_ratio, "intervals": slow.intervals,
               "canary_hosts": data.canary_hosts, "baseline_hosts": data.baseline_hosts,
               "baseline_hosts_dropped": out.dropped, "no_data": data.empty_canary + data.empty_baseline,
               "quantile": q, "alpha_spent": out.tests[0].spent,
               "warmup_intervals_skipped": data.warming, **slow.widening}
    if out.first is not None:
        samples["decided_after_s"] = float(data.interval_ends[out.first] - data.start)
    events, limit = out.tests[0].at(out.first)
    return _finish("latency", settings=settings, over=over, failed=out.first is not None,
                   early_pass=out.early, enough=enough, fail_reason=fail_reason, summary=summary,
                   short_reason=short, canary=None if q_c is None else 1000 * q_c,
                   baseline=None if q_b is None else 1000 * q_b, effect=effect, interval=slow.interval,
                   threshold=slow.null_ratio, events=events, boundary=limit, p_value=out.p_value,
                   samples=samples)


def _no_data(metric: str, data: _Data, over: bool, what: str | None = None) -> MetricVerdict:
    """Nothing to test yet: continue, or inconclusive once the window is over."""
    if what is None:
        what = "no canary data yet" if not data.canary_hosts else "no baseline data"
    decision = "inconclusive" if over else "continue"
    return MetricVerdict(metric=metric, decision=decision, reason=what,
                         samples={"mode": data.mode, "canary_hosts": data.canary_hosts,
                                  "baseline_hosts": data.baseline_hosts,
                                  "no_data": data.empty_canary + data.empty_baseline})


def _finish(metric: str, *, settings: AnalysisSettings, over: bool, failed: bool, early_pass: bool,
            enough: bool, fail_reason: str, summary: str, short_reason: str, **kw) -> MetricVerdict:
    """Fail on a rejection; at the window's end pass or too little traffic; before, early pass or continue."""
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


# ------------------------------------------------------------------------------------------ baseline pool


def _pool_hosts(data: _Data, cum: np.ndarray, settings: AnalysisSettings,
                metric: str) -> tuple[np.ndarray, list[str]]:
    """Which baseline hosts to pool at each point of ``cum`` (H x T x C cumulative): all but the outliers."""
    keep = np.ones(cum.shape[:2], dtype=bool)
    if not settings.outlier_hosts or cum.shape[0] < 3:
        return keep, []
    if metric == "errors":  # hosts compared by error rate
        n, events, cv, spread = cum[:, :, _REQ], cum[:, :, _ERR], None, _ERROR_HOST_SPREAD
    else:  # by mean latency
        n, events, cv, spread = cum[:, :, _CNT], cum[:, :, _SUM], _LATENCY_CV, _LATENCY_HOST_SPREAD
    with np.errstate(invalid="ignore", divide="ignore"):
        per_host = np.where(n >= _MIN_HOST_REQUESTS, events / n, np.nan)
    keep = ~stats.outlier_hosts(per_host, n, spread[0], cv=cv, rel_floor_high=spread[1])
    return keep, [data.baseline_hosts[i] for i in np.flatnonzero(~keep[:, -1])]


def _pooled(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept hosts' ``values`` (H x T, or H x T x C) summed; ``keep`` is H x T, or H x 1 for one choice."""
    return (values * (keep if values.ndim == 2 else keep[:, :, None])).sum(axis=0)


def _timed_and_slow(counts: np.ndarray, used: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per interval (I x C counts): requests timed, and those slower than bound ``idx``; 0 if not ``used``."""
    rows = np.arange(counts.shape[0])
    timed = np.where(used, counts[:, _CNT], 0.0)
    slow = np.maximum(np.where(used, counts[:, _CNT] - counts[rows, 4 + idx], 0.0), 0.0)
    return timed, slow


def _slack(settings: AnalysisSettings, tau):
    """The latency a baseline request needs to be slow at ``tau``: tau / (1 + tolerance) or tau - floor."""
    return np.minimum(tau / (1.0 + settings.latency_tolerance), tau - settings.latency_floor_ms / 1000.0)


def _survival_upper(bounds: np.ndarray, base: np.ndarray, total: float, v: float, alpha: float) -> float:
    """Upper confidence bound of the snapshot's share of requests slower than ``v`` (``alpha`` per edge)."""
    jj = int(np.searchsorted(bounds, v, side="left"))
    ucb_cum = base[4:].copy()
    for k in {max(jj - 1, 0), min(jj, len(bounds) - 1)}:  # the bucket edges around v
        s_up = stats.binom_upper(total - base[4 + k], total, alpha)
        ucb_cum[k] = total * (1.0 - s_up)
    return _survival(bounds, ucb_cum, total, v)


# ------------------------------------------------------------------------------------------ timeline


def _side(counts: np.ndarray, bounds: np.ndarray, quantiles: list[float]) -> dict[str, list]:
    """Per interval (I x C counts): requests, errors and the latency quantiles in ms (None: no timed request)."""
    out: dict[str, list] = {"requests": counts[:, _REQ].tolist(), "errors": counts[:, _ERR].tolist()}
    for q in quantiles:
        vals = []
        for row in counts:
            v = _quantile(bounds, row[4:], float(row[_CNT]), q) if bounds.size and row.size > 4 else None
            vals.append(None if v is None else 1000 * v)
        out[f"p{100 * q:g}_ms"] = vals
    return out


def _timeline(data: _Data, settings: AnalysisSettings) -> dict:
    """What the judge aligned, per interval, for a chart: canary and the pooled live baseline hosts.

    Warm-up intervals show the canary's counts as zero (not judged). A static baseline has no
    intervals: its lifetime error rate and quantiles are given once, as ``baseline_static``.
    """
    bounds = np.array(data.bounds)
    quantiles = settings.latency_quantiles
    out: dict = {"t": (data.interval_ends - data.start).tolist(), "canary": _side(data.canary, bounds, quantiles)}
    if data.mode == "live":
        out["baseline"] = _side(data.baseline.sum(axis=0), bounds, quantiles)
    elif data.mode == "static":
        tot = data.baseline.sum(axis=0)
        static: dict = {"error_rate": float(tot[_ERR] / tot[_REQ]) if tot[_REQ] > 0 else None}
        for q in quantiles:
            v = _quantile(bounds, tot[4:], float(tot[_CNT]), q) if bounds.size else None
            static[f"p{100 * q:g}_ms"] = None if v is None else 1000 * v
        out["baseline_static"] = static
    return out


def _label(v: MetricVerdict) -> str:
    """``errors``, or ``latency p99``: which test a verdict is."""
    q = v.samples.get("quantile")
    return v.metric if q is None else f"{v.metric} p{100 * q:g}"


# ------------------------------------------------------------------------------------------ judge


def judge(canary: dict[str, list[Scrape]], baseline: dict[str, list[Scrape]], settings: AnalysisSettings,
          *, elapsed_s: float, history: dict[str, list[Scrape]] | None = None,
          memory: FleetMemory | None = None) -> Verdict:
    """Compare the canary hosts with the baseline hosts over everything scraped so far.

    :param canary: host name -> that host's scrapes in time order (cumulative counters); a host
        with no data has an empty list.
    :param baseline: the same for baseline hosts; may be a pre-deploy snapshot (a two-point series
        per host: zero at process start, then one scrape) when no live baseline exists.
    :param settings: :class:`AnalysisSettings`.
    :param elapsed_s: seconds since the analysis began. Before ``settings.window_s`` the verdict
        may be ``continue`` (ask again after the next scrape); from then on it is ``pass``,
        ``fail`` or ``inconclusive``.
    :param history: host name -> a pre-deploy series of that host's old process (the plan's snapshot,
        as a two-point series like a static baseline's), for canary and live baseline hosts. With it the
        error test measures the canary host's own lasting difference from the pool (difference in
        differences) instead of assuming the fleet's typical one; without it, the typical one.
    :param memory: what the service's past releases measured about its fleet (:class:`FleetMemory`):
        the error test's assumed host spread and persistence are pooled with it. None: nothing yet.
    """
    over = elapsed_s >= settings.window_s
    data = _collect(canary, baseline, settings, history)
    if memory is not None and settings.overdispersion:
        data.memory = memory
    verdicts: list[MetricVerdict] = []
    for metric in settings.metrics:
        if metric == "errors":
            verdicts.append(_errors(data, settings, over))
        else:
            verdicts.extend(_latency(data, settings, over))
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
        reason = "; ".join(f"{_label(v)}: {v.reason}" for v in verdicts if v.decision != "pass")
    else:
        decision = "continue"
        reason = "; ".join(v.reason.removeprefix("collecting: ") for v in verdicts)
    details = {"mode": data.mode, "window_s": settings.window_s, "alpha": settings.alpha,
               "intervals": int(data.canary.shape[0]), "warmup_s": settings.warmup_s}
    if decision != "continue":
        details["timeline"] = _timeline(data, settings)
    return Verdict(decision=decision, metrics=verdicts, reason=reason, elapsed_s=float(elapsed_s), details=details)
