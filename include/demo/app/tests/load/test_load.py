from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from shophttp import call

REQUESTS = 200
P95_BUDGET_S = 1.0


def test_catalog_under_load(urls):
    def one(i):
        started = time.perf_counter()
        status, _ = call(f"{urls[i % len(urls)]}/products?page={1 + i % 5}")
        return status, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    errors = [s for s, _ in results if s != 200]
    latencies = sorted(t for _, t in results)
    p95 = latencies[int(0.95 * len(latencies)) - 1]
    assert not errors, f"{len(errors)} of {REQUESTS} requests failed"
    assert p95 < P95_BUDGET_S, f"p95 {p95:.3f}s over the {P95_BUDGET_S}s budget"
