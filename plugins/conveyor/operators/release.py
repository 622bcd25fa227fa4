"""Release bookkeeping operators: validate the run, build the artifact, close the release."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor import validation
from conveyor.evidence import failed_stages
from conveyor.exceptions import DeployError, InvalidInputError, ReleaseFailed
from conveyor.operators.base import ConveyorOperator, FleetOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.hosts import Host


class ValidateReleaseOperator(ConveyorOperator):
    """Check the run's params and the service definition; open the release in the ledger.

    The Params' JSON schema already refuses bad input at trigger time; this re-checks at run time
    (a rerun after the service file changed, or conf from an older API client) and fails before
    anything else happens.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        with self.ledger_stage(context) as stage:
            stage.detail = self._open_release(context)
        return stage.detail

    def _open_release(self, context: Context) -> dict[str, Any]:
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
        from airflow.sdk.exceptions import AirflowSkipException

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


class BuildOperator(FleetOperator):
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
        from conveyor.inventory import resolve_hosts

        store = ArtifactStore.for_service(self.service)
        for host in resolve_hosts(self.service, "production"):
            try:
                with self.fleet.session(host) as session:
                    version = session.current_version()
            except Exception as e:  # an unreachable host must not stop the build; the waves will see it
                self.log.warning("cannot read the version of %s: %s", host.name, e)
                continue
            manifest = store.manifest(self.service.id, version) if version else None
            if manifest:
                self.log.info("Production runs %s (%s)", version, manifest["commit"][:12])
                return version, manifest["commit"]
        return None, None

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import build_artifact

        with self.ledger_stage(context) as stage:
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
            stage.detail = {**result, "commit_count": len(commits), "production_version": prod_version,
                            "production_commit": prod_commit}
        return stage.detail


class FinalizeReleaseOperator(FleetOperator):
    """Close a release that passed its waves and watch: check that every planned production host runs
    the version, mark the release successful, and prune old releases on every host (keeping
    ``deploy.keep_releases`` plus the current and previous ones).

    :param artifact: the build's result (templated).
    :param plan: the wave plan (templated, ``plan.output``).
    """

    template_fields = ("artifact", "plan")

    def __init__(self, *, artifact: Any, plan: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact
        self.plan = plan

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.hosts import Host
        from conveyor.inventory import resolve_hosts

        version = self.artifact["version"]
        with self.ledger_stage(context) as stage:
            production = [Host.from_dict(h) for h in self.plan["hosts"]]
            running, errors = self.on_each_host(production, lambda s: s.current_version())
            wrong = {n: v for n, v in running.items() if v != version}
            if errors or wrong:
                raise DeployError(f"not every production host runs {version}: "
                                  + "; ".join([f"{n} runs {v}" for n, v in wrong.items()]
                                              + [f"{n}: {e}" for n, e in errors.items()]))
            now = utcnow()
            self.ledger.upsert_release(self.release_id(context), status="success", finished_at=now, deployed_at=now)
            self.log.info("Release %s of %s is complete", version, self.service_id)
            pruned = self._prune(production + resolve_hosts(self.service, "replica"))
            stage.detail = {"status": "success", "version": version, "pruned": pruned}
        return stage.detail

    def _prune(self, hosts: list[Host]) -> dict[str, str]:
        """Old release directories go; a host that cannot prune is logged, not a failed release."""
        keep = self.service.deploy.keep_releases
        pruned, errors = self.on_each_host(hosts, lambda s: s.prune(keep))
        for name, line in sorted(pruned.items()):
            self.log.info("%s: %s", name, line)
        for name, error in sorted(errors.items()):
            self.log.warning("%s: could not prune old releases: %s", name, error)
        return pruned


class ReleaseFailedOperator(ConveyorOperator):
    """Runs only when a task of the release failed: marks the release failed in the ledger.

    It succeeds itself (so rollback and ticket run after it); the run still ends failed because
    the failure path ends in :class:`ReleaseOutcomeOperator`. It records no stage of its own.
    """

    ui_color = "#fbe3e3"

    def execute(self, context: Context) -> dict[str, Any]:
        self.ledger.upsert_release(self.release_id(context), status="failed", finished_at=utcnow())
        return {"status": "failed"}


class ReleaseOutcomeOperator(ConveyorOperator):
    """The failure path's last task: fails, so that a failed release is a failed run.

    Its message sums the failure up: the failed stage and error, the rollback and the ticket.

    :param rollback_task_id: the rollback task (its XCom says how the rollback went).
    :param ticket_task_id: the ticket task (its XCom names the ticket).
    """

    ui_color = "#fbe3e3"

    def __init__(self, *, rollback_task_id: str, ticket_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rollback_task_id = rollback_task_id
        self.ticket_task_id = ticket_task_id

    def execute(self, context: Context) -> None:
        failed = failed_stages(self.ledger.get_release(self.release_id(context)) or {})
        ti = context["ti"]
        rollback = ti.xcom_pull(task_ids=self.rollback_task_id) or {}
        ticket = ti.xcom_pull(task_ids=self.ticket_task_id) or {}
        where = f"{failed[0]['stage']}: {failed[0].get('error')}" if failed else "an unknown stage"
        raise ReleaseFailed(f"release failed at {where}; rollback: {rollback.get('status', 'did not run')}; "
                            f"ticket: {ticket.get('ticket_id', 'not filed')}")


__all__ = ["BuildOperator", "FinalizeReleaseOperator", "ReleaseFailed", "ReleaseFailedOperator", "ReleaseOutcomeOperator",
           "ValidateReleaseOperator"]
