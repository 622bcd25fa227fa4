"""Prometheus text metrics: requests by status and a latency histogram.

With feature flags declared (:mod:`shop.flags`), every API request is also counted once per flag, under
``shop_flag_requests_total`` and ``shop_flag_request_duration_seconds`` labelled ``flag`` and
``variant`` (``on`` or ``off`` for that request): separate families, so the totals above stay the
whole traffic, and a judge compares flag-on with flag-off traffic by selecting
``{flag="...",variant="on"}`` against ``variant="off"``. Without flags these families are absent.
"""

from __future__ import annotations

import threading
import time

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, float("inf"))


class Metrics:
    def __init__(self, version: str):
        self.version = version
        self.start_time = time.time()
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._buckets = [0] * len(BUCKETS)
        self._sum = 0.0
        self._count = 0
        self._flag_requests: dict[tuple[str, str, str, str, int], int] = {}
        self._flag_latency: dict[tuple[str, str], list] = {}  # (flag, variant) -> [buckets, sum, count]

    def observe_flags(self, variants: dict[str, bool], method: str, route: str, status: int,
                      seconds: float) -> None:
        """Count one request under each flag in ``variants`` (flag -> on for this request)."""
        with self._lock:
            for flag, on in variants.items():
                variant = "on" if on else "off"
                key = (flag, variant, method, route, status)
                self._flag_requests[key] = self._flag_requests.get(key, 0) + 1
                hist = self._flag_latency.setdefault((flag, variant), [[0] * len(BUCKETS), 0.0, 0])
                for i, bound in enumerate(BUCKETS):
                    if seconds <= bound:
                        hist[0][i] += 1
                hist[1] += seconds
                hist[2] += 1

    def _render_flags(self) -> list[str]:
        if not self._flag_requests:
            return []
        lines = [
            "# HELP shop_flag_requests_total HTTP requests served, by feature flag and the request's variant.",
            "# TYPE shop_flag_requests_total counter",
        ]
        for (flag, variant, method, route, status), n in sorted(self._flag_requests.items()):
            lines.append(f'shop_flag_requests_total{{flag="{flag}",variant="{variant}",method="{method}",'
                         f'route="{route}",status="{status}"}} {n}')
        lines += [
            "# HELP shop_flag_request_duration_seconds Time to serve an HTTP request, by flag and variant.",
            "# TYPE shop_flag_request_duration_seconds histogram",
        ]
        for (flag, variant), (buckets, total, count) in sorted(self._flag_latency.items()):
            labels = f'flag="{flag}",variant="{variant}"'
            for bound, n in zip(BUCKETS, buckets, strict=True):
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'shop_flag_request_duration_seconds_bucket{{{labels},le="{le}"}} {n}')
            lines.append(f"shop_flag_request_duration_seconds_sum{{{labels}}} {total:.6f}")
            lines.append(f"shop_flag_request_duration_seconds_count{{{labels}}} {count}")
        return lines

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
            self._sum += seconds
            self._count += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP shop_http_requests_total HTTP requests served, by method, route and status.",
                "# TYPE shop_http_requests_total counter",
            ]
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(f'shop_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP shop_http_request_duration_seconds Time to serve an HTTP request.",
                "# TYPE shop_http_request_duration_seconds histogram",
            ]
            for bound, n in zip(BUCKETS, self._buckets, strict=True):
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'shop_http_request_duration_seconds_bucket{{le="{le}"}} {n}')
            lines.append(f"shop_http_request_duration_seconds_sum {self._sum:.6f}")
            lines.append(f"shop_http_request_duration_seconds_count {self._count}")
            lines += [
                "# TYPE process_start_time_seconds gauge",
                f"process_start_time_seconds {self.start_time:.3f}",
                "# TYPE shop_build_info gauge",
                f'shop_build_info{{version="{self.version}"}} 1',
            ]
            lines += self._render_flags()
        return "\n".join(lines) + "\n"
