"""The evidence a person reads about an analysis: the per-metric table and the SVG chart, from real verdicts.

Pure (no Airflow): the verdicts come from ``judge()`` on simulated scrapes (``evidence_support``), and
the chart is read back as XML to check what it draws against the data.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET

import pytest

from conveyor.analysis.evidence_view import (
    analyses,
    analysis_markdown,
    chart_file_name,
    chart_path,
    chart_svg,
    graph_url,
    markdown_table,
    metric_rows,
    stage_detail,
)
from tests.conveyor.analysis.evidence_support import STEP_S, failing_errors, slow_canary

SVG = "{http://www.w3.org/2000/svg}"
GRAPH = "http://127.0.0.1:9090/graph?g0.expr=sum%28rate%28shop_http_requests_total%5B1m%5D%29%29&g0.tab=0"


def parse_svg(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on anything that is not well-formed XML


def polylines(root: ET.Element, panel: str, series: str) -> list[list[tuple[float, float]]]:
    group = next(g for g in root.iter(f"{SVG}g") if g.get("data-panel") == panel)
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in group.iter(f"{SVG}polyline") if line.get("data-series") == series]


def row(detail: dict, name: str) -> dict:
    return next(r for r in metric_rows(detail) if r["name"] == name)


# ------------------------------------------------------------------------------------------------ table


def test_the_table_shows_the_judges_numbers_for_a_failed_error_rate():
    detail, seen = failing_errors()
    assert detail["decision"] == "fail"
    errors = next(m for m in detail["metrics"] if m["metric"] == "errors")
    samples = errors["samples"]
    r = row(detail, "error rate")

    assert (r["canary"], r["baseline"]) == ("5.00%", "1.00%")  # 5 in 100 vs 1 in 100, every interval
    assert r["requests"] == f"{samples['canary_requests']:,.0f} / {samples['baseline_requests']:,.0f}"
    assert samples["baseline_requests"] == 3 * samples["canary_requests"]  # three baseline hosts, same traffic
    assert r["events"] == f"{samples['canary_errors']:,.0f} / {samples['baseline_errors']:,.0f} errors"
    assert r["effect"].startswith("×5.00 [")  # and its interval, from the verdict
    lo, hi = errors["interval"]
    assert r["effect"] == f"×5.00 [{lo:.2f}, {hi:.2f}]" and lo < 5 < hi
    decided = samples["decided_after_s"]
    look = round(decided / STEP_S)
    assert r["boundary"] == (f"{errors['events']:.0f} ≥ {errors['boundary']:.0f} at {decided:.0f} s "
                             f"(look {look} of {seen - 1})")
    assert r["decision"] == "fail"

    table = markdown_table(detail)
    lines = table.splitlines()
    assert lines[0].startswith("| metric | canary | baseline |") and set(lines[1]) == {"|", "-"}
    assert len(lines) == 2 + len(detail["metrics"])
    assert "| error rate | 5.00% | 1.00% |" in table and "| **fail** |" in table


def test_the_table_shows_latency_per_quantile_in_ms():
    detail, _ = slow_canary()
    assert detail["decision"] == "fail"
    rows = metric_rows(detail)  # one per verdict, in the verdict's order
    latency = [(r, m) for r, m in zip(rows, detail["metrics"], strict=True) if r["kind"] == "latency"]
    assert latency and all(re.fullmatch(r"latency p\d+(\.\d+)?", r["name"]) for r, _ in latency)
    failed = [(r, m) for r, m in latency if r["decision"] == "fail"]
    assert failed
    for r, verdict in failed:
        assert r["canary"].endswith(" ms") and r["baseline"].endswith(" ms")
        assert r["values"]["canary"] > r["values"]["baseline"]  # the canary is the slow one
        threshold_ms = 1000 * verdict["samples"]["threshold_s"]
        assert f"slower than {threshold_ms:.0f} ms" in r["events"]
        assert " ≥ " in r["boundary"] and f"at {verdict['samples']['decided_after_s']:.0f} s" in r["boundary"]


def test_latency_verdicts_named_by_quantile_are_told_apart():
    detail, _ = failing_errors()
    latency = next(m for m in detail["metrics"] if m["metric"].startswith("latency"))
    p99 = copy.deepcopy(latency)
    p99["metric"] = "latency_p99"
    p99["samples"].pop("quantile", None)
    p75 = copy.deepcopy(latency)
    p75["samples"]["quantile"] = 0.75
    detail["metrics"] = [p75, p99]
    assert [r["name"] for r in metric_rows(detail)] == ["latency p75", "latency p99"]


def test_what_is_absent_or_garbage_shows_as_a_dash_and_never_as_a_number():
    detail, _ = failing_errors()
    errors = next(m for m in detail["metrics"] if m["metric"] == "errors")
    errors.update(canary="NaN", baseline=None, effect="Infinity", interval=None, events=None, boundary=None)
    errors["samples"] = {"canary_requests": "lots"}
    detail["metrics"].append("not a metric")
    r = row(detail, "error rate")
    assert (r["canary"], r["baseline"], r["effect"], r["boundary"]) == ("—", "—", "—", "—")
    assert r["requests"] == "— / —" and r["events"] == "— / — errors"
    assert len(metric_rows(detail)) == len(detail["metrics"]) - 1


def test_the_markdown_names_the_source_links_its_graph_and_the_chart():
    detail, _ = failing_errors(source="prometheus", graph_url=GRAPH)
    text = analysis_markdown(detail, chart_url="http://airflow/conveyor/releases/x/charts/wave_1.analysis.svg",
                             chart_file="RCA-1.wave_1.analysis.svg")
    assert text.startswith(f"**wave-1**: **fail** — {detail['reason']}")
    assert "source: prometheus" in text
    assert f"[Prometheus graph](<{GRAPH}>)" in text
    assert ("[chart of canary vs baseline](<http://airflow/conveyor/releases/x/charts/wave_1.analysis.svg>) "
            "(file `RCA-1.wave_1.analysis.svg`)") in text
    assert markdown_table(detail) in text


def test_no_timeline_no_chart_and_no_link_to_one():
    detail, _ = failing_errors()
    del detail["details"]["timeline"]  # a ledger row written before timelines
    assert chart_svg(detail) is None
    text = analysis_markdown(detail, chart_url="http://airflow/x.svg", chart_file="x.svg")
    assert "chart" not in text and "x.svg" not in text
    assert "| error rate | 5.00% | 1.00% |" in text  # the table still says it all


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://x/y", "http://", "http://x/a b", "/graph",
                                 'http://x/"><script>', 42, None])
def test_only_an_http_graph_link_is_shown(url):
    detail, _ = failing_errors(graph_url=url)
    assert graph_url(detail) is None
    assert "Prometheus graph" not in analysis_markdown(detail)


def test_a_pipe_or_a_newline_in_a_reason_stays_in_its_cell():
    detail, _ = failing_errors(label="wave | 1\nsecond line")
    detail["metrics"][0]["metric"] = "odd|metric"
    text = analysis_markdown(detail)
    assert text.splitlines()[0].startswith("**wave \\| 1 second line**")
    assert "| odd\\|metric |" in markdown_table(detail)


# ------------------------------------------------------------------------------------------------ chart


def test_the_chart_draws_both_series_in_both_panels_from_the_timeline():
    detail, seen = failing_errors()
    svg = chart_svg(detail)
    root = parse_svg(svg)
    intervals = seen - 1
    for panel in ("errors", "latency"):
        [canary] = polylines(root, panel, "canary")
        [baseline] = polylines(root, panel, "baseline")
        assert len(canary) == len(baseline) == intervals  # one point per interval
        assert [x for x, _ in canary] == [x for x, _ in baseline]  # the same intervals
        assert canary[0][0] < canary[-1][0]
    # Errors: the canary's 5% is drawn above (smaller y) the baseline's 1%, and flat (the same every interval).
    [canary], [baseline] = polylines(root, "errors", "canary"), polylines(root, "errors", "baseline")
    assert all(c[1] < b[1] for c, b in zip(canary, baseline, strict=True))
    assert len({y for _, y in canary}) == 1
    # The decision is marked where the judge decided.
    decided = next(m for m in detail["metrics"] if m["decision"] == "fail")["samples"]["decided_after_s"]
    assert f"fail at {decided:.0f} s" in svg
    assert root.get("viewBox") and root.find(f"{SVG}title").text == "wave-1: fail, canary vs baseline"


def test_the_latency_panel_shows_the_slower_canary_higher():
    detail, _ = slow_canary()
    root = parse_svg(chart_svg(detail))
    [canary], [baseline] = polylines(root, "latency", "canary"), polylines(root, "latency", "baseline")
    assert all(c[1] < b[1] for c, b in zip(canary, baseline, strict=True))
    title = next(t.text for g in root.iter(f"{SVG}g") if g.get("data-panel") == "latency" for t in g.iter(f"{SVG}text"))
    assert title == "latency p99 per interval"


def test_a_missing_interval_splits_the_line_and_a_static_baseline_is_a_level():
    detail, seen = failing_errors()
    line = detail["details"]["timeline"]
    line["canary"]["requests"][1] = None  # the canary was not scraped in the second interval
    line["baseline_static"] = {"error_rate": 0.01, "p75_ms": 70.0, "p99_ms": 230.0}
    del line["baseline"]
    root = parse_svg(chart_svg(detail))
    first, rest = polylines(root, "errors", "canary")
    assert len(first) == 1 and len(rest) == seen - 3
    assert any(c.get("data-series") == "canary" for c in root.iter(f"{SVG}circle"))  # the lone point shows
    assert polylines(root, "errors", "baseline") == []
    levels = [el for el in root.iter(f"{SVG}line") if el.get("data-series") == "baseline"]
    assert len(levels) == 2 and all(el.get("y1") == el.get("y2") for el in levels)  # one per panel


def test_the_chart_is_self_contained_escaped_and_deterministic():
    detail, _ = failing_errors(label='wave-1 <script>alert("x")</script> & co')
    svg = chart_svg(detail)
    assert svg == chart_svg(copy.deepcopy(detail))  # the same bytes for the same detail
    root = parse_svg(svg)
    assert "<script" not in svg and "&lt;script&gt;" in svg
    assert root.find(f"{SVG}title").text.startswith('wave-1 <script>alert("x")</script> & co')
    assert not [el for el in root.iter() if el.tag in (f"{SVG}script", f"{SVG}image", f"{SVG}foreignObject")]
    assert not re.search(r"(href|src)=", svg)
    assert re.findall(r"https?://[^\"]+", svg) == ["http://www.w3.org/2000/svg"]


@pytest.mark.parametrize("timeline", [None, {}, {"t": []}, {"t": "soon"}, {"t": [10, "NaN"]}])
def test_a_timeline_that_is_absent_or_garbage_draws_no_chart(timeline):
    detail, _ = failing_errors()
    detail["details"]["timeline"] = timeline
    assert chart_svg(detail) is None


# ------------------------------------------------------------------------------------------------ release


def test_a_releases_analyses_names_and_paths():
    detail, _ = failing_errors(graph_url=GRAPH)
    release = {"stages": [{"stage": "build", "status": "success", "detail": {"artifact": "x"}},
                          {"stage": "wave_1.analysis", "status": "failed", "detail": detail},
                          {"stage": "wave_2.analysis", "status": "success",
                           "detail": {"label": "wave-2", "decision": "skipped", "reason": "empty wave"}}]}
    [found] = analyses(release)
    assert (found["stage"], found["label"], found["decision"], found["graph_url"], found["has_chart"]) == (
        "wave_1.analysis", "wave-1", "fail", GRAPH, True)
    assert found["rows"] == metric_rows(detail)
    assert stage_detail(release, "wave_1.analysis") == detail
    assert stage_detail(release, "wave_2.analysis") is None and stage_detail(release, "build") is None
    assert chart_path("demo_shop/manual__2026-11-22T10:00:00+00:00", "wave_1.analysis") == (
        "/conveyor/releases/demo_shop/manual__2026-11-22T10:00:00%2B00:00/charts/wave_1.analysis.svg")
    assert chart_file_name("RCA-0123456789", "wave_1.analysis") == "RCA-0123456789.wave_1.analysis.svg"
    assert chart_file_name("RCA-1", "../x/y") == "RCA-1..._x_y.svg"
