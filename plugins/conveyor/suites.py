"""Running one of a service's test suites and reading its JUnit results. No Airflow import.

Used by the release's ``tests`` task (against the replica) and by CI (without hosts): the suite's
command gets ``{junit}`` (where to write JUnit XML) and ``{replica_urls}``; its environment gets
``CONVEYOR_REPLICA_URLS`` plus the suite's own ``env`` (with the same placeholders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.commands import CommandOutput, format_command, run_command
from conveyor.junit import parse_junit

if TYPE_CHECKING:
    from conveyor.config import Suite


@dataclass(frozen=True)
class SuiteRun:
    name: str
    cases: list[dict[str, Any]]  # every JUnit test case: {"test", "outcome", "message"}
    result: CommandOutput

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
        return {"passed": self.count("passed"), "failed": len(self.failing), "skipped": self.count("skipped"),
                "exit_code": self.result.exit_code}


def run_suite(suite: Suite, src: Path, *, workdir: Path, env: dict[str, str], replica_urls: str = "") -> SuiteRun:
    """Run ``suite`` in the checkout ``src``; its JUnit XML goes to ``workdir``."""
    junit = workdir / f"{suite.name}.xml"
    values = {"junit": str(junit), "replica_urls": replica_urls}
    suite_env = {**env, "CONVEYOR_REPLICA_URLS": replica_urls,
                 **{k: v.format(**values) for k, v in suite.env.items()}}
    result = run_command(format_command(suite.command, **values), cwd=src, env=suite_env, timeout=suite.timeout_s)
    return SuiteRun(suite.name, parse_junit(junit) if junit.exists() else [], result)
