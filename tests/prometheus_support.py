"""A real Prometheus server for tests: Debian's ``/usr/bin/prometheus`` with its own config and storage.

Never the packaged system service: the binary runs as a child of the test on a free loopback port,
its data in a temporary directory, and is stopped by its pid. Tests that need it skip, saying so,
when the binary is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"


def need_prometheus() -> str:
    if not Path(PROMETHEUS_BIN).exists():
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus; .ci/run does it)")
    return PROMETHEUS_BIN


class PrometheusServer:
    """Prometheus scraping ``targets`` (``host:port`` with ``/metrics``) every ``interval_s``.

    :param targets: job name -> list of ``host:port``.
    """

    def __init__(self, targets: dict[str, list[str]], *, interval_s: float = 1.0) -> None:
        from conveyor_lab.fleet.spec import free_ports

        [self.port] = free_ports(1)
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-prometheus-"))
        config = {
            "global": {"scrape_interval": f"{int(interval_s * 1000)}ms", "scrape_timeout": f"{int(interval_s * 800)}ms"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                               for job, hosts in targets.items()],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self) -> str:
        """An ``http`` connection to this server (for ``AIRFLOW_CONN_<ID>``)."""
        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http"})

    def start(self) -> PrometheusServer:
        binary = need_prometheus()
        self._log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus did not become ready within 30 s")

    def query(self, expr: str, at: float | None = None) -> list:
        """``expr`` now, or at the time ``at`` (seconds since the epoch)."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]

    def wait_for(self, expr: str, count: int, timeout: float = 30) -> list:
        """Until ``expr`` answers at least ``count`` series (the targets were scraped), evaluated as
        Conveyor's source evaluates it (``QUERY_LAG_S`` in the past)."""
        from conveyor.hooks.metrics import QUERY_LAG_S

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr, at=time.time() - QUERY_LAG_S)
            if len(result) >= count:
                return result
            time.sleep(0.3)
        raise AssertionError(f"prometheus: {expr} has fewer than {count} series after {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
