"""The release pipeline, built per service from ``include/services/<id>.yaml``.

```
validate -> build -> replica.deploy -> replica.populate -> tests -> qa_signoff -> plan
  -> wave_1.deploy -> wave_1.analysis -> ... -> wave_N.analysis -> watch -> finalize
on any failure:  release_failed -> rollback -> ticket -> fail_run   (the run ends failed)
```

Parsing does no work: building the DAG reads the service's YAML file and nothing else (no
connection, Variable, SSH or database). Everything else happens in the tasks.
"""

from __future__ import annotations

from datetime import datetime

from conveyor.config import ServiceConfig, load_service, parse_duration
from conveyor.validation import GIT_REF_PATTERN

DOC = """
### Release `{id}`

{description}

Trigger with **git_ref** (a tag such as `v1.1.0`, a branch or a commit), **change** (`minor` or
`major`) and, for an out-of-band fix, **emergency** with a **reason**. The run builds the ref,
deploys it to the replica ({replica}), resets the replica's data, runs the suites
({suites}), waits for QA sign-off in **Required Actions** (group: {qa}), then deploys to production
in waves ({waves}), each health-checked and compared with hosts still on the old version. A failure
after any production host changed rolls every touched host back; every failure files a root-cause
ticket (`conveyor tickets list`). Service file: `{path}`.
"""


SIGNOFF_BODY = """\
**{{ ti.xcom_pull(task_ids='build')['version'] }}** of `{service}` \
(commit `{{ ti.xcom_pull(task_ids='build')['commit'][:12] }}`), \
{{ 'an EMERGENCY change: ' ~ params.reason if params.emergency else 'a ' ~ params.change ~ ' change' }}, \
triggered by {{ dag_run.triggering_user_name or 'the schedule' }} (who cannot approve it).

**Changes since production** ({{ ti.xcom_pull(task_ids='build')['commit_count'] }} commit(s), \
[changelog]({base_url}/conveyor/releases/{service}/{{ run_id }}/changelog)):
{% for c in (ti.xcom_pull(task_ids='build')['manifest']['commit_range']['commits'] or [])[:20] %}
- `{{ c['sha'][:10] }}` {{ c['subject'] }} ({{ c['author'] }})
{%- endfor %}

**Tests on the replica:** {% for name, s in ti.xcom_pull(task_ids='tests')['suites'].items() %}\
{{ name }}: {{ s['passed'] }} passed, {{ s['failed'] }} failed; {% endfor %}
{% if ti.xcom_pull(task_ids='tests')['pre_existing'] %}
**Pre-existing failures** (they fail on production's version too; not blocking):
{% for t in ti.xcom_pull(task_ids='tests')['pre_existing'] %}
- `{{ t }}`
{%- endfor %}
{% endif %}

**Replica health:** {% for h, r in ti.xcom_pull(task_ids='replica.deploy')['health'].items() %}\
{{ h }} {{ 'ok' if r['ok'] else 'DOWN' }} on {{ r['version'] }}; {% endfor %}

Approve to deploy to production in waves. Reject stops the release: give the reason.
"""


