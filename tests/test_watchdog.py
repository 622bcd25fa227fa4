"""The wall-clock bound of every test (tests/watchdog.py), on an inner pytest run of tests that hang."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HANGING = '''
import signal
import threading
import time

import pytest


@pytest.mark.timeout(2)
def test_sleeps_for_ever():
    time.sleep(3600)


@pytest.mark.timeout(2)
def test_swallows_exceptions_while_it_waits():
    while True:  # like a task runner: every Exception is caught and the loop goes on
        try:
            threading.Event().wait(3600)
        except Exception:
            pass


@pytest.fixture
def stuck_teardown():
    yield
    time.sleep(3600)


@pytest.mark.timeout(2)
def test_hangs_in_teardown(stuck_teardown):
    pass


@pytest.mark.timeout(2)
def test_survives_a_task_timeout_that_rearms_sigalrm():
    # what Airflow's execution_timeout does around a task run in this process: arm SIGALRM, then cancel it
    signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 30)
    signal.setitimer(signal.ITIMER_REAL, 0)
    time.sleep(3600)


def test_after_them_runs():
    assert True
'''


def test_a_hung_test_fails_with_every_threads_stack_and_the_run_goes_on(tmp_path):
    (tmp_path / "test_hanging.py").write_text(textwrap.dedent(HANGING))
    # the inner run is hermetic: the outer run's PYTEST_ADDOPTS (CI sets -v) would print each stack again in the
    # short summary, and -rN leaves that summary out, so each stack is counted once, in its failure's section
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.watchdog", "-p", "no:cacheprovider", "-q", "-rN",
         "--rootdir", str(tmp_path), "-c", "/dev/null", "test_hanging.py"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "3 failed, 2 passed, 1 error" in out, out  # the teardown's test passed its call; the last one ran
    for name in ("test_sleeps_for_ever", "test_swallows_exceptions_while_it_waits",
                 "test_survives_a_task_timeout_that_rearms_sigalrm", "test_hangs_in_teardown"):
        assert f"TestTimedOut: test_hanging.py::{name} still running after 2 s" in out, out
    assert "ERROR at teardown of test_hangs_in_teardown" in out, out
    assert out.count("--- thread MainThread") == 4 and "time.sleep(3600)" in out, out
