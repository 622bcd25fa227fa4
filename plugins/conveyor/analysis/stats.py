"""The statistics behind the judge: an exact group-sequential test, e-processes and exact tails.

Everything is numpy + math (no scipy). Notation: per interval ``k`` the canary has exposure ``n_c``
(requests) and ``x`` events (errors, or requests slower than a threshold); the baseline has
exposure ``n_b`` and ``y`` events. If events are Poisson (or binomial) with per-request rates
``p_c`` and ``p_b``, then given ``m = x + y``,

    x ~ Binomial(m, theta),   theta = rho*n_c / (rho*n_c + n_b),   rho = p_c / p_b,

whatever the common level of ``p_b`` in that interval (so daily drift, shared by both sides, cancels).

:func:`sequential_test` decides regressions: a group-sequential test with one look per interval and
an alpha-spending function of calendar time, its boundaries computed exactly from the binomials
above, so the false-rollback rate holds however often the judge looks within the window.

:func:`ratio_e_process` (the likelihood ratio of ``rho1`` against ``rho0`` mixed over ``rho1``, a
non-negative supermartingale under the null, so by Ville's inequality it exceeds ``1/alpha`` at ANY
time with probability at most ``alpha``) decides the optional early pass.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Mixture over alternatives rho1 = rho0 * g (any fixed prior keeps validity; it only moves power
# around). 80% of the mass near the regressions that are hard to see in a short window (g ~ 1.2-2:
# errors x2, latency +25% beyond the tolerance), 20% spread over gross ones so those still fail
# within a scrape or two. Tuned on bench/canary.py.
_G_UP = np.exp(np.linspace(math.log(1.15), math.log(40.0), 24))


def _lognormal_weights(center: float, sd: float) -> np.ndarray:
    w = np.exp(-0.5 * ((np.log(_G_UP) - math.log(center)) / sd) ** 2)
    return w / w.sum()


_W_UP = 0.8 * _lognormal_weights(1.45, 0.4) + 0.2 * _lognormal_weights(3.0, 1.0)
_LOG_W_UP = np.log(_W_UP)
# Non-inferiority (early pass): alternatives rho1 = margin * g, g < 1.
_G_DOWN = np.exp(np.linspace(math.log(0.95), math.log(0.2), 16))
_LOG_W_DOWN = np.full(_G_DOWN.size, -math.log(_G_DOWN.size))


def _logsumexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def ratio_e_process(x: np.ndarray, y: np.ndarray, n_c: np.ndarray, n_b: np.ndarray,
                    rho0: np.ndarray | float, *, upper: bool = True) -> np.ndarray:
    """Log e-process path of the conditional binomial test, one value per interval (cumulative).

    ``upper=True`` tests H0: ``rho <= rho0`` (no regression) against ``rho > rho0``; ``upper=False``
    tests H0: ``rho >= rho0`` (a regression of at least ``rho0``) against ``rho < rho0`` (used to
    pass early on strong evidence of non-inferiority). ``rho0`` may vary by interval, as long as
    each interval's value is fixed before that interval's counts are seen. Intervals without
    exposure on either side, or without events, leave the e-value unchanged.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n_c = np.asarray(n_c, dtype=float)
    n_b = np.asarray(n_b, dtype=float)
    rho0 = np.broadcast_to(np.asarray(rho0, dtype=float), x.shape)
    if x.size == 0:
        return np.zeros(0)
    g, logw = (_G_UP, _LOG_W_UP) if upper else (_G_DOWN, _LOG_W_DOWN)
    m = x + y
    ok = (n_c > 0) & (n_b > 0) & (m > 0) & np.isfinite(rho0) & (rho0 > 0)
    a = np.where(ok, rho0 * n_c / np.where(n_b > 0, n_b, 1.0), 1.0)  # null odds of "event is canary's"
    # log LR[j, k] = x_k log g_j - m_k log((g_j a_k + 1) / (a_k + 1))
    llr = np.outer(np.log(g), x) - m[None, :] * (np.log1p(np.outer(g, a)) - np.log1p(a)[None, :])
    llr[:, ~ok] = 0.0
    path = np.cumsum(llr, axis=1)
    return _logsumexp(path + logw[:, None], axis=0)


# ---------------------------------------------------------------- normal distribution

