"""The release pipeline, built per service from ``include/services/<id>.yaml``.

```
validate -> build -> [audit] -> replica.deploy -> replica.populate -> tests
  -> qa_signoff [-> <stage>_signoff ...]  (the service's approval stages, in order) -> plan
  -> wave_1.deploy -> wave_1.analysis -> wave_1.decide -> ... -> watch -> finalize
on any failure:  release_failed -> rollback -> ticket -> fail_run   (the run ends failed)
```

With a ``soak`` section the waves go to the soak cluster and the release ends in ``soak`` (the watch
over the soak's minimum); ``promote_<service>`` (:func:`promote_dag`) takes soaked builds to production:

```
select -> [promotion_signoff] -> plan -> wave_1 ... -> watch -> finalize   (+ the same failure path)
```

Parsing does no work: building the DAG reads the service's YAML file and the templates under
``include/templates`` and nothing else (no connection, Variable, SSH or database). Everything else
happens in the tasks.

Every task has a wall-clock bound from the service file: an ``execution_timeout``
(:func:`conveyor.timeouts.task_timeouts`), or for the human approvals and decisions their
``response_timeout`` (each approval stage's ``timeout``, ``analysis.decision_timeout``), so a hung host or step never
holds the service's one running release (and every release queued behind it) for ever.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor.config import ApprovalStage, ServiceConfig, load_service
from conveyor.paths import TEMPLATES_DIR
from conveyor.timeouts import task_timeouts
from conveyor.validation import GIT_REF_PATTERN, VERSION_PATTERN

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import BaseOperator

    from conveyor.notifiers import ReleaseNotifier

# The ref the release checked (validate's XCom: on a scheduled run the CI gate's commit, not the
# branch), for every message; before validate has checked one, the requested ref, marked as such.
CHECKED_REF = ("{{ (ti.xcom_pull(task_ids='validate') or {}).get('git_ref') "
               "or (params.git_ref ~ ' (not validated)') }}")
SIGNOFF_BODY = "signoff_body.md.j2"
# The build a promotion releases (select's candidate), for every message of ``promote_<service>``.
PROMOTED_VERSION = ("{{ (ti.xcom_pull(task_ids='select', key='candidate') or {}).get('version') "
                    "or 'a soaked build' }}")
PROMOTION_BODY = (
    "Promote **{{ (ti.xcom_pull(task_ids='select', key='candidate') or {}).get('version') }}** to production.\n\n"
    "It soaked {{ (ti.xcom_pull(task_ids='select', key='candidate') or {}).get('soaked') }} on the soak cluster "
    "(minimum {{ (ti.xcom_pull(task_ids='select', key='candidate') or {}).get('minimum') }}) with no incident; "
    "its release ({{ (ti.xcom_pull(task_ids='select', key='candidate') or {}).get('soak_release_id') }}) was "
    "signed off and its tests passed. Production runs "
    "{{ (ti.xcom_pull(task_ids='select', key='candidate') or {}).get('production_version') or 'nothing yet' }}.")


def release_dag(service_id: str):
    """Build the ``release_<service_id>`` DAG (call it from a file in ``dags/``)."""
    from airflow.sdk import DAG, TaskGroup, TriggerRule, chain

    from conveyor.operators.base import record_failure
    from conveyor.operators.deploy import DeployOperator, PlanWavesOperator, PopulateReplicaOperator
    from conveyor.operators.release import BuildOperator, ValidateReleaseOperator
    from conveyor.operators.testing import TestSuitesOperator
    from conveyor.timetables import timetable_for

    service = load_service(service_id)
    notify = _Notifications(service)
    bounds = task_timeouts(service)  # execution_timeout by task id (not the human tasks: response_timeout)
    waves_to = "soak" if service.soak is not None else "production"
    with DAG(
        dag_id=service.dag_id,
        description=f"Release {service.id}: build, replica, tests, sign-off, " + (
            "waves to the soak cluster and the soak (promote_" + service.id + " takes it to production)"
            if service.soak is not None else "waves with canary analysis"),
        schedule=timetable_for(service),  # release windows and freezes, or None (manual runs only)
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one release per service at a time: later runs queue
        params=_params(service),
        tags=["conveyor", "release", service.id],
        doc_md=_render_doc(service),
        template_searchpath=[str(TEMPLATES_DIR)],
        default_args={"owner": service.owner, "retries": 0, "on_failure_callback": record_failure},
    ) as dag:
        common: dict[str, Any] = {"service_id": service.id}
        validate = ValidateReleaseOperator(task_id="validate", on_success_callback=notify.started(),
                                           execution_timeout=bounds["validate"], **common)
        build = BuildOperator(task_id="build", git_ref="{{ ti.xcom_pull(task_ids='validate')['git_ref'] }}",
                              execution_timeout=bounds["build"], **common)
        audit = _audit(service, build, bounds)  # [] without an audit section
        with TaskGroup("replica", tooltip="Deploy the candidate to the replica and reset its data"):
            replica = DeployOperator(task_id="deploy", environment="replica", artifact=build.output,
                                     execution_timeout=bounds["replica.deploy"], **common)
            populate = PopulateReplicaOperator(task_id="populate", artifact=build.output,
                                               execution_timeout=bounds["replica.populate"], **common)
        tests = TestSuitesOperator(task_id="tests", artifact=build.output, execution_timeout=bounds["tests"],
                                   **common)
        approvals = _signoff_stages(service, notify, evidence={
            "validate": validate.task_id, "build": build.task_id, "tests": tests.task_id, "replica": replica.task_id})
        # plan follows every approval: an emergency skips the approvals it does not need, a minor change
        # the ``when: major`` stages, and plan (none_failed_min_one_success) still runs on the ones given.
        plan = PlanWavesOperator(task_id="plan", n_waves=len(service.waves), environment=waves_to,
                                 trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, execution_timeout=bounds["plan"],
                                 **common)
        waves = _waves(service, notify, build.output, plan, bounds, environment=waves_to)
        if service.soak is not None:
            from conveyor.operators.soak import SoakOperator

            end = [SoakOperator(task_id="soak", artifact=build.output, plan=plan.output,
                                on_success_callback=notify.soaked(), execution_timeout=bounds["soak"], **common)]
        else:
            end = _watch_and_finalize(service, notify, build.output, plan, bounds)

        chain(validate, build, *audit, replica, populate, tests, approvals[0])
        chain(*approvals)
        approvals >> plan
        chain(plan, *waves, *end)
        _failure_path(service, notify, [validate, build, *audit, replica, populate, tests, *approvals, plan,
                                        *waves, *end], bounds)
    return dag


def promote_dag(service_id: str):
    """Build the ``promote_<service_id>`` DAG, or None when the service has no ``soak`` section (then
    releases go to production directly and there is nothing to promote).

    Schedule: the service's release windows (and freezes) when it has them, else daily; a manual run may
    name the ``version`` to promote. See :mod:`conveyor.operators.soak`.
    """
    from airflow.sdk import DAG, Param, chain

    from conveyor.operators.base import record_failure
    from conveyor.operators.deploy import PlanWavesOperator
    from conveyor.operators.soak import SELECT_TASK_ID, SelectPromotionOperator
    from conveyor.timetables import timetable_for

    service = load_service(service_id)
    if service.soak is None:
        return None
    notify = _Notifications(service, what=f"{PROMOTED_VERSION} of {service.id}", kind="Promotion")
    bounds = task_timeouts(service, waves_to="production")
    with DAG(
        dag_id=f"promote_{service.id}",
        description=f"Promote {service.id}: the newest build that soaked its minimum with no incident, to production",
        schedule=timetable_for(service) or "@daily",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        params={"version": Param(
            "", type="string", pattern=f"^$|{VERSION_PATTERN}", maxLength=64, title="Version",
            description="The soaked build to promote; empty: the newest eligible one.")},
        tags=["conveyor", "promotion", service.id],
        doc_md=_promotion_doc(service),
        default_args={"owner": service.owner, "retries": 0, "on_failure_callback": record_failure},
    ) as dag:
        common: dict[str, Any] = {"service_id": service.id}
        select = SelectPromotionOperator(task_id=SELECT_TASK_ID, on_success_callback=notify.started(),
                                         execution_timeout=bounds["select"], **common)
        approvals = _promotion_signoff(service, notify)
        plan = PlanWavesOperator(task_id="plan", n_waves=len(service.waves), execution_timeout=bounds["plan"],
                                 **common)
        waves = _waves(service, notify, select.output, plan, bounds, environment="production", promotion=True)
        end = _watch_and_finalize(service, notify, select.output, plan, bounds, promotion=True)
        chain(select, *approvals, plan, *waves, *end)
        _failure_path(service, notify, [select, *approvals, plan, *waves, *end], bounds)
    return dag


def _promotion_doc(service: ServiceConfig) -> str:
    soak = service.soak
    assert soak is not None
    from conveyor.durations import format_duration

    approval = (f"one more approval ({soak.approval.required} of {', '.join(service.people(soak.approval.group))})"
                if soak.approval else "no second sign-off (the release's was given)")
    return (f"# Promote {service.id}\n\nPicks the newest build that soaked on the soak cluster for its minimum "
            f"({format_duration(soak.min)}; {format_duration(soak.major_min)} for a major change) with no incident and "
            "that is not older than production, then releases it to production through the same waves, judge and "
            f"watch as `{service.dag_id}`, with {approval}. The `version` param names a build to promote instead; "
            "it is refused, with the reason, when it may not be promoted. See docs/soak.md.")


def _promotion_signoff(service: ServiceConfig, notify: _Notifications) -> list[BaseOperator]:
    """The promotion's own approval (``soak.approval``), a task group ``promotion_signoff``; [] without one."""
    from airflow.sdk import TaskGroup

    from conveyor.operators.signoff import SignoffOperator

    stage = service.soak.approval if service.soak else None
    if stage is None:
        return []
    with TaskGroup(stage.task_group, tooltip=f"Promotion approval: {stage.required} distinct approval(s), never "
                   "the one who asked for the promotion"):
        return [
            SignoffOperator(
                task_id=f"approval_{k}", service_id=service.id, group=list(service.people(stage.group)), ordinal=k,
                required=stage.required, emergency_required=stage.required, timeout=stage.timeout, evidence_tasks={},
                approval_stage=stage.name, title=stage.title, distinct_from_earlier=False,
                releases_url=f"{_ui_base_url()}/conveyor/releases/{service.id}",
                subject=f"Promotion approval {k}/{stage.required}: {PROMOTED_VERSION} of {service.id} to production",
                body=PROMOTION_BODY, notifiers=[notify.approval(stage, k)],
            )
            for k in range(1, stage.required + 1)
        ]


