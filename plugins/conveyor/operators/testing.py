"""Run the service's test suites against the replica and judge them by their JUnit XML."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from conveyor.exceptions import HealthCheckError, TestSuiteError
from conveyor.operators.deploy import FleetOperator

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


class TestSuitesOperator(FleetOperator):
    """Check out the candidate's source and run each configured suite against the replica hosts.

    Each suite command gets ``{junit}`` (where to write JUnit XML) and the environment variables
    ``CONVEYOR_REPLICA_URLS`` (comma-separated base URLs of the replica hosts), ``CONVEYOR_VERSION``,
    plus the suite's own ``env`` (where ``{replica_urls}`` is substituted). Every test result is
    recorded in the ledger.

    **Triage** (``triage.enabled``, on by default): when tests fail and production runs a known
    version, the failing suites are run again *against production's version*: the replica is switched
    to it, and the candidate's tests (``triage.test_paths``) run on production's source. A test that
    fails there too is a bug production already has: recorded as pre-existing, listed for QA, not
    blocking. The replica is put back on the candidate afterwards, whatever happens. The task fails
    naming every failure that only the candidate has.

    :param artifact: the build's result (templated); its commit is checked out.
    """

    __test__ = False
    template_fields = ("artifact",)

    def __init__(self, *, artifact: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    def _run_suites(self, src: Path, suites: list[dict], urls: str, version: str) -> tuple[dict, dict, dict]:
        """Run ``suites`` in ``src``; returns (summary, failing tests with messages, every case), by suite."""
        from conveyor.artifacts import tool_env

        summary: dict[str, Any] = {}
        failing: dict[str, dict[str, str | None]] = {}
        results: dict[str, list[dict[str, Any]]] = {}
        with tempfile.TemporaryDirectory(prefix="junit-") as tmp:
            for suite in suites:
                junit = Path(tmp) / f"{suite['name']}.xml"
                values = {"junit": str(junit), "replica_urls": urls}
                command = suite["command"]
                command = command.format(**values) if isinstance(command, str) else [
                    c.format(**values) for c in command]
                env = {**tool_env(), "CONVEYOR_REPLICA_URLS": urls, "CONVEYOR_VERSION": version,
                       **{k: v.format(**values) for k, v in suite.get("env", {}).items()}}
                self.log.info("Suite %s on %s: %s", suite["name"], version, command)
                try:
                    proc = subprocess.run(command, cwd=src, env=env, shell=isinstance(command, str),
                                          capture_output=True, text=True, timeout=suite.get("timeout_s", 900))
                    output, code = proc.stdout + proc.stderr, proc.returncode
                except subprocess.TimeoutExpired:
                    output, code = f"suite timed out after {suite.get('timeout_s', 900)} s", -1
                for line in output.splitlines()[-30:]:
                    self.log.info("  %s", line)
                cases = parse_junit(junit) if junit.exists() else []
                results[suite["name"]] = cases
                failed = {c["test"]: c["message"] for c in cases if c["outcome"] == "failed"}
                if code != 0 and not failed:
                    failed = {f"(suite exited {code} without failing test cases)": output[-2000:]}
                failing[suite["name"]] = failed
                summary[suite["name"]] = {
                    "passed": sum(c["outcome"] == "passed" for c in cases),
                    "failed": len(failed), "skipped": sum(c["outcome"] == "skipped" for c in cases),
                    "exit_code": code,
                }
        return summary, failing, results

    def _triage(self, suites: list[dict], failing: dict[str, dict], urls: str) -> dict[str, set[str]]:
        """Failing tests that also fail on production's version, by suite (see the class docs)."""
        from conveyor.artifacts import ArtifactInfo, ArtifactStore, checkout
        from conveyor.deploy import deploy_host, for_each_host
        from conveyor.inventory import resolve_hosts

        prod_version = self.artifact.get("production_version")
        prod_commit = self.artifact.get("production_commit")
        if not (self.service["triage"]["enabled"] and prod_version and prod_commit):
            self.log.info("No triage: %s", "disabled" if not self.service["triage"]["enabled"]
                          else "production's version is unknown")
            return {}
        if prod_version == self.artifact["version"]:
            return {}
        store = ArtifactStore.for_service(self.service)
        manifest = store.manifest(self.service.id, prod_version)
        if manifest is None:
            self.log.warning("No stored artifact of production's %s: cannot triage", prod_version)
            return {}
        prod = store.info(manifest)
        candidate = ArtifactInfo.from_dict(self.artifact)
        hosts = resolve_hosts(self.service, "replica")

        def put(info: ArtifactInfo) -> None:
            tarball = store.fetch(info)
            _, errors = for_each_host(hosts, lambda h: deploy_host(self.fleet, h, info, tarball),
                                      max_parallel=self.service["deploy"]["max_parallel"])
            if errors:
                raise TestSuiteError(f"triage: cannot put the replica on {info.version}: {errors}", [])
            try:
                self._health(hosts, info.version)
            except HealthCheckError as e:
                raise TestSuiteError(f"triage: the replica is not healthy on {info.version}: {e}", []) from e

        self.log.info("Triage: re-running %s against production's %s", sorted(s for s, f in failing.items() if f),
                      prod_version)
        rerun = [s for s in suites if failing.get(s["name"])]
        try:
            put(prod)
            with tempfile.TemporaryDirectory(prefix="triage-") as tmp:
                src = Path(tmp) / "src"
                shutil.copytree(checkout(self.service, prod_commit), src, ignore=shutil.ignore_patterns(".git"))
                cand_src = checkout(self.service, candidate.commit)
                for rel in self.service["triage"]["test_paths"]:
                    if (src / rel).exists():
                        shutil.rmtree(src / rel) if (src / rel).is_dir() else (src / rel).unlink()
                    if (cand_src / rel).is_dir():
                        shutil.copytree(cand_src / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
                    elif (cand_src / rel).exists():
                        shutil.copy2(cand_src / rel, src / rel)
                _, prod_failing, _ = self._run_suites(src, rerun, urls, prod_version)
        finally:
            put(candidate)
        return {name: set(prod_failing.get(name, {})) & set(failing[name]) for name in failing}

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import checkout
        from conveyor.inventory import resolve_hosts

        suites = self.service["tests"]
        if not suites:
            self.log.info("No test suites configured for %s", self.service.id)
            return {"suites": {}, "failures": [], "pre_existing": []}
        src = checkout(self.service, self.artifact["commit"])
        urls = ",".join(base_url(h.health_url) for h in resolve_hosts(self.service, "replica"))
        release_id = self.release_id(context)
        summary, failing, cases = self._run_suites(src, suites, urls, self.artifact["version"])
        pre_existing = self._triage(suites, failing, urls) if any(failing.values()) else {}
        for suite, suite_cases in cases.items():
            for case in suite_cases:
                self.ledger.upsert_test_result(
                    release_id, suite, case["test"], outcome=case["outcome"], message=case["message"],
                    pre_existing=case["test"] in pre_existing.get(suite, set()),
                )
        blocking = [f"{s}::{t}" for s, tests in failing.items() for t in tests if t not in pre_existing.get(s, set())]
        known = [f"{s}::{t}" for s, tests in pre_existing.items() for t in sorted(tests)]
        if known:
            self.log.warning("Pre-existing failures (they fail on production's version too): %s", ", ".join(known))
        if blocking:
            raise TestSuiteError(f"{len(blocking)} failing test(s): " + ", ".join(blocking), blocking)
        self.log.info("All suites passed%s: %s", " apart from pre-existing failures" if known else "", summary)
        return {"suites": summary, "failures": [], "pre_existing": known}
