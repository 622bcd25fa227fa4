"""Release bookkeeping operators: validate the run, build the artifact, close the release."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor import validation
from conveyor.evidence import failed_stages
from conveyor.exceptions import InvalidInputError, ReleaseFailed
from conveyor.operators.base import ConveyorOperator, FleetOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.config import ServiceConfig
    from conveyor.hosts import Host


class ValidateReleaseOperator(ConveyorOperator):
    """Check the run's params and the service definition; open the release in the ledger.

    The Params' JSON schema already refuses bad input at trigger time; this re-checks at run time
    (a rerun after the service file changed, or conf from an older API client) and fails before
    anything else happens.

    It also decides who may do what, before the release is opened (refusals are
    :class:`InvalidInputError` with the reason): the user who triggered the run
    (``dag_run.triggering_user_name``) must be in ``release.allowed`` when it is set; an emergency
    needs the user in ``release.emergency`` (empty: emergencies are refused); a manual non-emergency
    run while the line is stopped (the newest commit CI judged on the release branch is red) is refused
    with ``line stopped at <commit>``. Scheduled runs have no user and are not checked here: the CI
    gate (:func:`conveyor.operators.gate.release_gate`) picks their commit.
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
        self._check_user(context, emergency)
        self._check_window(context, emergency, reason)
        self._check_line(context, emergency)
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

    def _check_user(self, context: Context, emergency: bool) -> None:
        check_user(self.service, context, emergency)

    def _check_line(self, context: Context, emergency: bool) -> None:
        """A manual non-emergency run while the line is stopped (CI's newest verdict on the branch is red)."""
        from conveyor.ci import LINE_STOPPED, release_candidate
        from conveyor.exceptions import BuildError
        from conveyor.operators.gate import is_scheduled

        if emergency or is_scheduled(context):  # scheduled runs: release_gate skips them on a red line
            return
        try:
            decision, _, message = release_candidate(self.service, self.ledger)
        except BuildError as e:
            raise BuildError(f"cannot tell whether the line is stopped: {e}") from None
        if decision == LINE_STOPPED:
            raise InvalidInputError(f"{message}: a manual release waits until CI judges a newer commit green "
                                    "(or is declared an emergency)")

    def _check_window(self, context: Context, emergency: bool, reason: str) -> None:
        check_window(context, emergency, reason)


def check_user(service: ServiceConfig, context: Context, emergency: bool) -> None:
    """``release.allowed`` and ``release.emergency``: who may release, who may declare an emergency."""
    from conveyor.operators.gate import is_scheduled

    if is_scheduled(context):
        return
    user = getattr(context["dag_run"], "triggering_user_name", None)
    allowed = service.people(service.release.allowed)
    if allowed and user not in allowed:
        raise InvalidInputError(
            f"{user or 'a run without a triggering user'} may not release {service.id}: release.allowed in "
            f"{service.path} is {', '.join(service.release.allowed)} ({', '.join(allowed)})")
    if not emergency:
        return
    declarers = service.people(service.release.emergency)
    if not declarers:
        raise InvalidInputError(
            f"emergency releases of {service.id} are refused: nobody may declare one (set release.emergency "
            f"in {service.path} to the users or @groups who may)")
    if user not in declarers:
        raise InvalidInputError(
            f"{user or 'a run without a triggering user'} may not declare an emergency for {service.id}: "
            f"release.emergency in {service.path} is {', '.join(service.release.emergency)} "
            f"({', '.join(declarers)})")


