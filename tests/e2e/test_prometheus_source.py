"""Releases of the demo shop judged from a real Prometheus server that scrapes the fleet's production
hosts (``analysis.source.kind: prometheus``): the error regression rolls back, the good version passes."""

from __future__ import annotations

import pytest
import yaml

from tests.e2e.harness import fleet_hosts, put_fleet_on, release_record, run_release, ticket_for, versions
from tests.prometheus_support import PrometheusServer, need_prometheus

pytestmark = [pytest.mark.e2e]

PROD = [f"prod-{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def prometheus_service(release_env, e2e_services, monkeypatch_module):
    """A Prometheus scraping every production host each second, and the demo service judged from it."""
    from conveyor.hooks.metrics import prometheus_key

    need_prometheus()
    targets = [prometheus_key(h, "address_port") for h in fleet_hosts("production")]
    server = PrometheusServer({"conveyor_fleet": targets}, interval_s=1.0)
    server.start()
    path = e2e_services / "demo_shop.yaml"
    original = path.read_text()
    try:
        server.wait_for('shop_http_requests_total{job="conveyor_fleet"}', len(targets))
        monkeypatch_module.setenv("AIRFLOW_CONN_PROMETHEUS_E2E", server.connection())
        spec = yaml.safe_load(original)
        spec["analysis"]["source"] = {"kind": "prometheus", "prometheus": {
            "conn_id": "prometheus_e2e", "selector": '{job="conveyor_fleet"}'}}
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        yield server
    finally:
        path.write_text(original)
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _analyses(run_id: str) -> dict[str, dict]:
    release = release_record(run_id)
    return {s["stage"]: s for s in release["stages"] if s["stage"].endswith("analysis") or s["stage"] == "watch"}


def test_error_regression_judged_by_prometheus_is_rolled_back(prometheus_service):
    put_fleet_on("v1.0.0")
    result = run_release({"git_ref": "v1.2.0"})

    assert result.dag_run.state == "failed"
    failed = sorted(t for t, s in result.states.items() if s == "failed" and t != "fail_run")
    assert len(failed) == 1 and failed[0].endswith(".analysis"), result.states
    assert versions("production") == {n: "v1.0.0" for n in PROD}
    detail = _analyses(result.dag_run.run_id)[failed[0]]["detail"]
    assert detail["source"] == "prometheus" and detail["decision"] == "fail", detail
    assert "error rate" in detail["reason"]
    assert detail["graph_url"].startswith(f"{prometheus_service.url}/graph?g0.expr=")
    assert ticket_for(result.dag_run.run_id)["rollback_status"] == "rolled back"


def test_good_release_judged_by_prometheus_reaches_every_host(prometheus_service):
    put_fleet_on("v1.0.0")
    result = run_release({"git_ref": "v1.1.0"})

    assert result.dag_run.state == "success", result.states
    assert versions("production") == {n: "v1.1.0" for n in PROD}
    analyses = _analyses(result.dag_run.run_id)
    assert len(analyses) == 5
    assert {s["detail"]["source"] for s in analyses.values()} == {"prometheus"}
    assert {s["detail"]["decision"] for s in analyses.values()} == {"pass"}, {
        k: s["detail"]["reason"] for k, s in analyses.items()}
