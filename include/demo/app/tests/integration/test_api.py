from __future__ import annotations

import os

from shophttp import call


def test_health_reports_the_candidate(urls):
    expected = os.environ.get("CONVEYOR_VERSION")
    for url in urls:
        status, body = call(f"{url}/health")
        assert status == 200 and body["status"] == "ok"
        if expected:
            assert body["version"] == expected


def test_catalog_is_populated(urls):
    for url in urls:
        status, body = call(f"{url}/products?per_page=5")
        assert status == 200
        assert body["total"] >= 100, "the replica should hold the populated catalog"
        assert len(body["products"]) == 5


def test_product_detail_and_404(urls):
    status, body = call(f"{urls[0]}/products/3")
    assert status == 200 and body["id"] == 3
    status, _ = call(f"{urls[0]}/products/99999999")
    assert status == 404


def test_cart_total(urls):
    _, product = call(f"{urls[0]}/products/1")
    status, body = call(f"{urls[0]}/cart", {"items": [{"id": 1, "quantity": 2}]})
    assert status == 200 and body["total_cents"] == 2 * product["price_cents"]


def test_bad_cart_is_a_client_error(urls):
    status, _ = call(f"{urls[0]}/cart", {"items": [{"id": "x"}]})
    assert status == 400