def check_window(context: Context, emergency: bool, reason: str) -> None:
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
    :param promotion: the DAG is ``promote_<service>``: mark the soaked build promoted.
    """

    template_fields = ("artifact", "plan")

    def __init__(self, *, artifact: Any, plan: Any, promotion: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact
        self.plan = plan
        self.promotion = promotion

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.hosts import Host
        from conveyor.inventory import resolve_hosts

        version = self.artifact["version"]
        with self.ledger_stage(context) as stage:
            production = [Host.from_dict(h) for h in self.plan["hosts"]]
            self.verify_running(production, version, "production")
            now = utcnow()
            self.ledger.upsert_release(self.release_id(context), status="success", finished_at=now, deployed_at=now)
            if self.promotion:  # the soaked build reached production: its soak's row says so
                from conveyor.operators.soak import mark_promoted

                mark_promoted(self, context)
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

    It succeeds itself, even when the ledger cannot be written (the rollback after it must run whatever
    the ledger does; :class:`ReleaseOutcomeOperator` records the status again); the run still ends
    failed because the failure path ends in :class:`ReleaseOutcomeOperator`. It records no stage of its
    own.
    """

    ui_color = "#fbe3e3"

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            self.ledger.upsert_release(self.release_id(context), status="failed", finished_at=utcnow())
        except Exception as exc:  # never stop the rollback for the ledger's sake
            self.log.error("Could not mark release %s failed in the ledger (fail_run tries again): %s: %s",
                           self.release_id(context), type(exc).__name__, exc)
            return {"status": "failed", "recorded": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"status": "failed", "recorded": True}


class ReleaseOutcomeOperator(ConveyorOperator):
    """The failure path's last task: fails, so that a failed release is a failed run.

    Its message sums the failure up: the failed stage and error, the rollback (from its XCom, or from the
    ledger when the rollback task failed), the ticket, and, when hosts were left off their version, which
    host runs which version (as the ticket task read them) and that a person must act.

    :param rollback_task_id: the rollback task (its XCom, or its ledger stage, says how the rollback went).
    :param ticket_task_id: the ticket task (its XCom names the ticket and the hosts' versions).
    """

    ui_color = "#fbe3e3"

    def __init__(self, *, rollback_task_id: str, ticket_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rollback_task_id = rollback_task_id
        self.ticket_task_id = ticket_task_id

    def execute(self, context: Context) -> None:
        from conveyor.evidence import ACTION_REQUIRED, describe_rollback, rollback_outcome

        ti = context["ti"]
        try:
            release = self.ledger.get_release(self.release_id(context)) or {}
            if release.get("status") not in ("failed", "rolled_back"):  # release_failed could not write it
                self.ledger.upsert_release(self.release_id(context), status="failed", finished_at=utcnow())
            unread = ""
        except Exception as exc:  # the run still fails with what XCom says; the ledger's error is named
            release, unread = {}, f" (the ledger could not be read: {type(exc).__name__}: {exc})"
        failed = failed_stages(release)
        # A failed rollback task leaves no XCom: its outcome is then the ledger's (its stage and rows).
        rollback = rollback_outcome(release, ti.xcom_pull(task_ids=self.rollback_task_id),
                                    stage=self.rollback_task_id)
        ticket = ti.xcom_pull(task_ids=self.ticket_task_id) or {}
        if not ticket and release.get("tickets"):
            ticket = {"ticket_id": release["tickets"][0]["ticket_id"]}
        where = f"{failed[0]['stage']}: {failed[0].get('error')}" if failed else f"an unknown stage{unread}"
        message = f"release failed at {where}; rollback: {describe_rollback(rollback)}"
        if rollback["action_required"] or ticket.get("action_required"):
            hosts = ticket.get("host_versions") or {}
            now = ", ".join(f"{h} on {v}" if not str(v).startswith("unreachable") else f"{h} {v}"
                            for h, v in sorted(hosts.items()))
            message += "; " + (ticket.get("action_required") or f"{ACTION_REQUIRED}: the rollback {rollback['status']}, "
                               "hosts may be left on the release's version")
            message += f"; hosts now: {now}" if now else "; what each host runs now: see the ticket"
        raise ReleaseFailed(f"{message}; ticket: {ticket.get('ticket_id', 'not filed')}")


__all__ = ["BuildOperator", "FinalizeReleaseOperator", "ReleaseFailed", "ReleaseFailedOperator", "ReleaseOutcomeOperator",
           "ValidateReleaseOperator"]
