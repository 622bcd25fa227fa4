"""Judge a wave (or the post-deploy watch) by comparing hosts on the new version with a baseline.

Canary: every production host already on the new version (this wave and the earlier ones).
Baseline: the production hosts still on the old version, scraped over the same window. When no
host is left on the old version (the last wave, the watch), the baseline is the pre-deploy
snapshot the plan took: each old process's counters over its lifetime.

The wait happens in the triggerer (:class:`~conveyor.triggers.analysis.CanaryAnalysisTrigger`), so
a bake window holds no worker slot. The judge (:func:`conveyor.analysis.judge`) is asked after
every scrape and may stop early; the window bounds the wait. ``fail`` raises
:class:`AnalysisFailed` (the release rolls back); ``inconclusive`` returns, and the
:class:`InconclusiveDecisionOperator` after it asks a human in Required Actions.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

from conveyor.exceptions import AnalysisFailed, AnalysisInconclusive, ConveyorError
from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context


def synthetic_baseline(pre: dict[str, Any]) -> list[dict[str, Any]]:
    """A pre-deploy scrape as a two-point series: zero at process start, the counters at the scrape."""
    start = pre.get("start_time")
    if not start or start >= pre["t"]:
        start = pre["t"] - 1.0
    zero = {**pre, "t": start, "requests": {k: 0.0 for k in pre["requests"]},
            "latency_buckets": [[b, 0.0] for b, _ in pre["latency_buckets"]], "latency_sum": 0.0,
            "latency_count": 0.0}
    return [zero, pre]


class CanaryAnalysisOperator(ConveyorOperator):
    """Compare canary hosts against baseline hosts until the judge decides or the window ends.

    :param plan: the wave plan (templated, ``plan.output``).
    :param wave: index of the wave just deployed, or ``None`` for the post-deploy watch.
    """

    template_fields = ("plan",)

    def __init__(self, *, plan: Any, wave: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.wave = wave

    def _settings(self) -> tuple[dict[str, Any], float]:
        section = dict(self.service["analysis"])
        if self.wave is None:
            section.update(self.service["watch"])
        interval = float(section.pop("interval_s", 10))
        return section, interval

    def _scope(self) -> tuple[str, list[str], list[str]]:
        """This analysis' label, its canary hosts (every wave so far) and the live baseline (the rest)."""
        waves = self.plan["waves"]
        if self.wave is None:
            label, canary = "watch", [n for w in waves for n in w]
        else:
            label, canary = f"wave-{self.wave + 1}", [n for w in waves[: self.wave + 1] for n in w]
        return label, canary, [h["name"] for h in self.plan["hosts"] if h["name"] not in canary]

    def execute(self, context: Context) -> Any:
        from conveyor.analysis import AnalysisSettings
        from conveyor.triggers.analysis import CanaryAnalysisTrigger

        plan = self.plan
        hosts = {h["name"]: h for h in plan["hosts"]}
        waves = plan["waves"]
        release_id = self.release_id(context)
        stage = self.stage or self.task_id
        label, canary_names, live = self._scope()
        section, interval = self._settings()
        settings = AnalysisSettings.from_dict(section)
        if self.wave is not None and not waves[self.wave]:
            return {"label": label, "decision": "skipped", "reason": "empty wave"}
        if settings.window_s <= 0:
            return {"label": label, "decision": "skipped", "reason": "analysis disabled (window 0)"}
        fixed = {} if live else {n: synthetic_baseline(plan["pre_scrapes"][n]) for n in canary_names
                                 if plan["pre_scrapes"].get(n)}
        self.log.info("%s: canary %s vs baseline %s (window %gs, scrape every %gs)", label, canary_names,
                      live or f"pre-deploy snapshot of {sorted(fixed)}", settings.window_s, interval)
        self.ledger.upsert_stage(release_id, stage, status="running", started_at=utcnow(), finished_at=None,
                                 error=None)
        trigger = CanaryAnalysisTrigger(
            label=label, canary={n: hosts[n]["metrics_url"] for n in canary_names},
            baseline={n: hosts[n]["metrics_url"] for n in live}, fixed_baseline=fixed,
            settings=settings.to_dict(), interval_s=interval, started_at=time.time(),
        )
        self.defer(trigger=trigger, method_name="execute_complete",
                   timeout=timedelta(seconds=settings.window_s + 5 * interval + 120))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        release_id = self.release_id(context)
        stage = self.stage or self.task_id
        label, canary, live = self._scope()
        baseline = live or "pre-deploy snapshot"
        if event.get("status") != "done":
            raise ConveyorError(f"{label}: analysis could not run: {event.get('message')}")
        verdict = event["verdict"]
        result = {"label": label, "canary": canary, "baseline": baseline, "elapsed_s": event.get("elapsed_s"),
                  **verdict}
        self.log.info("%s: %s after %ss: %s", label, verdict["decision"], event.get("elapsed_s"), verdict["reason"])
        if verdict["decision"] == "fail":
            self.ledger.upsert_stage(release_id, stage, status="running", detail=result)
            raise AnalysisFailed(f"{label}: {verdict['reason']}")
        if verdict["decision"] == "inconclusive":  # the decision task after this one asks a human
            self.ledger.upsert_stage(release_id, stage, status="inconclusive", finished_at=utcnow(), detail=result)
            self.log.warning("%s: inconclusive; asking a human to continue or roll back", label)
            return result
        self.ledger.upsert_stage(release_id, stage, status="success", finished_at=utcnow(), detail=result)
        return result