_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549671010115695e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def ndtr(z: np.ndarray | float) -> np.ndarray:
    """Standard normal CDF."""
    return np.asarray(0.5 * _erfc(-np.asarray(z, dtype=float) / math.sqrt(2)), dtype=float)


def ndtri(p: np.ndarray | float) -> np.ndarray:
    """Inverse standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    low, high = p < 0.02425, p > 1 - 0.02425
    mid = ~low & ~high & (p > 0) & (p < 1)
    q = p[mid] - 0.5
    r = q * q
    num = ((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1
    out[mid] = num * q / den
    for mask, sign, tail in ((low & (p > 0), 1.0, p), (high & (p < 1), -1.0, 1 - p)):
        qq = np.sqrt(-2 * np.log(tail[mask]))
        num = ((((_C[0] * qq + _C[1]) * qq + _C[2]) * qq + _C[3]) * qq + _C[4]) * qq + _C[5]
        den = (((_D[0] * qq + _D[1]) * qq + _D[2]) * qq + _D[3]) * qq + 1
        out[mask] = sign * num / den
    out[p == 0] = -np.inf
    out[p == 1] = np.inf
    return out


# ---------------------------------------------------------------- exact tails


def _log_comb_terms(n: int, k_lo: int, k_hi: int) -> np.ndarray:
    """log C(n, k) for k = k_lo..k_hi (inclusive)."""
    base = math.lgamma(n + 1) - math.lgamma(k_lo + 1) - math.lgamma(n - k_lo + 1)
    if k_hi <= k_lo:
        return np.array([base])
    k = np.arange(k_lo, k_hi, dtype=float)
    return base + np.concatenate([[0.0], np.cumsum(np.log(n - k) - np.log(k + 1))])


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def binom_sf(x: float, n: float, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), exact (summing the terms that matter)."""
    x, n = int(math.ceil(x - 1e-9)), int(round(n))
    if x <= 0:
        return 1.0
    if x > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    sd = math.sqrt(n * p * (1 - p))
    span = int(40 * sd + 60)
    lp, lq = math.log(p), math.log1p(-p)
    if x > n * p:
        hi = min(n, x + span)
        k = np.arange(x, hi + 1, dtype=float)
        logs = _log_comb_terms(n, x, hi) + k * lp + (n - k) * lq
        return float(min(1.0, np.exp(logs).sum()))
    lo = max(0, x - 1 - span)
    k = np.arange(lo, x, dtype=float)
    logs = _log_comb_terms(n, lo, x - 1) + k * lp + (n - k) * lq
    return float(max(0.0, 1.0 - np.exp(logs).sum()))


