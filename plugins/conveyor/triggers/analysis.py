"""The canary analysis wait, in the triggerer: scrape, judge, repeat, emit one event.

The bake window can be long (minutes); waiting in the triggerer holds no worker slot. The trigger
emits exactly one event: ``{"status": "done", "verdict": {...}}`` when the judge decides (pass,
fail, inconclusive), or ``{"status": "error", "message": ...}``: errors become events, so the
operator decides what they mean. If the triggerer restarts, the trigger starts collecting again
but keeps ``started_at``, so the window still bounds the whole wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class CanaryAnalysisTrigger(BaseTrigger):
    """Scrape canary and baseline hosts every ``interval_s`` and ask the judge until it decides.

    :param label: ``wave-N`` or ``watch``, for messages.
    :param canary: host name -> metrics URL of hosts on the new version.
    :param baseline: host name -> metrics URL of hosts still on the old version (may be empty).
    :param fixed_baseline: host name -> pre-recorded scrapes (JSON form), used when ``baseline`` is empty.
    :param settings: :class:`conveyor.analysis.AnalysisSettings` as a dict.
    :param interval_s: seconds between scrapes.
    :param started_at: epoch seconds the analysis began (kept across triggerer restarts).
    """

    def __init__(self, *, label: str, canary: dict[str, str], baseline: dict[str, str],
                 fixed_baseline: dict[str, list[dict[str, Any]]], settings: dict[str, Any], interval_s: float,
                 started_at: float, requests_metric: str = "shop_http_requests_total",
                 latency_metric: str = "shop_http_request_duration_seconds", scrape_timeout: float = 3.0):
        super().__init__()
        self.label = label
        self.canary = canary
        self.baseline = baseline
        self.fixed_baseline = fixed_baseline
        self.settings = settings
        self.interval_s = interval_s
        self.started_at = started_at
        self.requests_metric = requests_metric
        self.latency_metric = latency_metric
        self.scrape_timeout = scrape_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "label": self.label, "canary": self.canary, "baseline": self.baseline,
                "fixed_baseline": self.fixed_baseline, "settings": self.settings, "interval_s": self.interval_s,
                "started_at": self.started_at, "requests_metric": self.requests_metric,
                "latency_metric": self.latency_metric, "scrape_timeout": self.scrape_timeout,
            },
        )

    async def _scrape(self, client, url: str):
        from conveyor.analysis import parse_prometheus

        try:
            resp = await client.get(url, timeout=self.scrape_timeout)
            if resp.status_code != 200:
                return None
            scrape = parse_prometheus(resp.text, time.time(), requests_metric=self.requests_metric,
                                      latency_metric=self.latency_metric)
            if not scrape.usable:
                self.log.info("%s: %s answered no usable request counters (no data)", self.label, url)
                return None
            return scrape
        except Exception as e:  # a host that does not answer is missing data, not an error
            self.log.info("%s: no metrics from %s: %s", self.label, url, e)
            return None

    async def run(self):
        import httpx

        from conveyor.analysis import AnalysisSettings, Scrape, judge

        try:
            settings = AnalysisSettings.from_dict(self.settings)
            fixed = {n: [Scrape.from_dict(s) for s in series] for n, series in self.fixed_baseline.items()}
            urls = {**self.canary, **self.baseline}
            series: dict[str, list] = {n: [] for n in urls}
            async with httpx.AsyncClient() as client:
                while True:
                    names = list(urls)
                    results = await asyncio.gather(*(self._scrape(client, urls[n]) for n in names))
                    for name, scrape in zip(names, results, strict=True):
                        if scrape is not None:
                            series[name].append(scrape)
                    elapsed = time.time() - self.started_at
                    canary = {n: series[n] for n in self.canary}
                    baseline = {n: series[n] for n in self.baseline} if self.baseline else fixed
                    verdict = await asyncio.to_thread(judge, canary, baseline, settings, elapsed_s=elapsed)
                    self.log.info("%s t=%.0fs: %s: %s", self.label, elapsed, verdict.decision, verdict.reason)
                    if verdict.decision != "continue":
                        yield TriggerEvent({"status": "done", "elapsed_s": round(elapsed, 1),
                                            "verdict": verdict.to_dict()})
                        return
                    await asyncio.sleep(max(0.05, min(self.interval_s, settings.window_s - elapsed + 0.05)))
        except Exception as e:
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}"})
