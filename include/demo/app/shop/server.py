"""The shop's HTTP API (stdlib ``ThreadingHTTPServer``).

``GET /health``, ``GET /metrics``, ``GET /products[?page=&per_page=]``, ``GET /products/<id>``,
``GET /search?q=``, ``GET /recommendations/<id>``, ``POST /cart`` with ``{"items": [{"id", "quantity"}]}``.

Feature flags (:mod:`shop.flags`) are decided per request by the user id in the ``user`` query
parameter or the ``X-Shop-User`` header: ``new_checkout`` marks the cart's answer
(``"checkout": "new"``), ``fast_recommendations`` makes recommendations fail like v1.2.0 does.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from shop import cart, catalog, release
from shop.flags import Flags
from shop.metrics import Metrics

# Simulated work per API request: lognormal, median 15 ms.
SERVICE_TIME_MEDIAN_S = 0.015
SERVICE_TIME_SIGMA = 0.35
# fast_recommendations, where on: the share of /recommendations requests that fail. Recommendations are
# a fifth of the fleet's traffic (conveyor_lab.demo.traffic_request), so about 5% of flag-on requests.
FAST_RECOMMENDATIONS_FAILURE_RATE = 0.25
MAX_USER_LENGTH = 128


def build_version() -> str:
    info = Path(__file__).with_name("BUILD_INFO.json")
    if info.exists():
        return json.loads(info.read_text())["version"]
    return release.VERSION


class Shop:
    """The shop's state. The catalog is re-read when ``products.json`` changes (populate runs after start)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.version = build_version()
        self.metrics = Metrics(self.version)
        self.flags = Flags()
        self._stamp: float | None = None
        self.products: list[dict] = []
        self.by_id: dict[int, dict] = {}
        self.refresh()

    def refresh(self) -> None:
        path = self.data_dir / "products.json"
        stamp = path.stat().st_mtime if path.exists() else None
        if stamp != self._stamp or not self.products:
            products = catalog.load(self.data_dir)
            self.products, self.by_id, self._stamp = products, {p["id"]: p for p in products}, stamp
        self.flags.refresh()


class Handler(BaseHTTPRequestHandler):
    server_version = "shop"
    shop: Shop  # set on the subclass made by serve()

    def log_message(self, format, *args):  # keep the access log quiet
        pass

    def _send(self, status: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _timed(self, method: str) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        route, status = url.path, 500
        self.shop.refresh()
        query = parse_qs(url.query)
        user = (query.get("user", [""])[0] or self.headers.get("X-Shop-User") or "")[:MAX_USER_LENGTH] or None
        variants = {flag: self.shop.flags.on(flag, user) for flag in self.shop.flags.names()}
        try:
            if url.path == "/health":
                route, status = "/health", 200
                self._send(200, {"status": "ok", "version": self.shop.version, "products": len(self.shop.products)})
                return
            if url.path == "/metrics":
                route, status = "/metrics", 200
                self._send(200, self.shop.metrics.render(), "text/plain; version=0.0.4")
                return
            time.sleep(random.lognormvariate(0, SERVICE_TIME_SIGMA) * SERVICE_TIME_MEDIAN_S + release.EXTRA_LATENCY_S)
            route, status, body = self._route(method, url.path, query, variants)
            self._send(status, body)
        except Exception as e:  # a server error is an HTTP 500, counted like any other
            status = 500
            self._send(500, {"error": f"{type(e).__name__}: {e}"})
        finally:
            if route not in ("/health", "/metrics"):
                seconds = time.perf_counter() - started
                self.shop.metrics.observe(method, route, status, seconds)
                if variants:
                    self.shop.metrics.observe_flags(variants, method, route, status, seconds)

    def _route(self, method: str, path: str, query: dict, variants: dict[str, bool]):
        shop = self.shop
        if method == "GET" and path == "/products":
            page = max(1, int(query.get("page", ["1"])[0]))
            per_page = min(100, max(1, int(query.get("per_page", ["20"])[0])))
            items = shop.products[(page - 1) * per_page: page * per_page]
            return "/products", 200, {"products": items, "total": len(shop.products), "page": page}
        if method == "GET" and (m := re.fullmatch(r"/products/(\d+)", path)):
            product = shop.by_id.get(int(m[1]))
            return "/products/:id", (200 if product else 404), (product or {"error": "no such product"})
        if method == "GET" and path == "/search":
            q = query.get("q", [""])[0]
            return "/search", 200, {"products": catalog.search(shop.products, q)[:50]}
        if method == "GET" and (m := re.fullmatch(r"/recommendations/(\d+)", path)):
            failure_rate = release.RECOMMENDATIONS_FAILURE_RATE
            if variants.get("fast_recommendations"):
                failure_rate = max(failure_rate, FAST_RECOMMENDATIONS_FAILURE_RATE)
            if random.random() < failure_rate:
                raise RuntimeError("recommendation model returned no candidates")
            pid = int(m[1])
            picks = [shop.products[(pid * 7 + k * 13) % len(shop.products)] for k in range(5)] if shop.products else []
            return "/recommendations/:id", 200, {"products": picks}
        if method == "POST" and path == "/cart":
            length = int(self.headers.get("Content-Length") or 0)
            try:
                items = json.loads(self.rfile.read(length) or b"{}").get("items", [])
                lines = [(shop.by_id[int(i["id"])]["price_cents"], int(i["quantity"])) for i in items]
                answer = {"total_cents": cart.cart_total(lines), "items": len(lines)}
                if variants.get("new_checkout"):
                    answer["checkout"] = "new"
                return "/cart", 200, answer
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                return "/cart", 400, {"error": f"bad cart: {e}"}
        return "other", 404, {"error": "not found"}

    def do_GET(self):
        self._timed("GET")

    def do_POST(self):
        self._timed("POST")


def serve(host: str, port: int, data_dir: Path) -> None:
    missing = [name for name in release.REQUIRED_SETTINGS if not os.environ.get(name)]
    if missing:
        print(f"shop: cannot start: required setting(s) {', '.join(missing)} not set", file=sys.stderr)
        raise SystemExit(1)
    shop = Shop(data_dir)
    handler = type("ShopHandler", (Handler,), {"shop": shop})
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    httpd = ThreadingHTTPServer((host, port), handler)
    print(f"shop {shop.version} serving {len(shop.products)} products on http://{host}:{port}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
