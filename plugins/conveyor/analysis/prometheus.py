"""Parse a Prometheus text exposition (version 0.0.4) into a :class:`~conveyor.analysis.model.Scrape`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from conveyor.analysis.model import Scrape

_SAMPLE_RE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"(?:\{(?P<labels>.*)\})?"
    r"\s+(?P<value>\S+)"
    r"(?:\s+(?P<ts>-?\d+))?\s*$"
)
_LABEL_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for m in _LABEL_RE.finditer(text):
        out[m.group(1)] = m.group(2).replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)  # accepts 1e3, NaN, +Inf, -Inf
    except ValueError:
        return None


def _bound(text: str) -> float | None:
    if text in ("+Inf", "Inf", "inf", "+inf"):
        return math.inf
    return _number(text)


def parse_prometheus(text: str, t: float, *, requests_metric: str = "shop_http_requests_total",
                     latency_metric: str = "shop_http_request_duration_seconds", status_label: str = "status",
                     start_metric: str | None = "process_start_time_seconds",
                     match: Mapping[str, str] | None = None) -> Scrape:
    """One host's ``/metrics`` page as a :class:`Scrape` taken at ``t``.

    ``requests_metric`` samples are summed over every label but ``status_label`` (the default
    ``status`` also accepts ``code``); the ``latency_metric`` histogram's ``_bucket`` (by ``le``),
    ``_sum`` and ``_count`` are summed over every other label; ``start_metric`` (None: none) gives
    ``start_time``. ``match``: only samples carrying every one of these labels with these values count
    (a feature flag's ``flag="x",variant="on"`` traffic). Comments, blank lines,
    unknown metrics and malformed lines are skipped. A NaN sample makes its sum NaN, which the
    judge treats as "no reading this time" rather than as a counter going down.
    """
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    lat_sum = 0.0
    lat_count = 0.0
    start_time: float | None = None
    bucket_name, sum_name, count_name = f"{latency_metric}_bucket", f"{latency_metric}_sum", f"{latency_metric}_count"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        name = m.group("name")
        if name not in (requests_metric, bucket_name, sum_name, count_name, start_metric):
            continue
        value = _number(m.group("value"))
        if value is None:
            continue
        if match and name != start_metric:
            labels = _labels(m.group("labels"))
            if any(labels.get(k) != v for k, v in match.items()):
                continue
        if name == start_metric:
            start_time = value if math.isfinite(value) else None
        elif name == requests_metric:
            labels = _labels(m.group("labels"))
            status = labels.get(status_label, labels.get("code", "") if status_label == "status" else "")
            requests[status] = requests.get(status, 0.0) + value
        elif name == bucket_name:
            le = _bound(_labels(m.group("labels")).get("le", ""))
            if le is None or math.isnan(le):
                continue
            buckets[le] = buckets.get(le, 0.0) + value
        elif name == sum_name:
            lat_sum += value
        else:
            lat_count += value
    return Scrape(t=float(t), requests=requests, latency_buckets=dict(sorted(buckets.items())),
                  latency_sum=lat_sum, latency_count=lat_count, start_time=start_time)