def binom_cdf(x: float, n: float, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p)."""
    return 1.0 - binom_sf(math.floor(x) + 1, n, p)


def binom_upper(x: float, n: float, level: float) -> float:
    """One-sided Clopper-Pearson upper bound: the largest p with P(X <= x; n, p) >= level."""
    n = int(round(n))
    if n <= 0:
        return 1.0
    if x >= n:
        return 1.0
    lo, hi = x / n, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if binom_cdf(x, n, mid) > level:
            lo = mid
        else:
            hi = mid
    return hi


def binom_lower(x: float, n: float, level: float) -> float:
    """One-sided Clopper-Pearson lower bound: the smallest p with P(X >= x; n, p) >= level."""
    n = int(round(n))
    if x <= 0 or n <= 0:
        return 0.0
    lo, hi = 0.0, min(1.0, x / n)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if binom_sf(x, n, mid) < level:
            lo = mid
        else:
            hi = mid
    return lo


def poisson_binomial_sf(x: float, m: np.ndarray, theta: np.ndarray, exact_limit: int = 3000) -> float:
    """P(sum_k X_k >= x) for independent X_k ~ Binomial(m_k, theta_k).

    Exact (convolution, thetas rounded up to 1/400) up to ``exact_limit`` total trials, normal with
    continuity correction above.
    """
    m = np.rint(np.asarray(m, dtype=float)).astype(int)
    theta = np.clip(np.asarray(theta, dtype=float), 0.0, 1.0)
    keep = m > 0
    m, theta = m[keep], theta[keep]
    total = int(m.sum())
    x = int(math.ceil(x - 1e-9))
    if x <= 0:
        return 1.0
    if x > total:
        return 0.0
    if total > exact_limit:
        mean = float((m * theta).sum())
        var = float((m * theta * (1 - theta)).sum())
        if var <= 0:
            return 1.0 if x <= mean else 0.0
        return _norm_sf((x - 0.5 - mean) / math.sqrt(var))
    # Round each theta UP to a grid of 1/400 (a larger null theta only makes the tail heavier, so the
    # p-value stays valid) and group equal thetas: a sum of binomials with one theta is binomial.
    theta = np.minimum(np.ceil(theta * 400.0) / 400.0, 1.0)
    pmf = np.ones(1)
    for th in np.unique(theta):
        mm = int(m[theta == th].sum())
        if th <= 0:
            continue
        if th >= 1:
            pmf = np.concatenate([np.zeros(mm), pmf])
            continue
        k = np.arange(mm + 1, dtype=float)
        part = np.exp(_log_comb_terms(mm, 0, mm) + k * math.log(th) + (mm - k) * math.log1p(-th))
        pmf = np.convolve(pmf, part)
    return float(min(1.0, max(0.0, pmf[x:].sum())))


def ratio_interval(x: float, y: float, n_c: float, n_b: float, level: float) -> tuple[float, float]:
    """Two-sided ``1 - level`` interval for rho = p_c/p_b from the pooled conditional binomial."""
    m = x + y
    if m <= 0 or n_c <= 0 or n_b <= 0:
        return (0.0, math.inf)
    lo_t = binom_lower(x, m, level / 2)
    hi_t = binom_upper(x, m, level / 2)
    scale = n_b / n_c
    lo = lo_t / (1 - lo_t) * scale if lo_t < 1 else math.inf
    hi = hi_t / (1 - hi_t) * scale if hi_t < 1 else math.inf
    return (lo, hi)


# ---------------------------------------------------------------- robust pooling


def _nanmedian0(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (NaN where a column has no value); faster than np.nanmedian."""
    s = np.sort(a, axis=0)  # NaN sorts last
    n = (~np.isnan(a)).sum(axis=0)
    lo = np.clip((n - 1) // 2, 0, None)
    hi = np.clip(n // 2, 0, None)
    cols = np.arange(a.shape[1])
    out = 0.5 * (s[lo, cols] + s[hi, cols])
    return np.where(n > 0, out, np.nan)


def outlier_hosts(rates: np.ndarray, n: np.ndarray, rel_floor: float, cv: float | None = None,
                  k: float = 3.0, rel_floor_high: float | None = None) -> np.ndarray:
    """Mask of hosts (rows) to drop, per column: far from the median host, beyond sampling noise.

    ``rates`` is hosts x columns (NaN = not enough data, never dropped), ``n`` the observations
    behind each rate. The sampling sd of host ``h`` is that of a host LIKE THE MEDIAN one:
    ``sqrt(median / n)`` for event rates (Poisson, ``cv=None``) or ``cv * median / sqrt(n)`` for
    means. A host is dropped when it is more than ``k`` such sds AND more than ``rel_floor``
    (relative) below the median or ``rel_floor_high`` (default: ``rel_floor``) above it; at most
    ``(hosts - 1) // 2`` hosts are dropped (the most extreme), so the median hosts always remain.
    The judge uses a larger ``rel_floor_high``: dropping a host that looks better than the rest
    errs towards a false rollback, dropping one that looks worse only towards missing a
    regression, so an unusually good host goes first when the evidence is ambiguous. Needs 3+ hosts with data. From 5 hosts on, the
    sd is widened by the hosts' spread (1.4826 x MAD); with 3 or 4 hosts the MAD is set by the
    second-oddest host and would hide the oddest one.
    """
    h = rates.shape[0]
    drop = np.zeros(rates.shape, dtype=bool)
    if h < 3:
        return drop
    valid = ~np.isnan(rates)
    enough = valid.sum(axis=0) >= 3
    if not enough.any():
        return drop
    with np.errstate(invalid="ignore", all="ignore"):
        med = _nanmedian0(rates)
        dev = np.abs(rates - med[None, :])
        nn = np.maximum(n, 1.0)
        if cv is None:
            sd = np.sqrt(np.abs(med)[None, :] * nn + 1.0) / nn
        else:
            sd = cv * np.abs(med)[None, :] / np.sqrt(nn)
        mad = 1.4826 * _nanmedian0(dev) if h >= 5 else np.zeros(rates.shape[1])
        scale = np.sqrt(mad[None, :] ** 2 + sd**2)
        high = rel_floor if rel_floor_high is None else rel_floor_high
        floor = np.where(rates > med[None, :], high, rel_floor) * np.abs(med[None, :])
        far = valid & (dev > k * scale) & (dev > floor)
        extreme = dev / np.where(floor > 0, floor, 1.0)
    far &= enough[None, :]
    limit = (h - 1) // 2
    counts = far.sum(axis=0)
    over = np.nonzero(counts > limit)[0]
    for c in over:  # keep only the most extreme ones
        order = np.argsort(-np.where(far[:, c], extreme[:, c], -1.0))
        far[:, c] = False
        far[order[:limit], c] = True
    drop |= far
    return drop


# ---------------------------------------------------------------- group-sequential test

_PRUNE = 1e-18  # null probabilities below this are dropped from the convolution (far below any spend step)
_LOG_FACT = np.zeros(1)


def null_share(rho0: np.ndarray | float, n_c: np.ndarray, n_b: np.ndarray, missing: float = math.nan) -> np.ndarray:
    """``theta = rho0*n_c / (rho0*n_c + n_b)``: the canary's share of an interval's events if its rate is
    ``rho0`` times the baseline's; ``missing`` where either side served nothing."""
    n_c = np.asarray(n_c, dtype=float)
    n_b = np.asarray(n_b, dtype=float)
    ok = (n_c > 0) & (n_b > 0)
    a = rho0 * n_c / np.where(ok, n_b, 1.0)
    return np.where(ok, a / (1 + a), missing)


def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n (at least), cached and grown as needed."""
    global _LOG_FACT
    if _LOG_FACT.size <= n:
        size = max(n + 1, 2 * _LOG_FACT.size, 4096)
        _LOG_FACT = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, size, dtype=float)))])
    return _LOG_FACT


def binom_windows(m: np.ndarray, theta: np.ndarray, phi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The parts of Binomial(m_k, theta_k)'s pmfs that carry any mass, all rows at once.

    Returns ``(k0, P)``: ``P[k, i] = P(X_k = k0[k] + i)`` (zero-padded rows). Only
    ``mean +- (10 sd + 8)`` is computed, so a million requests cost no more than a thousand.
    Rows with ``m <= 0`` or ``theta`` outside (0, 1) are point masses (at 0, or at ``m`` for 1).
    Rows with ``phi > 1`` are beta-binomial with that variance over the binomial's (the share
    itself varies from interval to interval: bursts), whose tails are heavier than a binomial's.
    """
    m = np.asarray(m, dtype=np.int64)
    theta = np.asarray(theta, dtype=float)
    inner = (m > 0) & (theta > 0) & (theta < 1)
    th = np.where(inner, theta, 0.5)
    mm = np.where(inner, m, 0)
    over = np.ones(m.shape) if phi is None else np.where(np.isfinite(phi), np.maximum(phi, 1.0), 1.0)
    beta = inner & (over > 1.0 + 1e-9) & (mm > 1)
    sd = np.sqrt(mm * th * (1 - th) * np.where(beta, over, 1.0))
    lo = np.where(inner, np.maximum(0, np.floor(mm * th - 10 * sd - 8)), 0).astype(np.int64)
    hi = np.where(inner, np.minimum(mm, np.ceil(mm * th + 10 * sd + 8)), 0).astype(np.int64)
    width = int((hi - lo).max(initial=0)) + 1
    kk = lo[:, None] + np.arange(width)[None, :]
    valid = kk <= hi[:, None]
    kc = np.minimum(kk, mm[:, None])
    lf = _log_factorials(int(mm.max(initial=0)))
    logs = (lf[mm][:, None] - lf[kc] - lf[mm[:, None] - kc]
            + kc * np.log(th)[:, None] + (mm[:, None] - kc) * np.log1p(-th)[:, None])
    if beta.any():  # beta-binomial rows: pmf ratios p(k+1)/p(k) = (m-k)(k+a) / ((k+1)(m-k-1+b)), from k0
        rho = np.clip((over[beta] - 1.0) / (mm[beta] - 1.0), 1e-12, 0.99)
        a = th[beta] * (1.0 / rho - 1.0)
        b = (1.0 - th[beta]) * (1.0 / rho - 1.0)
        kb, mb = kc[beta][:, :-1].astype(float), mm[beta][:, None].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = (np.log(np.maximum(mb - kb, 0.0)) + np.log(kb + a[:, None]) - np.log(kb + 1.0)
                    - np.log(np.maximum(mb - kb - 1.0 + b[:, None], 1e-300)))
        step = np.where(np.isfinite(step), step, -np.inf)
        rel = np.concatenate([np.zeros((step.shape[0], 1)), np.cumsum(step, axis=1)], axis=1)
        logs[beta] = rel - np.max(np.where(valid[beta], rel, -np.inf), axis=1, keepdims=True)
    p = np.where(valid, np.exp(logs), 0.0)
    p /= p.sum(axis=1, keepdims=True)  # the window holds all but ~1e-40 of the mass; this removes round-off
    point = ~inner
    p[point] = 0.0
    p[point, 0] = 1.0
    lo = np.where(point, np.where((theta >= 1) & (m > 0), m, 0), lo)
    return lo, p


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if min(a.size, b.size) < 64 or a.size * b.size < 200_000:
        return np.convolve(a, b)
    n = a.size + b.size - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b, size), size)[:n]
    return np.maximum(out, 0.0)  # FFT round-off leaves ~1e-17 noise, far below any spend step


