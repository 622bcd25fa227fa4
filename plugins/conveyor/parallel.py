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
    """Run ``fn`` on every host with bounded parallelism; return results and errors by host name.

    When the caller is interrupted (Airflow's ``execution_timeout``, a kill), the hosts not started
    yet are never started and the call returns at once; the steps running go on to their own bounds.
    """
    results: dict[str, T] = {}
    errors: dict[str, Exception] = {}
    if not hosts:
        return results, errors
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts))))
    try:
        futures = {pool.submit(fn, host): host for host in hosts}
        for future, host in futures.items():
            try:
                results[host.name] = future.result()
            except Exception as e:  # collected and reported together by the caller
                errors[host.name] = e
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results, errors
