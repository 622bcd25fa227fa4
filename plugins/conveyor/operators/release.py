"""Release bookkeeping operators: validate the run, build the artifact, close the release."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor import validation
from conveyor.exceptions import InvalidInputError, ReleaseFailed
from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context


class ValidateReleaseOperator(ConveyorOperator):
    """Check the run's params and the service definition; open the release in the ledger.

    The Params' JSON schema already refuses bad input at trigger time; this re-checks at run time
    (a rerun after the service file changed, or conf from an older API client) and fails before
    anything else happens.
    """

    def run(self, context: Context) -> dict[str, Any]:
        params = context["params"]
        ref = validation.git_ref(params.get("git_ref"))
        if params.get("change") not in ("minor", "major"):
            raise InvalidInputError(f"change must be 'minor' or 'major', got {params.get('change')!r}")
        emergency = bool(params.get("emergency"))
        reason = (params.get("reason") or "").strip()
        if emergency and not reason:
            raise InvalidInputError("an emergency release needs a reason")
        service = self.service  # raises ServiceConfigError naming the file and field
        dag_run = context["dag_run"]
        self._check_window(context, emergency, reason)
        from conveyor.operators.gate import release_gate

        gated = release_gate(context, service, self.ledger)  # scheduled runs: the newest green commit, or skip
        if gated:
            ref = gated
        release = {
            "release_id": self.release_id(context),
            "service": service.id,
            "git_ref": ref,
            "change_kind": params["change"],
            "emergency": emergency,
            "reason": reason or None,
            "author": getattr(dag_run, "triggering_user_name", None),
            "run_id": dag_run.run_id,
            "dag_id": dag_run.dag_id,
        }
        labels = ["emergency"] if emergency else []
        self.ledger.upsert_release(
            release["release_id"], service=service.id, git_ref=ref, change_kind=params["change"],
            emergency=emergency, reason=reason or None, author=release["author"], run_id=dag_run.run_id,
            dag_id=dag_run.dag_id, status="running", started_at=utcnow(), labels=labels,
        )
        self.log.info("Release %s of %s at %s (%s change%s)", release["release_id"], service.id, ref,
                      params["change"], ", EMERGENCY: " + reason if emergency else "")
        return release


    def _check_window(self, context: Context, emergency: bool, reason: str) -> None:
        """Freezes and release windows: refuse a normal manual run in a freeze, skip a stale slot."""
        from airflow.exceptions import AirflowSkipException

        from conveyor.timetables import ReleaseWindowTimetable

        timetable = getattr(context.get("dag"), "timetable", None)
        if not isinstance(timetable, ReleaseWindowTimetable):
            return
        dag_run = context["dag_run"]
        run_type = str(getattr(dag_run, "run_type", "") or "")
        if run_type.endswith("scheduled"):
            run_after = getattr(dag_run, "run_after", None)
            if run_after is not None and timetable.is_stale(run_after):
                raise AirflowSkipException(f"slot {run_after.isoformat()} is stale (more than "
                                           f"{timetable.max_lateness} late): not releasing")
            return
        refusal = timetable.manual_run_refusal(utcnow(), emergency=emergency, reason=reason)
        if refusal:
            raise InvalidInputError(refusal)


class BuildOperator(ConveyorOperator):
    """Build ``git_ref`` into an artifact (or reuse the stored one) and return its description.

    The commit range in the manifest starts at the commit of the version production runs now.

    :param git_ref: the ref to build (templated).
    """

    template_fields = ("git_ref",)

    def __init__(self, *, git_ref: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.git_ref = git_ref

    def _production(self) -> tuple[str | None, str | None]:
        """The version production runs (the first host that answers with a known one) and its commit."""
        from conveyor.artifacts import ArtifactStore
        from conveyor.deploy import current_version
        from conveyor.hooks.fleet import FleetHook
        from conveyor.inventory import resolve_hosts

        hook = FleetHook(self.service["deploy"]["ssh_conn_id"])
        store = ArtifactStore.for_service(self.service)
        for host in resolve_hosts(self.service, "production"):
            try:
                version = current_version(hook, host)
            except Exception as e:  # an unreachable host must not stop the build; the waves will see it
                self.log.warning("cannot read the version of %s: %s", host.name, e)
                continue
            if version:
                manifest = store.manifest(self.service.id, version)
                if manifest:
                    self.log.info("Production runs %s (%s)", version, manifest["commit"][:12])
                    return version, manifest["commit"]
        return None, None

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import build_artifact

        prod_version, prod_commit = self._production()
        info = build_artifact(self.service, self.git_ref, since_commit=prod_commit, log_fn=self.log.info)
        commits = info.manifest.get("commit_range", {}).get("commits", [])
        self.ledger.upsert_release(
            self.release_id(context), version=info.version, commit_sha=info.commit,
            commit_range=info.manifest.get("commit_range"),
        )
        for c in commits:
            self.ledger.upsert_commit(self.service.id, c["sha"], author=c["author"], message=c["subject"],
                                      committed_at=c["date"])
        result = info.to_dict()
        result.pop("tarball", None)
        result["commit_count"] = len(commits)
        result["production_version"] = prod_version
        result["production_commit"] = prod_commit
        return result


class FinalizeReleaseOperator(ConveyorOperator):
    """Mark the release successful: every production host runs the version and the watch passed."""

    def __init__(self, *, artifact: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    template_fields = ("artifact",)

    def run(self, context: Context) -> dict[str, Any]:
        now = utcnow()
        self.ledger.upsert_release(self.release_id(context), status="success", finished_at=now, deployed_at=now)
        self.log.info("Release %s of %s is complete", self.artifact["version"], self.service_id)
        return {"status": "success", "version": self.artifact["version"]}


class ReleaseFailedOperator(ConveyorOperator):
    """Runs only when a task of the release failed: marks the release failed in the ledger.

    It succeeds itself (so rollback and ticket run after it); the run still ends failed because
    the main chain's last task is upstream-failed.
    """

    ui_color = "#fbe3e3"

    def execute(self, context: Context) -> dict[str, Any]:  # no running/success stage row for the sentinel
        self.ledger.upsert_release(self.release_id(context), status="failed", finished_at=utcnow())
        return {"status": "failed"}


class ReleaseOutcomeOperator(ConveyorOperator):
    """The failure path's last task: fails, so that a failed release is a failed run.

    Its message sums the failure up: the failed stage and error, the rollback and the ticket.
    """

    ui_color = "#fbe3e3"

    def execute(self, context: Context) -> None:
        from conveyor.operators.ticket import failed_stages

        failed = failed_stages(self.ledger.get_release(self.release_id(context)) or {})
        ti = context["ti"]
        rollback = ti.xcom_pull(task_ids="rollback") or {}
        ticket = ti.xcom_pull(task_ids="ticket") or {}
        where = f"{failed[0]['stage']}: {failed[0].get('error')}" if failed else "an unknown stage"
        raise ReleaseFailed(f"release failed at {where}; rollback: {rollback.get('status', 'did not run')}; "
                            f"ticket: {ticket.get('ticket_id', 'not filed')}")


__all__ = ["BuildOperator", "FinalizeReleaseOperator", "ReleaseFailed", "ReleaseFailedOperator", "ReleaseOutcomeOperator",
           "ValidateReleaseOperator"]