@dataclass
class SequentialTest:
    """The outcome of :func:`sequential_test` after the looks so far.

    :param first: index of the first look whose total reached its boundary (the rejection), or None.
    :param events: the canary's running total ``S_k`` at every look.
    :param boundary: the smallest total that rejects at every look (``inf``: none can).
    :param spent: the type-I error spent so far (at most the last ``spend``).
    """

    first: int | None
    events: np.ndarray
    boundary: np.ndarray
    spent: float

    def at(self, k: int | None) -> tuple[float, float]:
        """(canary total, boundary) at look ``k`` (default: the last)."""
        if self.events.size == 0:
            return 0.0, math.inf
        k = self.events.size - 1 if k is None else k
        return float(self.events[k]), float(self.boundary[k])


def sequential_test(x: np.ndarray, m: np.ndarray, theta: np.ndarray, spend: np.ndarray,
                    phi: np.ndarray | None = None) -> SequentialTest:
    """Exact group-sequential test of H0 "x_k ~ Binomial(m_k, theta_k) or stochastically smaller", one look per interval.

    ``spend[k]`` is the type-I error the test may have spent by look ``k`` (an alpha-spending
    function of calendar time, fixed before the data: nondecreasing, at most alpha). At look ``k`` the
    boundary is the smallest running total ``S_k = x_1 + ... + x_k`` whose null probability of being
    reached now, on paths that crossed no earlier boundary, fits in what is left to spend; the test
    rejects at the first look where ``S_k`` reaches it. So ``P(reject at any look) <= spend[-1]``
    however many looks there are: looking after every scrape costs nothing extra. The null law is
    exact (a running convolution of binomials, pruned below 1e-18), conditional on the totals ``m_k``,
    which under H0 carry no information about the canary's share. A look with ``m_k = 0`` or a
    non-finite ``theta_k`` adds no data (its events are not counted) but may still reject on what came
    before if more can be spent.
    With ``phi`` (per look, >= 1), each look's law is beta-binomial with ``phi`` times the binomial's
    variance: overdispersed counts, tested without rounding them.
    """
    x = np.rint(np.asarray(x, dtype=float))
    m = np.rint(np.asarray(m, dtype=float)).astype(np.int64)
    theta = np.asarray(theta, dtype=float)
    spend = np.asarray(spend, dtype=float)
    phi = np.ones(x.size) if phi is None else np.asarray(phi, dtype=float)
    n = x.size
    boundary = np.full(n, math.inf)
    data = (m > 0) & np.isfinite(theta)
    # A look without a null (the baseline served nothing in it: a scrape not yet in) counts for neither
    # side: its canary events are left out of the running total as its null law is left out of the pmf.
    events = np.cumsum(np.where(data, x, 0.0))
    pmf, lo = np.ones(1), 0  # pmf[i] = P(S = lo + i and no boundary crossed yet), under H0
    spent = 0.0
    first = None
    begin = 0
    # The judge asks again after every scrape with one more look and the earlier looks unchanged
    # (each look's null is fixed before its data): resume from the state after the known looks.
    with _STATE_LOCK:
        known = _STATES.get(_state_key(x, m, theta, spend, phi, n - 1)) if n > 1 else None
    if known is not None:
        pmf, lo, spent, first, done = known
        boundary[: n - 1] = done
        begin = n - 1
    k0s, steps = binom_windows(m[begin:], theta[begin:], phi[begin:])  # rows without data are point masses, skipped below
    widths = steps.shape[1] - np.argmax(steps[:, ::-1] > 0, axis=1)
    for k in range(begin, n):
        if k == n - 1 and n > 1 and begin < n - 1:
            with _STATE_LOCK:
                _remember(_state_key(x, m, theta, spend, phi, n - 1), (pmf, lo, spent, first, boundary[: n - 1].copy()))
        if pmf.size == 0:  # every null path has crossed (only with alpha near 1): nothing left to spend
            break
        if data[k]:
            pmf = _convolve(pmf, steps[k - begin, : widths[k - begin]])
            start = int(np.argmax(pmf > _PRUNE))
            end = pmf.size - int(np.argmax(pmf[::-1] > _PRUNE))
            lo += int(k0s[k - begin]) + start
            pmf = pmf[start:end] if end > start else np.zeros(0)
        room = float(spend[k]) - spent
        if room <= 0 or pmf.size == 0:
            continue
        tail = np.cumsum(pmf[::-1])[::-1]  # tail[i] = P(S >= lo + i, no crossing yet): nonincreasing
        b = int(np.searchsorted(-tail, -room, side="left"))  # first i with tail[i] <= room
        # b == pmf.size: even the largest total H0 allows is too likely; only an impossible one rejects
        spent += float(tail[b]) if b < pmf.size else 0.0
        boundary[k] = lo + b
        pmf = pmf[:b]
        if first is None and events[k] >= boundary[k]:
            first = k
    with _STATE_LOCK:
        _remember(_state_key(x, m, theta, spend, phi, n), (pmf, lo, spent, first, boundary.copy()))
    return SequentialTest(first, events, boundary, spent)


