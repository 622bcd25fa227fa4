"""Number formatting and inline SVG bar charts for the Conveyor pages: pure functions, no Airflow.

The pages are rendered on the server, so they work without JavaScript and without any asset from the
internet; every chart is an ``<svg>`` element whose bars carry their exact value (``data-value``) and a
tooltip (``<title>``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any


def duration(seconds: float | None) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``5.5 h``, ``3.2 d``; ``—`` when unknown."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def percent(rate: float | None) -> str:
    """A rate in [0, 1] as a percentage with one decimal; ``—`` when undefined."""
    return "—" if rate is None else f"{rate * 100:.1f}%"


def per_day(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}/day"


def data_value(value: Any) -> str:
    """The exact value for a ``data-value`` attribute (``repr`` of floats, so the JSON's number round-trips)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def bar_chart(
    series: Sequence[Mapping[str, Any]],
    bars: Sequence[tuple[str, str, str]],
    *,
    title: str,
    formatter: Callable[[float | None], str] = lambda v: "—" if v is None else f"{v:g}",
    chart_id: str,
    width: int = 720,
    height: int = 170,
    label_key: str = "date",
) -> str:
    """An SVG bar chart of a per-day series, one group of bars per day.

    :param series: the days, oldest first (``date`` plus the values).
    :param bars: ``(key, label, colour)`` per bar of a group.
    :param formatter: turns a value into the text of its tooltip and of the axis maximum.
    :param label_key: the key naming each group (``date``; a category such as ``stage`` for a chart of
        counts per category). Bars carry it as ``data-date`` either way.
    """
    left, right, top, bottom = 56, 8, 22, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [day.get(key) for day in series for key, _, _ in bars]
    peak = max((v for v in values if v is not None), default=0) or 1
    slot = plot_w / max(len(series), 1)
    bar_w = max(1.0, (slot * 0.8) / len(bars))
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="tick">{escape(formatter(peak))}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="tick">0</text>',
    ]
    for i, day in enumerate(series):
        x0 = left + i * slot + slot * 0.1
        for j, (key, label, colour) in enumerate(bars):
            value = day.get(key)
            h = 0.0 if value is None else plot_h * value / peak
            x = x0 + j * bar_w
            tip = f"{day[label_key]} {label}: {formatter(value)}"
            parts.append(
                f'<rect class="bar" data-date="{escape(str(day[label_key]))}" data-key="{escape(key)}" '
                f'data-value="{escape(data_value(value))}" x="{x:.2f}" y="{top + plot_h - h:.2f}" '
                f'width="{bar_w:.2f}" height="{h:.2f}" fill="{escape(colour)}"><title>{escape(tip)}</title></rect>'
            )
    if series:
        parts.append(f'<text x="{left}" y="{height - 6}" class="tick">{escape(str(series[0][label_key]))}</text>')
        parts.append(
            f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end" class="tick">'
            f"{escape(str(series[-1][label_key]))}</text>"
        )
    if len(bars) > 1:
        x = left + plot_w
        for key_label, colour in reversed([(label, colour) for _, label, colour in bars]):
            text = escape(key_label)
            x -= 12 + 7 * len(key_label)
            parts.append(f'<rect x="{x:.0f}" y="5" width="9" height="9" fill="{escape(colour)}"/>')
            parts.append(f'<text x="{x + 12:.0f}" y="14" class="tick">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)
