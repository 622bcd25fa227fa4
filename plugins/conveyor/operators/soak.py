"""Soak and promotion: a build runs on the developer cluster for its minimum, then goes to production.

``release_<service>`` with a ``soak`` section deploys a signed-off build to the soak cluster (waves,
judge, rollback, as for production) and ends in :class:`SoakOperator`: it records the soak's start in
the ledger (``soaks``) and watches the build in the triggerer (:class:`~conveyor.triggers.soak.SoakTrigger`)
until its minimum has passed (``passed``) or an incident stops the soak for good (``incident``: the
task fails, the release's failure path rolls the soak cluster back and files the ticket, which says
why).

``promote_<service>`` starts with :class:`SelectPromotionOperator`, which picks the newest build whose
soak passed with no incident and that is not older than what production runs (or the build its
``version`` param names, refused with the reason when it may not be promoted), opens the promotion's
own release record, and hands the build to the production waves. Right before each production wave
changes a host, :func:`verify_promotion` checks the records again (the soak, the soaked release's
sign-off and tests, the promotion's own approval when the service asks for one): task states can be
set by hand, records cannot.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError, PromotionRefused, SoakIncident
from conveyor.operators.base import FleetOperator, utcnow
from conveyor.soak import (
    ABORTED,
    INCIDENT,
    PASSED,
    PROMOTED,
    SOAKING,
    SUPERSEDED,
    pick_candidate,
    soak_clocks,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.operators.base import ConveyorOperator

SELECT_TASK_ID = "select"
#: The XCom key under which ``select`` publishes its candidate (its return value is the artifact).
CANDIDATE_KEY = "candidate"
_GRACE_S = 300.0  # the trigger's own slack beyond the soak's minimum (its last look, the event's way back)


class SoakOperator(FleetOperator):
    """Record the build's soak on the soak cluster and watch it until its minimum passes, or an incident.

    A rerun never restarts a soak's clock (it is the build's time on the cluster) and never clears an
    incident; a soak that already passed returns at once.

    :param artifact: the build's result (templated, ``build.output``).
    :param plan: the soak waves' plan (templated, ``plan.output``): the hosts and the pre-deploy snapshot.
    """

    template_fields = ("artifact", "plan")
    ui_color = "#e3f0e8"

    def __init__(self, *, artifact: Any, plan: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact
        self.plan = plan

    def execute(self, context: Context) -> Any:
        from conveyor.hosts import Host

        soak = self.service.soak
        if soak is None:
            raise ConveyorError(f"{self.service.path}: soak: not defined, but the release has a soak task (the DAG "
                                "was built from an older service file; let the dag-processor parse it again)")
        release_id = self.release_id(context)
        version = self.artifact["version"]
        with self.ledger_stage(context) as stage:
            row = self.ledger.get_soak(release_id)
            if row and row["status"] == INCIDENT:
                raise SoakIncident(f"incident during the soak of {version}: {row['incident']} (an incident ends a "
                                   "soak for good; release a fix)")
            if row and row["status"] == SUPERSEDED:
                raise SoakIncident(f"the soak of {version} ended: {(row.get('detail') or {}).get('superseded_by')}")
            if row and row["status"] in (PASSED, PROMOTED):
                self.log.info("The soak of %s already %s", version, row["status"])
                stage.detail = {"version": version, "status": row["status"]}
                return stage.detail
            hosts = [Host.from_dict(h) for h in self.plan["hosts"]]
            self.verify_running(hosts, version, "soak", prefix="the soak cannot start: ")
            if row is None:
                row = self._start(context, release_id, [h.name for h in hosts])
            started = row["started_at"].timestamp()
            minimum = float(row["min_seconds"])
            self.log.info("Soaking %s on %s since %s for %s", version, ", ".join(h.name for h in hosts),
                          row["started_at"].isoformat(), timedelta(seconds=minimum))
            self.defer(trigger=self._trigger(hosts, started, minimum), method_name="execute_complete",
                       timeout=timedelta(seconds=max(0.0, started + minimum - time.time()) + 3 * soak.check_interval
                                         .total_seconds() + self.service.deploy.health.probe_timeout_s + _GRACE_S))

    def _start(self, context: Context, release_id: str, hosts: list[str]) -> dict[str, Any]:
        """The soak's row (its clock starts now) and the end of any older soak still running."""
        release = self.ledger.get_release(release_id) or {}
        change = release.get("change_kind") or (context["params"] or {}).get("change")
        version = self.artifact["version"]
        now = utcnow()
        for older in self.ledger.list_soaks(self.service.id, status=SOAKING):
            if older["release_id"] != release_id:
                self.log.warning("%s replaces %s on the soak cluster: its soak ends unfinished", version,
                                 older["version"])
                self.ledger.upsert_soak(older["release_id"], status=SUPERSEDED, ended_at=now,
                                        detail={**(older.get("detail") or {}),
                                                "superseded_by": f"{version} replaced it ({release_id})"})
        artifact = {k: v for k, v in self.artifact.items() if k != "tarball"}
        self.ledger.upsert_soak(
            release_id, service=self.service.id, version=version, commit_sha=release.get("commit_sha"),
            change_kind=change, artifact=artifact, hosts=hosts, status=SOAKING, started_at=now,
            min_seconds=self.service.soak.minimum(change).total_seconds(),
        )
        self.ledger.upsert_release(release_id, status="soaking")
        return self.ledger.get_soak(release_id)

    def _trigger(self, hosts: list, started: float, minimum: float):
        from conveyor.analysis.model import synthetic_baseline
        from conveyor.hooks.metrics import metric_source
        from conveyor.triggers.soak import SoakTrigger, window_settings

        soak = self.service.soak
        source = metric_source(self.service.analysis.source)
        pre = self.plan.get("pre_scrapes") or {}
        return SoakTrigger(
            version=self.artifact["version"], hosts={h.name: h.to_dict() for h in hosts},
            targets={h.name: source.target(h) for h in hosts},
            fixed_baseline={h.name: synthetic_baseline(pre[h.name]) for h in hosts if pre.get(h.name)},
            settings=window_settings(self.service.judge(watch=True).to_dict(), window_s=soak.window.total_seconds(),
                                     min_s=minimum),
            interval_s=soak.check_interval.total_seconds(), started_at=started, min_s=minimum,
            unhealthy_for_s=soak.incidents.unhealthy_for.total_seconds(),
            probe_timeout_s=self.service.deploy.health.probe_timeout_s, judge=soak.incidents.judge,
            health=soak.incidents.health, source=self.service.analysis.source.model_dump(mode="json"),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        release_id = self.release_id(context)
        version = self.artifact["version"]
        with self.ledger_stage(context, resumed=True) as stage:
            status = event.get("status")
            summary = {k: event.get(k) for k in ("elapsed_s", "windows_judged", "windows", "health_blips", "source",
                                                 "source_error")}
            now = utcnow()
            if status == "incident":
                reason = event.get("reason") or "unknown"
                self.ledger.upsert_soak(release_id, status=INCIDENT, incident=reason, ended_at=now,
                                        detail={**summary, "kind": event.get("kind"), "host": event.get("host"),
                                                "verdict": event.get("verdict")})
                stage.detail = {"version": version, "status": INCIDENT, "incident": reason, **summary}
                if event.get("verdict"):
                    stage.detail["verdict"] = event["verdict"]
                raise SoakIncident(f"incident during the soak of {version}: {reason}; it will never be promoted")
            if status != "passed":
                raise ConveyorError(f"the soak watch could not run: {event.get('message')}")
            self.ledger.upsert_soak(release_id, status=PASSED, watched_until=now, detail=summary)
            self.ledger.upsert_release(release_id, status="soaked", finished_at=now)
            row = self.ledger.get_soak(release_id) or {}
            self.log.info("%s soaked %s with no incident (%s window(s) judged): eligible for promotion", version,
                          timedelta(seconds=float(row.get("min_seconds") or 0)), event.get("windows_judged"))
            stage.detail = {"version": version, "status": PASSED, **summary}
        return stage.detail


def abort_soak(task: ConveyorOperator, context: Context, why: str) -> None:
    """The release failed while its build soaked (the watch could not run, the task timed out) and its
    rollback put the soak cluster back: the soak ends unfinished (never promotable), saying why."""
    release_id = task.release_id(context)
    row = task.ledger.get_soak(release_id)
    if row and row["status"] == SOAKING:
        task.ledger.upsert_soak(release_id, status=ABORTED, ended_at=utcnow(),
                                detail={**(row.get("detail") or {}), "aborted": why})


def production_version(versions: dict[str, str | None]) -> str | None:
    """What production runs: the version most of its hosts run (None: nothing known)."""
    counts = Counter(v for v in versions.values() if v)
    return counts.most_common(1)[0][0] if counts else None


class SelectPromotionOperator(FleetOperator):
    """Pick the build to promote and open the promotion's release record; returns the build's artifact.

    Who may promote by hand is ``release.allowed``; a manual promotion in a freeze is refused, a stale
    scheduled slot skips (the service's release windows, as for releases). The newest build whose soak
    passed with no incident and that is not older than what production runs; or the one the run's
    ``version`` param names (refused, the run failing with the reason, when it may
    not be promoted). With no eligible build, the run skips and says why (a scheduled promotion with
    nothing to promote is not a failure). A rerun keeps the candidate it recorded first.
    """

    ui_color = "#e3f0e8"

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from conveyor import validation

        release_id = self.release_id(context)
        recorded = ((self.recorded_stage(context) or {}).get("detail") or {}).get("soak_release_id")
        with self.ledger_stage(context) as stage:
            if recorded:
                row = self.ledger.get_soak(recorded)
                self.log.info("Reusing the candidate the first run of this task chose: %s", row and row["version"])
                candidate = {"soak_release_id": recorded, "version": row["version"], "why": "chosen by an earlier try"}
            else:
                from conveyor.operators.release import check_user, check_window

                check_user(self.service, context, emergency=False)  # release.allowed: who may promote by hand
                check_window(context, emergency=False, reason="")  # a manual promotion in a freeze is refused
                asked = ((context["params"] or {}).get("version") or "").strip() or None
                if asked:
                    asked = validation.version(asked)
                prod = self._production_version()
                clocks = soak_clocks(self.ledger.list_soaks(self.service.id), production_version=prod, now=utcnow())
                clock, why = pick_candidate(clocks, asked)
                if clock is None:
                    if asked:
                        raise PromotionRefused(f"promotion refused: {why}")
                    raise AirflowSkipException(f"nothing to promote: {why}")
                row = self.ledger.get_soak(clock.release_id)
                candidate = {"soak_release_id": clock.release_id, "version": clock.version, "why": why,
                             "soaked": clock.soaked, "minimum": clock.minimum, "production_version": prod}
                self._open(context, release_id, row)
            stage.detail = candidate
            context["ti"].xcom_push(key=CANDIDATE_KEY, value=candidate)
            self.log.info("Promoting %s (%s): %s", candidate["version"], candidate["soak_release_id"], candidate["why"])
        return row["artifact"]

    def _production_version(self) -> str | None:
        """What production runs, read from its hosts; the ledger's last release when none answers."""
        from conveyor.inventory import resolve_hosts

        versions, errors = self.on_each_host(resolve_hosts(self.service, "production"), lambda s: s.current_version())
        for name, error in sorted(errors.items()):
            self.log.warning("cannot read the version of %s: %s", name, error)
        version = production_version(versions)
        if version is None and errors:
            version = (self.ledger.last_successful_release(self.service.id) or {}).get("version")
        return version

    def _open(self, context: Context, release_id: str, row: dict[str, Any]) -> None:
        """The promotion's own release record: the soaked build, its commits (DORA's lead time), who asked."""
        dag_run = context["dag_run"]
        soaked = self.ledger.get_release(row["release_id"]) or {}
        self.ledger.upsert_release(
            release_id, service=self.service.id, version=row["version"], commit_sha=row.get("commit_sha"),
            git_ref=soaked.get("git_ref") or row["version"], change_kind=row.get("change_kind"), emergency=False,
            reason=f"promotion of {row['version']} after its soak ({row['release_id']})",
            author=getattr(dag_run, "triggering_user_name", None), run_id=dag_run.run_id, dag_id=dag_run.dag_id,
            status="running", started_at=utcnow(), commit_range=soaked.get("commit_range"), labels=["promotion"],
        )


def verify_promotion(task: ConveyorOperator, context: Context, plan: dict[str, Any]) -> dict[str, Any]:
    """The promotion's production gate, from the records (see the module docs); raises
    :class:`PromotionRefused` or :class:`~conveyor.signoff_check.SignoffMissing` saying what is missing."""
    from conveyor.config import PROMOTION_STAGE
    from conveyor.operators.signoff import verify_signoff
    from conveyor.signoff_check import SignoffPolicy

    service = task.service
    release = task.ledger.get_release(task.release_id(context)) or {}
    chosen = next((s for s in release.get("stages") or [] if s["stage"] == SELECT_TASK_ID), None)
    soak_release_id = ((chosen or {}).get("detail") or {}).get("soak_release_id")
    if not chosen or chosen.get("status") != "success" or not soak_release_id:
        raise PromotionRefused("promotion refused: the ledger has no candidate chosen by the 'select' task of this "
                               "run (a task marked success by hand chooses nothing)")
    prod = production_version(plan.get("original") or {})
    clocks = soak_clocks(task.ledger.list_soaks(service.id), production_version=prod, now=utcnow())
    clock = next((c for c in clocks if c.release_id == soak_release_id), None)
    if clock is None or not clock.eligible:
        raise PromotionRefused(f"promotion refused: {clock.version + ': ' + clock.why if clock else 'no soak record'}")
    soaked = task.ledger.get_release(soak_release_id)
    if not soaked or not soaked.get("dag_id") or not soaked.get("run_id"):
        raise PromotionRefused(f"promotion refused: the ledger has no release record of {soak_release_id}")
    summary = {"soak": clock.to_dict(),
               "signoff": verify_signoff(task, soaked, SignoffPolicy.of(service), soaked["dag_id"], soaked["run_id"])}
    stage = service.soak.approval if service.soak else None
    if stage is not None:
        policy = SignoffPolicy(required=stage.required, emergency_required=stage.required,
                               group=tuple(service.people(stage.group)), name=PROMOTION_STAGE)
        dag_run = context["dag_run"]
        summary["promotion"] = verify_signoff(task, release, [policy], dag_run.dag_id, dag_run.run_id,
                                              tests_stage=None)
    task.log.info("Promotion verified: %s %s", clock.version, clock.why)
    return summary


def mark_promoted(task: ConveyorOperator, context: Context) -> None:
    """After the promotion reached every production host: the soak's row says so (and by which release)."""
    candidate = context["ti"].xcom_pull(task_ids=SELECT_TASK_ID, key=CANDIDATE_KEY) or {}
    if candidate.get("soak_release_id"):
        task.ledger.upsert_soak(candidate["soak_release_id"], status=PROMOTED,
                                promoted_release_id=task.release_id(context), promoted_at=utcnow())


__all__ = ["CANDIDATE_KEY", "SELECT_TASK_ID", "SelectPromotionOperator", "SoakOperator", "abort_soak", "mark_promoted",
           "production_version", "verify_promotion"]
