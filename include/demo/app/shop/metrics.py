"""Prometheus text metrics: requests by status and a latency histogram."""

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
        return "\n".join(lines) + "\n"
