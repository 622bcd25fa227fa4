"""The metrics source: each host's Prometheus text endpoint, scraped over HTTP.

Returns :class:`conveyor.analysis.Scrape` records (cumulative counters); the judge turns them into
rates and handles counter resets. A host that does not answer yields ``None``: missing data is the
judge's business (it never passes on no data), not an exception here.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from airflow.sdk import BaseHook

from conveyor.hosts import Host


class MetricsHook(BaseHook):
    """Scrape hosts' ``metrics_url``.

    :param timeout: seconds per scrape.
    :param requests_metric: the counter of requests by ``status`` label.
    :param latency_metric: the latency histogram's base name.
    """

    conn_name_attr = "metrics_conn_id"
    default_conn_name = "conveyor_metrics"
    conn_type = "http"
    hook_name = "Conveyor host metrics (Prometheus text)"

    def __init__(self, *, timeout: float = 3.0, requests_metric: str = "shop_http_requests_total",
                 latency_metric: str = "shop_http_request_duration_seconds") -> None:
        super().__init__()
        self.timeout = timeout
        self.requests_metric = requests_metric
        self.latency_metric = latency_metric

    def fetch(self, host: Host) -> str | None:
        try:
            with urllib.request.urlopen(host.metrics_url, timeout=self.timeout) as resp:
                return resp.read(4 << 20).decode(errors="replace")
        except (OSError, ValueError) as e:
            self.log.info("no metrics from %s: %s", host.name, e)
            return None

    def scrape(self, host: Host):
        from conveyor.analysis import parse_prometheus

        text = self.fetch(host)
        if text is None:
            return None
        scrape = parse_prometheus(text, time.time(), requests_metric=self.requests_metric,
                                  latency_metric=self.latency_metric)
        return scrape if scrape.usable else None  # garbage or NaN counters: no data

    def scrape_dict(self, host: Host) -> dict[str, Any] | None:
        scrape = self.scrape(host)
        return scrape.to_dict() if scrape is not None else None

    def test_connection(self) -> tuple[bool, str]:
        return True, "Metrics are scraped from each host's metrics_url; nothing to test globally."
