"""Feature-flag rollouts (``flag_<service>``): a flag goes on like a release goes out.

``validate`` checks the run's ``flag`` (declared in the service file), ``steps`` and who asked, and opens
the rollout's record in the ledger. With ``test_on_replica``, the replica gets production's version with
the flag on for everyone and the service's suites run against it (then the flag goes off there again).
QA signs off in Required Actions. Then each step turns the flag on for its share of production's users
(sticky by user id, so a growing share keeps its users) and the canary judge compares flag-on traffic
with flag-off traffic on the same hosts (the app labels its metrics with the variant: ``flag_rollout`` in
the service file names them); at 100% there is no flag-off traffic left, so the step is judged against
the flag-off counters read just before it. A failing step turns the flag off everywhere at once
(``flag_off``, on the failure path), files the ticket and fails the run. Every change is in the ledger's
``flag_changes`` (who, why, where, to what); setting a flag to what it already is changes nothing, so any
task can be rerun.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import AnalysisFailed, ConveyorError, InvalidInputError
from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.config import ServiceConfig
    from conveyor.flags import FlagStore

VALIDATE_TASK_ID = "validate"
PRODUCTION, REPLICA = "production", "replica"
ON, OFF = "on", "off"


def _plan(context: Context) -> dict[str, Any]:
    """What ``validate`` checked: the flag, the steps, whether the replica tests it."""
    plan = context["ti"].xcom_pull(task_ids=VALIDATE_TASK_ID)
    if not plan:
        raise ConveyorError("the flag rollout has no plan: the 'validate' task did not run (a task marked "
                            "success by hand checks nothing)")
    return plan


class _FlagOperator(ConveyorOperator):
    """What the rollout's tasks share: the flag store, and recording every change in the ledger."""

    def store(self) -> FlagStore:
        from conveyor.hooks.flags import flag_store

        return flag_store(self.service)

    def record(self, context: Context, flag: str, environment: str, step: str, *, enabled: bool, rollout: int,
               reason: str) -> None:
        self.ledger.upsert_flag_change(
            self.release_id(context), flag, environment, step, service=self.service.id, enabled=enabled,
            rollout=rollout, by=getattr(context["dag_run"], "triggering_user_name", None) or "the schedule",
            reason=reason, at=utcnow())


