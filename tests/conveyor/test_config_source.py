"""The service file's ``analysis.source``: good settings load, bad ones are refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conveyor.config import load_service
from conveyor.exceptions import ServiceConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"
CW = {"kind": "cloudwatch", "cloudwatch": {"requests": {"namespace": "AWS/ApplicationELB", "metric_name": "RequestCount"},
                                           "errors": {"namespace": "AWS/ApplicationELB",
                                                      "metric_name": "HTTPCode_Target_5XX_Count"}}}


def _load(tmp_path: Path, source, **analysis):
    doc = yaml.safe_load(DEMO.read_text())
    doc["analysis"] = {**doc["analysis"], "source": source, **analysis}
    path = tmp_path / "demo_shop.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_service(path)


def test_the_default_source_scrapes_the_demo_names():
    source = load_service("demo_shop").analysis.source
    assert source.kind == "scrape" and source.metrics.requests == "shop_http_requests_total"
    assert source.metrics.status_label == "status" and source.metrics.process_start == "process_start_time_seconds"


def test_the_prometheus_example_loads():
    service = load_service(ROOT / "include" / "services" / "examples" / "demo_shop.yaml")
    source = service.analysis.source
    assert source.kind == "prometheus" and source.prometheus.conn_id == "prometheus_local"
    assert source.prometheus.host_label == "instance" and source.prometheus.host_match == "address_port"


def test_templates_names_and_cloudwatch_load(tmp_path):
    service = _load(tmp_path, {"kind": "prometheus", "metrics": {"requests": "http_requests_total", "status_label": "code"},
                               "prometheus": {"conn_id": "prom", "host_label": "pod", "host_match": "name",
                                              "queries": {"requests": 'sum by ({host_label}, code) (x{{a="b"}})'}}})
    assert service.analysis.source.prometheus.queries.requests.startswith("sum by ({host_label}")
    service = _load(tmp_path, CW, metrics=["errors"])
    assert service.analysis.source.cloudwatch.aws_conn_id == "aws_default"


@pytest.mark.parametrize(("source", "analysis", "field", "phrase"), [
    ({"kind": "graphite"}, {}, "analysis.source.kind", "'scrape', 'prometheus' or 'cloudwatch'"),
    ({"kind": "prometheus"}, {}, "analysis.source.prometheus", "required when kind is 'prometheus'"),
    ({"kind": "prometheus", "prometheus": {"selector": '{job="x"}'}}, {}, "analysis.source.prometheus.conn_id",
     "Field required"),
    ({"kind": "scrape", "prometheus": {"conn_id": "p"}}, {}, "analysis.source.prometheus", "given but kind is"),
    ({"kind": "prometheus", "prometheus": {"conn_id": "p", "queries": {"requests": "sum(x)"}}}, {},
     "analysis.source.prometheus.queries.requests", "has no {host_label} placeholder"),
    ({"kind": "prometheus", "prometheus": {"conn_id": "p", "queries": {"requests": 'sum by ({host_label}) (x{a="b"})'}}},
     {}, "analysis.source.prometheus.queries.requests", "which is not a placeholder"),
    ({"kind": "prometheus", "prometheus": {"conn_id": "p", "selector": 'job="x"'}}, {},
     "analysis.source.prometheus.selector", "String should match pattern"),
    ({"kind": "prometheus", "prometheus": {"conn_id": "p", "host_match": "ip"}}, {},
     "analysis.source.prometheus.host_match", "'name', 'address' or 'address_port'"),
    ({"metrics": {"requests": "shop-requests"}}, {}, "analysis.source.metrics.requests", "String should match"),
    ({"metrics": {"status_label": "1st"}}, {}, "analysis.source.metrics.status_label", "String should match"),
    ({"timeout_s": 0}, {}, "analysis.source.timeout_s", "greater than 0"),
    (CW, {}, "analysis.metrics", "no latency buckets: set metrics: [errors]"),
    ({**CW, "cloudwatch": {**CW["cloudwatch"], "latency": {"namespace": "n", "metric_name": "m", "bounds": [0.5, 0.1]}}},
     {}, "analysis.source.cloudwatch.latency.bounds", "strictly ascending"),
    ({"kind": "cloudwatch", "cloudwatch": {"requests": CW["cloudwatch"]["requests"]}}, {"metrics": ["errors"]},
     "analysis.source.cloudwatch.errors", "Field required"),
    ({**CW, "cloudwatch": {**CW["cloudwatch"], "errors": {**CW["cloudwatch"]["errors"], "statistic": "p99"}}},
     {"metrics": ["errors"]}, "analysis.source.cloudwatch.errors.statistic", "'Sum'"),
])
def test_bad_source_settings_are_refused_naming_the_field(tmp_path, source, analysis, field, phrase):
    with pytest.raises(ServiceConfigError) as err:
        _load(tmp_path, source, **analysis)
    message = str(err.value)
    assert f"{field}:" in message or f"{field}." in message, message
    assert phrase in message, message
