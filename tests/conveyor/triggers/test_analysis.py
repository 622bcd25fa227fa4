"""The canary analysis trigger: it survives Airflow's trigger storage, and decides from real HTTP scrapes."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conveyor.analysis import AnalysisSettings
from conveyor.triggers.analysis import CanaryAnalysisTrigger
from tests.conveyor.hooks.metrics_support import BUCKETS, SHARES, send_exposition


class MetricsServer:
    """Each host is a path ``/<host>/metrics`` whose counters grow by ``per_scrape`` requests per GET,
    ``error_share`` of them answering 500, all with the same latency histogram."""

    def __init__(self, hosts: dict[str, float], per_scrape: int = 200) -> None:
        self.counts = {h: {"ok": 0, "err": 0} for h in hosts}
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                host = self.path.strip("/").split("/")[0]
                if host not in owner.counts or not self.path.endswith("/metrics"):
                    self.send_error(404)
                    return
                with lock:
                    errors = round(per_scrape * hosts[host])
                    owner.counts[host]["err"] += errors
                    owner.counts[host]["ok"] += per_scrape - errors
                    body = owner.exposition(host)
                send_exposition(self, body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def exposition(self, host: str) -> str:
        ok, err = self.counts[host]["ok"], self.counts[host]["err"]
        total = ok + err
        lines = [f'shop_http_requests_total{{status="200"}} {ok}', f'shop_http_requests_total{{status="500"}} {err}']
        lines += [f'shop_http_request_duration_seconds_bucket{{le="{b}"}} {round(total * s)}'
                  for b, s in zip(BUCKETS, SHARES, strict=True)]
        lines += [f'shop_http_request_duration_seconds_bucket{{le="+Inf"}} {total}',
                  f"shop_http_request_duration_seconds_sum {total * 0.06}",
                  f"shop_http_request_duration_seconds_count {total}",
                  "process_start_time_seconds 1700000000"]
        return "\n".join(lines) + "\n"

    def url(self, host: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{host}/metrics"

    def __enter__(self) -> MetricsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def trigger_for(server: MetricsServer, canary: list[str], baseline: list[str], **settings) -> CanaryAnalysisTrigger:
    judge = AnalysisSettings(**{"window_s": 4.0, "min_requests": 100, "min_fail_requests": 50, **settings})
    return CanaryAnalysisTrigger(
        label="wave-1", canary={h: server.url(h) for h in canary}, baseline={h: server.url(h) for h in baseline},
        fixed_baseline={}, settings=judge.to_dict(), interval_s=0.2, started_at=time.time(),
    )


def first_event(trigger: CanaryAnalysisTrigger, timeout: float = 30.0) -> dict:
    async def run() -> dict:
        events = trigger.run()
        try:
            return (await asyncio.wait_for(anext(events), timeout)).payload
        finally:
            await events.aclose()

    return asyncio.run(run())


def test_the_trigger_survives_airflow_storage(airflow_db):
    """What the triggerer gets back from the database rebuilds the same trigger."""
    from airflow.models.trigger import Trigger

    trigger = CanaryAnalysisTrigger(
        label="watch", canary={"prod-1": "http://127.0.0.1:1/metrics"}, baseline={},
        fixed_baseline={"prod-1": [{"t": 1.0, "requests": {"200": 5.0}, "latency_buckets": [[0.05, 5.0], ["+Inf", 5.0]],
                                    "latency_sum": 0.1, "latency_count": 5.0, "start_time": 0.5}]},
        settings=AnalysisSettings(window_s=30).to_dict(), interval_s=5.0, started_at=1234.5,
        history={"prod-1": [{"t": -50.0, "requests": {"200": 0.0}, "latency_buckets": [["+Inf", 0.0]],
                             "latency_sum": 0.0, "latency_count": 0.0, "start_time": -50.0},
                            {"t": 0.0, "requests": {"200": 90.0, "500": 1.0}, "latency_buckets": [["+Inf", 91.0]],
                             "latency_sum": 4.0, "latency_count": 91.0, "start_time": -50.0}]},
        memory={"spread2": 0.02, "spread_df": 6.0, "moved": 0.0, "moved_df": 6.0, "releases": 3},
    )
    row = Trigger.from_object(trigger)  # what the deferring task stores (kwargs encrypted)
    module, _, name = row.classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**row.kwargs)
    assert isinstance(rebuilt, CanaryAnalysisTrigger)
    assert rebuilt.serialize() == trigger.serialize()
    assert rebuilt.started_at == 1234.5  # the window still bounds the whole wait after a triggerer restart
    assert rebuilt.history == trigger.history  # the hosts' pre-deploy snapshots, for the judge's own-history test
    assert rebuilt.memory == trigger.memory  # what earlier releases measured about the fleet


def test_a_canary_erring_more_than_its_baseline_fails():
    with MetricsServer({"canary": 0.2, "b1": 0.0, "b2": 0.0}) as server:
        event = first_event(trigger_for(server, ["canary"], ["b1", "b2"]))
    assert event["status"] == "done"
    verdict = event["verdict"]
    assert verdict["decision"] == "fail", verdict
    [errors] = [m for m in verdict["metrics"] if m["metric"] == "errors"]
    assert errors["decision"] == "fail" and errors["canary"] > errors["baseline"]
    assert event["elapsed_s"] < 4.0  # decided before the window ended


def test_a_canary_like_its_baseline_passes_at_the_window_end():
    with MetricsServer({"canary": 0.01, "b1": 0.01, "b2": 0.01}) as server:
        event = first_event(trigger_for(server, ["canary"], ["b1", "b2"]))
    assert event["status"] == "done"
    assert event["verdict"]["decision"] == "pass", event["verdict"]
    assert event["elapsed_s"] >= 4.0


def test_hosts_that_do_not_answer_are_no_data_never_a_pass():
    with MetricsServer({"b1": 0.0}) as server:
        trigger = trigger_for(server, ["gone"], ["b1"], window_s=1.0)  # /gone/metrics answers 404
        event = first_event(trigger)
    assert event["status"] == "done"
    assert event["verdict"]["decision"] == "inconclusive", event["verdict"]


@pytest.mark.parametrize("bad", [{"settings": {"alpha": 7}}, {"fixed_baseline": {"x": [{"t": 1}]}}])
def test_errors_become_an_error_event(bad):
    kwargs = {"label": "wave-1", "canary": {}, "baseline": {}, "fixed_baseline": {},
              "settings": AnalysisSettings().to_dict(), "interval_s": 0.1, "started_at": time.time(), **bad}
    event = first_event(CanaryAnalysisTrigger(**kwargs))
    assert event["status"] == "error" and event["message"]


def test_a_trigger_stored_by_an_older_conveyor_still_scrapes_its_names():
    """A trigger row written before ``source`` existed (metric names as kwargs) resumes as a scrape source."""
    from conveyor.hooks.metrics import metric_source

    trigger = CanaryAnalysisTrigger(label="wave-1", canary={"prod-1": "http://127.0.0.1:1/metrics"}, baseline={},
                                    fixed_baseline={}, settings=AnalysisSettings().to_dict(), interval_s=5.0,
                                    started_at=1.0, requests_metric="api_total", latency_metric="api_seconds",
                                    scrape_timeout=2.0)
    source = metric_source(trigger.serialize()[1]["source"])
    assert source.kind == "scrape" and source.timeout_s == 2.0
    assert (source.spec.metrics.requests, source.spec.metrics.latency) == ("api_total", "api_seconds")