class FlagValidateOperator(_FlagOperator):
    """Check the run's params and who asked; open the rollout in the ledger. Returns the plan.

    :param max_steps: how many step groups the DAG has (``flag_rollout.steps`` in the service file).
    """

    def __init__(self, *, max_steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_steps = max_steps

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.flags import flag_name, rollout_steps
        from conveyor.operators.release import check_user

        with self.ledger_stage(context) as stage:
            params = context["params"] or {}
            service = self.service
            flag = flag_name(params.get("flag"))
            declared = [f.name for f in service.flags]
            if flag not in declared:
                raise InvalidInputError(f"flag {flag!r} is not declared in {service.path} (flags: "
                                        f"{', '.join(declared) or 'none'})")
            steps = rollout_steps(params.get("steps") or list(service.flag_rollout.steps), at_most=self.max_steps)
            if service.analysis.source.kind != "scrape":
                raise InvalidInputError(f"flag rollouts judge each host's own page: analysis.source.kind in "
                                        f"{service.path} is {service.analysis.source.kind!r}, not 'scrape'")
            check_user(service, context, emergency=False)  # release.allowed: who may roll a flag out
            test_on_replica = bool(params.get("test_on_replica", True))
            dag_run = context["dag_run"]
            self.ledger.upsert_release(
                self.release_id(context), service=service.id, version=f"flag {flag}", change_kind="flag",
                emergency=False, reason=f"turn {flag} on for {', '.join(f'{s}%' for s in steps)} of users",
                author=getattr(dag_run, "triggering_user_name", None), run_id=dag_run.run_id, dag_id=dag_run.dag_id,
                status="running", started_at=utcnow(), labels=["flag", flag])
            stage.detail = {"flag": flag, "steps": list(steps), "test_on_replica": test_on_replica}
            self.log.info("Rolling %s out in steps %s (replica test: %s)", flag, steps, test_on_replica)
        return stage.detail


class FlagSetOperator(_FlagOperator):
    """Turn the flag on in an environment: the replica (for everyone, or ``off`` again after its tests), or
    production at step ``step``'s share. Before production changes, the gate checks QA's sign-off (and the
    replica tests, when they ran) in the records. Skips a step the run does not have.

    :param environment: ``replica`` or ``production``.
    :param step: the step's index (production), or None (replica).
    :param enabled: False: turn the flag off (the replica after its tests).
    """

    def __init__(self, *, environment: str, step: int | None = None, enabled: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.environment = environment
        self.step = step
        self.enabled = enabled

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        plan = _plan(context)
        flag, steps = plan["flag"], plan["steps"]
        if self.step is not None and self.step >= len(steps):
            raise AirflowSkipException(f"this rollout has {len(steps)} step(s)")
        with self.ledger_stage(context) as stage:
            share = steps[self.step] if self.step is not None else 100
            label = f"step-{self.step + 1}" if self.step is not None else (REPLICA if self.enabled else "replica-off")
            if self.environment == PRODUCTION:
                self._gate(context, plan)
            snapshot = self._off_snapshot(plan) if self.environment == PRODUCTION and share == 100 else {}
            state = self.store().set(flag, self.enabled, share, environment=self.environment)
            self.record(context, flag, self.environment, label, enabled=self.enabled, rollout=share,
                        reason=f"{label}: {share}% of users" if self.enabled else "after the replica's tests")
            self.log.info("%s in %s: %s (%s%% of users)", flag, self.environment, "on" if state.enabled else "off",
                          state.rollout)
            stage.detail = {"flag": flag, "environment": self.environment, "step": label, "enabled": state.enabled,
                            "rollout": state.rollout}
        return {**stage.detail, "off_snapshot": snapshot}

    def _gate(self, context: Context, plan: dict[str, Any]) -> None:
        """QA's sign-off (and the replica's tests) from the ledger and Airflow's records, not task states."""
        from conveyor.operators.signoff import verify_signoff
        from conveyor.signoff_check import SignoffPolicy

        qa = SignoffPolicy.of(self.service)[0]
        dag_run = context["dag_run"]
        verify_signoff(self, self.ledger.get_release(self.release_id(context)), [qa], dag_run.dag_id, dag_run.run_id,
                       tests_stage="tests" if plan["test_on_replica"] else None)

    def _off_snapshot(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Each production host's flag-off counters now: the baseline of the 100% step (none is left after)."""
        from conveyor.hooks.metrics import flag_target
        from conveyor.inventory import resolve_hosts

        source, labels = _source(self.service), _labels(self.service, plan["flag"], OFF)
        hosts = resolve_hosts(self.service, PRODUCTION)
        looked = source.snapshot_targets({h.name: flag_target(h.metrics_url, labels) for h in hosts})
        return {name: scrape for name, scrape in looked.items() if scrape}


def _source_spec(service: ServiceConfig) -> dict[str, Any]:
    """The service's scrape settings, reading the flag-labelled families (``flag_rollout``)."""
    rollout = service.flag_rollout
    return {**service.analysis.source.model_dump(mode="json"), "kind": "scrape",
            "metrics": {"requests": rollout.requests_metric, "latency": rollout.latency_metric}}


def _source(service: ServiceConfig):
    from conveyor.hooks.metrics import metric_source

    return metric_source(_source_spec(service))


def _labels(service: ServiceConfig, flag: str, variant: str) -> dict[str, str]:
    return {service.flag_rollout.flag_label: flag, service.flag_rollout.variant_label: variant}


class FlagAnalysisOperator(_FlagOperator):
    """Judge step ``step``: flag-on against flag-off traffic on every production host (the canary judge, the
    service's ``analysis`` settings, in the triggerer). ``fail`` fails the task (the flag goes off
    everywhere); ``inconclusive`` (too little flag-on traffic at a small share) goes on to the next step,
    which carries more.

    :param step: the step's index.
    :param set_task_id: the step's ``set`` task (its flag-off snapshot is the 100% step's baseline).
    """

    def __init__(self, *, step: int, set_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.set_task_id = set_task_id

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from conveyor.analysis.model import synthetic_baseline
        from conveyor.hooks.metrics import flag_target
        from conveyor.inventory import resolve_hosts
        from conveyor.triggers.analysis import CanaryAnalysisTrigger

        plan = _plan(context)
        if self.step >= len(plan["steps"]):
            raise AirflowSkipException(f"this rollout has {len(plan['steps'])} step(s)")
        flag, share = plan["flag"], plan["steps"][self.step]
        settings = self.service.judge()
        with self.ledger_stage(context):
            hosts = resolve_hosts(self.service, PRODUCTION)
            on, off = _labels(self.service, flag, ON), _labels(self.service, flag, OFF)
            canary = {f"{h.name}/{ON}": flag_target(h.metrics_url, on) for h in hosts}
            baseline = {f"{h.name}/{OFF}": flag_target(h.metrics_url, off) for h in hosts} if share < 100 else {}
            snapshot = (context["ti"].xcom_pull(task_ids=self.set_task_id) or {}).get("off_snapshot") or {}
            fixed = {f"{n}/{OFF}": synthetic_baseline(s) for n, s in snapshot.items()} if share == 100 else {}
            self.log.info("step %d: %s on for %d%% of users; judging flag-on against %s (window %gs)", self.step + 1,
                          flag, share, "flag-off traffic" if share < 100 else "the flag-off counters before 100%",
                          settings.window_s)
            trigger = CanaryAnalysisTrigger(
                label=f"step-{self.step + 1}", canary=canary, baseline=baseline, fixed_baseline=fixed,
                settings=settings.to_dict(), interval_s=self.service.analysis.interval_s, started_at=time.time(),
                source=_source_spec(self.service),
            )
            self.defer(trigger=trigger, method_name="execute_complete",
                       timeout=timedelta(seconds=settings.window_s + 5 * self.service.analysis.interval_s + 120))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        plan = _plan(context)
        label = f"step-{self.step + 1}"
        with self.ledger_stage(context, resumed=True) as stage:
            if event.get("status") != "done":
                raise ConveyorError(f"{label}: analysis could not run: {event.get('message')}")
            verdict = dict(event["verdict"])
            share = plan["steps"][self.step]
            stage.detail = {"label": label, "flag": plan["flag"], "share": share, "canary": f"{plan['flag']} on",
                            "baseline": f"{plan['flag']} off", "elapsed_s": event.get("elapsed_s"),
                            "source": event.get("source"), "source_error": event.get("source_error"), **verdict}
            self.log.info("%s (%d%%): %s: %s", label, share, verdict["decision"], verdict["reason"])
            if verdict["decision"] == "fail":
                raise AnalysisFailed(f"{label} ({plan['flag']} on for {share}% of users): {verdict['reason']}")
            if verdict["decision"] == "inconclusive":
                self.log.warning("%s inconclusive (%s): going on to the next step", label, verdict["reason"])
                stage.status = "inconclusive"
        return stage.detail


class FlagOffOperator(_FlagOperator):
    """The failure path: turn the flag off everywhere at once (production and the replica). Returns an
    account shaped like a rollback's, which the ticket and the run's last message read."""

    ui_color = "#fde2c8"
    ledger_required = False  # the flag goes off whatever the ledger does

    def execute(self, context: Context) -> dict[str, Any]:
        plan = context["ti"].xcom_pull(task_ids=VALIDATE_TASK_ID)
        if not plan:
            self.log.info("The rollout never started (validate did not pass): no flag to turn off")
            return {"status": "nothing to roll back", "rolled_back": [], "touched": [], "failed": {}}
        flag = plan["flag"]
        store = self.store()
        done, failed = [], {}
        for environment in (PRODUCTION, REPLICA):
            try:
                store.set(flag, False, 0, environment=environment)
                done.append(environment)
            except Exception as exc:  # the other environment still goes off; the run's message names this one
                failed[environment] = f"{type(exc).__name__}: {exc}"
                continue
            try:
                self.record(context, flag, environment, "off", enabled=False, rollout=0,
                            reason="turned off: the rollout failed")
            except Exception as exc:  # the flag is off; the record is what is missing
                self.log.error("Could not record %s off in %s: %s: %s", flag, environment, type(exc).__name__, exc)
        self.log.info("%s turned off in %s", flag, ", ".join(done) or "no environment")
        result = {"status": f"flag {flag} turned off" if not failed else f"flag {flag} could not be turned off",
                  "rolled_back": done, "touched": [], "failed": failed}
        if failed:
            raise ConveyorError(f"{flag} could not be turned off in {', '.join(failed)}: {failed}")
        return result


class FlagFinalizeOperator(_FlagOperator):
    """The rollout reached its last step: the flag's state in production, and the record closed."""

    def execute(self, context: Context) -> dict[str, Any]:
        plan = _plan(context)
        with self.ledger_stage(context) as stage:
            state = self.store().get(plan["flag"], environment=PRODUCTION)
            want = plan["steps"][-1]
            if not state.enabled or state.rollout != want:
                raise ConveyorError(f"{plan['flag']} is {'on' if state.enabled else 'off'} for {state.rollout}% of "
                                    f"production's users, not on for {want}% as the rollout left it")
            now = utcnow()
            self.ledger.upsert_release(self.release_id(context), status="success", finished_at=now)
            stage.detail = {"flag": plan["flag"], "enabled": True, "rollout": state.rollout}
        return stage.detail


__all__ = ["FlagAnalysisOperator", "FlagFinalizeOperator", "FlagOffOperator", "FlagSetOperator",
           "FlagValidateOperator"]
