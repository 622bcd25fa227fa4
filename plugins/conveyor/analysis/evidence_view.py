"""What a person reads about a canary analysis: a per-metric table and a chart of canary vs baseline.

Pure functions over an analysis' recorded detail (the ``CanaryAnalysisOperator``'s XCom and ledger stage
detail: ``{label, canary, baseline, elapsed_s, **Verdict.to_dict()}``, plus ``source`` and ``graph_url``
when the metrics source records them), no Airflow and no numpy: the ticket, the ``decide`` Required Action
and the release page render the same numbers the same way.

The detail may come from an older release or from a ledger that stored non-finite numbers as text
(``"NaN"``, ``"Infinity"``): whatever is absent or not a number is shown as ``—`` and never drawn, and a
detail without a per-interval ``details["timeline"]`` has a table but no chart.

The chart is a small self-contained SVG (no script, no external asset, every text escaped, inline
styles), the same bytes for the same detail: error rate and latency over the analysis window, canary
against baseline, with the time of the decision marked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlsplit

from conveyor.analysis.formatting import fmt_ms, fmt_rate, fmt_ratio

#: Where the Conveyor web app serves an analysis' chart (below the API server's base URL).
CHART_ROUTE = "/conveyor/releases/{release}/charts/{stage}.svg"
CANARY_COLOUR = "#c53030"
BASELINE_COLOUR = "#2b6cb0"
_DECISION_COLOUR = "#4a5568"
_FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\""
_FILE_SAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")
_QUANTILE_NAME_RE = re.compile(r"_?p(\d{1,2}(?:\.\d+)?)$")


# ---------------------------------------------------------------------------------------------- numbers


def _num(value: Any) -> float | None:
    """A finite number, else None (absent, text, NaN, an infinity, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> str:
    number = _num(value)
    return "—" if number is None else f"{number:,.0f}"


def _percent(rate: Any) -> str:
    return fmt_rate(_num(rate), missing="—")


def _ms(value: Any) -> str:
    """Milliseconds as the reasons write them."""
    value = _num(value)
    return fmt_ms(None if value is None else value / 1000, missing="—")


def _ratio(value: Any) -> str:
    return fmt_ratio(_num(value), missing="—", times="×")


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


# ---------------------------------------------------------------------------------------------- detail


def is_analysis(detail: Any) -> bool:
    """Whether a stage detail is a canary analysis' verdict (a skipped analysis has no metrics)."""
    return isinstance(detail, Mapping) and isinstance(detail.get("metrics"), list) and bool(detail["metrics"])


def timeline(detail: Mapping[str, Any]) -> dict[str, Any] | None:
    """The verdict's per-interval series (``details["timeline"]``) when it has at least one interval."""
    details = detail.get("details")
    line = details.get("timeline") if isinstance(details, Mapping) else None
    if not isinstance(line, Mapping) or not isinstance(line.get("t"), list):
        return None
    times = [_num(t) for t in line["t"]]
    if not times or any(t is None for t in times):
        return None
    return dict(line)


def graph_url(detail: Mapping[str, Any]) -> str | None:
    """The metrics source's graph link (Prometheus), only when it is an http(s) URL: a ledger row is
    not trusted to put a ``javascript:`` link in front of a person."""
    url = detail.get("graph_url")
    if not isinstance(url, str) or any(c in url for c in "<>\"'\n\r\t "):
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def chart_path(release_id: str, stage: str) -> str:
    """The web app's path of an analysis' chart (append it to the API server's base URL)."""
    return CHART_ROUTE.format(release=quote(release_id, safe="/:"), stage=quote(stage, safe=""))


def chart_file_name(ticket_id: str, stage: str) -> str:
    """The chart's file name beside a ticket (and attached to it): ``RCA-....wave_1.analysis.svg``."""
    return f"{_FILE_SAFE_RE.sub('_', ticket_id)}.{_FILE_SAFE_RE.sub('_', stage)}.svg"


def _quantile(metric: Mapping[str, Any]) -> float | None:
    """A latency verdict's quantile: ``samples["quantile"]``, else the metric's name (``latency_p99``)."""
    samples = metric.get("samples") if isinstance(metric.get("samples"), Mapping) else {}
    q = _num(samples.get("quantile"))
    if q is not None and 0 < q < 1:
        return q
    match = _QUANTILE_NAME_RE.search(str(metric.get("metric") or ""))
    return float(match.group(1)) / 100 if match else None


def _metric_name(metric: Mapping[str, Any]) -> tuple[str, str]:
    """``(kind, name for people)``: ``("errors", "error rate")``, ``("latency", "latency p99")``."""
    raw = str(metric.get("metric") or "?")
    if raw.startswith("latency"):
        q = _quantile(metric)
        return "latency", f"latency p{100 * q:g}" if q is not None else "latency"
    if raw == "errors":
        return "errors", "error rate"
    return "other", raw


def _look(decided_after_s: float, line: Mapping[str, Any] | None) -> str:
    """``look 12 of 30`` from the timeline (intervals ending by the decision), else nothing."""
    if line is None:
        return ""
    times = [float(t) for t in line["t"]]
    look = sum(1 for t in times if t <= decided_after_s + 1e-6)
    return f" (look {look} of {len(times)})" if look else ""


def _boundary(metric: Mapping[str, Any], line: Mapping[str, Any] | None) -> str:
    """The boundary crossed and when, or how far the canary's events were from it at the last look."""
    samples = metric.get("samples") if isinstance(metric.get("samples"), Mapping) else {}
    events, limit = _num(metric.get("events")), _num(metric.get("boundary"))
    decided = _num(samples.get("decided_after_s"))
    if metric.get("decision") == "fail" and decided is not None:
        crossed = f"{events:.0f} ≥ {limit:.0f}" if events is not None and limit is not None else "crossed"
        return f"{crossed} at {_seconds(decided)}{_look(decided, line)}"
    if events is None:
        return "—"
    if limit is None:
        return f"{events:.0f}, no limit yet"
    return f"{events:.0f} < {limit:.0f}, not crossed"


def metric_rows(detail: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric verdict, as text for people (Markdown and HTML), and the exact values.

    ``canary``/``baseline``: the error rate (%) or the latency quantile (ms); ``requests``: canary /
    baseline requests; ``events``: canary / baseline errors, or requests slower than the threshold;
    ``effect``: the tested ratio with its ``1 - alpha`` interval; ``boundary``: the boundary crossed and
    when (``decided_after_s``, and the look), or the events against it at the last look.
    """
    line = timeline(detail)
    rows = []
    for metric in detail.get("metrics") or []:
        if not isinstance(metric, Mapping):
            continue
        kind, name = _metric_name(metric)
        samples = metric.get("samples") if isinstance(metric.get("samples"), Mapping) else {}
        shown = _percent if kind == "errors" else _ms if kind == "latency" else _count
        if kind == "errors":
            events = f"{_count(samples.get('canary_errors'))} / {_count(samples.get('baseline_errors'))} errors"
        else:
            tau = _num(samples.get("threshold_s"))
            slower = f"slower than {_ms(1000 * tau)}" if tau is not None else "slow"
            events = f"{_count(samples.get('canary_slow'))} / {_count(samples.get('baseline_slow'))} {slower}"
        interval = metric.get("interval")
        effect = _ratio(metric.get("effect"))
        if isinstance(interval, list | tuple) and len(interval) == 2:
            lo, hi = _num(interval[0]), _num(interval[1])
            if lo is not None or hi is not None:
                effect += f" [{'—' if lo is None else f'{lo:.2f}'}, {'∞' if hi is None else f'{hi:.2f}'}]"
        rows.append({
            "metric": str(metric.get("metric") or "?"), "kind": kind, "name": name,
            "decision": str(metric.get("decision") or "?"), "reason": str(metric.get("reason") or ""),
            "canary": shown(metric.get("canary")), "baseline": shown(metric.get("baseline")),
            "requests": f"{_count(samples.get('canary_requests'))} / {_count(samples.get('baseline_requests'))}",
            "events": events, "effect": effect, "boundary": _boundary(metric, line),
            "decided_after_s": _num(samples.get("decided_after_s")),
            "values": {"canary": _num(metric.get("canary")), "baseline": _num(metric.get("baseline")),
                       "effect": _num(metric.get("effect"))},
        })
    return rows


# ---------------------------------------------------------------------------------------------- Markdown

TABLE_HEADER = ("metric", "canary", "baseline", "requests (canary / baseline)", "events (canary / baseline)",
                "effect [interval]", "boundary", "decision")


def _cell(text: str) -> str:
    """Text that stays in its Markdown table cell: pipes escaped, no line break."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(detail: Mapping[str, Any]) -> str:
    """The per-metric table in Markdown (GitHub and Airflow's Required Actions render it)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for row in metric_rows(detail):
        cells = (row["name"], row["canary"], row["baseline"], row["requests"], row["events"], row["effect"],
                 row["boundary"], f"**{row['decision']}**")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def analysis_markdown(detail: Mapping[str, Any], *, chart_url: str | None = None,
                      chart_file: str | None = None) -> str:
    """An analysis for people: its decision and reason, the source and its graph, the chart, the table.

    :param chart_url: where the chart is served (the release page's chart route); only linked when the
        detail has a timeline to draw.
    :param chart_file: the chart's file name beside the ticket (and attached to it).
    """
    label = _cell(str(detail.get("label") or "analysis"))
    decision = _cell(str(detail.get("decision") or "?"))
    lines = [f"**{label}**: **{decision}** — {_cell(str(detail.get('reason') or ''))}", ""]
    links = []
    if detail.get("source"):
        links.append(f"source: {_cell(str(detail['source']))}")
    graph = graph_url(detail)
    if graph:
        links.append(f"[Prometheus graph](<{graph}>)")
    if timeline(detail) is not None and (chart_url or chart_file):
        chart = "chart of canary vs baseline"
        if chart_url:
            chart = f"[{chart}](<{chart_url}>)"
        if chart_file:
            chart += f" (file `{chart_file}`)"
        links.append(chart)
    elapsed = _num(detail.get("elapsed_s"))
    if elapsed is not None:
        links.append(f"decided after {_seconds(elapsed)}")
    if links:
        lines += [" · ".join(links), ""]
    lines.append(markdown_table(detail))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- chart


def _rate_series(side: Mapping[str, Any] | None, n: int) -> list[float | None]:
    """Per interval: errors / requests in percent (None where either is missing or no request came)."""
    side = side if isinstance(side, Mapping) else {}
    requests, errors = _values(side.get("requests"), n), _values(side.get("errors"), n)
    return [100 * e / r if r is not None and e is not None and r > 0 else None for r, e in zip(requests, errors,
                                                                                          strict=True)]


def _values(raw: Any, n: int) -> list[float | None]:
    """``n`` numbers from a recorded list (None for what is absent or not a number)."""
    raw = raw if isinstance(raw, list) else []
    return [_num(raw[i]) if i < len(raw) else None for i in range(n)]


def _nice_max(peak: float) -> float:
    """The axis' top: 1, 2, 2.5 or 5 times a power of ten, at or over ``peak``."""
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= peak * (1 - 1e-9))


def _axis_text(value: float, unit: str) -> str:
    return f"{value:g}{unit}"


def _panel(parts: list[str], *, key: str, title: str, unit: str, top: float, times: Sequence[float],
           x_max: float, series: Sequence[tuple[str, str, Sequence[float | None]]],
           static: Sequence[tuple[str, str, float]], decided: float | None, decided_text: str, width: int,
           height: int) -> None:
    """One panel: axes, a polyline per series (split where data is missing), static baselines as lines."""
    left, right, pad_top, pad_bottom = 56, 12, 22, 22
    plot_w, plot_h = width - left - right, height - pad_top - pad_bottom
    values = [v for _, _, vs in series for v in vs if v is not None] + [v for _, _, v in static]
    y_max = _nice_max(max(values, default=0.0))

    def x(t: float) -> float:
        return left + plot_w * (t / x_max if x_max > 0 else 0.0)

    def y(v: float) -> float:
        return top + pad_top + plot_h * (1 - min(v, y_max) / y_max)

    base = top + pad_top + plot_h
    parts.append(f'<g data-panel="{escape(key)}">')
    parts.append(f'<text x="{left}" y="{top + 14:.0f}" font-size="12" font-weight="600" fill="#1a202c">'
                 f"{escape(title)}</text>")
    parts.append(f'<line x1="{left}" y1="{base:.1f}" x2="{left + plot_w}" y2="{base:.1f}" stroke="#718096"/>')
    parts.append(f'<line x1="{left}" y1="{top + pad_top}" x2="{left}" y2="{base:.1f}" stroke="#718096"/>')
    parts.append(f'<text x="{left - 4}" y="{top + pad_top + 4}" font-size="10" text-anchor="end" '
                 f'fill="#4a5568">{escape(_axis_text(y_max, unit))}</text>')
    parts.append(f'<text x="{left - 4}" y="{base:.1f}" font-size="10" text-anchor="end" fill="#4a5568">0</text>')
    parts.append(f'<text x="{left}" y="{base + 14:.1f}" font-size="10" fill="#4a5568">0 s</text>')
    parts.append(f'<text x="{left + plot_w}" y="{base + 14:.1f}" font-size="10" text-anchor="end" '
                 f'fill="#4a5568">{escape(_seconds(x_max))}</text>')
    for name, colour, v in static:  # under the lines, like a live baseline
        parts.append(f'<line data-series="{escape(name)}" x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" '
                     f'y2="{y(v):.1f}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>')
    for name, colour, vs in series:
        segment: list[tuple[float, float]] = []
        runs: list[list[tuple[float, float]]] = []
        for t, v in zip(times, vs, strict=True):
            if v is None:
                if segment:
                    runs.append(segment)
                segment = []
            else:
                segment.append((x(t), y(v)))
        if segment:
            runs.append(segment)
        for run in runs:
            points = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            parts.append(f'<polyline data-series="{escape(name)}" points="{points}" fill="none" '
                         f'stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>')
            if len(run) == 1:  # a lone interval between gaps: a dot, since a one-point line is invisible
                parts.append(f'<circle data-series="{escape(name)}" cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" '
                             f'r="2.5" fill="{colour}"/>')
    if decided is not None:
        xd = x(min(decided, x_max))
        parts.append(f'<line data-marker="decision" x1="{xd:.1f}" y1="{top + pad_top}" x2="{xd:.1f}" '
                     f'y2="{base:.1f}" stroke="{_DECISION_COLOUR}" stroke-dasharray="3 3"/>')
        if decided_text:
            # right of an early marker, left of a late one: the label stays inside the plot
            tx, anchor = (xd + 4, "start") if xd - left < plot_w / 2 else (xd - 4, "end")
            parts.append(f'<text x="{tx:.1f}" y="{top + pad_top + 10:.0f}" font-size="10" text-anchor="{anchor}" '
                         f'fill="{_DECISION_COLOUR}">{escape(decided_text)}</text>')
    parts.append("</g>")


def chart_svg(detail: Mapping[str, Any], *, title: str | None = None, width: int = 640) -> str | None:
    """Canary vs baseline over the analysis window as a standalone SVG document, or None without a timeline.

    Two panels, time since the analysis started on x: the error rate per interval (%) and the latency
    p99 per interval (ms; p75 when no p99 was recorded). A static baseline (the pre-deploy snapshot) is
    a dashed horizontal line; a dashed vertical line marks the decision (the first failing metric's
    ``decided_after_s``, else the analysis' end).
    """
    line = timeline(detail)
    if line is None:
        return None
    times = [float(t) for t in line["t"]]
    n = len(times)
    canary = line.get("canary") if isinstance(line.get("canary"), Mapping) else {}
    baseline = line.get("baseline") if isinstance(line.get("baseline"), Mapping) else None
    static = line.get("baseline_static") if isinstance(line.get("baseline_static"), Mapping) else None
    quantile = "p99"
    if not any(v is not None for v in _values(canary.get("p99_ms"), n)) and any(
            v is not None for v in _values(canary.get("p75_ms"), n)):
        quantile = "p75"
    decided = [r["decided_after_s"] for r in metric_rows(detail)
               if r["decision"] == "fail" and r["decided_after_s"] is not None]
    elapsed = _num(detail.get("elapsed_s"))
    marker = min(decided) if decided else elapsed
    marker_text = "" if marker is None else f"{detail.get('decision') or '?'} at {_seconds(marker)}"
    x_max = max(times[-1], marker or 0.0)

    error_series = [("canary", CANARY_COLOUR, _rate_series(canary, n))]
    latency_series = [("canary", CANARY_COLOUR, _values(canary.get(f"{quantile}_ms"), n))]
    error_static: list[tuple[str, str, float]] = []
    latency_static: list[tuple[str, str, float]] = []
    if baseline is not None:  # drawn first, so the canary's line stays visible where the two meet
        error_series.insert(0, ("baseline", BASELINE_COLOUR, _rate_series(baseline, n)))
        latency_series.insert(0, ("baseline", BASELINE_COLOUR, _values(baseline.get(f"{quantile}_ms"), n)))
    elif static is not None:
        rate, latency = _num(static.get("error_rate")), _num(static.get(f"{quantile}_ms"))
        if rate is not None:
            error_static.append(("baseline", BASELINE_COLOUR, 100 * rate))
        if latency is not None:
            latency_static.append(("baseline", BASELINE_COLOUR, latency))

    label = str(detail.get("label") or "analysis")
    heading = title or f"{label}: {detail.get('decision') or '?'}, canary vs baseline"
    panel_h, head_h = 150, 28
    height = head_h + 2 * panel_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(heading)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" {_FONT}>',
        f"<title>{escape(heading)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-size="13" font-weight="600" fill="#1a202c">{escape(heading)}</text>',
    ]
    base_name = "baseline (pre-deploy)" if static is not None and baseline is None else "baseline"
    for xl, name, colour in ((width - 250, "canary", CANARY_COLOUR), (width - 180, base_name, BASELINE_COLOUR)):
        parts.append(f'<rect x="{xl}" y="9" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{xl + 13}" y="18" font-size="11" fill="#1a202c">{escape(name)}</text>')
    _panel(parts, key="errors", title="error rate per interval", unit="%", top=head_h, times=times,
           x_max=x_max, series=error_series, static=error_static, decided=marker, decided_text=marker_text,
           width=width, height=panel_h)
    _panel(parts, key="latency", title=f"latency {quantile} per interval", unit=" ms", top=head_h + panel_h,
           times=times, x_max=x_max, series=latency_series, static=latency_static, decided=marker,
           decided_text="", width=width, height=panel_h)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- a release


def analyses(release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A ledger release record's analyses, in stage order: stage, label, decision, reason, the table's rows,
    the graph link and whether a chart can be drawn."""
    found = []
    for stage in release.get("stages") or []:
        detail = stage.get("detail")
        if not is_analysis(detail):
            continue
        found.append({"stage": stage.get("stage"), "status": stage.get("status"),
                      "label": detail.get("label") or stage.get("stage"), "decision": detail.get("decision"),
                      "reason": detail.get("reason"), "source": detail.get("source"),
                      "elapsed_s": _num(detail.get("elapsed_s")), "rows": metric_rows(detail),
                      "graph_url": graph_url(detail), "has_chart": timeline(detail) is not None})
    return found


def stage_detail(release: Mapping[str, Any], stage: str) -> dict[str, Any] | None:
    """The analysis detail of one of a release's stages, or None (no such stage, or not an analysis)."""
    for row in release.get("stages") or []:
        if row.get("stage") == stage and is_analysis(row.get("detail")):
            return dict(row["detail"])
    return None
