"""The demo shop's feature flags, on a real shop server in this process: sticky variants, the flags'
behaviours, and metrics labelled by variant that leave the totals the judge reads unchanged."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from conveyor.analysis.prometheus import parse_prometheus
from conveyor_lab.demo import APP_DIR

sys.path.insert(0, str(APP_DIR))
from shop import flags as shop_flags  # the demo app, from its own directory (above)
from shop import server as shop_server


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """A running shop whose flags file is ``tmp_path/flags.json``; yields ``(base_url, flags_path)``."""
    path = tmp_path / "flags.json"
    monkeypatch.setenv(shop_flags.FLAGS_FILE_ENV, str(path))
    app = shop_server.Shop(tmp_path / "data")
    handler = type("TestShopHandler", (shop_server.Handler,), {"shop": app})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(shop_server, "SERVICE_TIME_MEDIAN_S", 0.0)
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", path
    finally:
        httpd.shutdown()
        httpd.server_close()


def get(url: str, *, user: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"X-Shop-User": user} if user else {}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def write_flags(path, **flags) -> None:
    path.write_text(json.dumps({name: {"enabled": True, "rollout": share} for name, share in flags.items()}))


def test_buckets_are_sticky_and_a_bigger_share_keeps_the_smaller_one():
    users = [f"u{i}" for i in range(1000)]
    at5 = {u for u in users if shop_flags.bucket("new_checkout", u) < 5}
    at25 = {u for u in users if shop_flags.bucket("new_checkout", u) < 25}
    assert at5 < at25
    assert 20 <= len(at5) <= 80 and 180 <= len(at25) <= 320  # ~5% and ~25% of 1000 users
    assert at5 != {u for u in users if shop_flags.bucket("fast_recommendations", u) < 5}  # per flag


def test_without_a_flags_file_nothing_changes(shop):
    base, _ = shop
    status, body = get(f"{base}/cart", user="u1", body={"items": [{"id": 1, "quantity": 1}]})
    assert status == 200 and "checkout" not in json.loads(body)
    assert "shop_flag_" not in get(f"{base}/metrics")[1]


def test_new_checkout_marks_the_cart_for_users_in_the_rollout_only(shop):
    base, path = shop
    write_flags(path, new_checkout=30)
    on = next(u for u in (f"u{i}" for i in range(100)) if shop_flags.bucket("new_checkout", u) < 30)
    off = next(u for u in (f"u{i}" for i in range(100)) if shop_flags.bucket("new_checkout", u) >= 30)
    cart = {"items": [{"id": 1, "quantity": 1}]}
    assert json.loads(get(f"{base}/cart", user=on, body=cart)[1])["checkout"] == "new"
    assert json.loads(get(f"{base}/cart?user={on}", body=cart)[1])["checkout"] == "new"  # the query parameter too
    assert "checkout" not in json.loads(get(f"{base}/cart", user=off, body=cart)[1])
    assert "checkout" not in json.loads(get(f"{base}/cart", body=cart)[1])  # no user: only at 100%


def test_fast_recommendations_fails_flag_on_requests_and_the_metrics_say_which(shop):
    base, path = shop
    write_flags(path, fast_recommendations=50)
    users = [f"u{i}" for i in range(200)]
    on = [u for u in users if shop_flags.bucket("fast_recommendations", u) < 50][:10]
    off = [u for u in users if shop_flags.bucket("fast_recommendations", u) >= 50][:10]
    on_statuses = [get(f"{base}/recommendations/3", user=u)[0] for u in on * 20]
    off_statuses = [get(f"{base}/recommendations/3", user=u)[0] for u in off * 20]
    assert set(off_statuses) == {200}
    assert 500 in on_statuses and 200 in on_statuses  # a quarter fail: P(none of 200) ~ 1e-25

    text = get(f"{base}/metrics")[1]
    failed = on_statuses.count(500)
    assert 'shop_flag_requests_total{flag="fast_recommendations",variant="on",method="GET",' in text
    assert (f'shop_flag_requests_total{{flag="fast_recommendations",variant="off",method="GET",'
            f'route="/recommendations/:id",status="200"}} {len(off_statuses)}') in text
    # The judge's own parser still reads the whole traffic from the unlabelled families.
    scrape = parse_prometheus(text, 0.0)
    assert scrape.requests == {"200": len(off_statuses) + on_statuses.count(200), "500": failed}
    assert scrape.latency_count == len(on_statuses) + len(off_statuses)
    # ... and reads one variant from the flag families.
    flag_on = parse_prometheus("\n".join(line for line in text.splitlines() if 'variant="on"' in line), 0.0,
                               requests_metric="shop_flag_requests_total",
                               latency_metric="shop_flag_request_duration_seconds")
    assert flag_on.requests == {"200": on_statuses.count(200), "500": failed}
    assert flag_on.latency_count == len(on_statuses)


def test_a_malformed_flags_file_keeps_the_last_good_flags(shop):
    base, path = shop
    write_flags(path, new_checkout=100)
    cart = {"items": [{"id": 1, "quantity": 1}]}
    assert json.loads(get(f"{base}/cart", body=cart)[1])["checkout"] == "new"
    path.write_text('{"new_checkout": ')
    assert json.loads(get(f"{base}/cart", body=cart)[1])["checkout"] == "new"
    path.unlink()
    assert "checkout" not in json.loads(get(f"{base}/cart", body=cart)[1])
