"""Load suites (``kind: load``): Locust's command line, its JSON report read back, thresholds judged.
Pure: no Airflow import, and no Locust import either (Locust runs as a subprocess, see
:func:`conveyor.suites.run_suite`: importing it would monkey-patch the Airflow process with gevent).

Locust's ``--json-file`` report is a list of request entries (one per name and method), each with
``num_requests``, ``num_failures``, ``start_time``, ``last_request_timestamp`` and ``response_times``:
a histogram of milliseconds (Locust rounds above 100 ms to two significant digits, above 1000 ms to
three). The entries are merged and the percentiles read from the histogram the way Locust reads its own
(``locust.stats.calculate_response_time_percentile``), so the numbers match Locust's printed report.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The thresholds a load suite may set, with how each is judged and shown.
THRESHOLDS = ("p95_ms", "p99_ms", "error_rate", "min_rps")


class LoadReportError(ValueError):
    """Locust's JSON report is missing or not what Locust writes."""


@dataclass(frozen=True)
class LoadStats:
    """One load run, all request entries merged."""

    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rps: float  # requests per second over the run (first request to last)
    duration_s: float
    failures_by_request: dict[str, int]  # "GET /products": failures, for the requests that had any

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 6)}


def percentile(histogram: Mapping[int, int], total: int, percent: float) -> int:
    """The response time ``percent`` (0..1) of the requests finished within: Locust's own reading."""
    wanted = int(total * percent)
    seen = 0
    for value in sorted(histogram, reverse=True):
        seen += histogram[value]
        if total - seen <= wanted:
            return value
    return 0


def parse_locust_report(text: str) -> LoadStats:
    """``text``: the content of Locust's ``--json-file`` report (or its ``--json`` standard output)."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise LoadReportError(f"Locust's report is not JSON: {e}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LoadReportError("Locust's report is not a list of request entries")
    histogram: Counter[int] = Counter()
    requests = failures = 0
    starts: list[float] = []
    ends: list[float] = []
    failing: dict[str, int] = {}
    for entry in entries:
        try:
            n, f = int(entry["num_requests"]), int(entry["num_failures"])
            times = {int(float(k)): int(v) for k, v in (entry.get("response_times") or {}).items()}
            name = f"{entry.get('method') or ''} {entry['name']}".strip()
        except (KeyError, TypeError, ValueError) as e:
            raise LoadReportError(f"Locust's report has an entry without {e}: {str(entry)[:200]}") from None
        requests, failures = requests + n, failures + f
        histogram.update(times)
        if f:
            failing[name] = failing.get(name, 0) + f
        if entry.get("start_time") and entry.get("last_request_timestamp"):
            starts.append(float(entry["start_time"]))
            ends.append(float(entry["last_request_timestamp"]))
    counted = sum(histogram.values())  # requests that got no response at all have no response time
    duration = max(ends) - min(starts) if starts else 0.0
    return LoadStats(
        requests=requests, failures=failures,
        p50_ms=percentile(histogram, counted, 0.50), p95_ms=percentile(histogram, counted, 0.95),
        p99_ms=percentile(histogram, counted, 0.99), max_ms=max(histogram, default=0),
        rps=round(requests / duration, 2) if duration > 0 else 0.0, duration_s=round(duration, 3),
        failures_by_request=dict(sorted(failing.items())),
    )


@dataclass(frozen=True)
class Verdict:
    """One threshold against the measured number."""

    threshold: str  # one of THRESHOLDS
    measured: float
    limit: float
    ok: bool

    @property
    def message(self) -> str:
        word = "within" if self.ok else ("under" if self.threshold == "min_rps" else "over")
        return f"{describe(self.threshold, self.measured)}, {word} the threshold {number(self.threshold, self.limit)}"


def number(threshold: str, value: float) -> str:
    """A measured value or a limit as a person reads it: ``182 ms``, ``2.10%``, ``41.3 req/s``."""
    if threshold == "error_rate":
        return f"{value * 100:.2f}%"
    if threshold == "min_rps":
        return f"{value:g} req/s"
    return f"{value:g} ms"


def describe(threshold: str, value: float) -> str:
    """``p95 182 ms``, ``error rate 2.10%``, ``rate 41.3 req/s``."""
    label = {"error_rate": "error rate", "min_rps": "rate"}.get(threshold, threshold.removesuffix("_ms"))
    return f"{label} {number(threshold, value)}"


def judge(stats: LoadStats, thresholds: Mapping[str, float | None]) -> list[Verdict]:
    """Each threshold that is set, against ``stats``; latency and error rate are maximums, rps a minimum."""
    unknown = set(thresholds) - set(THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown threshold(s) {sorted(unknown)}; known: {', '.join(THRESHOLDS)}")
    measured = {"p95_ms": stats.p95_ms, "p99_ms": stats.p99_ms, "error_rate": stats.error_rate,
                "min_rps": stats.rps}
    verdicts = []
    for name in THRESHOLDS:
        limit = thresholds.get(name)
        if limit is None:
            continue
        value = measured[name]
        ok = value >= limit if name == "min_rps" else value <= limit
        verdicts.append(Verdict(name, round(value, 6), limit, ok))
    return verdicts


def locust_command(python: str, *, locustfile: str, host: str, users: int, spawn_rate: float, run_time_s: int,
                   report: str) -> list[str]:
    """Locust headless for ``run_time_s`` seconds; the report as JSON in the file ``report`` (Locust adds
    ``.json`` to the name it is given, so ``report`` ends with it).

    ``--exit-code-on-error 0``: failed requests are judged by the thresholds, so a non-zero exit means
    Locust itself failed (a broken locustfile, a bad option).
    """
    return [python, "-m", "locust", "--locustfile", locustfile, "--headless", "--host", host,
            "--users", str(users), "--spawn-rate", f"{spawn_rate:g}", "--run-time", f"{run_time_s}s",
            "--stop-timeout", "2", "--only-summary", "--json-file", report.removesuffix(".json"),
            "--exit-code-on-error", "0"]


def markdown_line(load: Mapping[str, Any]) -> str:
    """A load suite's summary (``SuiteRun.summary()["load"]``) on one line, for the sign-off and tickets."""
    stats = load.get("measured") or {}
    parts = [f"{stats.get('requests', 0)} requests in {stats.get('duration_s', 0):g} s"]
    for v in load.get("verdicts") or []:
        parts.append(f"{describe(v['threshold'], v['measured'])} (threshold {number(v['threshold'], v['limit'])}: "
                     f"{'ok' if v['ok'] else 'FAIL'})")
    return "; ".join(parts)


def verdicts_as_dicts(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    return [{**asdict(v), "message": v.message} for v in verdicts]
