"""A wall-clock bound on every test: a test that hangs fails with every thread's stack, and the run goes on.

Not pytest-timeout's ``signal`` method: that one arms ``SIGALRM``, which Airflow's own task timeouts
re-arm and then cancel when ``dag.test()`` runs a task in this process, so the bound silently
disappears from exactly the end-to-end tests that can hang. Nor its ``thread`` method: under
pytest-xdist it kills the worker, and its stack dump is lost with the worker's stderr.

Here a timer thread, at the bound, records every thread's stack and sends ``SIGUSR1`` to the main
thread, whose handler raises :class:`TestTimedOut` (a ``BaseException``: code under test that catches
``Exception``, as a task runner does, cannot swallow it). Whatever the main thread waits in (a sleep,
a socket, a lock, ``dag.test``'s loop) is interrupted; the phase running (setup, call or teardown)
fails with the stacks in its report, the fixtures' teardown runs, and the worker takes the next test.
If the test still has not ended two minutes later, :mod:`faulthandler` dumps the stacks and ends the
process (xdist reports the worker as crashed and replaces it).

The bound covers setup, call and teardown together: :data:`DEFAULT_TIMEOUT_S`, or
``@pytest.mark.timeout(seconds)`` on a test or module.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import traceback

import pytest

#: The longest test (an e2e release through a real Airflow, its module's server start included) takes
#: about 5 minutes on a 2-core machine shared by two workers.
DEFAULT_TIMEOUT_S = 900.0
#: After the exception, how long the test has to end before the process is ended.
GRACE_S = 120.0


class TestTimedOut(BaseException):
    """The test ran past its wall-clock bound."""

    __test__ = False  # not a test class for pytest's collector


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"timeout(seconds): this test's wall-clock bound, setup to teardown "
                                       f"(default {DEFAULT_TIMEOUT_S:g} s; tests/watchdog.py)")


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is None:
        return DEFAULT_TIMEOUT_S
    given = marker.args[0] if marker.args else marker.kwargs.get("seconds")
    try:
        seconds = float(given)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise pytest.UsageError(f"{item.nodeid}: timeout(seconds) needs a positive number of seconds, got {given!r}")
    return seconds


def stacks() -> str:
    """Every thread's stack, innermost call last, as ``traceback`` prints them."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, '?')} ({ident}) ---\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    limit = _limit(item)
    fired: dict[str, str] = {}  # the stacks at expiry, until the handler raises them (once)

    def expire() -> None:
        fired["stacks"] = stacks()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def on_signal(signum, frame) -> None:
        expired = fired.pop("stacks", None)
        if expired is not None:
            raise TestTimedOut(f"{item.nodeid} still running after {limit:g} s (its bound, setup to teardown). "
                               f"Every thread's stack when it expired:\n{expired}")

    previous = signal.signal(signal.SIGUSR1, on_signal)
    timer = threading.Timer(limit, expire)
    timer.name = "test-watchdog"
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(limit + GRACE_S, exit=True)
    try:
        yield
    finally:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGUSR1, previous)
