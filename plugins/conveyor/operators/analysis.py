"""Judge a wave (or the post-deploy watch) by comparing hosts on the new version with a baseline.

Canary: every production host already on the new version (this wave and the earlier ones).
Baseline: the production hosts still on the old version, scraped over the same window. When no
host is left on the old version (the last wave, the watch), the baseline is the pre-deploy
snapshot the plan took: each old process's counters over its lifetime.

The wait happens in the triggerer (:class:`~conveyor.triggers.analysis.CanaryAnalysisTrigger`), so
a bake window holds no worker slot. The judge (:func:`conveyor.analysis.judge`) is asked after
every scrape and may stop early; the window bounds the wait. ``fail`` raises
:class:`AnalysisFailed` (the release rolls back); ``inconclusive`` raises
:class:`AnalysisInconclusive`.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

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

    def execute(self, context: Context) -> Any:
        from conveyor.analysis import AnalysisSettings
        from conveyor.triggers.analysis import CanaryAnalysisTrigger

        plan = self.plan
        hosts = {h["name"]: h for h in plan["hosts"]}
        waves = plan["waves"]
        release_id = self.release_id(context)
        stage = self.stage or self.task_id
        if self.wave is None:
            canary_names, label = [n for w in waves for n in w], "watch"
        else:
            canary_names, label = [n for w in waves[: self.wave + 1] for n in w], f"wave-{self.wave + 1}"
        section, interval = self._settings()
        settings = AnalysisSettings.from_dict(section)
        if self.wave is not None and not waves[self.wave]:
            return {"label": label, "decision": "skipped", "reason": "empty wave"}
        if settings.window_s <= 0:
            return {"label": label, "decision": "skipped", "reason": "analysis disabled (window 0)"}
        live = [n for n in hosts if n not in canary_names]
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
                   kwargs={"label": label, "canary": canary_names, "baseline": live or "pre-deploy snapshot"},
                   timeout=timedelta(seconds=settings.window_s + 5 * interval + 120))

    def execute_complete(self, context: Context, event: dict[str, Any], label: str = "", canary=None,
                         baseline=None) -> dict[str, Any]:
        release_id = self.release_id(context)
        stage = self.stage or self.task_id
        if event.get("status") != "done":
            raise ConveyorError(f"{label}: analysis could not run: {event.get('message')}")
        verdict = event["verdict"]
        result = {"label": label, "canary": canary, "baseline": baseline, "elapsed_s": event.get("elapsed_s"),
                  **verdict}
        self.log.info("%s: %s after %ss: %s", label, verdict["decision"], event.get("elapsed_s"), verdict["reason"])
        if verdict["decision"] == "fail":
            self.ledger.upsert_stage(release_id, stage, status="running", detail=result)
            raise AnalysisFailed(f"{label}: {verdict['reason']}")
        if verdict["decision"] == "inconclusive":
            self.ledger.upsert_stage(release_id, stage, status="running", detail=result)
            raise AnalysisInconclusive(f"{label}: {verdict['reason']}")
        self.ledger.upsert_stage(release_id, stage, status="success", finished_at=utcnow(), detail=result)
        return result
