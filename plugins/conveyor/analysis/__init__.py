"""Canary analysis: decide from Prometheus counters whether hosts on a new version regressed.

Pure Python (numpy, no Airflow import), so it is tested directly and benchmarked in
``bench/canary.py``. The API::

    from conveyor.analysis import Scrape, parse_prometheus, AnalysisSettings, MetricVerdict, Verdict, judge

    scrape = parse_prometheus(text, time.time())            # one host, one scrape, cumulative counters
    verdict = judge({"prod-1": [s0, s1, ...]},              # canary hosts -> scrapes so far
                    {"prod-2": [...], "prod-3": [...]},     # baseline hosts -> scrapes so far
                    AnalysisSettings.from_dict({"window_s": 300}), elapsed_s=42.0)
    verdict.decision      # "continue" (ask again after the next scrape) | "pass" | "fail" | "inconclusive"
    verdict.reason        # "error rate 5.1% vs 0.40% (x12.8, e=1.2e+04 > 400)"
    verdict.to_dict()     # JSON-able, for XCom and tickets

The judge may be asked after every scrape: its sequential tests are e-processes (always valid),
so looking often does not raise the false-rollback rate above ``alpha``. See ``docs/analysis.md``.
"""

from __future__ import annotations

from conveyor.analysis.judging import judge
from conveyor.analysis.model import AnalysisSettings, FleetMemory, MetricVerdict, Scrape, Verdict
from conveyor.analysis.prometheus import parse_prometheus

__all__ = ["AnalysisSettings", "FleetMemory", "MetricVerdict", "Scrape", "Verdict", "judge", "parse_prometheus"]
