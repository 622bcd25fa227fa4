"""The judge's data types: one scrape, the settings, and the verdicts. Pure Python, no Airflow import."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

DECISIONS = ("pass", "fail", "inconclusive", "continue")
METRICS = ("errors", "latency")
_STATUS_RE = re.compile(r"^([1-5][0-9][0-9]|[1-5]xx)$")
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
AUTO_WARMUP_S = 30.0  # the default warm-up, capped at a quarter of the window (see AnalysisSettings.warmup_s)


def _seconds(value: Any, name: str) -> Any:
    """A duration as seconds: a number, or a string like ``"90s"``, ``"2m"``, ``"500ms"``, ``"1h"``."""
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if not match:
            raise ValueError(f"{name} must be seconds (a number) or a duration like '90s' or '2m', got {value!r}")
        return float(match.group(1)) * _UNIT_S[match.group(2)]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass
class Scrape:
    """One scrape of one host. Every number is a CUMULATIVE counter since the process started.

    :param t: epoch seconds of the scrape.
    :param requests: HTTP status code (a string: ``"200"``, ``"500"``) -> requests served.
    :param latency_buckets: histogram upper bound ``le`` (``math.inf`` for ``+Inf``) -> requests that
        took at most that long, in seconds.
    :param latency_sum: total seconds spent serving the requests counted by the histogram.
    :param latency_count: requests counted by the histogram.
    :param start_time: the process's start (``process_start_time_seconds``); a change means the
        process restarted and its counters began again from zero.
    """

    t: float
    requests: dict[str, float]
    latency_buckets: dict[float, float]
    latency_sum: float
    latency_count: float
    start_time: float | None = None

    @property
    def usable(self) -> bool:
        """Whether this scrape says anything: it counted requests, and every count is a finite number.

        A page that is not the service's metrics (garbage, another exporter, an error page answered
        200) parses to no request counter at all, and a broken exporter can answer NaN; either is no
        data (never a zero-traffic host the canary could be compared with).
        """
        counts = [*self.requests.values(), *self.latency_buckets.values(), self.latency_sum, self.latency_count]
        return bool(self.requests) and all(isinstance(v, int | float) and math.isfinite(v) for v in counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for XCom and triggers): infinite bucket bounds as the string ``"+Inf"``."""
        return {
            "t": self.t,
            "requests": dict(self.requests),
            "latency_buckets": [["+Inf" if b == math.inf else b, c] for b, c in self.latency_buckets.items()],
            "latency_sum": self.latency_sum,
            "latency_count": self.latency_count,
            "start_time": self.start_time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scrape:
        return cls(
            t=d["t"], requests=dict(d["requests"]),
            latency_buckets={(math.inf if b == "+Inf" else float(b)): c for b, c in d["latency_buckets"]},
            latency_sum=d["latency_sum"], latency_count=d["latency_count"], start_time=d.get("start_time"),
        )


def synthetic_baseline(pre: dict[str, Any]) -> list[dict[str, Any]]:
    """A pre-deploy scrape (JSON form) as a two-point series: zero at process start, the counters at the scrape.

    The baseline of an analysis with no host left on the old version: each old process's counters
    over its lifetime.
    """
    start = pre.get("start_time")
    if not start or start >= pre["t"]:
        start = pre["t"] - 1.0
    zero = {**pre, "t": start, "requests": {k: 0.0 for k in pre["requests"]},
            "latency_buckets": [[b, 0.0] for b, _ in pre["latency_buckets"]], "latency_sum": 0.0,
            "latency_count": 0.0}
    return [zero, pre]


class AnalysisSettings(BaseModel):
    """How the judge decides. Every field has a default; :meth:`from_dict` ignores unknown keys.

    Immutable and validated on construction (a ``ValueError`` says which field and why); the service
    file's ``analysis:`` and ``watch:`` sections (:mod:`conveyor.config`) extend this one definition.

    :param window_s: the analysis window. The judge says ``continue`` until it decides or the window
        ends; at the end it always says ``pass``, ``fail`` or ``inconclusive``.
    :param min_requests: requests needed on EACH side (canary, baseline) before a ``pass``.
    :param min_fail_requests: canary requests needed before a ``fail`` (a few errors while a process
        warms up are not a verdict).
    :param alpha: the false-rollback rate the judge allows per analysis, however often it looks.
    :param alpha_spending: how the sequential test spends its ``alpha`` over the window: by time
        ``t`` it may have spent ``alpha * (t / window_s) ** alpha_spending``. 1 spends evenly (decides
        soonest on clear regressions); larger values keep more for the end (more power on subtle ones).
    :param errors_alpha_share: the part of ``alpha`` given to the error-rate test when both metrics
        run (latency gets the rest): latency data are plentiful, error counts are not.
    :param metrics: which comparisons to run: ``"errors"``, ``"latency"``.
    :param error_statuses: statuses that count as errors: exact codes (``"503"``) or classes (``"5xx"``).
    :param error_tolerance: relative slack on the error rate: a regression means the canary's rate is
        more than ``1 + error_tolerance`` times the baseline's. Hosts' own differences are handled by
        the overdispersion model, not by this slack: 2 % (5 % cost errors x2 detection 5 points in
        the bench; 0 %, with errors' share of ``alpha`` at 0.7, made fleets whose hosts' differences move
        at a deploy roll back 1.6 %).
    :param error_floor: absolute error rate (0.001 = 0.1%) at or under which the canary is never a
        regression, whatever the baseline: 1 error against 0 is not a regression, 5% against 0% is.
    :param latency_tolerance: relative slack on latency: a regression means the canary serves more of
        its requests above the threshold than the baseline would if every baseline request took
        ``1 + latency_tolerance`` times as long (or ``latency_floor_ms`` longer, whichever is more).
    :param latency_floor_ms: absolute latency slack in milliseconds.
    :param latency_quantiles: one latency test per quantile, each with its own threshold: the
        histogram bucket bound nearest that quantile of the baseline's latency (0.75: requests slower
        than the baseline's ~p75 are "slow"; 0.99: the slowest ~1%, where tail-only regressions
        show). They share the latency part of ``alpha`` equally. The old single ``latency_quantile:
        q`` is read as ``latency_quantiles: [q]``.
    :param warmup: seconds after a process starts (``Scrape.start_time``) during which its counts
        are not judged (Kayenta's begin-analysis delay, Argo's initial delay): a new canary is
        slow, and may throw a few errors, while caches fill and code warms up. A number or a
        duration string (``"90s"``, ``"2m"``). Unset: 30 s, at most a quarter of the window.
    :param overdispersion: widen the error and slow-request tests by the spread the live baseline
        hosts show between themselves (host-to-host rates) and from interval to interval (bursts),
        estimated from data seen before each interval. Off, the tests assume binomial counts around
        one shared rate, which real fleets break.
    :param host_history: with a live baseline, measure the canary host's own lasting difference from
        the pool on the plan's pre-deploy snapshot (its old process's error rate against the pooled
        hosts' over the same snapshot: difference in differences) instead of assuming the fleet's
        typical spread. Off when hosts' differences do not outlast a deploy.
    :param outlier_hosts: drop baseline hosts whose error rate or mean latency is far from the other
        baseline hosts' (median/MAD, needs 3 or more baseline hosts).
    :param early_pass: allow a ``pass`` before the window ends when every metric shows strong
        evidence (e-value >= 1/alpha) that the canary is no worse than ``early_pass_margin`` times
        the baseline, and both sides have ``min_requests``.
    :param early_pass_margin: the non-inferiority margin of ``early_pass`` (on the error-rate ratio
        and on the slow-request ratio).
    """

    # No NaN or infinity: every comparison with NaN is false, so a NaN window or alpha never decides.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    window_s: float = Field(300.0, ge=0)
    min_requests: int = Field(200, ge=0)
    min_fail_requests: int = Field(50, ge=0)
    alpha: float = 0.01
    alpha_spending: float = 1.0
    errors_alpha_share: float = 0.5
    metrics: list[str] = ["errors", "latency"]
    error_statuses: list[str] = ["5xx"]
    error_tolerance: float = 0.02
    error_floor: float = Field(0.001, le=1)
    latency_tolerance: float = 0.1
    latency_floor_ms: float = Field(2.0, ge=0)
    latency_quantiles: list[float] = [0.75, 0.99]
    warmup: float | None = Field(None, ge=0)
    overdispersion: bool = True
    host_history: bool = True
    outlier_hosts: bool = True
    early_pass: bool = False
    early_pass_margin: float = 1.5

    @model_validator(mode="before")
    @classmethod
    def _single_quantile(cls, data: Any) -> Any:
        """``latency_quantile: q`` (one quantile, service files before two were judged) means ``[q]``."""
        if isinstance(data, dict) and "latency_quantile" in data:
            data = dict(data)
            q = data.pop("latency_quantile")
            if "latency_quantiles" in data:
                raise ValueError("latency_quantile and latency_quantiles both given: keep latency_quantiles only "
                                 "(latency_quantile: q is the old form of latency_quantiles: [q])")
            if isinstance(q, int | float) and not isinstance(q, bool) and not 0 < q < 1:
                raise ValueError(f"latency_quantile must be in (0, 1), got {q}")
            data["latency_quantiles"] = [q]
        return data

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup(cls, value: Any) -> Any:
        return _seconds(value, "warmup")

    @field_validator("alpha", "errors_alpha_share")
    @classmethod
    def _fraction(cls, value: float, info: ValidationInfo) -> float:
        if not 0 < value < 1:
            raise ValueError(f"{info.field_name} must be in (0, 1), got {value}")
        return value

    @field_validator("latency_quantiles", mode="before")
    @classmethod
    def _quantiles_listed(cls, value: Any) -> Any:
        """One quantile stands for a list of one; integers are not quantiles (strict floats otherwise)."""
        return [value] if isinstance(value, float) else value

    @field_validator("latency_quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        bad = [q for q in value if not 0 < q < 1]
        if not value or bad or len(set(value)) != len(value) or len(value) > 4:
            raise ValueError(f"latency_quantiles must be 1 to 4 distinct quantiles in (0, 1), got {bad or value}")
        return sorted(value)

    @field_validator("alpha_spending")
    @classmethod
    def _spending(cls, value: float) -> float:
        if not 0.25 <= value <= 8:
            raise ValueError(f"alpha_spending must be in [0.25, 8], got {value}")
        return value

    @field_validator("error_tolerance", "latency_tolerance", "error_floor")
    @classmethod
    def _not_negative(cls, value: float, info: ValidationInfo) -> float:
        if value < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {value}")
        return value

    @field_validator("early_pass_margin")
    @classmethod
    def _margin(cls, value: float) -> float:
        if value <= 1:
            raise ValueError(f"early_pass_margin must be > 1, got {value}")
        return value

    @field_validator("metrics", "error_statuses", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        """One value stands for a list of one; status codes may be written as numbers (429)."""
        value = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
        if isinstance(value, list | tuple):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        if not value or set(value) - set(METRICS) or len(set(value)) != len(value):
            raise ValueError(f"metrics must be a non-empty subset of {list(METRICS)} without repeats, got {value}")
        return value

    @field_validator("error_statuses")
    @classmethod
    def _statuses(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not _STATUS_RE.fullmatch(s)]
        if not value or bad:
            raise ValueError(f"error_statuses must be HTTP codes (503) or classes (5xx), got {bad or value}")
        return value

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AnalysisSettings:
        """Build from a dict (a service file's section, or :meth:`to_dict`); unknown keys are ignored."""
        known = {*cls.__pydantic_fields__, "latency_quantile"}  # the old form, read by _single_quantile
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The judge's settings only (a section's own extra fields are left out), JSON-able."""
        return self.model_dump(include=set(AnalysisSettings.__pydantic_fields__))

    @property
    def warmup_s(self) -> float:
        """The warm-up in seconds: ``warmup``, or unset 30 s capped at a quarter of the window.

        The cap keeps a short window (a demo, a test) from being all warm-up.
        """
        return self.warmup if self.warmup is not None else min(AUTO_WARMUP_S, self.window_s / 4)

    def is_error(self, status: str) -> bool:
        status = str(status)
        for pattern in self.error_statuses:
            if pattern == status:
                return True
            if len(pattern) == 3 and pattern[1:].lower() == "xx" and len(status) == 3 and status[0] == pattern[0]:
                return True
        return False


def _clean(value: Any) -> Any:
    """JSON-able copy: non-finite floats become None, tuples become lists, floats are rounded."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class MetricVerdict:
    """One metric's decision and its evidence.

    :param metric: ``"errors"`` or ``"latency"``.
    :param decision: ``pass | fail | inconclusive | continue``.
    :param reason: one human line.
    :param canary: the canary's value (error rate as a fraction; latency quantile in ms).
    :param baseline: the baseline's value, same unit.
    :param effect: the tested ratio, canary over baseline (error rates; slow-request shares).
    :param interval: a ``1 - alpha`` confidence interval of ``effect`` over the whole window so far.
    :param threshold: the ratio above which the canary counts as a regression (``1 + tolerance``).
    :param events: the canary's events so far (errors; requests slower than the threshold), at the
        decision when there is one.
    :param boundary: the number of canary events at which the sequential test rejects "no
        regression" at that look (``events >= boundary`` is a regression).
    :param p_value: the nominal p-value of everything seen, as if it were one fixed-size test (for
        reading; the decision is the sequential boundary's), once the window ended or on a failure.
    :param samples: counts behind the numbers (requests, errors or slow requests, hosts, intervals).
    """

    metric: str
    decision: str
    reason: str
    canary: float | None = None
    baseline: float | None = None
    effect: float | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None
    events: float | None = None
    boundary: float | None = None
    p_value: float | None = None
    samples: dict[str, Any] = field(default_factory=dict)

    @property
    def statistic(self) -> str:
        parts = []
        if self.events is not None:
            limit = "none yet" if self.boundary is None or not math.isfinite(self.boundary) else f"{self.boundary:.0f}"
            parts.append(f"events={self.events:.0f} (fails at {limit})")
        if self.p_value is not None:
            parts.append(f"p={self.p_value:.3g}")
        return ", ".join(parts) or "n/a"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["statistic"] = self.statistic
        return _clean(d)


@dataclass
class Verdict:
    """The judge's answer: ``decision`` is ``pass | fail | inconclusive | continue`` (ask again)."""

    decision: str
    metrics: list[MetricVerdict]
    reason: str
    elapsed_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "elapsed_s": _clean(float(self.elapsed_s)),
            "metrics": [m.to_dict() for m in self.metrics],
            "details": _clean(self.details),
        }


MEMORY_MAX_DF = 20.0  # past releases count for at most this many hosts' degrees of freedom


@dataclass(frozen=True)
class FleetMemory:
    """What the service's past releases measured about its fleet, for the error test's priors.

    Three hosts say little about how far apart hosts' error rates are, or whether a host's difference
    outlasts a deploy; a service released twice a day has measured both many times. Each past live
    analysis recorded, in its errors verdict's samples, the hosts' spread (``spread_estimate``: the
    variance of their log error rates, over ``spread_hosts`` hosts) and how far hosts' differences moved
    across that deploy (``moved_estimate``: a variance, over ``moved_hosts`` hosts), both moment
    estimates that may be below 0: from a few hosts they are noisy, and pooling them before cutting
    at 0 keeps the pool unbiased. :meth:`from_samples` pools them, each weighted by its degrees of
    freedom (hosts - 1), at most :data:`MEMORY_MAX_DF` in all (the newest first): a fleet changes,
    so old releases must not outweigh what this one measures.

    :param spread2: pooled between-host variance of log error rates (None: never measured).
    :param spread_df: its degrees of freedom.
    :param moved: pooled variance of a host's difference's change across a deploy (None: never measured).
    :param moved_df: its degrees of freedom.
    :param releases: analyses it rests on.
    """

    spread2: float | None = None
    spread_df: float = 0.0
    moved: float | None = None
    moved_df: float = 0.0
    releases: int = 0

    @classmethod
    def from_samples(cls, rows: list[dict[str, Any]]) -> FleetMemory:
        """Pool past errors verdicts' samples (newest first: the newest fill the cap first)."""
        def pooled(value_key: str, hosts_key: str) -> tuple[float | None, float, int]:
            total, df, used = 0.0, 0.0, 0
            for row in rows:
                value, hosts = row.get(value_key), row.get(hosts_key)
                if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
                        or not isinstance(hosts, int | float) or isinstance(hosts, bool) or hosts < 2
                        or df >= MEMORY_MAX_DF):
                    continue
                w = min(float(hosts) - 1.0, MEMORY_MAX_DF - df)
                total += w * value
                df += w
                used += 1
            return (max(total / df, 0.0) if df > 0 else None), df, used

        spread2, spread_df, n_spread = pooled("spread_estimate", "spread_hosts")
        moved, moved_df, n_moved = pooled("moved_estimate", "moved_hosts")
        return cls(spread2, spread_df, moved, moved_df, max(n_spread, n_moved))

    def to_dict(self) -> dict[str, Any]:
        return _clean(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FleetMemory:
        d = d or {}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if d.get(f.name) is not None})

    def describe(self) -> dict[str, Any]:
        """For a verdict's samples: what the test took from past releases."""
        return {"memory_releases": self.releases,
                "memory_spread": None if self.spread2 is None else math.sqrt(self.spread2),
                "memory_spread_df": self.spread_df, "memory_moved": self.moved, "memory_moved_df": self.moved_df}