_STATES: OrderedDict[bytes, tuple] = OrderedDict()
_STATE_LOCK = threading.Lock()


def _state_key(x: np.ndarray, m: np.ndarray, theta: np.ndarray, spend: np.ndarray, phi: np.ndarray,
               k: int) -> bytes:
    """The first ``k`` looks' inputs, as a key (the digest of their bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for a in (x[:k], m[:k], theta[:k], spend[:k], phi[:k]):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


def _remember(key: bytes, state: tuple) -> None:
    _STATES[key] = state
    _STATES.move_to_end(key)
    while len(_STATES) > 2048:
        _STATES.popitem(last=False)





# ---------------------------------------------------------------- overdispersion


@dataclass
class Dispersion:
    """How much more than binomial the baseline hosts' counts vary, as known before each interval.

    Entry ``k`` of each array uses intervals ``0..k-1`` only (entry 0: nothing seen yet), so the
    judge can fix interval ``k``'s null before its counts are seen.

    :param phi: per-interval overdispersion (Pearson chi^2 / df of the hosts' interval counts around
        their expected shares, host effects removed), at least 1: bursts of errors, wobbles of latency.
    :param tau2_raw: between-host variance of log rates (DerSimonian-Laird, random effects) as the
        moment estimate, which may be below 0: unbiased, so estimates from several releases can be
        pooled (cut ones are biased up when few hosts make them noisy).
    :param hosts: hosts the estimates rest on.
    """

    phi: np.ndarray
    tau2_raw: np.ndarray
    hosts: np.ndarray

    @property
    def tau2(self) -> np.ndarray:
        """The between-host variance, at least 0."""
        return np.maximum(self.tau2_raw, 0.0)


def dispersion(x: np.ndarray, n: np.ndarray, keep: np.ndarray | None = None, prior_df: float = 8.0) -> Dispersion:
    """Overdispersion and host spread of event counts ``x`` over exposures ``n`` (both hosts x intervals).

    Within interval ``k``, given its total ``M_k`` of events over the hosts in ``keep[:, k]``, a host's
    count is expected at ``E = M_k n_hk / N_k`` if all hosts shared one rate; the Pearson statistic
    ``sum (x - E)^2 / E`` summed over intervals is chi^2 with ``sum_k (H_k - 1)`` df under that model.
    The part explained by lasting host differences (the same statistic on the hosts' running
    totals, ``H - 1`` df) is taken out, and the rest over its df is ``phi``, shrunk towards 1 by
    ``prior_df`` pseudo-df (a few intervals say little). ``tau2`` is the DerSimonian-Laird
    between-host variance of the hosts' log rates over the running totals, with each host's
    sampling variance ``phi / events``. Fewer than 2 hosts give ``phi = nan``, fewer than 3
    ``tau2 = nan``: the caller decides what to assume.
    """
    x = np.asarray(x, dtype=float)
    n = np.asarray(n, dtype=float)
    h, k_n = x.shape
    keep = np.ones((h, k_n + 1), dtype=bool) if keep is None else keep
    use = keep[:, :k_n] & (n > 0)  # the hosts each interval's terms use (chosen before the interval)
    nn = np.where(use, n, 0.0)
    xx = np.where(use, x, 0.0)
    tot_n, tot_x = nn.sum(axis=0), xx.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.where(use & (tot_n > 0), tot_x * nn / np.where(tot_n > 0, tot_n, 1.0), 0.0)
        terms = np.where(e > 0, (xx - e) ** 2 / np.where(e > 0, e, 1.0), 0.0)
    hosts_k = use.sum(axis=0)
    informative = (tot_x > 0) & (hosts_k >= 2)
    within_all = np.concatenate([[0.0], np.cumsum(np.where(informative, terms.sum(axis=0), 0.0))])
    df_all = np.concatenate([[0.0], np.cumsum(np.where(informative, hosts_k - 1, 0))])
    # running totals per host (H x (K+1)): events, expected events, exposure
    cx = np.concatenate([np.zeros((h, 1)), np.cumsum(np.where(informative, xx, 0.0), axis=1)], axis=1)
    ce = np.concatenate([np.zeros((h, 1)), np.cumsum(np.where(informative, e, 0.0), axis=1)], axis=1)
    cn = np.concatenate([np.zeros((h, 1)), np.cumsum(nn, axis=1)], axis=1)
    seen = (ce > 0) & keep
    n_hosts = seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = np.where(seen, (cx - ce) ** 2 / np.where(ce > 0, ce, 1.0), 0.0).sum(axis=0)
        df_within = df_all - np.maximum(n_hosts - 1, 0)
        within = np.maximum(within_all - between, 0.0)
        phi = np.maximum(1.0, (within + prior_df) / (np.maximum(df_within, 0.0) + prior_df))
    phi = np.where(n_hosts >= 2, phi, np.nan)
    # DerSimonian-Laird on the hosts' log rates (0.5 added: a host with no events yet has a finite rate)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_ok = seen & (cn > 0)
        lr = np.where(rate_ok, np.log((cx + 0.5) / np.where(cn > 0, cn, 1.0)), 0.0)
        w = np.where(rate_ok, (cx + 0.5) / np.where(np.isfinite(phi), phi, 1.0)[None, :], 0.0)
    raw, m = between_variance(lr, w, rate_ok, cut=False)
    raw = np.where(m >= 3, raw, np.nan)
    return Dispersion(phi, raw, n_hosts)


def between_variance(y: np.ndarray, w: np.ndarray, use: np.ndarray, cut: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """DerSimonian-Laird: the variance of values ``y`` (hosts x points) beyond their sampling variances
    ``1 / w``, over the hosts in ``use`` at each point; and how many hosts that was. Never negative,
    unless ``cut`` is False (the moment estimate itself, for pooling)."""
    w = np.where(use, w, 0.0)
    y = np.where(use, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sw, sw2 = w.sum(axis=0), (w**2).sum(axis=0)
        mean = (w * y).sum(axis=0) / np.where(sw > 0, sw, 1.0)
        q = (w * np.where(use, y - mean[None, :], 0.0) ** 2).sum(axis=0)
        m = use.sum(axis=0)
        denom = sw - sw2 / np.where(sw > 0, sw, 1.0)
        var = (q - (m - 1)) / np.where(denom > 0, denom, np.inf)
    return (np.maximum(var, 0.0) if cut else var), m


class Persistence(NamedTuple):
    """What :func:`persistence` measured, per point."""

    moved: np.ndarray  # the variance of the hosts' moves, shrunk towards the prior (nan: fewer than 2 hosts)
    raw: np.ndarray  # its moment estimate before the cut at 0 (for pooling over releases)
    hosts: np.ndarray  # the hosts behind it
    noise: np.ndarray  # the mean sampling variance of one host's move (what a move must exceed to show)


def persistence(x: np.ndarray, n: np.ndarray, hist_x: np.ndarray, hist_n: np.ndarray, use: np.ndarray,
                phi: np.ndarray, prior_df: float = 0.0, prior: float = 0.0) -> Persistence:
    """How much hosts' differences moved between their history and now: a DerSimonian-Laird variance.

    ``x``, ``n``: each host's events and exposure so far (hosts x points); ``hist_x``, ``hist_n``: the
    same over each host's history (hosts); ``use``: the hosts to compare at each point. A host's
    change is ``d = log(rate now) - log(rate then)``, with sampling variance ``phi / x + 1 / hist_x``
    (0.5 added to both counts); hosts whose differences last all change by the same (shared drift),
    so the variance of ``d`` beyond sampling is how far a host's difference moves, shrunk towards
    ``prior`` (0: "the differences lasted") by ``prior_df`` pseudo-df against the hosts' ``m - 1``.
    Fewer than 2 hosts: ``nan``. See :class:`Persistence`.
    """
    ok = use & (n > 0) & (hist_n > 0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.log((x + 0.5) / np.where(n > 0, n, 1.0)) - np.log((hist_x + 0.5) / np.where(hist_n > 0, hist_n, 1.0))[:, None]
        sampling = np.where(ok, phi[None, :] / (x + 0.5) + 1.0 / (hist_x[:, None] + 0.5), 0.0)
        w = np.where(ok, 1.0 / sampling, 0.0)
    noise = sampling.sum(axis=0) / np.maximum(ok.sum(axis=0), 1)
    raw, m = between_variance(d, w, ok, cut=False)
    var = np.maximum(raw, 0.0)
    df = np.maximum(m - 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shrunk = (var * df + prior * prior_df) / (df + prior_df)
    return Persistence(np.where(m >= 2, shrunk, np.nan), np.where(m >= 2, raw, np.nan), m, noise)


def chi2_lower(df: np.ndarray | float, z: float) -> np.ndarray:
    """The chi-square quantile ``z`` standard normal sds below the median (Wilson-Hilferty; ``df`` > 0)."""
    k = np.maximum(np.asarray(df, dtype=float), 1e-9)
    c = 2.0 / (9.0 * k)
    return k * np.maximum(1.0 - c - z * np.sqrt(c), 1e-3) ** 3


def variance_upper(raw: np.ndarray, noise: np.ndarray, df: np.ndarray, z: float) -> np.ndarray:
    """An upper confidence bound (``z`` sds, one-sided) for a between-host variance from its moment
    estimate ``raw`` on ``df`` degrees of freedom, when one host's sampling variance is about ``noise``.

    The hosts' values vary by ``tau^2 + noise`` in all, a chi-square's worth on ``df``: its upper bound
    less the noise (a Q-profile bound with equal weights). An estimate cut at 0 by chance still gets a
    bound as wide as the noise allows; no degrees of freedom: infinity.
    """
    raw = np.where(np.isfinite(raw), np.maximum(raw, 0.0), 0.0)
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = (raw + noise) * df / chi2_lower(df, z) - noise
    return np.where(df > 0, np.maximum(upper, raw), np.inf)


def scaled_counts(x: np.ndarray, y: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Events ``x`` (canary) and ``y`` (baseline) per interval divided by ``phi``, kept whole numbers.

    The quasi-binomial trick: a count whose variance is ``phi`` times a binomial's carries the
    information of ``1/phi`` as many binomial trials, so the exact test runs on the counts over
    ``phi``. The running totals are rounded (not each interval's few events), so nothing is lost to
    rounding over many intervals, and each interval's scaled canary count stays within its scaled total.
    """
    phi = np.where(np.isfinite(phi) & (phi > 0), phi, 1.0)
    cx = np.rint(np.cumsum(np.asarray(x, dtype=float) / phi))
    cy = np.rint(np.cumsum(np.asarray(y, dtype=float) / phi))
    return np.diff(cx, prepend=0.0), np.diff(cy, prepend=0.0)
