"""The regression calendar's page and JSON (issue 14): the year's rotation from the service file, each
month's areas with their result that month, and each area's last result and date, from a real SQLite
ledger, behind the UI's login."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conveyor.ledger import Ledger
from conveyor.web.app import URL_PREFIX, create_app
from tests.conveyor.web.test_app import auth_manager, token  # noqa: F401 - the login fixtures

ROOT = Path(__file__).resolve().parents[3]
MARCH = dt.datetime(2026, 3, 1, 6, 5, tzinfo=dt.UTC)


@pytest.fixture
def calendar_client(tmp_path, monkeypatch, token) -> Iterator[TestClient]:  # noqa: F811
    """demo_shop (the demo's rotation: cart, catalog, api, one a month) with March 2026 failing its cart area
    and December 2025 passing api; ``plain`` has no regression section."""
    services = tmp_path / "services"
    services.mkdir()
    demo = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    (services / "demo_shop.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))  # the areas in order
    plain = {k: v for k, v in demo.items() if k != "regression"}
    (services / "plain.yaml").write_text(yaml.safe_dump({**plain, "id": "plain"}))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upsert_regression_result("demo_shop", "2025-12", "api", release_id="demo_shop/r0", outcome="passed",
                                    passed=4, failed=0, failing_tests=[], version="v1.0.0", ticket_id=None,
                                    at=MARCH - dt.timedelta(days=90))
    ledger.upsert_regression_result("demo_shop", "2026-03", "api", release_id="demo_shop/r1", outcome="failed",
                                    passed=3, failed=1, failing_tests=["t.api.test_x"], version="v1.1.0",
                                    ticket_id="RCA-ABC", at=MARCH)
    root = FastAPI()
    root.mount(URL_PREFIX, create_app(lambda: ledger))
    with TestClient(root, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
    ledger.dispose()


def test_the_json_gives_each_months_areas_and_each_areas_last_result(calendar_client):
    response = calendar_client.get("/conveyor/api/regression", params={"service": "demo_shop", "year": 2026})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["service"], body["year"], body["areas"], body["rotation"]) == (
        "demo_shop", 2026, ["cart", "catalog", "api"], {"per_month": 1})
    assert [(m["month"], m["name"], [a["area"] for a in m["areas"]]) for m in body["months"][:4]] == [
        ("2026-01", "jan", ["cart"]), ("2026-02", "feb", ["catalog"]), ("2026-03", "mar", ["api"]),
        ("2026-04", "apr", ["cart"])]
    [march] = body["months"][2]["areas"]
    assert {k: march["result"][k] for k in ("outcome", "failed", "failing_tests", "version", "ticket_id")} == {
        "outcome": "failed", "failed": 1, "failing_tests": ["t.api.test_x"], "version": "v1.1.0",
        "ticket_id": "RCA-ABC"}
    assert body["months"][0]["areas"][0]["result"] is None  # January's cart did not run
    assert body["last"]["cart"] is None and body["last"]["api"]["month"] == "2026-03"
    assert dt.datetime.fromisoformat(body["last"]["api"]["at"]) == MARCH

    last_year = calendar_client.get("/conveyor/api/regression?service=demo_shop&year=2025").json()
    assert last_year["months"][11]["areas"][0]["result"]["outcome"] == "passed"  # December 2025: api
    assert last_year["last"]["api"]["month"] == "2026-03"  # the last result, whatever the year shown


@pytest.mark.parametrize(("query", "status", "message"), [
    ("service=plain", 404, "service 'plain' has no regression: section"),
    ("service=nope", 404, "no service file for 'nope'"),
    ("service=Bad!", 422, "service must be a service id"),
    ("service=demo_shop&year=99", 422, "greater than or equal to 1970"),
    ("", 422, "service"),
])
def test_bad_queries_get_a_clear_error(calendar_client, query, status, message):
    response = calendar_client.get(f"/conveyor/api/regression?{query}")
    assert response.status_code == status and message in str(response.json()["detail"]), response.text


def test_the_page_shows_the_year_and_the_last_result_of_each_area(calendar_client):
    response = calendar_client.get("/conveyor/regression", params={"year": 2026})
    assert response.status_code == 200, response.text
    page = response.text
    assert "Regression calendar · demo_shop · 2026" in html.unescape(page)
    assert '<option value="demo_shop" selected>' in page and 'value="plain"' not in page
    march = re.search(r'<tr data-month="2026-03">(.*?)</tr>', page, re.S)[1]
    assert 'data-area="api" data-outcome="failed"' in march and "RCA-ABC" in march and "2026-03-01" in march
    assert 'data-area="cart" data-outcome="not-run"' in re.search(r'<tr data-month="2026-01">(.*?)</tr>', page, re.S)[1]
    api = re.search(r'<tr data-area="api">(.*?)</tr>', page, re.S)[1]
    assert "failed" in api and "2026-03-01 06:05" in api and "t.api.test_x" in api
    assert "never run yet" in re.search(r'<tr data-area="cart">(.*?)</tr>', page, re.S)[1]
    assert '<a href="/conveyor/regression">Regression calendar</a>' in page


def test_the_page_and_the_json_need_a_login(calendar_client):
    calendar_client.headers.pop("Authorization")
    assert calendar_client.get("/conveyor/api/regression?service=demo_shop").status_code == 401
    assert calendar_client.get("/conveyor/regression").status_code == 401


def test_a_rotation_by_month_is_given_as_the_file_gives_it(calendar_client, tmp_path):
    path = tmp_path / "services" / "demo_shop.yaml"
    demo = yaml.safe_load(path.read_text())
    demo["regression"]["rotation"] = {"months": {"mar": ["api", "cart"], 1: ["catalog"]}}
    path.write_text(yaml.safe_dump(demo, sort_keys=False))
    body = calendar_client.get("/conveyor/api/regression?service=demo_shop&year=2026").json()
    assert body["rotation"] == {"months": {"jan": ["catalog"], "mar": ["api", "cart"]}}
    assert [[a["area"] for a in m["areas"]] for m in body["months"][:4]] == [["catalog"], [], ["api", "cart"], []]
