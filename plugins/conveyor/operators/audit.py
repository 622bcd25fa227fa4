"""The dependency-audit stage: the artifact's lock file against an OSV advisory source, before the replica.

The decision is :mod:`conveyor.audit`'s (pip-audit, severities, ``audit.block_at`` and ``audit.allow``);
this operator fetches the artifact, runs it, and records the outcome as the ``audit`` stage. Known
vulnerabilities that block fail the task with every advisory in its error (so in the ledger and the
ticket); an audit that could not be done fails it with "could not audit: <why>". Nothing on any host
changes here, so a rerun is always safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context


class DependencyAuditOperator(ConveyorOperator):
    """Audit the built artifact's Python dependencies (``audit`` in the service file).

    :param artifact: the build's result (templated, usually ``build.output``).
    """

    template_fields = ("artifact",)
    ui_color = "#f3e8fb"

    def __init__(self, *, artifact: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import ArtifactInfo, ArtifactStore
        from conveyor.audit import CouldNotAudit, VulnerableDependencies, audit_artifact

        with self.ledger_stage(context) as stage:
            settings = self.service.audit
            if settings is None:  # dropped from the service file after the DAG was parsed: fail closed
                raise CouldNotAudit(f"the service file of {self.service_id} has no audit section any more "
                                    "(the DAG is re-parsed without this task shortly)")
            info = ArtifactInfo.from_dict(self.artifact)
            tarball = ArtifactStore.for_service(self.service).fetch(info)  # verifies sha256
            self.log.info("Auditing %s of %s %s against %s (blocking at %s and above)", settings.lock_file,
                          self.service_id, info.version, settings.osv_url, settings.block_at)
            try:
                report = audit_artifact(tarball, settings, today=utcnow().date())
            except VulnerableDependencies as blocked:
                stage.detail = {"version": info.version, **blocked.report.to_dict()}
                self.log.error("%s", blocked)
                raise
            for advisory in report.advisories:
                self.log.info("%s: %s", advisory.verdict, advisory.line())
            self.log.info("%s", report.summary())
            stage.detail = {"version": info.version, **report.to_dict()}
        return stage.detail


__all__ = ["DependencyAuditOperator"]