def _params(service: ServiceConfig) -> dict:
    from airflow.sdk import Param

    return {
        "git_ref": Param(
            service["repo"].get("release_branch", "main"), type="string", pattern=GIT_REF_PATTERN,
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


def release_dag(service_id: str):
    """Build the ``release_<service_id>`` DAG (call it from a file in ``dags/``)."""
    from airflow.configuration import conf as airflow_conf
    from airflow.sdk import DAG, TaskGroup, TriggerRule, chain

    from conveyor.notifiers import ReleaseNotifier
    from conveyor.operators.analysis import CanaryAnalysisOperator, InconclusiveDecisionOperator
    from conveyor.operators.base import record_failure
    from conveyor.operators.deploy import (
        DeployOperator,
        PlanWavesOperator,
        PopulateReplicaOperator,
        RollbackOperator,
    )
    from conveyor.operators.release import (
        BuildOperator,
        FinalizeReleaseOperator,
        ReleaseFailedOperator,
        ReleaseOutcomeOperator,
        ValidateReleaseOperator,
    )
    from conveyor.operators.signoff import QASignoffOperator
    from conveyor.operators.testing import TestSuitesOperator
    from conveyor.operators.ticket import TicketOperator
    from conveyor.timetables import timetable_for

    service = load_service(service_id)
    qa = service["qa"]
    doc = DOC.format(
        id=service.id, description=service["description"], replica="from its inventory",
        suites=", ".join(t["name"] for t in service["tests"]) or "none", qa=", ".join(qa["group"]) or "anyone",
        waves=" → ".join(str(w) for w in service["waves"]), path=service.path.name,
    )
    with DAG(
        dag_id=service.dag_id,
        description=f"Release {service.id}: build, replica, tests, QA sign-off, waves with canary analysis",
        schedule=timetable_for(service),  # release windows and freezes, or None (manual runs only)
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one release per service at a time: later runs queue
        params=_params(service),
        tags=["conveyor", "release", service.id],
        doc_md=doc,
        default_args={"owner": service["owner"], "retries": 0, "on_failure_callback": record_failure},
    ) as dag:
        common = {"service_id": service.id}
        slack = service["notifications"]["slack_webhook_conn_id"]
        what = "{{ params.git_ref }} of " + service.id

        def notify(event: str, text: str) -> ReleaseNotifier:
            return ReleaseNotifier(event=event, text=text, slack_webhook_conn_id=slack)

        def decision(analysis_task_id: str, task_id: str) -> InconclusiveDecisionOperator:
            return InconclusiveDecisionOperator(
                task_id=task_id, analysis_task_id=analysis_task_id, service_id=service.id,
                assigned=service["analysis"].get("deciders", []),
                timeout=parse_duration(service["analysis"].get("decision_timeout", "30m")),
                notifiers=[notify("inconclusive", f"Release {what}: canary analysis inconclusive; continue or "
                                  "roll back? (Required Actions)")],
            )

        validate = ValidateReleaseOperator(
            task_id="validate", **common,
            on_success_callback=notify("started", f"Release {what} started by "
                                       "{{ dag_run.triggering_user_name or 'the schedule' }}"
                                       "{{ ' — EMERGENCY: ' ~ params.reason if params.emergency else '' }}"),
        )
        build = BuildOperator(task_id="build", git_ref="{{ ti.xcom_pull(task_ids='validate')['git_ref'] }}", **common)
        with TaskGroup("replica", tooltip="Deploy the candidate to the replica and reset its data"):
            replica_deploy = DeployOperator(task_id="deploy", environment="replica", artifact=build.output, **common)
            populate = PopulateReplicaOperator(task_id="populate", artifact=build.output, **common)
        tests = TestSuitesOperator(task_id="tests", artifact=build.output, **common)
        required = qa["required_approvals"]
        base_url = (airflow_conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
        with TaskGroup("qa_signoff", tooltip=f"QA sign-off: {required} distinct approvals, never the author") \
                as qa_signoff:
            previous_approval = None
            approvals = []
            for k in range(1, required + 1):
                approval = QASignoffOperator(
                    task_id=f"approval_{k}", service_id=service.id, group=qa["group"], ordinal=k,
                    required=required, emergency_required=min(required, qa["emergency_required_approvals"]),
                    timeout=service.qa_timeout,
                    subject=f"QA sign-off {k}/{required}: " + "{{ params.git_ref }} of " + service.id,
                    body=SIGNOFF_BODY.replace("{service}", service.id).replace("{base_url}", base_url),
                    notifiers=[notify("approval", f"Release {what} awaits QA sign-off {k}/{required} ("
                                      + (", ".join(qa["group"]) or "anyone") + ") in Required Actions")],
                )
                if previous_approval is not None:
                    previous_approval >> approval
                previous_approval = approval
                approvals.append(approval)
        plan = PlanWavesOperator(task_id="plan", n_waves=len(service["waves"]),
                                 trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, **common)
        chain(validate, build, replica_deploy, populate, tests, qa_signoff)
        # plan follows every approval: an emergency skips the approvals it does not need, and plan
        # (none_failed_min_one_success) still runs on the ones given.
        approvals >> plan
        main = [validate, build, replica_deploy, populate, tests, *approvals, plan]
        previous = plan
        for i, wave in enumerate(service["waves"]):
            with TaskGroup(f"wave_{i + 1}", tooltip=f"Wave {i + 1}: up to {wave} of production"):
                deploy = DeployOperator(task_id="deploy", environment="production", artifact=build.output,
                                        plan=plan.output, wave=i, **common)
                analysis = CanaryAnalysisOperator(task_id="analysis", plan=plan.output, wave=i, **common)
                decide = decision(f"wave_{i + 1}.analysis", "decide")
                deploy >> analysis >> decide
            previous >> deploy
            previous = decide
            main += [deploy, analysis, decide]
        with TaskGroup("watch", tooltip="Watch every host on the new version against the pre-deploy baseline"):
            watch = CanaryAnalysisOperator(task_id="analysis", plan=plan.output, wave=None, **common)
            watch_decide = decision("watch.analysis", "decide")
            watch >> watch_decide
        finalize = FinalizeReleaseOperator(
            task_id="finalize", artifact=build.output, **common,
            on_success_callback=notify("succeeded", f"Release {what} reached every production host"),
        )
        previous >> watch
        watch_decide >> finalize
        main += [watch, watch_decide, finalize]

        failed = ReleaseFailedOperator(task_id="release_failed", trigger_rule=TriggerRule.ONE_FAILED, **common)
        rollback = RollbackOperator(
            task_id="rollback", **common,
            on_success_callback=notify("rollback", f"Release {what}: rollback "
                                       "{{ ti.xcom_pull(task_ids='rollback')['status'] }} "
                                       "{{ ti.xcom_pull(task_ids='rollback')['rolled_back'] or '' }}"),
        )
        ticket = TicketOperator(
            task_id="ticket", trigger_rule=TriggerRule.NONE_SKIPPED, **common,
            on_success_callback=notify("failed", f"Release {what} FAILED; root-cause ticket "
                                       "{{ ti.xcom_pull(task_ids='ticket')['ticket_id'] }}: "
                                       "{{ ti.xcom_pull(task_ids='ticket')['title'] }}"),
        )
        # A release that failed must end as a failed run, even though its failure path succeeded:
        # this leaf fails whenever the failure path ran (Airflow's "watcher" pattern).
        outcome = ReleaseOutcomeOperator(task_id="fail_run", trigger_rule=TriggerRule.NONE_SKIPPED,
                                         on_failure_callback=None, **common)
        main >> failed >> rollback >> ticket >> outcome
    return dag
