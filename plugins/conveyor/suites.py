"""Running one of a service's test suites and reading its JUnit results. No Airflow import.

Used by the release's ``tests`` task (against the replica) and by CI (without hosts): the suite's
command gets ``{junit}`` (where to write JUnit XML) and ``{replica_urls}``; its environment gets
``CONVEYOR_REPLICA_URLS`` plus the suite's own ``env`` (with the same placeholders).

A load suite (``kind: load``) runs Locust headless, as a subprocess of the interpreter running Conveyor
(never imported here: gevent would patch the Airflow process), against the first replica URL with the
same environment (its locustfile may spread users over ``CONVEYOR_REPLICA_URLS``). Each threshold becomes
a test case, ``passed`` or ``failed`` with the measured number against it in its message, and the
measured numbers are the run's ``load`` (:mod:`conveyor.loadtest`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.commands import CommandOutput, format_command, run_command
from conveyor.junit import parse_junit
from conveyor.loadtest import LoadReportError, judge, locust_command, parse_locust_report, verdicts_as_dicts

if TYPE_CHECKING:
    from conveyor.config import Suite


@dataclass(frozen=True)
class SuiteRun:
    name: str
    cases: list[dict[str, Any]]  # every JUnit test case: {"test", "outcome", "message"}
    result: CommandOutput
    load: dict[str, Any] | None = None  # a load suite's numbers: measured, thresholds, verdicts

    @property
    def failed_cases(self) -> dict[str, str | None]:
        """Failing test cases by name, with their messages."""
        return {c["test"]: c["message"] for c in self.cases if c["outcome"] == "failed"}

    @property
    def failing(self) -> dict[str, str | None]:
        """What failed: the failing cases, or the suite itself when it failed without failing a case."""
        failed = self.failed_cases
        if not self.result.ok and not failed:
            return {f"(suite exited {self.result.exit_code} without failing test cases)": self.result.output[-2000:]}
        return failed

    def count(self, outcome: str) -> int:
        return sum(c["outcome"] == outcome for c in self.cases)

    def summary(self) -> dict[str, int]:
        summary = {"passed": self.count("passed"), "failed": len(self.failing), "skipped": self.count("skipped"),
                   "exit_code": self.result.exit_code}
        return {**summary, "load": self.load} if self.load is not None else summary


def run_suite(suite: Suite, src: Path, *, workdir: Path, env: dict[str, str], replica_urls: str = "") -> SuiteRun:
    """Run ``suite`` in the checkout ``src``; its JUnit XML (or Locust's JSON report) goes to ``workdir``."""
    junit = workdir / f"{suite.name}.xml"
    values = {"junit": str(junit), "replica_urls": replica_urls}
    suite_env = {**env, "CONVEYOR_REPLICA_URLS": replica_urls,
                 **{k: v.format(**values) for k, v in suite.env.items()}}
    if suite.kind == "load":
        return _run_load(suite, src, report=workdir / f"{suite.name}.json", env=suite_env, replica_urls=replica_urls)
    assert suite.command is not None  # the model requires it for kind: command
    result = run_command(format_command(suite.command, **values), cwd=src, env=suite_env, timeout=suite.timeout_s)
    return SuiteRun(suite.name, parse_junit(junit) if junit.exists() else [], result)


def _failed(suite: Suite, test: str, message: str, result: CommandOutput | None = None) -> SuiteRun:
    return SuiteRun(suite.name, [{"test": test, "outcome": "failed", "message": message}],
                    result or CommandOutput(2, message))


def _run_load(suite: Suite, src: Path, *, report: Path, env: dict[str, str], replica_urls: str) -> SuiteRun:
    """Locust against the replica for the suite's duration, its report judged by the suite's thresholds."""
    assert suite.locustfile is not None and suite.thresholds is not None  # the model requires them for kind: load
    hosts = [u for u in replica_urls.split(",") if u.strip()]
    if not hosts:
        return _failed(suite, "replica", f"tests.{suite.name}: a load suite runs against the replica, and there "
                                         "is no replica URL (CONVEYOR_REPLICA_URLS is empty)")
    if not (src / suite.locustfile).is_file():
        return _failed(suite, "locustfile", f"tests.{suite.name}.locustfile: {suite.locustfile!r} is not a file "
                                            "in the candidate's checkout")
    command = locust_command(sys.executable, locustfile=suite.locustfile, host=hosts[0].strip(), users=suite.users,
                             spawn_rate=suite.spawn_rate, run_time_s=int(suite.duration.total_seconds()),
                             report=str(report))
    result = run_command(command, cwd=src, env=env, timeout=suite.timeout_s)
    if not result.ok or not report.is_file():  # Locust itself failed: ``failing`` shows its output
        return SuiteRun(suite.name, [], result if not result.ok else CommandOutput(2, result.output + "\nno report"))
    try:
        stats = parse_locust_report(report.read_text())
    except LoadReportError as e:
        return _failed(suite, "report", str(e), result)
    thresholds = suite.thresholds.model_dump(exclude_none=True)
    verdicts = judge(stats, thresholds)
    cases = [{"test": v.threshold, "outcome": "passed" if v.ok else "failed", "message": v.message}
             for v in verdicts]
    if stats.requests == 0:
        cases.append({"test": "requests", "outcome": "failed",
                      "message": f"no request was made in {suite.duration.total_seconds():g} s"})
    load = {"measured": stats.to_dict(), "thresholds": thresholds, "users": suite.users,
            "verdicts": verdicts_as_dicts(verdicts)}
    return SuiteRun(suite.name, cases, result, load)
