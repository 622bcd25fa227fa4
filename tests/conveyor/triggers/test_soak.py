"""The soak watch trigger: real HTTP scrapes and health probes, judged window by window against the
pre-deploy snapshot; one event: passed at the minimum, or the first incident."""

from __future__ import annotations

import importlib
import time

from conveyor.analysis import AnalysisSettings
from conveyor.analysis.model import synthetic_baseline
from conveyor.triggers.soak import SoakTrigger, window_settings
from tests.conveyor.hooks.metrics_support import BUCKETS, SHARES
from tests.conveyor.triggers.test_analysis import MetricsServer, first_event

CLOSED = "http://127.0.0.1:9/health"  # the discard port: nothing listens there


def snapshot(requests: int = 100_000, errors: int = 0) -> dict:
    """A pre-deploy scrape (JSON form) of a healthy old version: long-lived, no errors."""
    now = time.time()
    return {"t": now - 5, "requests": {"200": float(requests - errors), "500": float(errors)},
            "latency_buckets": [[b, requests * s] for b, s in zip(BUCKETS, SHARES, strict=True)] + [["+Inf", requests]],
            "latency_sum": requests * 0.06, "latency_count": float(requests), "start_time": now - 86_400}


def soak_trigger(server: MetricsServer | None, *, min_s: float, window_s: float, judge: bool = True,
                 health_url: str | None = None, unhealthy_for_s: float = 30.0) -> SoakTrigger:
    settings = AnalysisSettings(window_s=window_s, min_requests=100, min_fail_requests=50, warmup=0).to_dict()
    return SoakTrigger(
        version="v2", hosts={"dev-1": {"name": "dev-1", "address": "127.0.0.1", "environment": "soak",
                                       "health_url": health_url or CLOSED,
                                       "metrics_url": server.url("dev-1") if server else CLOSED}},
        targets={"dev-1": server.url("dev-1") if server else CLOSED},
        fixed_baseline={"dev-1": synthetic_baseline(snapshot())},
        settings=window_settings(settings, window_s=window_s, min_s=min_s), interval_s=0.2, started_at=time.time(),
        min_s=min_s, unhealthy_for_s=unhealthy_for_s, probe_timeout_s=1.0, judge=judge, health=health_url is not None,
    )


def test_the_alpha_is_split_over_the_windows_of_the_minimum():
    assert window_settings({"alpha": 0.05}, window_s=3600, min_s=7 * 86400) == {"alpha": 0.05 / 168,
                                                                               "window_s": 3600}
    # a window longer than the soak is the soak
    assert window_settings({"alpha": 0.05}, window_s=3600, min_s=600) == {"alpha": 0.05, "window_s": 600}


def test_a_build_like_its_snapshot_passes_at_the_minimum_window_after_window():
    with MetricsServer({"dev-1": 0.0}) as server:
        event = first_event(soak_trigger(server, min_s=3.0, window_s=1.0))
    assert event["status"] == "passed", event
    assert event["elapsed_s"] >= 3.0 and event["windows_judged"] >= 2
    assert {w["decision"] for w in event["windows"]} <= {"pass", "inconclusive"}


def test_a_build_erring_more_than_its_snapshot_is_an_incident_of_the_judge():
    with MetricsServer({"dev-1": 0.2}) as server:
        event = first_event(soak_trigger(server, min_s=60.0, window_s=2.0))
    assert event["status"] == "incident" and event["kind"] == "judge", event
    assert event["reason"].startswith("the judge failed window 1 against the pre-deploy snapshot")
    assert event["verdict"]["decision"] == "fail" and event["elapsed_s"] < 60


def test_a_host_unhealthy_longer_than_allowed_is_an_incident():
    event = first_event(soak_trigger(None, min_s=60.0, window_s=10.0, judge=False, health_url=CLOSED,
                                     unhealthy_for_s=0.5))
    assert event["status"] == "incident" and event["kind"] == "health" and event["host"] == "dev-1", event
    assert event["reason"].startswith("dev-1 unhealthy for") and "(allowed: 0.5s)" in event["reason"]
    assert event["health_blips"] == {"dev-1": 1}


def test_the_trigger_survives_airflow_storage_and_keeps_the_soak_clock(airflow_db):
    from airflow.models.trigger import Trigger

    trigger = soak_trigger(None, min_s=1.0, window_s=1.0)
    row = Trigger.from_object(trigger)
    module, _, name = row.classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**row.kwargs)
    assert isinstance(rebuilt, SoakTrigger) and rebuilt.serialize() == trigger.serialize()
    assert rebuilt.started_at == trigger.started_at  # a triggerer restart does not restart the soak's clock
