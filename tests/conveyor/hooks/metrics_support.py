"""What the metric-source tests share: fake app hosts serving /metrics, a broken Prometheus, moto's
CloudWatch, and a way to run the real analysis trigger to its one event."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conveyor.hosts import Host

BUCKETS = (0.025, 0.05, 0.1, 0.25)
SHARES = (0.1, 0.6, 0.9, 1.0)  # cumulative share of requests at or under each bound


def send_exposition(handler: BaseHTTPRequestHandler, body: str) -> None:
    """Answer ``handler``'s request with ``body`` as Prometheus' text exposition format."""
    data = body.encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain; version=0.0.4")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Server:
    def __init__(self, address: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer((address, 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_port

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class AppHost(_Server):
    """One app host's ``/metrics`` on ``address`` (a port of its own): requests grow at ``rate`` per
    second from ``base``, ``error_share`` of them 500, with custom metric names when asked."""

    def __init__(self, address: str, *, rate: float = 0.0, error_share: float = 0.0, base: int = 1000,
                 requests_metric: str = "shop_http_requests_total", status_label: str = "status",
                 latency_metric: str = "shop_http_request_duration_seconds",
                 start_metric: str = "process_start_time_seconds", start_time: float = 1_700_000_000.0) -> None:
        self.address, self.rate, self.error_share, self.base = address, rate, error_share, base
        self.names = (requests_metric, status_label, latency_metric, start_metric)
        self.start_time = start_time
        self.t0 = time.time()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                send_exposition(self, owner.exposition())

            def log_message(self, *args):
                pass

        super().__init__(address, Handler)

    def counts(self) -> tuple[int, int]:
        total = self.base + int(self.rate * (time.time() - self.t0))
        err = round(total * self.error_share)
        return total - err, err

    def exposition(self) -> str:
        req, status, lat, start = self.names
        ok, err = self.counts()
        total = ok + err
        lines = [f'{req}{{method="GET",{status}="200"}} {ok}', f'{req}{{method="GET",{status}="500"}} {err}']
        lines += [f'{lat}_bucket{{le="{b}"}} {round(total * s)}' for b, s in zip(BUCKETS, SHARES, strict=True)]
        lines += [f'{lat}_bucket{{le="+Inf"}} {total}', f"{lat}_sum {total * 0.06}", f"{lat}_count {total}",
                  f"{start} {self.start_time}"]
        return "\n".join(lines) + "\n"

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def host(self, name: str) -> Host:
        return Host(name=name, environment="production", address=self.address,
                    metrics_url=f"http://{self.address}:{self.port}/metrics")


class BrokenPrometheus(_Server):
    """Answers ``/api/v1/query`` the way a broken Prometheus (or what stands in its place) does:
    ``html``, ``garbage``, ``nan``, ``empty``, ``error`` (a query error), ``other_hosts``."""

    def __init__(self, mode: str, *, hosts: list[str] = ()) -> None:
        self.mode = mode
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
                owner.queries.append(query)
                status, ctype, body = owner.answer(query, hosts)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__("127.0.0.1", Handler)

    def answer(self, query: str, hosts: list[str]) -> tuple[int, str, str]:
        now = time.time()
        if self.mode == "html":
            return 200, "text/html", "<html><body><h1>Login</h1></body></html>"
        if self.mode == "garbage":
            return 200, "text/plain", "\x00\x01 definitely not json"
        if self.mode == "error":
            return 400, "application/json", json.dumps({"status": "error", "errorType": "bad_data",
                                                        "error": "parse error at char 5"})
        if self.mode == "empty":
            result = []
        else:
            value = "NaN" if self.mode == "nan" else "100"
            labels = ({"instance": h, "status": "200", "le": "+Inf"} for h in
                      (hosts if self.mode == "nan" else ["10.9.9.9:8000"]))
            result = [{"metric": lb, "value": [now, value]} for lb in labels]
        return 200, "application/json", json.dumps({"status": "success",
                                                    "data": {"resultType": "vector", "result": result}})

    def connection(self) -> str:
        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.port})


def first_event(trigger, timeout: float = 60.0) -> dict:
    """Run the trigger (as the triggerer does) until its one event; return the payload."""

    async def run() -> dict:
        events = trigger.run()
        try:
            return (await asyncio.wait_for(anext(events), timeout)).payload
        finally:
            await events.aclose()

    return asyncio.run(run())