def _watch_and_finalize(service: ServiceConfig, notify: _Notifications, artifact: Any, plan: BaseOperator,
                        bounds: dict[str, timedelta], *, promotion: bool = False) -> list[BaseOperator]:
    """The post-deploy watch of production and the release's close."""
    from airflow.sdk import TaskGroup

    from conveyor.operators.analysis import CanaryAnalysisOperator
    from conveyor.operators.release import FinalizeReleaseOperator

    common: dict[str, Any] = {"service_id": service.id}
    with TaskGroup("watch", tooltip="Watch every host on the new version against the pre-deploy baseline"):
        watch = [CanaryAnalysisOperator(task_id="analysis", plan=plan.output, wave=None,
                                        execution_timeout=bounds["watch.analysis"], **common)]
        watch.append(_decision(service, notify, watch[0]))
    finalize = FinalizeReleaseOperator(task_id="finalize", artifact=artifact, plan=plan.output, promotion=promotion,
                                       on_success_callback=notify.succeeded(), execution_timeout=bounds["finalize"],
                                       **common)
    return [*watch, finalize]


def _params(service: ServiceConfig) -> dict:
    """The run's input: what a trigger form (or the REST API) must give, validated before a run exists."""
    from airflow.sdk import Param

    return {
        "git_ref": Param(
            service.repo.release_branch, type="string", pattern=GIT_REF_PATTERN,
            title="Git ref", description="Tag (v1.2.0), branch or commit SHA to release. Letters, digits and "
            "._/+- only.", minLength=1, maxLength=128,
        ),
        "change": Param("minor", type="string", enum=["minor", "major"], title="Change",
                        description="minor: routine change; major: flagged for closer review."),
        "emergency": Param(False, type="boolean", title="Emergency",
                           description="An out-of-cadence fix; needs a reason."),
        "reason": Param("", type=["string", "null"], title="Reason", maxLength=2000,
                        description="Why (required when emergency is set)."),
    }


