"""The release pipeline, built per service from ``include/services/<id>.yaml``.

```
validate -> build -> [audit] -> replica.deploy -> replica.populate -> tests
  -> qa_signoff [-> <stage>_signoff ...]  (the service's approval stages, in order) -> plan
  -> wave_1.deploy -> wave_1.analysis -> wave_1.decide -> ... -> watch -> finalize
on any failure:  release_failed -> rollback -> ticket -> fail_run   (the run ends failed)
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
from conveyor.validation import GIT_REF_PATTERN

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

    from conveyor.notifiers import ReleaseNotifier

# The ref the release checked (validate's XCom: on a scheduled run the CI gate's commit, not the
# branch), for every message; before validate has checked one, the requested ref, marked as such.
CHECKED_REF = ("{{ (ti.xcom_pull(task_ids='validate') or {}).get('git_ref') "
               "or (params.git_ref ~ ' (not validated)') }}")
SIGNOFF_BODY = "signoff_body.md.j2"


def release_dag(service_id: str):
    """Build the ``release_<service_id>`` DAG (call it from a file in ``dags/``)."""
    from airflow.sdk import DAG, TaskGroup, TriggerRule, chain

    from conveyor.operators.analysis import CanaryAnalysisOperator
    from conveyor.operators.base import record_failure
    from conveyor.operators.deploy import DeployOperator, PlanWavesOperator, PopulateReplicaOperator
    from conveyor.operators.release import BuildOperator, FinalizeReleaseOperator, ValidateReleaseOperator
    from conveyor.operators.testing import TestSuitesOperator
    from conveyor.timetables import timetable_for

    service = load_service(service_id)
    notify = _Notifications(service)
    bounds = task_timeouts(service)  # execution_timeout by task id (not the human tasks: response_timeout)
    with DAG(
        dag_id=service.dag_id,
        description=f"Release {service.id}: build, replica, tests, QA sign-off, waves with canary analysis",
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
        plan = PlanWavesOperator(task_id="plan", n_waves=len(service.waves),
                                 trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, execution_timeout=bounds["plan"],
                                 **common)
        waves = _waves(service, notify, build, plan, bounds)
        with TaskGroup("watch", tooltip="Watch every host on the new version against the pre-deploy baseline"):
            watch = [CanaryAnalysisOperator(task_id="analysis", plan=plan.output, wave=None,
                                            execution_timeout=bounds["watch.analysis"], **common)]
            watch.append(_decision(service, notify, watch[0]))
        finalize = FinalizeReleaseOperator(task_id="finalize", artifact=build.output, plan=plan.output,
                                           on_success_callback=notify.succeeded(), execution_timeout=bounds["finalize"],
                                           **common)

        chain(validate, build, *audit, replica, populate, tests, approvals[0])
        chain(*approvals)
        approvals >> plan
        chain(plan, *waves, *watch, finalize)
        _failure_path(service, notify, [validate, build, *audit, replica, populate, tests, *approvals, plan,
                                        *waves, *watch, finalize], bounds)
    return dag


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
    return env.get_template("release_dag.md.j2").render(
        service=service, stages=[(stage, service.people(stage.group)) for stage in service.stages])


def _ui_base_url() -> str:
    from airflow.configuration import conf as airflow_conf

    return (airflow_conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")


class _Notifications:
    """The release's messages (notification log, and Slack when the service names a webhook)."""

    def __init__(self, service: ServiceConfig) -> None:
        self.service = service
        self.what = f"{CHECKED_REF} of {service.id}"

    def _say(self, event: str, text: str) -> ReleaseNotifier:
        from conveyor.notifiers import ReleaseNotifier

        return ReleaseNotifier(event=event, text=text,
                               slack_webhook_conn_id=self.service.notifications.slack_webhook_conn_id)

    def started(self) -> ReleaseNotifier:
        return self._say("started", f"Release {self.what} started by "
                         "{{ dag_run.triggering_user_name or 'the schedule' }}"
                         "{{ ' — EMERGENCY: ' ~ params.reason if params.emergency else '' }}")

    def approval(self, stage: ApprovalStage, k: int) -> ReleaseNotifier:
        group = ", ".join(self.service.people(stage.group)) or "anyone"
        return self._say("approval", f"Release {self.what} awaits {stage.title} sign-off {k}/{stage.required} "
                         f"({group}) in Required Actions")

    def inconclusive(self) -> ReleaseNotifier:
        return self._say("inconclusive", f"Release {self.what}: canary analysis inconclusive; continue or roll "
                         "back? (Required Actions)")

    def succeeded(self) -> ReleaseNotifier:
        return self._say("succeeded", f"Release {self.what} reached every production host")

    def rolled_back(self, rollback_task_id: str) -> ReleaseNotifier:
        result = f"ti.xcom_pull(task_ids='{rollback_task_id}')"
        return self._say("rollback", f"Release {self.what}: rollback {{{{ {result}['status'] }}}} "
                         f"{{{{ {result}['rolled_back'] or '' }}}}")

    def failed(self, ticket_task_id: str) -> ReleaseNotifier:
        result = f"ti.xcom_pull(task_ids='{ticket_task_id}')"
        return self._say("failed", f"Release {self.what} FAILED; root-cause ticket {{{{ {result}['ticket_id'] }}}}: "
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


def _waves(service: ServiceConfig, notify: _Notifications, build: BaseOperator,
           plan: BaseOperator, bounds: dict[str, timedelta]) -> list[BaseOperator]:
    """One task group per wave (deploy, analysis, decide), in order; the tasks, flat."""
    from airflow.sdk import TaskGroup

    from conveyor.operators.analysis import CanaryAnalysisOperator
    from conveyor.operators.deploy import DeployOperator

    tasks: list[BaseOperator] = []
    for i, size in enumerate(service.waves):
        with TaskGroup(f"wave_{i + 1}", tooltip=f"Wave {i + 1}: up to {size} of production"):
            deploy = DeployOperator(task_id="deploy", environment="production", artifact=build.output,
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
                  bounds: dict[str, timedelta]) -> None:
    """On any failure: mark the release failed, roll back, file the ticket, and end the run failed."""
    from airflow.sdk import TriggerRule

    from conveyor.operators.deploy import RollbackOperator
    from conveyor.operators.release import ReleaseFailedOperator, ReleaseOutcomeOperator
    from conveyor.operators.ticket import TicketOperator

    common: dict[str, Any] = {"service_id": service.id}
    failed = ReleaseFailedOperator(task_id="release_failed", trigger_rule=TriggerRule.ONE_FAILED,
                                   execution_timeout=bounds["release_failed"], **common)
    rollback = RollbackOperator(task_id="rollback", plan_task_id="plan",
                                on_success_callback=notify.rolled_back("rollback"), execution_timeout=bounds["rollback"],
                                **common)
    ticket = TicketOperator(task_id="ticket", rollback_task_id=rollback.task_id, plan_task_id="plan",
                            trigger_rule=TriggerRule.NONE_SKIPPED,
                            on_success_callback=notify.failed("ticket"), execution_timeout=bounds["ticket"], **common)
    # A release that failed must end as a failed run, even though its failure path succeeded:
    # this leaf fails whenever the failure path ran (Airflow's "watcher" pattern).
    outcome = ReleaseOutcomeOperator(task_id="fail_run", rollback_task_id=rollback.task_id,
                                     ticket_task_id=ticket.task_id, trigger_rule=TriggerRule.NONE_SKIPPED,
                                     on_failure_callback=None, execution_timeout=bounds["fail_run"], **common)
    main >> failed >> rollback >> ticket >> outcome
