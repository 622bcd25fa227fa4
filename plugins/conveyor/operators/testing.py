"""Run the service's test suites against the replica and judge them by their JUnit XML."""

from __future__ import annotations

import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from conveyor.exceptions import TestSuiteError
from conveyor.operators.base import ConveyorOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """Every test case in a JUnit XML file as ``{"test", "outcome", "message"}``.

    Outcome is ``passed``, ``failed`` (failure or error element) or ``skipped``.
    """
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        name = ".".join(p for p in (case.get("classname"), case.get("name")) if p)
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or child.text or "").strip()[:2000]
                break
            if child.tag == "skipped":
                outcome = "skipped"
        cases.append({"test": name, "outcome": outcome, "message": message})
    return cases


def base_url(health_url: str) -> str:
    parts = urlsplit(health_url)
    return f"{parts.scheme}://{parts.netloc}"


class TestSuitesOperator(ConveyorOperator):
    """Check out the candidate's source and run each configured suite against the replica hosts.

    Each suite command gets ``{junit}`` (where to write JUnit XML) and the environment variables
    ``CONVEYOR_REPLICA_URLS`` (comma-separated base URLs of the replica hosts), ``CONVEYOR_VERSION``,
    plus the suite's own ``env`` (where ``{replica_urls}`` is substituted). Every test result is
    recorded in the ledger; the task fails naming every failing test.

    :param artifact: the build's result (templated); its commit is checked out.
    """

    __test__ = False
    template_fields = ("artifact",)

    def __init__(self, *, artifact: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import checkout, tool_env
        from conveyor.inventory import resolve_hosts

        suites = self.service["tests"]
        if not suites:
            self.log.info("No test suites configured for %s", self.service.id)
            return {"suites": {}, "failures": []}
        src = checkout(self.service, self.artifact["commit"])
        urls = ",".join(base_url(h.health_url) for h in resolve_hosts(self.service, "replica"))
        release_id = self.release_id(context)
        summary: dict[str, Any] = {}
        failures: list[str] = []
        with tempfile.TemporaryDirectory(prefix="junit-") as tmp:
            for suite in suites:
                junit = Path(tmp) / f"{suite['name']}.xml"
                values = {"junit": str(junit), "replica_urls": urls}
                command = suite["command"]
                command = command.format(**values) if isinstance(command, str) else [
                    c.format(**values) for c in command]
                env = {**tool_env(), "CONVEYOR_REPLICA_URLS": urls, "CONVEYOR_VERSION": self.artifact["version"],
                       **{k: v.format(**values) for k, v in suite.get("env", {}).items()}}
                self.log.info("Suite %s: %s", suite["name"], command)
                try:
                    proc = subprocess.run(command, cwd=src, env=env, shell=isinstance(command, str),
                                          capture_output=True, text=True, timeout=suite.get("timeout_s", 900))
                    output, code = proc.stdout + proc.stderr, proc.returncode
                except subprocess.TimeoutExpired:
                    output, code = f"suite timed out after {suite.get('timeout_s', 900)} s", -1
                for line in output.splitlines()[-30:]:
                    self.log.info("  %s", line)
                cases = parse_junit(junit) if junit.exists() else []
                for case in cases:
                    self.ledger.upsert_test_result(release_id, suite["name"], case["test"], outcome=case["outcome"],
                                                   message=case["message"])
                failed = [f"{suite['name']}::{c['test']}" for c in cases if c["outcome"] == "failed"]
                if code != 0 and not failed:
                    failed = [f"{suite['name']}::(suite exited {code} without failing test cases)"]
                failures += failed
                summary[suite["name"]] = {
                    "passed": sum(c["outcome"] == "passed" for c in cases),
                    "failed": len(failed), "skipped": sum(c["outcome"] == "skipped" for c in cases),
                    "exit_code": code,
                }
        if failures:
            raise TestSuiteError(f"{len(failures)} failing test(s): " + ", ".join(failures), failures)
        self.log.info("All suites passed: %s", summary)
        return {"suites": summary, "failures": []}
