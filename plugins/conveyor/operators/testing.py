"""Run the service's test suites against the replica and judge them by their JUnit XML."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from conveyor.exceptions import HealthCheckError, TestSuiteError
from conveyor.operators.base import FleetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.artifacts import ArtifactInfo
    from conveyor.config import Suite
    from conveyor.operators.base import StageRecord
    from conveyor.suites import SuiteRun


def base_url(health_url: str) -> str:
    parts = urlsplit(health_url)
    return f"{parts.scheme}://{parts.netloc}"


class TestSuitesOperator(FleetOperator):
    """Check out the candidate's source and run each configured suite against the replica hosts.

    Each suite command gets ``{junit}`` (where to write JUnit XML) and the environment variables
    ``CONVEYOR_REPLICA_URLS`` (comma-separated base URLs of the replica hosts), ``CONVEYOR_VERSION``,
    plus the suite's own ``env`` (where ``{replica_urls}`` is substituted). Every test result is
    recorded in the ledger. A load suite (``kind: load``) runs Locust against the replica: each of its
    thresholds is a test result whose message holds the measured number, its numbers go into the stage's
    detail (the sign-off body and the ticket show them) and a failure names them.

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

    def _run_suites(self, src: Path, suites: Sequence[Suite], urls: str, version: str) -> dict[str, SuiteRun]:
        """Run ``suites`` in the checkout ``src`` against the replica at ``urls``, by suite name."""
        from conveyor.commands import tool_env
        from conveyor.loadtest import markdown_line
        from conveyor.suites import run_suite

        runs: dict[str, SuiteRun] = {}
        with tempfile.TemporaryDirectory(prefix="junit-") as tmp:
            for suite in suites:
                self.log.info("Suite %s on %s: %s", suite.name, version, suite.command)
                run = run_suite(suite, src, workdir=Path(tmp), env=tool_env(CONVEYOR_VERSION=version),
                                replica_urls=urls)
                for line in run.result.tail().splitlines():
                    self.log.info("  %s", line)
                if run.load is not None:
                    self.log.info("Load suite %s: %s", suite.name, markdown_line(run.load))
                runs[suite.name] = run
        return runs

    def _triage(self, failing: dict[str, dict[str, str | None]], urls: str) -> dict[str, set[str]]:
        """Failing tests that also fail on production's version, by suite (see the class docs)."""
        from conveyor.artifacts import ArtifactInfo, ArtifactStore

        prod_version = self.artifact.get("production_version")
        prod_commit = self.artifact.get("production_commit")
        if not (self.service.triage.enabled and prod_version and prod_commit):
            self.log.info("No triage: %s", "disabled" if not self.service.triage.enabled
                          else "production's version is unknown")
            return {}
        if prod_version == self.artifact["version"]:
            return {}
        store = ArtifactStore.for_service(self.service)
        manifest = store.manifest(self.service.id, prod_version)
        if manifest is None:
            self.log.warning("No stored artifact of production's %s: cannot triage", prod_version)
            return {}
        self.log.info("Triage: re-running %s against production's %s", sorted(s for s, f in failing.items() if f),
                      prod_version)
        rerun = [s for s in self.service.tests if failing.get(s.name)]
        try:
            self._put_replica(store.info(manifest))
            with tempfile.TemporaryDirectory(prefix="triage-") as tmp:
                src = self._production_source_with_candidate_tests(Path(tmp), prod_commit)
                prod_runs = self._run_suites(src, rerun, urls, prod_version)
        finally:
            self._put_replica(ArtifactInfo.from_dict(self.artifact))
        return {name: set(prod_runs[name].failing if name in prod_runs else {}) & set(failing[name])
                for name in failing}

    def _put_replica(self, info: ArtifactInfo) -> None:
        """Deploy ``info`` to every replica host and wait for it to be healthy (triage's switch)."""
        from conveyor.artifacts import ArtifactStore
        from conveyor.inventory import resolve_hosts

        hosts = resolve_hosts(self.service, "replica")
        tarball = ArtifactStore.for_service(self.service).fetch(info)
        _, errors = self.on_each_host(hosts, lambda s: s.deploy(info, tarball))
        if errors:
            raise TestSuiteError(f"triage: cannot put the replica on {info.version}: {errors}", [])
        try:
            self.check_health(hosts, info.version)
        except HealthCheckError as e:
            raise TestSuiteError(f"triage: the replica is not healthy on {info.version}: {e}", []) from e

    def _production_source_with_candidate_tests(self, tmp: Path, prod_commit: str) -> Path:
        """Production's source with the candidate's ``triage.test_paths`` copied over it."""
        from conveyor.artifacts import checkout

        src = tmp / "src"
        shutil.copytree(checkout(self.service, prod_commit), src, ignore=shutil.ignore_patterns(".git"))
        cand_src = checkout(self.service, self.artifact["commit"])
        for rel in self.service.triage.test_paths:
            if (src / rel).exists():
                shutil.rmtree(src / rel) if (src / rel).is_dir() else (src / rel).unlink()
            if (cand_src / rel).is_dir():
                shutil.copytree(cand_src / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
            elif (cand_src / rel).exists():
                shutil.copy2(cand_src / rel, src / rel)
        return src

    def execute(self, context: Context) -> dict[str, Any]:
        with self.ledger_stage(context) as stage:
            self._test(context, stage)
        return stage.detail

    def _test(self, context: Context, stage: StageRecord) -> None:
        """Run the suites; ``stage.detail`` gets their summaries (a load suite's numbers too) before a failure
        is raised, so the ledger keeps the evidence of a failed stage."""
        from conveyor.artifacts import checkout
        from conveyor.inventory import resolve_hosts

        if not self.service.tests:
            self.log.info("No test suites configured for %s", self.service.id)
            stage.detail = {"suites": {}, "failures": [], "pre_existing": []}
            return
        src = checkout(self.service, self.artifact["commit"])
        urls = ",".join(base_url(h.health_url) for h in resolve_hosts(self.service, "replica"))
        runs = self._run_suites(src, self.service.tests, urls, self.artifact["version"])
        failing = {name: run.failing for name, run in runs.items()}
        pre_existing = self._triage(failing, urls) if any(failing.values()) else {}
        release_id = self.release_id(context)
        for name, run in runs.items():
            for case in run.cases:
                self.ledger.upsert_test_result(
                    release_id, name, case["test"], outcome=case["outcome"], message=case["message"],
                    pre_existing=case["test"] in pre_existing.get(name, set()),
                )
        new = [(s, t) for s, tests in failing.items() for t in tests if t not in pre_existing.get(s, set())]
        blocking = [f"{s}::{t}" for s, t in new]
        known = [f"{s}::{t}" for s, tests in pre_existing.items() for t in sorted(tests)]
        if known:
            self.log.warning("Pre-existing failures (they fail on production's version too): %s", ", ".join(known))
        summary = {name: run.summary() for name, run in runs.items()}
        stage.detail = {"suites": summary, "failures": blocking, "pre_existing": known}
        if blocking:
            # a load suite's failure says its numbers: "load::p95_ms (p95 182 ms, over the threshold 120 ms)"
            named = [f"{s}::{t} ({failing[s][t]})" if runs[s].load is not None else f"{s}::{t}" for s, t in new]
            raise TestSuiteError(f"{len(blocking)} failing test(s): " + ", ".join(named), blocking)
        self.log.info("All suites passed%s: %s", " apart from pre-existing failures" if known else "", summary)
