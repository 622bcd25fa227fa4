from __future__ import annotations

from shophttp import call


def test_search_ignores_case(urls):
    status, body = call(f"{urls[0]}/search?q=lamp")
    assert status == 200
    assert body["products"], "searching 'lamp' should find the Lamps"
