"""Metric sources: each host's page with the service's metric names, a real Prometheus server, a broken
one, and CloudWatch on moto's server; all of them judged by the real judge through the real trigger."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from conveyor.analysis import AnalysisSettings
from conveyor.config import MetricsSource
from conveyor.hooks.metrics import (
    CloudWatchSource,
    PrometheusSource,
    ScrapeSource,
    metric_source,
    prometheus_key,
)
from conveyor.hosts import Host
from conveyor.triggers.analysis import CanaryAnalysisTrigger
from tests.conveyor.hooks.metrics_support import AppHost, BrokenPrometheus, first_event
from tests.prometheus_support import PrometheusServer, need_prometheus

CUSTOM = {"requests": "api_calls_total", "status_label": "code", "latency": "api_latency_seconds",
          "process_start": "api_started_at"}


def _look(source, targets, since=0.0):
    return asyncio.run(source.look(targets, since=since))


def _trigger(source: dict, canary: dict, baseline: dict, *, window_s: float = 5.0, interval_s: float = 0.5,
             **settings) -> CanaryAnalysisTrigger:
    judge = AnalysisSettings(**{"window_s": window_s, "min_requests": 100, "min_fail_requests": 50, **settings})
    return CanaryAnalysisTrigger(label="wave-1", canary=canary, baseline=baseline, fixed_baseline={},
                                 settings=judge.to_dict(), interval_s=interval_s, started_at=time.time(),
                                 source=source)


# ---------------------------------------------------------------------------------------- scrape


def test_scrape_reads_the_metric_names_the_service_file_gives():
    with AppHost("127.0.0.1", base=1000, error_share=0.1, start_time=1_700_000_123.0, **{
            "requests_metric": CUSTOM["requests"], "status_label": "code", "latency_metric": CUSTOM["latency"],
            "start_metric": CUSTOM["process_start"]}) as app:
        custom = metric_source(MetricsSource(metrics=CUSTOM))
        default = metric_source(MetricsSource())
        host = app.host("prod-1")
        [got] = _look(custom, {"prod-1": custom.target(host)}).values()
        [nothing] = _look(default, {"prod-1": default.target(host)}).values()
    assert isinstance(custom, ScrapeSource)
    assert got.requests == {"200": 900.0, "500": 100.0}
    assert got.latency_buckets[math.inf] == 1000 and got.latency_buckets[0.05] == 600
    assert got.start_time == 1_700_000_123.0
    assert nothing is None  # the default names are not on this page: no data, never zero traffic
    assert "no usable shop_http_requests_total counters" in default.last_error


def test_scrape_source_snapshot_never_raises():
    source = metric_source(None)
    hosts = [Host(name="gone", environment="production", address="127.0.0.1", metrics_url="http://127.0.0.1:9/m")]
    assert source.snapshot(hosts, lookback_s=60) == {"gone": None}
    assert source.last_error.startswith("scrape: http://127.0.0.1:9/m: ")


# ------------------------------------------------------------------------------- host label mapping


@pytest.mark.parametrize(("match", "host", "key"), [
    ("name", Host(name="i-0abc", environment="production", address="10.0.0.5"), "i-0abc"),
    ("address", Host(name="web-1", environment="production", address="10.0.0.5"), "10.0.0.5"),
    ("address_port", Host(name="web-1", environment="production", address="10.0.0.5",
                          metrics_url="http://10.0.0.5:9100/metrics"), "10.0.0.5:9100"),
    ("address_port", Host(name="web-1", environment="production", address="fd00::5",
                          metrics_url="http://[fd00::5]:8000/metrics"), "[fd00::5]:8000"),
    ("address_port", Host(name="web-1", environment="production", address="10.0.0.5",
                          metrics_url="https://10.0.0.5/metrics"), "10.0.0.5:443"),
])
def test_a_host_label_value_maps_to_an_inventory_host(match, host, key):
    assert prometheus_key(host, match) == key


# ------------------------------------------------------------------------------ real prometheus


@pytest.fixture(scope="module")
def fleet_behind_prometheus():
    """Four app hosts on 127.0.0.2-5 (one at 20% errors, the others at 0.5%), scraped every second."""
    need_prometheus()
    apps = [AppHost(f"127.0.0.{i}", rate=400, error_share=0.2 if i == 2 else 0.005) for i in range(2, 6)]
    for app in apps:
        app.__enter__()
    server = PrometheusServer({"shop": [a.target for a in apps]}, interval_s=1.0)
    try:
        server.start()
        server.wait_for('shop_http_requests_total{job="shop"}', 2 * len(apps))
        yield server, {f"prod-{i}": app for i, app in enumerate(apps, start=1)}
    finally:
        server.stop()
        for app in apps:
            app.__exit__()


@pytest.fixture
def prometheus_conn(fleet_behind_prometheus, monkeypatch):
    server, apps = fleet_behind_prometheus
    monkeypatch.setenv("AIRFLOW_CONN_PROM_TEST", server.connection())
    return server, apps


def _prom_spec(**prometheus) -> dict:
    return {"kind": "prometheus", "prometheus": {"conn_id": "prom_test", "selector": '{job="shop"}', **prometheus}}


def test_prometheus_source_reads_each_hosts_cumulative_counters(prometheus_conn):
    server, apps = prometheus_conn
    source = metric_source(_prom_spec())
    assert isinstance(source, PrometheusSource)
    hosts = {n: a.host(n) for n, a in apps.items()}
    snapshot = source.snapshot(list(hosts.values()), lookback_s=60)  # the plan's path: connect, then look
    assert source.last_error is None, source.last_error
    assert set(snapshot) == set(apps) and all(snapshot.values())
    prod1 = snapshot["prod-1"]
    assert prod1["requests"]["500"] / (prod1["requests"]["200"] + prod1["requests"]["500"]) == pytest.approx(0.2,
                                                                                                            abs=0.01)
    assert prod1["start_time"] == 1_700_000_000.0
    assert dict(prod1["latency_buckets"])["+Inf"] == prod1["latency_count"] > 0
    assert source.base_url == server.url


def test_prometheus_query_templates_and_another_host_label(prometheus_conn):
    """A template relabels ``instance`` to ``host`` (the address without port), matched by address."""
    _, apps = prometheus_conn
    relabel = 'label_replace(shop_http_requests_total{selector}, "host", "$1", "instance", "(.*):[0-9]+")'
    spec = _prom_spec(host_label="host", host_match="address",
                      queries={"requests": f"sum by ({{host_label}}, {{status_label}}) ({relabel})"})
    source = metric_source(spec)
    source.connect()
    got = _look(source, {n: source.target(a.host(n)) for n, a in apps.items()})
    assert source.last_error is None, source.last_error
    assert all(s is not None and s.requests["200"] > 0 for s in got.values())
    assert all(s.latency_buckets == {} for s in got.values())  # no latency query given: errors only


def test_a_canary_erring_more_than_its_baseline_fails_through_prometheus(prometheus_conn):
    _, apps = prometheus_conn
    source = metric_source(_prom_spec())
    targets = {n: source.target(a.host(n)) for n, a in apps.items()}
    event = first_event(_trigger(_prom_spec(), {"prod-1": targets.pop("prod-1")}, targets, metrics=["errors"]))
    assert event["status"] == "done" and event["source"] == "prometheus"
    assert event["verdict"]["decision"] == "fail", event["verdict"]


def test_a_canary_like_its_baseline_passes_through_prometheus(prometheus_conn):
    _, apps = prometheus_conn
    source = metric_source(_prom_spec())
    targets = {n: source.target(a.host(n)) for n, a in apps.items() if n != "prod-1"}
    event = first_event(_trigger(_prom_spec(), {"prod-2": targets.pop("prod-2")}, targets, window_s=4))
    assert event["status"] == "done"
    assert event["verdict"]["decision"] == "pass", event["verdict"]
    assert event["source_error"] is None


def test_a_metric_that_does_not_exist_is_inconclusive_with_the_reason(prometheus_conn):
    _, apps = prometheus_conn
    spec = {**_prom_spec(), "metrics": {"requests": "shop_http_requests_totl"}}
    source = metric_source(spec)
    targets = {n: source.target(a.host(n)) for n, a in apps.items()}
    event = first_event(_trigger(spec, {"prod-1": targets.pop("prod-1")}, targets, window_s=1.5))
    assert event["verdict"]["decision"] == "inconclusive"
    assert "no series for sum by (instance, status) (shop_http_requests_totl{job=\"shop\"})" in event["source_error"]
    assert event["source_error"].startswith(f"prometheus http://127.0.0.1:{prometheus_conn[0].port}")


def test_the_graph_link_shows_canary_and_baseline_over_the_window(prometheus_conn):
    import urllib.parse

    server, _ = prometheus_conn
    source = metric_source(_prom_spec())
    source.connect()
    url = source.graph_url(["127.0.0.2:8000"], ["127.0.0.3:8000"], start=1_700_000_000, end=1_700_000_300)
    base, _, query = url.partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    assert base == f"{server.url}/graph"
    assert params["g0.range_input"] == "300s" and params["g0.end_input"] == "2023-11-14 22:18:20"
    assert 'instance=~"127\\\\.0\\\\.0\\\\.2:8000|127\\\\.0\\\\.0\\\\.3:8000"' in params["g0.expr"]
    assert 'job="shop"' in params["g0.expr"] and 'status=~"5.."' in params["g0.expr"]
    server.query(params["g0.expr"])  # Prometheus itself accepts the expression


# ----------------------------------------------------------------------------- broken prometheus


@pytest.mark.parametrize(("mode", "phrase"), [
    ("down", "ConnectError"),
    ("html", "answered HTML"),
    ("garbage", "answered not JSON"),
    ("error", "query failed: parse error at char 5"),
    ("empty", "no series for sum by (instance, status) (shop_http_requests_total)"),
    ("nan", "NaN or infinite readings"),
    ("other_hosts", "no series for the hosts' instance values (expected e.g. '127.0.0.1:8000', found "
                    "['10.9.9.9:8000'])"),
])
def test_a_broken_prometheus_is_no_data_and_the_verdict_says_why(monkeypatch, mode, phrase):
    hosts = {"prod-1": "127.0.0.1:8000", "prod-2": "127.0.0.2:8000"}
    with BrokenPrometheus("nan" if mode == "down" else mode, hosts=list(hosts.values())) as server:
        port = server.port
        if mode == "down":
            server.__exit__()
        monkeypatch.setenv("AIRFLOW_CONN_PROM_BROKEN", server.connection())
        spec = {"kind": "prometheus", "prometheus": {"conn_id": "prom_broken"}}
        event = first_event(_trigger(spec, {"prod-1": hosts["prod-1"]}, {"prod-2": hosts["prod-2"]}, window_s=1.0,
                                     interval_s=0.3))
        if mode == "down":
            server.thread.join()
    assert event["status"] == "done"
    assert event["verdict"]["decision"] == "inconclusive", event["verdict"]
    assert event["source_error"].startswith(f"prometheus http://127.0.0.1:{port}: ")
    assert phrase in event["source_error"], event["source_error"]


def test_a_missing_connection_is_no_data_never_a_crash():
    spec = {"kind": "prometheus", "prometheus": {"conn_id": "no_such_prometheus"}}
    event = first_event(_trigger(spec, {"prod-1": "127.0.0.1:8000"}, {"prod-2": "127.0.0.2:8000"}, window_s=0.5))
    assert event["verdict"]["decision"] == "inconclusive"
    assert "cannot use the connection" in event["source_error"] and "no_such_prometheus" in event["source_error"]


# ------------------------------------------------------------------------------------ cloudwatch

CW = {"kind": "cloudwatch", "cloudwatch": {
    "aws_conn_id": "cw_test", "period_s": 1,
    "requests": {"namespace": "Shop", "metric_name": "Requests", "dimensions": {"Service": "shop"}},
    "errors": {"namespace": "Shop", "metric_name": "Errors", "dimensions": {"Service": "shop"}}}}


@pytest.fixture(scope="module")
def moto_cloudwatch():
    from moto.server import ThreadedMotoServer

    from conveyor_lab.fleet.spec import free_ports

    [port] = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def cloudwatch(moto_cloudwatch, monkeypatch):
    import json
    import urllib.request

    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{moto_cloudwatch}/moto-api/reset", method="POST"), timeout=10)
    monkeypatch.setenv("AIRFLOW_CONN_CW_TEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"region_name": "us-east-1", "endpoint_url": moto_cloudwatch}}))
    return boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=moto_cloudwatch,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


class Traffic:
    """Puts each host's request and error counts into CloudWatch every 0.2 s, as an app's agent would."""

    def __init__(self, client, error_share: dict[str, float], per_put: int = 100) -> None:
        import threading

        self.client, self.error_share, self.per_put = client, error_share, per_put
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def put(self) -> None:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        data = []
        for host, share in self.error_share.items():
            dims = [{"Name": "Service", "Value": "shop"}, {"Name": "InstanceId", "Value": host}]
            data.append({"MetricName": "Requests", "Dimensions": dims, "Timestamp": now, "Value": self.per_put})
            data.append({"MetricName": "Errors", "Dimensions": dims, "Timestamp": now,
                         "Value": round(self.per_put * share)})
        self.client.put_metric_data(Namespace="Shop", MetricData=data)

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            self.put()

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join()


def _cw_judge(client, shares: dict[str, float]) -> dict:
    hosts = list(shares)
    with Traffic(client, shares):
        trigger = _trigger(CW, {hosts[0]: hosts[0]}, {h: h for h in hosts[1:]}, window_s=4, interval_s=0.5,
                           metrics=["errors"], min_requests=500)
        return first_event(trigger)


def test_cloudwatch_a_to_a_passes(cloudwatch):
    event = _cw_judge(cloudwatch, {"i-canary": 0.02, "i-base1": 0.02, "i-base2": 0.02})
    assert event["status"] == "done" and event["source"] == "cloudwatch"
    assert event["verdict"]["decision"] == "pass", event["verdict"]


def test_cloudwatch_a_canary_with_five_times_the_errors_fails(cloudwatch):
    event = _cw_judge(cloudwatch, {"i-canary": 0.10, "i-base1": 0.02, "i-base2": 0.02})
    assert event["verdict"]["decision"] == "fail", event["verdict"]
    [errors] = event["verdict"]["metrics"]
    assert errors["canary"] == pytest.approx(0.10, abs=0.01) and errors["baseline"] == pytest.approx(0.02, abs=0.005)


def test_cloudwatch_readings_are_cumulative_from_the_analysis_start(cloudwatch):
    source = metric_source(CW, start_times={"i-a": 1_700_000_000.0})
    assert isinstance(source, CloudWatchSource)
    since = time.time() - 5
    traffic = Traffic(cloudwatch, {"i-a": 0.1})
    traffic.put()
    traffic.put()
    source.connect()
    first = _look(source, {"i-a": "i-a", "i-none": "i-none"}, since=since)
    traffic.put()
    second = _look(source, {"i-a": "i-a"}, since=since)
    assert first["i-a"].requests == {"2xx": 180.0, "5xx": 20.0} and first["i-a"].start_time == 1_700_000_000.0
    assert second["i-a"].requests == {"2xx": 270.0, "5xx": 30.0}
    assert first["i-none"] is None
    assert "no datapoints of Shop/Requests for i-none" in source.last_error


def test_cloudwatch_errors_are_no_data(cloudwatch, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CW_TEST", '{"conn_type": "aws", "login": "testing", "password": "testing", '
                                               '"extra": {"region_name": "us-east-1", '
                                               '"endpoint_url": "http://127.0.0.1:9"}}')
    event = first_event(_trigger(CW, {"i-a": "i-a"}, {"i-b": "i-b"}, window_s=0.5, metrics=["errors"]))
    assert event["verdict"]["decision"] == "inconclusive"
    assert event["source_error"].startswith("cloudwatch (cw_test): EndpointConnectionError"), event["source_error"]


def test_cloudwatch_latency_is_read_as_trimmed_counts_per_bound():
    spec = {**CW, "cloudwatch": {**CW["cloudwatch"], "latency": {
        "namespace": "Shop", "metric_name": "Latency", "bounds": [0.05, 0.25], "unit": "milliseconds"}}}
    source = metric_source(spec)
    queries, parts = source._queries({"i-a": "i-a"})
    stats = {q["Id"]: q["MetricStat"]["Stat"] for q in queries}
    assert stats == {"r0": "Sum", "e0": "Sum", "c0": "SampleCount", "s0": "Sum", "b0_0": "TC(:50)", "b0_1": "TC(:250)"}
    assert parts["b0_1"] == ("i-a", "bucket", 0.25)
    dims = queries[0]["MetricStat"]["Metric"]["Dimensions"]
    assert dims == [{"Name": "Service", "Value": "shop"}, {"Name": "InstanceId", "Value": "i-a"}]