def _render_doc(service: ServiceConfig) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), undefined=StrictUndefined, autoescape=False)
    from conveyor.durations import format_duration

    soak = service.soak
    return env.get_template("release_dag.md.j2").render(
        service=service, stages=[(stage, service.people(stage.group)) for stage in service.stages],
        soak_min=format_duration(soak.min) if soak else None, soak_major_min=format_duration(soak.major_min) if soak else None)


def _ui_base_url() -> str:
    from airflow.configuration import conf as airflow_conf

    return (airflow_conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")


class _Notifications:
    """The release's messages (notification log, and Slack when the service names a webhook)."""

    def __init__(self, service: ServiceConfig, *, what: str | None = None, kind: str = "Release") -> None:
        self.service = service
        self.what = what or f"{CHECKED_REF} of {service.id}"
        self.kind = kind

    def _say(self, event: str, text: str) -> ReleaseNotifier:
        from conveyor.notifiers import ReleaseNotifier

        return ReleaseNotifier(event=event, text=text,
                               slack_webhook_conn_id=self.service.notifications.slack_webhook_conn_id)

    def started(self) -> ReleaseNotifier:
        return self._say("started", f"{self.kind} {self.what} started by "
                         "{{ dag_run.triggering_user_name or 'the schedule' }}"
                         "{{ ' — EMERGENCY: ' ~ params.reason if params.emergency else '' }}")

    def approval(self, stage: ApprovalStage, k: int) -> ReleaseNotifier:
        group = ", ".join(self.service.people(stage.group)) or "anyone"
        return self._say("approval", f"{self.kind} {self.what} awaits {stage.title} sign-off {k}/{stage.required} "
                         f"({group}) in Required Actions")

    def inconclusive(self) -> ReleaseNotifier:
        return self._say("inconclusive", f"{self.kind} {self.what}: canary analysis inconclusive; continue or roll "
                         "back? (Required Actions)")

    def soaked(self) -> ReleaseNotifier:
        return self._say("soaked", f"{self.kind} {self.what} soaked its minimum with no incident: eligible for "
                         f"promotion (promote_{self.service.id})")

    def succeeded(self) -> ReleaseNotifier:
        return self._say("succeeded", f"{self.kind} {self.what} reached every production host")

    def rolled_back(self, rollback_task_id: str) -> ReleaseNotifier:
        result = f"ti.xcom_pull(task_ids='{rollback_task_id}')"
        return self._say("rollback", f"{self.kind} {self.what}: rollback {{{{ {result}['status'] }}}} "
                         f"{{{{ {result}['rolled_back'] or '' }}}}")

    def failed(self, ticket_task_id: str) -> ReleaseNotifier:
        result = f"ti.xcom_pull(task_ids='{ticket_task_id}')"
        return self._say("failed", f"{self.kind} {self.what} FAILED; root-cause ticket {{{{ {result}['ticket_id'] }}}}: "
                         f"{{{{ {result}['title'] }}}}")


def _audit(service: ServiceConfig, build: BaseOperator, bounds: dict[str, timedelta]) -> list[BaseOperator]:
    """The dependency audit of the artifact (``audit`` in the service file), before any host changes."""
    if service.audit is None:
        return []
    from conveyor.operators.audit import DependencyAuditOperator

    return [DependencyAuditOperator(task_id="audit", artifact=build.output, service_id=service.id,
                                    execution_timeout=bounds["audit"])]


def _signoff_stages(service: ServiceConfig, notify: _Notifications, evidence: dict[str, str]) -> list[BaseOperator]:
    """Each approval stage in order, a task group ``<stage>_signoff`` of ``required`` approval tasks, each
    for a different member of the stage's group; the tasks, flat and in order."""
    from airflow.sdk import TaskGroup, TriggerRule

    from conveyor.operators.signoff import SignoffOperator

    tasks: list[BaseOperator] = []
    earlier: dict[str, list[str]] = {}
    for stage in service.stages:
        when = " for major changes" if stage.when == "major" else ""
        with TaskGroup(stage.task_group, tooltip=f"{stage.title} sign-off{when}: {stage.required} distinct "
                       "approval(s), never the author"):
            group = [
                SignoffOperator(
                    task_id=f"approval_{k}", service_id=service.id, group=list(service.people(stage.group)),
                    ordinal=k, required=stage.required, emergency_required=stage.emergency_approvals,
                    timeout=stage.timeout, evidence_tasks=evidence, approval_stage=stage.name, title=stage.title,
                    when=stage.when, earlier_stages=list(earlier), distinct_from_earlier=stage.distinct_from_earlier,
                    earlier_tasks=dict(earlier),
                    releases_url=f"{_ui_base_url()}/conveyor/releases/{service.id}",
                    subject=f"{stage.title} sign-off {k}/{stage.required}: {CHECKED_REF} of {service.id}",
                    body=SIGNOFF_BODY, notifiers=[notify.approval(stage, k)],
                    # A stage the run skips (an emergency's fewer approvals, ``when: major`` on a minor
                    # change) must not skip the stages after it: they decide for themselves.
                    **({"trigger_rule": TriggerRule.NONE_FAILED} if tasks else {}),
                )
                for k in range(1, stage.required + 1)
            ]
        earlier[stage.name] = [t.task_id for t in group]
        tasks += group
    return tasks


def _waves(service: ServiceConfig, notify: _Notifications, artifact: Any, plan: BaseOperator,
           bounds: dict[str, timedelta], *, environment: str, promotion: bool = False) -> list[BaseOperator]:
    """One task group per wave (deploy, analysis, decide), in order; the tasks, flat."""
    from airflow.sdk import TaskGroup

    from conveyor.operators.analysis import CanaryAnalysisOperator
    from conveyor.operators.deploy import DeployOperator

    where = "of the soak cluster" if environment == "soak" else "of production"
    tasks: list[BaseOperator] = []
    for i, size in enumerate(service.waves):
        with TaskGroup(f"wave_{i + 1}", tooltip=f"Wave {i + 1}: up to {size} {where}"):
            deploy = DeployOperator(task_id="deploy", environment=environment, artifact=artifact, promotion=promotion,
                                    plan=plan.output, wave=i, service_id=service.id,
                                    execution_timeout=bounds[f"wave_{i + 1}.deploy"])
            analysis = CanaryAnalysisOperator(task_id="analysis", plan=plan.output, wave=i, service_id=service.id,
                                              execution_timeout=bounds[f"wave_{i + 1}.analysis"])
            tasks += [deploy, analysis, _decision(service, notify, analysis)]
    return tasks


def _decision(service: ServiceConfig, notify: _Notifications, analysis: BaseOperator) -> BaseOperator:
    """After an analysis: a human decides "continue or roll back?" when it was inconclusive."""
    from conveyor.operators.analysis import InconclusiveDecisionOperator

    return InconclusiveDecisionOperator(
        task_id="decide", analysis_task_id=analysis.task_id, service_id=service.id,
        # who decides: analysis.deciders, by default the first approval stage's group (QA; the author is
        # never one: see the operator)
        assigned=list(service.people(service.analysis.deciders or service.stages[0].group)),
        timeout=service.analysis.decision_timeout,
        notifiers=[notify.inconclusive()],
    )


def _failure_path(service: ServiceConfig, notify: _Notifications, main: list[BaseOperator],
                  bounds: dict[str, timedelta], *, recovery: Callable[[], BaseOperator] | None = None,
                  plan_task_id: str = "plan") -> None:
    """On any failure: mark the release failed, undo it (roll back), file the ticket, and end the run failed.

    :param recovery: builds the task that undoes the change (called once, after ``release_failed`` is
        built); by default ``rollback``, which rolls the fleet back to the plan's previous version.
    :param plan_task_id: the task whose result the ticket reads (the wave plan; a flag rollout's ``validate``).
    """
    from airflow.sdk import TriggerRule

    from conveyor.operators.deploy import RollbackOperator
    from conveyor.operators.release import ReleaseFailedOperator, ReleaseOutcomeOperator
    from conveyor.operators.ticket import TicketOperator

    common: dict[str, Any] = {"service_id": service.id}
    failed = ReleaseFailedOperator(task_id="release_failed", trigger_rule=TriggerRule.ONE_FAILED,
                                   execution_timeout=bounds["release_failed"], **common)
    if recovery is not None:
        rollback = recovery()
    else:
        rollback = RollbackOperator(task_id="rollback", plan_task_id="plan",
                                    on_success_callback=notify.rolled_back("rollback"),
                                    execution_timeout=bounds["rollback"], **common)
    ticket = TicketOperator(task_id="ticket", rollback_task_id=rollback.task_id, plan_task_id=plan_task_id,
                            trigger_rule=TriggerRule.NONE_SKIPPED,
                            on_success_callback=notify.failed("ticket"), execution_timeout=bounds["ticket"], **common)
    # A release that failed must end as a failed run, even though its failure path succeeded:
    # this leaf fails whenever the failure path ran (Airflow's "watcher" pattern).
    outcome = ReleaseOutcomeOperator(task_id="fail_run", rollback_task_id=rollback.task_id,
                                     ticket_task_id=ticket.task_id, trigger_rule=TriggerRule.NONE_SKIPPED,
                                     on_failure_callback=None, execution_timeout=bounds["fail_run"], **common)
    main >> failed >> rollback >> ticket >> outcome


REGRESSION_DOC = """
### Regression calendar of `{id}`

On the 1st of every month this DAG deploys the version production runs now to the replica, resets the
replica's data, and runs that month's regression areas against it, each as a suite of the service file's
`regression.areas` (JUnit XML, like the release's tests). Every area's result is recorded in the release
ledger (`regression_results`, one row per month and area: a rerun replaces it), and a failing area files one
ticket; the same failure at the area's next turn is added to that ticket instead of filing another. The
run ends failed when an area failed.

* **Rotation:** {rotation}.
* **Manual runs:** `area` runs one area now; `month` (1-12) runs that month's areas instead of this month's.
* **Calendar:** the Airflow UI's *Browse > Regression calendar* (`/conveyor/regression?service={id}`).

The replica is shared with `release_{id}`: schedule releases away from the 1st at 06:00 UTC, or expect one
of the two to find the replica on the other's version. Service file: `{path}`.
"""


def regression_dag(service_id: str):
    """Build the ``regression_<service_id>`` DAG, or None when the service has no ``regression`` section.

    ``plan -> production_version -> replica.deploy -> replica.populate -> areas -> tickets -> report``
    (:mod:`conveyor.operators.regression`). Monthly (the 1st, 06:00 UTC), no catch-up, one run at a time.
    """
    from airflow.sdk import DAG, Param, chain, task

    from conveyor.config import MONTHS
    from conveyor.operators.base import record_failure
    from conveyor.operators.regression import (
        RegressionAreasOperator,
        RegressionPlanOperator,
        RegressionTicketsOperator,
    )
    from conveyor.timeouts import regression_timeouts

    service = load_service(service_id)
    regression = service.regression
    if regression is None:
        return None
    bounds = regression_timeouts(service)
    areas = list(regression.areas)
    rotation = (f"{regression.rotation.per_month} area(s) a month, round robin over {', '.join(areas)}"
                if regression.rotation.per_month else "by month: " + "; ".join(
                    f"{MONTHS[m - 1]}: {', '.join(a) or '(none)'}" for m, a in regression.calendar().items()))
    with DAG(
        dag_id=f"regression_{service.id}",
        description=f"Regression calendar of {service.id}: this month's areas against a replica of production",
        schedule="0 6 1 * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one replica: two runs would deploy over each other
        params={
            "area": Param(None, type=["null", "string"], enum=[None, *areas], title="Area",
                          description="Run this one area now; empty: the month's areas of the rotation."),
            "month": Param(None, type=["null", "integer"], minimum=1, maximum=12, title="Month",
                           description="Run this month's areas (1-12); empty: the run's own month."),
        },
        tags=["conveyor", "regression", service.id],
        doc_md=REGRESSION_DOC.format(id=service.id, rotation=rotation, path=service.path.name),
        default_args={"owner": service.owner, "retries": 0, "on_failure_callback": record_failure},
    ) as dag:
        common: dict[str, Any] = {"service_id": service.id}
        plan = RegressionPlanOperator(task_id="plan", execution_timeout=bounds["plan"], **common)
        target, group = _production_on_replica(service, bounds, "Deploy production's version to the replica and "
                                               "reset its data")
        replica, populate = group.children.values()
        run = RegressionAreasOperator(task_id="areas", artifact=target.output, plan=plan.output,
                                      execution_timeout=bounds["areas"], **common)
        tickets = RegressionTicketsOperator(task_id="tickets", results=run.output,
                                            execution_timeout=bounds["tickets"], **common)

        @task(task_id="report", execution_timeout=bounds["report"])
        def report(results: dict[str, Any], filed: dict[str, Any]) -> dict[str, str]:
            """End the run failed when an area failed, naming the areas, their tests and tickets."""
            from conveyor.exceptions import TestSuiteError

            failed = [r for r in results["results"] if r["outcome"] == "failed"]
            if failed:
                raise TestSuiteError(
                    f"{len(failed)} regression area(s) fail on {results['version']} ({results['month']}): " + "; ".join(
                        f"{r['area']}: {', '.join(r['failing_tests'])} (ticket {filed['tickets'].get(r['area'])})"
                        for r in failed), [f"{r['area']}::{t}" for r in failed for t in r["failing_tests"]])
            return {r["area"]: r["outcome"] for r in results["results"]}

        chain(plan, target, replica, populate, run, tickets, report(run.output, tickets.output))
    return dag


def _production_on_replica(service: ServiceConfig, bounds: dict[str, timedelta], tooltip: str):
    """``production_version`` (production's version, as an artifact) and the task group ``replica`` that
    deploys it to the replica and resets its data: the regression calendar's and a flag's test bed."""
    from airflow.sdk import TaskGroup

    from conveyor.operators.deploy import DeployOperator, PopulateReplicaOperator
    from conveyor.operators.regression import ProductionVersionOperator

    common: dict[str, Any] = {"service_id": service.id}
    target = ProductionVersionOperator(task_id="production_version", execution_timeout=bounds["production_version"],
                                       **common)
    with TaskGroup("replica", tooltip=tooltip) as group:
        DeployOperator(task_id="deploy", environment="replica", artifact=target.output,
                       execution_timeout=bounds["replica.deploy"], **common)
        PopulateReplicaOperator(task_id="populate", artifact=target.output,
                                execution_timeout=bounds["replica.populate"], **common)
    return target, group


FLAG_BODY = (
    "Turn **{{ (ti.xcom_pull(task_ids='validate') or {}).get('flag') }}** on in production, for "
    "{{ (ti.xcom_pull(task_ids='validate') or {}).get('steps') }} percent of users in turn, each step judged "
    "flag-on against flag-off traffic (a failing step turns it off everywhere).\n\n"
    "{% set tests = ti.xcom_pull(task_ids='tests') or {} %}"
    "**On the replica, flag on for everyone:** {% for name, s in (tests.get('suites') or {}).items() %}"
    "{{ name }}: {{ s.passed }} passed, {{ s.failed }} failed; {% else %}not tested (test_on_replica off){% endfor %}"
    "\n\nRequested by {{ dag_run.triggering_user_name or 'the schedule' }} (who cannot approve it).")


def flag_dag(service_id: str):
    """Build the ``flag_<service_id>`` DAG, or None when the service declares no ``flags``.

    ``validate -> [production_version -> replica.deploy -> replica.populate -> replica.flag_on -> tests ->
    replica_flag_off] -> qa_signoff -> step_1.set -> step_1.analysis -> ... -> finalize``, and on any failure
    ``release_failed -> flag_off -> ticket -> fail_run`` (:mod:`conveyor.operators.flags`). Triggered by hand.
    """
    from airflow.sdk import DAG, Param, TaskGroup, TriggerRule, chain, task

    from conveyor.operators.base import record_failure
    from conveyor.operators.flags import (
        FlagAnalysisOperator,
        FlagFinalizeOperator,
        FlagOffOperator,
        FlagSetOperator,
        FlagValidateOperator,
    )
    from conveyor.operators.signoff import SignoffOperator
    from conveyor.operators.testing import TestSuitesOperator
    from conveyor.timeouts import flag_timeouts

    service = load_service(service_id)
    if not service.flags:
        return None
    bounds = flag_timeouts(service)
    names = [f.name for f in service.flags]
    steps = list(service.flag_rollout.steps)
    notify = _Notifications(service, what=f"{{{{ (ti.xcom_pull(task_ids='validate') or {{}}).get('flag') "
                                          f"or params.flag }}}} of {service.id}", kind="Flag rollout")
    with DAG(
        dag_id=f"flag_{service.id}",
        description=f"Roll a feature flag of {service.id} out: replica tests, QA, then growing shares of "
                    "production's users, each judged flag-on against flag-off",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one rollout at a time: two would judge each other's traffic
        params={
            "flag": Param(names[0], type="string", enum=names, title="Flag",
                          description="One of the flags the service file declares."),
            "steps": Param(steps, type="array", items={"type": "integer", "minimum": 1, "maximum": 100},
                           minItems=1, maxItems=len(steps), title="Steps",
                           description="Percent of production's users at each step, increasing."),
            "test_on_replica": Param(True, type="boolean", title="Test on the replica",
                                     description="Run the suites on the replica with the flag on first."),
        },
        tags=["conveyor", "flag", service.id],
        doc_md=f"### Flag rollouts of `{service.id}`\n\n{', '.join(f'`{n}`' for n in names)}: see docs/flags.md.",
        template_searchpath=[str(TEMPLATES_DIR)],
        default_args={"owner": service.owner, "retries": 0, "on_failure_callback": record_failure},
    ) as dag:
        common: dict[str, Any] = {"service_id": service.id}
        validate = FlagValidateOperator(task_id="validate", max_steps=len(steps), on_success_callback=notify.started(),
                                        execution_timeout=bounds["validate"], **common)

        @task.short_circuit(task_id="replica_test", ignore_downstream_trigger_rules=False,
                            execution_timeout=bounds["validate"])
        def replica_test(plan: dict[str, Any]) -> bool:
            """Test on the replica only when the run asks for it (the tasks after this skip otherwise)."""
            return bool(plan["test_on_replica"])

        gate = replica_test(validate.output)
        target, group = _production_on_replica(service, bounds, "Production's version on the replica, the flag on "
                                               "for everyone")
        deploy, populate = group.children.values()
        with group:
            flag_on = FlagSetOperator(task_id="flag_on", environment="replica",
                                      execution_timeout=bounds["replica.flag_on"], **common)
        tests = TestSuitesOperator(task_id="tests", artifact=target.output, execution_timeout=bounds["tests"], **common)
        flag_on_replica_off = FlagSetOperator(task_id="replica_flag_off", environment="replica", enabled=False,
                                              execution_timeout=bounds["replica_flag_off"], **common)
        qa = service.stages[0]
        with TaskGroup(qa.task_group, tooltip=f"{qa.title} sign-off of the flag: {qa.required} approval(s)"):
            approvals = [
                SignoffOperator(
                    task_id=f"approval_{k}", service_id=service.id, group=list(service.people(qa.group)), ordinal=k,
                    required=qa.required, emergency_required=qa.required, timeout=qa.timeout, evidence_tasks={},
                    approval_stage=qa.name, title=qa.title, releases_url=f"{_ui_base_url()}/conveyor/releases/{service.id}",
                    subject=f"{qa.title} sign-off {k}/{qa.required}: flag rollout of {service.id}", body=FLAG_BODY,
                    notifiers=[notify.approval(qa, k)],
                    # the replica's tasks skip when the run does not test there: QA is asked all the same
                    trigger_rule=TriggerRule.NONE_FAILED,
                )
                for k in range(1, qa.required + 1)
            ]
        rollout = []
        for i in range(len(steps)):
            with TaskGroup(f"step_{i + 1}", tooltip=f"Step {i + 1}: the flag on for this step's share of users"):
                step_set = FlagSetOperator(task_id="set", environment="production", step=i,
                                           execution_timeout=bounds[f"step_{i + 1}.set"], **common)
                rollout += [step_set, FlagAnalysisOperator(task_id="analysis", step=i, set_task_id=step_set.task_id,
                                                           execution_timeout=bounds[f"step_{i + 1}.analysis"],
                                                           **common)]
        finalize = FlagFinalizeOperator(task_id="finalize", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
                                        on_success_callback=notify.succeeded(), execution_timeout=bounds["finalize"],
                                        **common)
        chain(validate, gate, target, deploy, populate, flag_on, tests, flag_on_replica_off, *approvals)
        chain(*approvals, *rollout[:2])
        for k in range(2, len(rollout), 2):  # a later step runs after the one before, or skips with it
            rollout[k - 1] >> rollout[k] >> rollout[k + 1]
        rollout[-1] >> finalize
        for k in range(1, len(rollout) - 1, 2):
            rollout[k] >> finalize  # the run's last step may be an earlier group
        main = [validate, target, deploy, populate, flag_on, tests, flag_on_replica_off, *approvals, *rollout, finalize]
        _failure_path(service, notify, main, bounds, plan_task_id=validate.task_id,
                      recovery=lambda: FlagOffOperator(task_id="flag_off",
                                                       on_success_callback=notify.rolled_back("flag_off"),
                                                       execution_timeout=bounds["flag_off"], **common))
    return dag