class InconclusiveDecisionOperator(HITLOperator):
    """Ask a human what to do when the analysis could not decide: continue, or roll back.

    Does nothing (and asks nobody) when the analysis before it passed. When it was inconclusive
    (too little traffic, too noisy), it waits in **Required Actions** with the evidence; "Roll back"
    (or no answer within the timeout) fails the task, which rolls the release back.

    :param analysis_task_id: the analysis task whose verdict this follows.
    :param assigned: user ids who may decide (empty: anyone allowed to act on the DAG).
    :param timeout: how long to wait before rolling back.
    """

    template_fields = ("subject", "body")
    ui_color = "#fff3c4"
    CONTINUE = "Continue"
    ROLL_BACK = "Roll back"

    def __init__(self, *, analysis_task_id: str, service_id: str, assigned: list[str], timeout: timedelta,
                 **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not this form
        super().__init__(
            options=[self.CONTINUE, self.ROLL_BACK], defaults=[self.ROLL_BACK], multiple=False,
            response_timeout=timeout, assigned_users=[{"id": u, "name": u} for u in assigned] or None,
            subject=f"Canary analysis inconclusive: continue or roll back? ({service_id})",
            body=(
                "The analysis of **{{ ti.xcom_pull(task_ids='" + analysis_task_id + "')['label'] }}** could not "
                "decide: {{ ti.xcom_pull(task_ids='" + analysis_task_id + "')['reason'] }}\n\n"
                "Canary: `{{ ti.xcom_pull(task_ids='" + analysis_task_id + "')['canary'] }}`; baseline: "
                "`{{ ti.xcom_pull(task_ids='" + analysis_task_id + "')['baseline'] }}`.\n\n"
                "**Continue** deploys on; **Roll back** (the default when nobody answers) returns every "
                "touched host to its previous version."
            ),
            **kwargs,
        )
        self.analysis_task_id = analysis_task_id
        self.service_id = service_id

    def execute(self, context: Context):
        verdict = context["ti"].xcom_pull(task_ids=self.analysis_task_id) or {}
        if verdict.get("decision") != "inconclusive":
            self.log.info("Analysis %s: %s; no decision needed", verdict.get("label"), verdict.get("decision"))
            return {"decision": verdict.get("decision"), "asked": False}
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:
            if event.get("error_type") == "timeout":
                raise AnalysisInconclusive("analysis inconclusive and nobody decided in time: rolling back")
            raise ConveyorError(f"decision failed: {event.get('error')}")
        result = super().execute_complete(context=context, event=event)
        from conveyor.operators.signoff import responder_id

        who = responder_id(event.get("responded_by_user"))
        if result["chosen_options"] == [self.ROLL_BACK]:
            raise AnalysisInconclusive(f"analysis inconclusive; {who or 'a human'} chose to roll back")
        self.log.info("Analysis inconclusive; %s chose to continue", who)
        return {"decision": "continue", "asked": True, "by": who}
