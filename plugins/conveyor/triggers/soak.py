"""The soak watch, in the triggerer: health checks and the canary judge over the whole soak.

A soak lasts days; waiting in the triggerer holds no worker slot. Every ``interval_s`` the trigger
probes each soak host's health URL and reads its metrics; the judge (the ``watch`` settings) compares
the soak hosts with the pre-deploy snapshot window after window (each window a fresh sequential test,
so a week is judged in bounded memory). The false-incident rate over the whole soak stays at the
judge's ``alpha``: each window gets ``alpha / windows`` (Bonferroni over the windows of the minimum).

It emits exactly one event:

* ``{"status": "passed", ...}`` once ``min_s`` has passed since the soak started with no incident;
* ``{"status": "incident", "kind": "health" | "version" | "judge", "reason": ..., ...}`` at the first
  incident: a host that stayed unhealthy for ``unhealthy_for_s`` (shorter blips are logged and
  counted), a host answering another version (the build no longer runs there), or a window the judge
  failed;
* ``{"status": "error", "message": ...}`` when the watch itself cannot run.

If the triggerer restarts, the trigger starts a new window but keeps ``started_at``: the soak's clock
is the build's time on the cluster, not the watch's.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

_KEPT_WINDOWS = 20  # window verdicts carried in the event (the newest)


def window_settings(settings: dict[str, Any], *, window_s: float, min_s: float) -> dict[str, Any]:
    """The judge's settings for one soak window: the window's length, and the soak's ``alpha`` split
    evenly over the windows of the minimum."""
    window = max(1.0, min(window_s, min_s))
    windows = max(1, math.ceil(min_s / window))
    return {**settings, "window_s": window, "alpha": float(settings.get("alpha", 0.05)) / windows}


class SoakTrigger(BaseTrigger):
    """Watch the soak hosts until the soak's minimum has passed or an incident happens.

    :param version: the build the soak hosts must run.
    :param hosts: host name -> :class:`~conveyor.hosts.Host` as a dict (health probes).
    :param targets: host name -> the host's target in the metric source.
    :param fixed_baseline: host name -> the pre-deploy scrapes (JSON form) the judge compares with.
    :param settings: the judge's settings for one window (:func:`window_settings`).
    :param interval_s: seconds between checks.
    :param started_at: epoch seconds the soak began (every soak host ran the build).
    :param min_s: the soak's minimum, seconds.
    :param unhealthy_for_s: how long a host may fail its health checks before it is an incident.
    :param probe_timeout_s: one health probe's bound.
    :param judge: run the judge; ``health``: run the health checks.
    :param source: the service's ``analysis.source`` section as JSON.
    :param start_times: host name -> when the deploy switched it (sources without a process start).
    """

    def __init__(self, *, version: str, hosts: dict[str, dict[str, Any]], targets: dict[str, str],
                 fixed_baseline: dict[str, list[dict[str, Any]]], settings: dict[str, Any], interval_s: float,
                 started_at: float, min_s: float, unhealthy_for_s: float, probe_timeout_s: float = 5.0,
                 judge: bool = True, health: bool = True, source: dict[str, Any] | None = None,
                 start_times: dict[str, float] | None = None):
        super().__init__()
        self.version = version
        self.hosts = hosts
        self.targets = targets
        self.fixed_baseline = fixed_baseline
        self.settings = settings
        self.interval_s = interval_s
        self.started_at = started_at
        self.min_s = min_s
        self.unhealthy_for_s = unhealthy_for_s
        self.probe_timeout_s = probe_timeout_s
        self.judge = judge
        self.health = health
        self.source = source or {"kind": "scrape"}
        self.start_times = start_times or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "version": self.version, "hosts": self.hosts, "targets": self.targets,
                "fixed_baseline": self.fixed_baseline, "settings": self.settings, "interval_s": self.interval_s,
                "started_at": self.started_at, "min_s": self.min_s, "unhealthy_for_s": self.unhealthy_for_s,
                "probe_timeout_s": self.probe_timeout_s, "judge": self.judge, "health": self.health,
                "source": self.source, "start_times": self.start_times,
            },
        )

    async def _probe(self, unhealthy_since: dict[str, float], blips: dict[str, int]) -> dict[str, Any] | None:
        """One health round; an incident event when a host has been unhealthy too long or left the build."""
        from conveyor.health import probe_health
        from conveyor.hosts import Host

        names = sorted(self.hosts)
        answers = await asyncio.gather(*(asyncio.to_thread(probe_health, Host.from_dict(self.hosts[n]),
                                                           self.probe_timeout_s) for n in names))
        now = time.time()
        for name, answer in zip(names, answers, strict=True):
            if answer["ok"] and answer["version"] not in (None, self.version):
                return {"kind": "version", "host": name,
                        "reason": f"{name} runs {answer['version']}, not {self.version}: the build no longer runs "
                                  "on the whole soak cluster"}
            if answer["ok"]:
                if name in unhealthy_since:
                    self.log.info("soak: %s healthy again after %.0fs", name, now - unhealthy_since.pop(name))
                continue
            since = unhealthy_since.setdefault(name, now)
            if since == now:
                blips[name] = blips.get(name, 0) + 1
                self.log.warning("soak: %s unhealthy: %s", name, answer["error"])
            if now - since >= self.unhealthy_for_s:
                return {"kind": "health", "host": name,
                        "reason": f"{name} unhealthy for {now - since:.0f}s (allowed: {self.unhealthy_for_s:g}s): "
                                  f"{answer['error']}"}
        return None

    async def run(self):
        from conveyor.analysis import AnalysisSettings, Scrape, judge
        from conveyor.hooks.metrics import metric_source
        from conveyor.triggers.analysis import collect

        try:
            settings = AnalysisSettings.from_dict(self.settings)
            fixed = {n: [Scrape.from_dict(s) for s in series] for n, series in self.fixed_baseline.items()}
            source = metric_source(self.source, start_times=self.start_times) if self.judge else None
            unhealthy_since: dict[str, float] = {}
            blips: dict[str, int] = {}
            windows: list[dict[str, Any]] = []
            judged = 0
            window_start = time.time()
            series: dict[str, list] = {n: [] for n in self.targets}
            connected = False
            while True:
                incident = await self._probe(unhealthy_since, blips) if self.health else None
                now = time.time()
                if incident is None and source is not None:
                    connected = await collect(source, self.targets, series, since=window_start, connected=connected)
                    verdict = await asyncio.to_thread(judge, series, fixed, settings, elapsed_s=now - window_start)
                    if verdict.decision == "fail":
                        incident = {"kind": "judge", "host": None, "verdict": verdict.to_dict(),
                                    "reason": f"the judge failed window {judged + 1} against the pre-deploy "
                                              f"snapshot: {verdict.reason}"}
                    elif verdict.decision != "continue":  # the window is over: the next starts afresh
                        judged += 1
                        windows = [*windows, {"window": judged, "decision": verdict.decision,
                                              "reason": verdict.reason, "end": round(now, 1)}][-_KEPT_WINDOWS:]
                        self.log.info("soak window %d: %s: %s", judged, verdict.decision, verdict.reason)
                        window_start = now  # the last scrape of each host opens the next window
                        series = {n: s[-1:] for n, s in series.items()}
                elapsed = now - self.started_at
                summary = {"elapsed_s": round(elapsed, 1), "windows_judged": judged, "windows": windows,
                           "health_blips": blips, "source": source.kind if source else None,
                           "source_error": source.last_error if source else None}
                if incident is not None:
                    yield TriggerEvent({"status": "incident", **incident, **summary})
                    return
                if elapsed >= self.min_s:
                    yield TriggerEvent({"status": "passed", **summary})
                    return
                await asyncio.sleep(max(0.05, min(self.interval_s, self.min_s - elapsed + 0.05)))
        except Exception as e:
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}"})
