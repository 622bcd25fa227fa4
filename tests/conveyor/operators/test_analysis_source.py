"""The analysis operator with a Prometheus source: the trigger gets the source's settings and each host's
label value; a broken Prometheus ends inconclusive with the reason, the source and a graph link recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conveyor.hooks.metrics_support import BrokenPrometheus, first_event
from tests.conveyor.operators.operator_support import operator_kwargs, stage_row

ROOT = Path(__file__).resolve().parents[3]


def _host(name: str, address: str) -> dict:
    return {"name": name, "environment": "production", "address": address,
            "metrics_url": f"http://{address}:8000/metrics", "health_url": f"http://{address}:8000/health"}


@pytest.fixture
def prometheus_service(tmp_path, monkeypatch):
    """The demo service judged from a Prometheus that answers an HTML login page."""
    with BrokenPrometheus("html") as server:
        spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
        spec["analysis"] = {"window_s": 1, "interval_s": 0.3, "min_requests": 100, "source": {
            "kind": "prometheus", "prometheus": {"conn_id": "prom_op", "selector": '{job="shop"}'}}}
        (tmp_path / "services").mkdir()
        (tmp_path / "services" / "demo_shop.yaml").write_text(yaml.safe_dump(spec))
        monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path / "services"))
        monkeypatch.setenv("AIRFLOW_CONN_PROM_OP", server.connection())
        yield server


def test_a_prometheus_answering_html_is_inconclusive_with_the_reason(prometheus_service, ledger, make_context,
                                                                      release_id):
    from airflow.sdk.exceptions import TaskDeferred

    from conveyor.operators.analysis import CanaryAnalysisOperator

    plan = {"hosts": [_host("prod-1", "127.0.0.2"), _host("prod-2", "127.0.0.3")], "waves": [["prod-1"], ["prod-2"]],
            "original": {"prod-1": "v1.0.0", "prod-2": "v1.0.0"}, "pre_scrapes": {}}
    op = CanaryAnalysisOperator(plan=plan, wave=0, **operator_kwargs("wave_1.analysis"))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(make_context())
    trigger = deferred.value.trigger
    assert trigger.canary == {"prod-1": "127.0.0.2:8000"} and trigger.baseline == {"prod-2": "127.0.0.3:8000"}
    assert trigger.source["kind"] == "prometheus" and trigger.source["prometheus"]["conn_id"] == "prom_op"
    assert "password" not in str(trigger.serialize())  # settings only: the connection is read in the triggerer

    event = first_event(trigger)
    detail = op.execute_complete(make_context(), event)

    assert detail["decision"] == "inconclusive" and detail["source"] == "prometheus"
    url = f"http://127.0.0.1:{prometheus_service.port}"
    assert f"(last metrics error: prometheus {url}: HTTP 200, answered HTML" in detail["reason"], detail["reason"]
    assert detail["graph_url"].startswith(f"{url}/graph?g0.expr=")
    row = stage_row(ledger.get_release(release_id), "wave_1.analysis")
    assert row["status"] == "inconclusive" and row["detail"]["graph_url"] == detail["graph_url"]
    assert row["detail"]["source_error"].startswith(f"prometheus {url}: ")


def _snapshot(requests: float, errors: float) -> dict:
    return {"t": 1000.0, "requests": {"200": requests - errors, "500": errors},
            "latency_buckets": [[0.05, requests], ["+Inf", requests]], "latency_sum": requests * 0.03,
            "latency_count": requests, "start_time": 100.0}


@pytest.mark.parametrize(("wave", "history", "fixed"), [(0, {"prod-1", "prod-2"}, set()), (1, set(), {"prod-1", "prod-2"})])
def test_the_plans_snapshot_is_each_hosts_history_or_the_last_waves_baseline(prometheus_service, make_context,
                                                                            wave, history, fixed):
    """Against live hosts the snapshot is every judged host's own history; with none left, the baseline."""
    from airflow.sdk.exceptions import TaskDeferred

    from conveyor.operators.analysis import CanaryAnalysisOperator

    plan = {"hosts": [_host("prod-1", "127.0.0.2"), _host("prod-2", "127.0.0.3")], "waves": [["prod-1"], ["prod-2"]],
            "original": {"prod-1": "v1.0.0", "prod-2": "v1.0.0"},
            "pre_scrapes": {"prod-1": _snapshot(9000, 90), "prod-2": _snapshot(8000, 40)}}
    op = CanaryAnalysisOperator(plan=plan, wave=wave, **operator_kwargs(f"wave_{wave + 1}.analysis"))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(make_context())
    trigger = deferred.value.trigger
    assert set(trigger.history) == history and set(trigger.fixed_baseline) == fixed
    for series in [*trigger.history.values(), *trigger.fixed_baseline.values()]:
        assert [point["t"] for point in series] == [100.0, 1000.0]  # zero at process start, then the snapshot


def test_earlier_releases_analyses_are_the_judges_fleet_memory(prometheus_service, ledger, make_context, release_id):
    """The trigger carries what the service's earlier releases measured about its fleet (their errors
    verdicts' spread and movement, from the ledger); this release's own earlier waves are not memory."""
    import datetime as dt

    from airflow.sdk.exceptions import TaskDeferred

    from conveyor.analysis import FleetMemory
    from conveyor.operators.analysis import CanaryAnalysisOperator

    at = dt.datetime(2025, 3, 10, tzinfo=dt.UTC)
    for n, (rid, spread) in enumerate([("demo_shop/earlier-1", 0.01), ("demo_shop/earlier-2", 0.03),
                                       (release_id, 0.9)]):
        if rid != release_id:
            ledger.upsert_release(rid, service="demo_shop", status="success", started_at=at)
        ledger.upsert_stage(rid, "wave_1.analysis", status="success", finished_at=at + dt.timedelta(minutes=n),
                            detail={"label": "wave-1", "metrics": [{"metric": "errors", "samples": {
                                "mode": "live", "spread_estimate": spread, "spread_hosts": 3,
                                "moved_estimate": 0.002, "moved_hosts": 3}}]})
    plan = {"hosts": [_host("prod-1", "127.0.0.2"), _host("prod-2", "127.0.0.3"), _host("prod-3", "127.0.0.4")],
            "waves": [["prod-1"], ["prod-2", "prod-3"]], "original": {}, "pre_scrapes": {}}
    deferred_triggers = []
    for wave in (0, 1):
        op = CanaryAnalysisOperator(plan=plan, wave=wave, **operator_kwargs(f"wave_{wave + 1}.analysis"))
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(make_context())
        deferred_triggers.append(deferred.value.trigger)
    memory = FleetMemory.from_dict(deferred_triggers[0].memory)
    assert memory.releases == 2 and memory.spread_df == 4
    assert memory.spread2 == pytest.approx(0.02)  # the two earlier releases, not this one's 0.9
    assert memory.moved == pytest.approx(0.002)
    assert deferred_triggers[1].memory == {}  # the last wave is judged against the snapshot: no spread to pool
