"""Doing one thing on many hosts at once, a bounded number at a time. No Airflow import."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from conveyor.hosts import Host

T = TypeVar("T")


def for_each_host(hosts: Sequence[Host], fn: Callable[[Host], T], *, max_parallel: int) -> tuple[
    dict[str, T], dict[str, Exception]
]:
    """Run ``fn`` on every host with bounded parallelism; return results and errors by host name."""
    results: dict[str, T] = {}
    errors: dict[str, Exception] = {}
    if not hosts:
        return results, errors
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts)))) as pool:
        futures = {pool.submit(fn, host): host for host in hosts}
        for future, host in futures.items():
            try:
                results[host.name] = future.result()
            except Exception as e:  # collected and reported together by the caller
                errors[host.name] = e
    return results, errors
