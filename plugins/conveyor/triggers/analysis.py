"""The canary analysis wait, in the triggerer: read the metric source, judge, repeat, emit one event.

The bake window can be long (minutes); waiting in the triggerer holds no worker slot. The trigger
emits exactly one event: ``{"status": "done", "verdict": {...}}`` when the judge decides (pass,
fail, inconclusive; with the source's kind and its last error, which names why data was missing),
or ``{"status": "error", "message": ...}``: errors become events, so the
operator decides what they mean. If the triggerer restarts, the trigger starts collecting again
but keeps ``started_at``, so the window still bounds the whole wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from conveyor.hooks.metrics import MetricSource


async def collect(source: MetricSource, targets: dict[str, str], series: dict[str, list], *, since: float,
                  connected: bool) -> bool:
    """One look at ``source``: each host's scrape is appended to its ``series``; returns whether it is connected.

    Connects first when not yet connected: a connection that cannot be had now is no data now (the
    source records why), tried again at the next look.
    """
    if not connected:
        try:
            await source.aconnect()
            connected = True
        except Exception as e:
            source.fail(f"cannot use the connection: {type(e).__name__}: {e}")
    if connected:
        for name, scrape in (await source.look(targets, since=since)).items():
            if scrape is not None and name in series:
                series[name].append(scrape)
    return connected


class CanaryAnalysisTrigger(BaseTrigger):
    """Read canary and baseline hosts' metrics every ``interval_s`` and ask the judge until it decides.

    :param label: ``wave-N`` or ``watch``, for messages.
    :param canary: host name -> the host's target in the source (metrics URL, Prometheus label value,
        CloudWatch dimension value) of hosts on the new version.
    :param baseline: the same for hosts still on the old version (may be empty).
    :param fixed_baseline: host name -> pre-recorded scrapes (JSON form), used when ``baseline`` is empty.
    :param settings: :class:`conveyor.analysis.AnalysisSettings` as a dict.
    :param interval_s: seconds between looks.
    :param started_at: epoch seconds the analysis began (kept across triggerer restarts).
    :param source: the service's ``analysis.source`` section as JSON (None: scrape with the default
        names). Settings only: the source resolves its connection in the triggerer.
    :param start_times: host name -> when the deploy switched it (for sources without a process start).
    :param history: host name -> that host's pre-deploy series (JSON form: the plan's snapshot as a
        two-point series), for canary and live baseline hosts: the judge's difference in differences.
    :param memory: what the service's past releases measured about its fleet
        (:class:`conveyor.analysis.FleetMemory` as a dict; None: nothing yet).
    :param requests_metric: older triggers' names, read when ``source`` is None.
    """

    def __init__(self, *, label: str, canary: dict[str, str], baseline: dict[str, str],
                 fixed_baseline: dict[str, list[dict[str, Any]]], settings: dict[str, Any], interval_s: float,
                 started_at: float, source: dict[str, Any] | None = None, start_times: dict[str, float] | None = None,
                 requests_metric: str | None = None, latency_metric: str | None = None,
                 scrape_timeout: float | None = None, history: dict[str, list[dict[str, Any]]] | None = None,
                 memory: dict[str, Any] | None = None):
        super().__init__()
        self.label = label
        self.canary = canary
        self.baseline = baseline
        self.fixed_baseline = fixed_baseline
        self.settings = settings
        self.interval_s = interval_s
        self.started_at = started_at
        if source is None:  # a trigger stored by an older Conveyor: its scrape settings
            metrics = {k: v for k, v in (("requests", requests_metric), ("latency", latency_metric)) if v}
            source = {"kind": "scrape", **({"metrics": metrics} if metrics else {}),
                      **({"timeout_s": float(scrape_timeout)} if scrape_timeout else {})}
        self.source = source
        self.start_times = start_times or {}
        self.history = history or {}
        self.memory = memory or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "label": self.label, "canary": self.canary, "baseline": self.baseline,
                "fixed_baseline": self.fixed_baseline, "settings": self.settings, "interval_s": self.interval_s,
                "started_at": self.started_at, "source": self.source, "start_times": self.start_times,
                "history": self.history, "memory": self.memory,
            },
        )

    async def run(self):
        from conveyor.analysis import AnalysisSettings, FleetMemory, Scrape, judge
        from conveyor.hooks.metrics import metric_source

        source = None
        try:
            settings = AnalysisSettings.from_dict(self.settings)
            fixed = {n: [Scrape.from_dict(s) for s in series] for n, series in self.fixed_baseline.items()}
            history = {n: [Scrape.from_dict(s) for s in series] for n, series in self.history.items()}
            memory = FleetMemory.from_dict(self.memory)
            source = metric_source(self.source, start_times=self.start_times)
            targets = {**self.canary, **self.baseline}
            series: dict[str, list] = {n: [] for n in targets}
            connected = False
            while True:
                connected = await collect(source, targets, series, since=self.started_at, connected=connected)
                elapsed = time.time() - self.started_at
                canary = {n: series[n] for n in self.canary}
                baseline = {n: series[n] for n in self.baseline} if self.baseline else fixed
                verdict = await asyncio.to_thread(judge, canary, baseline, settings, elapsed_s=elapsed,
                                                  history=history, memory=memory)
                self.log.info("%s t=%.0fs: %s: %s", self.label, elapsed, verdict.decision, verdict.reason)
                if verdict.decision != "continue":
                    yield TriggerEvent({"status": "done", "elapsed_s": round(elapsed, 1),
                                        "verdict": verdict.to_dict(), "source": source.kind,
                                        "source_error": source.last_error})
                    return
                await asyncio.sleep(max(0.05, min(self.interval_s, settings.window_s - elapsed + 0.05)))
        except Exception as e:
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}",
                                "source": source.kind if source is not None else None})
