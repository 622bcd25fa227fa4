"""How an analysis' numbers are written for people: the verdict's reasons, the evidence table, the chart.

One place, so a reason and the table beside it never show the same number two ways. ``missing`` is what
stands for a number that is absent or not finite (the reasons say ``n/a``, the table ``—``).
"""

from __future__ import annotations

import math


def _finite(value: float | None) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(value)


def fmt_rate(rate: float | None, missing: str = "n/a") -> str:
    """A rate (a fraction) as a percentage: two decimals under 10%, one above."""
    if not _finite(rate):
        return missing
    return f"{100 * rate:.2f}%" if rate < 0.1 else f"{100 * rate:.1f}%"


def fmt_ratio(ratio: float | None, missing: str = "x?", times: str = "x") -> str:
    """A ratio as ``x1.23`` (``x12.3`` from 10 on; ``x inf`` for a canary erring against a clean baseline)."""
    if ratio is not None and math.isinf(ratio):
        return f"{times} inf"
    if not _finite(ratio):
        return missing
    return f"{times}{ratio:.2f}" if ratio < 10 else f"{times}{ratio:.1f}"


def fmt_ms(seconds: float | None, missing: str = "n/a") -> str:
    """A duration in seconds as milliseconds: one decimal under 10 ms, none above."""
    if not _finite(seconds):
        return missing
    return f"{1000 * seconds:.0f} ms" if seconds >= 0.01 else f"{1000 * seconds:.1f} ms"
