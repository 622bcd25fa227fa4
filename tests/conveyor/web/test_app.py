"""The Conveyor web app (DORA page, JSON endpoint, releases, changelogs) and its Airflow plugin registration.

Most tests drive the FastAPI app in-process (TestClient) with Airflow's SimpleAuthManager as the
authority for logins, mounted at ``/conveyor`` as the API server mounts it. The ``browser`` test runs
a real ``airflow api-server`` with the plugin and logs in through the UI's login page in headless
Debian chromium (driven over the W3C WebDriver protocol by ``chromedriver``).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conveyor.ledger import Ledger
from conveyor.web import charts
from conveyor.web.app import URL_PREFIX, create_app
from tests.conveyor.ledger.test_ledger import (
    NOW,
    RID,
    record_failed_release_with_rollback,
    record_full_release,
    seed_dora_history,
)
from tests.conveyor.ledger.test_stats import seed_stats_history

ROOT = Path(__file__).resolve().parents[3]
END = NOW.isoformat()
SHOP_QUERY = f"service=shop&days=7&end={quote(END)}"
FAILED_RID = "demo_shop/manual__2025-03-11T10:00:00+00:00"


# ------------------------------------------------------------------------------------------ fixtures


def seed(ledger: Ledger) -> None:
    seed_dora_history(ledger)
    record_full_release(ledger)
    record_failed_release_with_rollback(ledger, FAILED_RID, t0=dt.datetime(2025, 3, 11, 10, tzinfo=dt.UTC))


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('web') / 'ledger.db'}")
    seed(ledger)
    yield ledger
    ledger.dispose()


@pytest.fixture(scope="module")
def auth_manager(airflow_db):
    """Airflow's configured auth manager (SimpleAuthManager), initialised as the API server does.

    Token checks consult Airflow's metadata database (revoked tokens), hence ``airflow_db``.
    """
    from airflow.api_fastapi.app import create_auth_manager

    manager = create_auth_manager()
    manager.init()
    return manager


@pytest.fixture(scope="module")
def token(auth_manager) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


@pytest.fixture(scope="module")
def anonymous(ledger, auth_manager) -> Iterator[TestClient]:
    root = FastAPI()
    root.mount(URL_PREFIX, create_app(lambda: ledger))
    with TestClient(root) as client:
        yield client


@pytest.fixture
def client(anonymous, token) -> Iterator[TestClient]:
    anonymous.headers["Authorization"] = f"Bearer {token}"
    yield anonymous
    anonymous.headers.pop("Authorization", None)
    anonymous.cookies.clear()


class MetricsParser(HTMLParser):
    """Collects ``data-metric`` spans (exact value and shown text), chart bars and links of a page."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, tuple[str, str]] = {}
        self.bars: list[dict[str, str]] = []
        self.links: list[str] = []
        self.charts: list[str] = []
        self._open: str | None = None
        self._value = ""
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-metric" in attrs:
            self._open, self._value, self._text = attrs["data-metric"], attrs.get("data-value", ""), ""
        if tag == "rect" and "data-key" in attrs:
            self.bars.append(attrs)
        if tag == "svg" and "id" in attrs:
            self.charts.append(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])

    def handle_data(self, data):
        if self._open:
            self._text += data

    def handle_endtag(self, tag):
        if self._open and tag == "span":
            self.metrics[self._open] = (self._value, self._text.strip())
            self._open = None


def parse(html: str) -> MetricsParser:
    parser = MetricsParser()
    parser.feed(html)
    return parser


def flatten(numbers: dict) -> dict[str, object]:
    """The JSON's numbers under the names the page uses (``lead_time.median_seconds`` ...)."""
    keys = ("deployment_frequency", "lead_time", "change_failure_rate", "time_to_restore")
    return {f"{key}.{field}": value for key in keys for field, value in numbers[key].items()}


def shown(metric: str, value) -> str:
    """The text the page shows for a value."""
    if metric.endswith("_seconds"):
        return charts.duration(value)
    if metric == "change_failure_rate.rate":
        return charts.percent(value)
    if metric == "deployment_frequency.per_day":
        return charts.per_day(value)
    return str(value)


def assert_page_matches_json(metrics: dict[str, tuple[str, str]], numbers: dict) -> None:
    expected = flatten(numbers)
    for metric, (value, text) in metrics.items():
        want = expected[metric]
        # Exact: the page's data-value is the JSON number (JSON may drop the ".0" of a whole float).
        assert (value == "") if want is None else (float(value) == want), metric
        assert text == shown(metric, want), metric
    # Everything that has a value is on the page (commits_without_time only when non-zero).
    assert set(expected) - set(metrics) <= {"lead_time.commits_without_time"}


# ---------------------------------------------------------------------------------------------- JSON


def test_the_json_endpoint_gives_the_known_numbers(client, ledger):
    response = client.get(f"/conveyor/api/dora?{SHOP_QUERY}")
    assert response.status_code == 200, response.text
    numbers = response.json()
    assert numbers == json.loads(json.dumps(ledger.dora("shop", days=7, now=NOW)))
    assert numbers["deployment_frequency"] == {"count": 3, "per_day": 3 / 7}
    assert numbers["lead_time"]["median_seconds"] == 7200.0
    assert numbers["change_failure_rate"] == {"rate": 4 / 7, "failed": 4, "total": 7}
    assert numbers["time_to_restore"] == {"median_seconds": 64800.0, "incidents": 2, "open_incidents": 1}
    assert len(numbers["series"]) == 7


def test_the_json_endpoint_over_all_services(client):
    numbers = client.get(f"/conveyor/api/dora?days=7&end={quote(END)}").json()
    assert numbers["service"] is None
    assert numbers["deployment_frequency"]["count"] == 4
    assert client.get(f"/conveyor/api/dora?service=all&days=7&end={quote(END)}").json() == numbers


def test_the_default_period_ends_now(client):
    numbers = client.get("/conveyor/api/dora?service=shop").json()
    assert numbers["period"]["days"] == 30
    end = dt.datetime.fromisoformat(numbers["period"]["end"])
    assert abs((dt.datetime.now(dt.UTC) - end).total_seconds()) < 60


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("service=shop&days=0", 422, "days: Input should be greater than or equal to 1"),
        ("service=shop&days=abc", 422, "days: Input should be a valid integer"),
        ("service=shop&days=100000", 422, "days: Input should be less than or equal to 3650"),
        ("service=Shop;rm&days=7", 422, "service must be a service id"),
        ("service=shop&end=yesterday", 422, "end: Input should be a valid datetime"),
        ("service=nope&days=7", 404, "no releases are recorded for service 'nope'; known: demo_shop, other, shop"),
    ],
)
def test_bad_queries_get_a_clear_error(client, query, status, message):
    response = client.get(f"/conveyor/api/dora?{query}")
    assert response.status_code == status
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    "query",
    ["end=0001-01-01&days=3650", "service=shop&end=0001-01-01&days=2", "end=0001-01-01T00:00:00%2B01:00&days=1",
     "end=9999-12-31T23:00:00-05:00&days=1"],
)
def test_a_period_outside_the_calendar_is_a_clear_422(client, query):
    """Issue 10: end=0001-01-01&days=3650 answered 500 (OverflowError); any end/days that overflow is 422."""
    response = client.get(f"/conveyor/api/dora?{query}")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "outside the calendar" in detail and "0001-01-01" in detail and "9999-12-31" in detail
    page = client.get(f"/conveyor/dora?{query}")
    assert page.status_code == 422
    assert "outside the calendar" in page.text


def test_the_first_and_last_days_of_the_calendar_still_answer(client):
    assert client.get("/conveyor/api/dora?end=0001-01-03&days=3").status_code == 200
    assert client.get("/conveyor/api/dora?end=9999-12-31T12:00:00&days=1").status_code == 200


def test_the_changelog_endpoint(client):
    response = client.get(f"/conveyor/api/releases/{quote(RID, safe='/:')}/changelog")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["message"] for c in body["commits"]] == ["Faster checkout", "Fix cart rounding"]
    assert client.get("/conveyor/api/releases/demo_shop/nope/changelog").status_code == 404


# ------------------------------------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    "path", ["/conveyor/api/dora?service=shop", "/conveyor/dora", "/conveyor/releases",
             f"/conveyor/releases/{quote(RID, safe='/:')}/changelog", "/conveyor/api/releases/x/y/changelog",
             "/conveyor/api/soak?service=demo_shop", "/conveyor/api/stats?service=shop", "/conveyor/stats"],
)
def test_every_route_needs_a_login(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 401
    if "/api/" in path:
        assert response.json() == {"detail": "Not authenticated"}
    else:
        assert "Login required" in response.text
        assert 'href="/auth/login?next=' in response.text


@pytest.mark.parametrize("path", ["/conveyor/api/openapi.json", "/conveyor/openapi.json", "/conveyor/docs",
                                  "/conveyor/redoc", "/conveyor/api/docs"])
def test_the_api_description_needs_a_login_too(anonymous, path):
    """Issue 10: the app's openapi.json was served without login."""
    response = anonymous.get(path)
    assert response.status_code in (401, 404), (path, response.status_code)
    assert "/conveyor/api/dora" not in response.text and "/api/dora" not in response.text


def test_a_logged_in_user_gets_the_api_description(client):
    response = client.get("/conveyor/api/openapi.json")
    assert response.status_code == 200
    assert "/api/dora" in response.json()["paths"]


def test_a_forged_token_is_refused(anonymous):
    response = anonymous.get("/conveyor/api/dora", headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code == 403
    anonymous.cookies.set("_token", "forged")
    try:
        assert anonymous.get("/conveyor/dora").status_code == 403
    finally:
        anonymous.cookies.clear()


def test_the_ui_login_cookie_is_accepted(anonymous, token):
    anonymous.cookies.set("_token", token)
    try:
        assert anonymous.get(f"/conveyor/api/dora?{SHOP_QUERY}").status_code == 200
        assert anonymous.get("/conveyor/dora").status_code == 200
    finally:
        anonymous.cookies.clear()


# ----------------------------------------------------------------------------------------------- pages


def test_the_dora_page_shows_the_json_numbers_and_charts(client):
    numbers = client.get(f"/conveyor/api/dora?{SHOP_QUERY}").json()
    response = client.get(f"/conveyor/dora?{SHOP_QUERY}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = parse(response.text)
    assert_page_matches_json(page.metrics, numbers)
    assert page.metrics["lead_time.median_seconds"] == ("7200.0", "2.0 h")
    assert page.metrics["change_failure_rate.rate"] == (repr(4 / 7), "57.1%")
    assert page.metrics["time_to_restore.median_seconds"] == ("64800.0", "18.0 h")
    assert page.metrics["deployment_frequency.count"] == ("3", "3")
    assert page.charts == ["chart-deployments", "chart-lead-time", "chart-change-failure-rate",
                           "chart-time-to-restore"]
    deployments = {b["data-date"]: b["data-value"] for b in page.bars if b["data-key"] == "deployments"}
    assert deployments == {d["date"]: str(d["deployments"]) for d in numbers["series"]}
    assert "/conveyor/api/dora?days=7&amp;service=shop&amp;end=" in response.text
    assert "http://" not in response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing external


def test_the_all_services_page_has_a_row_per_service(client):
    response = client.get(f"/conveyor/dora?days=7&end={quote(END)}")
    assert response.status_code == 200
    assert re.findall(r'<tr data-service="([^"]+)"', response.text) == ["demo_shop", "other", "shop"]
    assert parse(response.text).metrics["deployment_frequency.count"] == ("4", "4")


def test_a_bad_query_on_a_page_is_an_html_error(client):
    response = client.get("/conveyor/dora?days=-1")
    assert response.status_code == 422
    assert "days: Input should be greater than or equal to 1" in response.text
    assert client.get("/conveyor/dora?service=nope").status_code == 404


def test_the_releases_page_links_each_changelog(client):
    response = client.get("/conveyor/releases?service=demo_shop")
    assert response.status_code == 200
    assert re.findall(r'<tr data-release-id="([^"]+)"', response.text) == [FAILED_RID, RID]
    links = [link for link in parse(response.text).links if link.endswith("/changelog")]
    assert links == [f"/conveyor/releases/{quote(r, safe='/:')}/changelog" for r in (FAILED_RID, RID)]
    assert "%2B00:00" in links[0]

    changelog = client.get(links[1])
    assert changelog.status_code == 200
    assert "Faster checkout" in changelog.text
    assert "Fix cart rounding" in changelog.text
    assert re.findall(r'<tr data-sha="([0-9a-f]+)"', changelog.text) == ["c" * 40, "b" * 40]
    assert '<span id="commit-count">2</span>' in changelog.text

    # The failed release's changelog starts at the previous successful release and links to it.
    failed = client.get(links[0])
    assert re.findall(r'<tr data-sha="([0-9a-f]+)"', failed.text) == ["d" * 40]
    assert f'href="{links[1]}"' in failed.text


def test_an_unknown_release_has_no_changelog(client):
    response = client.get("/conveyor/releases/demo_shop/unknown/changelog")
    assert response.status_code == 404
    assert "is not in the ledger" in response.text


def test_the_root_redirects_to_the_dora_page(client):
    response = client.get("/conveyor/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/conveyor/dora"


def test_an_empty_ledger_renders(tmp_path, auth_manager, token):
    empty = Ledger(f"sqlite:///{tmp_path / 'empty.db'}")
    root = FastAPI()
    root.mount(URL_PREFIX, create_app(lambda: empty))
    with TestClient(root, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/conveyor/dora").status_code == 200
        assert "No releases are recorded" in client.get("/conveyor/releases").text
        assert client.get("/conveyor/api/dora").json()["deployment_frequency"]["count"] == 0
        stats = client.get("/conveyor/stats")
        assert stats.status_code == 200 and "No release started in this period." in stats.text
        assert client.get("/conveyor/api/stats").json()["releases"]["count"] == 0
    empty.dispose()


# ---------------------------------------------------------------------------------------------- soak

SOAK_T0 = dt.datetime(2025, 3, 12, 9, 0, tzinfo=dt.UTC)
INCIDENT = '<script>alert("soak")</script> error rate 4.2% vs 0.3%'


def record_soak(ledger: Ledger, version: str, hours: float, status: str, min_hours: float, watched_hours: float,
                change: str = "minor", **fields) -> None:
    ledger.upsert_soak(f"demo_shop/manual__{version}", service="demo_shop", version=version, change_kind=change,
                       status=status, started_at=SOAK_T0 + dt.timedelta(hours=hours), min_seconds=min_hours * 3600,
                       watched_until=SOAK_T0 + dt.timedelta(hours=hours + watched_hours), **fields)


@pytest.fixture
def soaked(tmp_path, auth_manager, token) -> Iterator[TestClient]:
    """demo_shop: production runs v1.1.0 (its last successful release) and three builds have soaked."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'soaked.db'}")
    record_full_release(ledger)
    ledger.upsert_release("other/manual__1", service="other", version="v3.0.0", status="success",
                          started_at=SOAK_T0)
    record_soak(ledger, "v1.0.5", 0, "passed", 1, 2)  # older than production's v1.1.0
    record_soak(ledger, "v1.2.0", 3, "incident", 1, 0.5, incident=INCIDENT)
    record_soak(ledger, "v1.3.0", 6, "passed", 24, 25, change="major")
    root = FastAPI()
    root.mount(URL_PREFIX, create_app(lambda: ledger))
    with TestClient(root, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
    ledger.dispose()


def soak_rows(page: str) -> list[dict[str, str]]:
    """The soak table rows of a releases page: release id, eligible and the cells' text by column."""
    columns = ["version", "change", "status", "started", "minimum", "soaked", "remaining", "incident", "eligible"]
    rows = []
    for rid, eligible, cells in re.findall(
            r'<tr data-soak-release-id="([^"]+)" data-eligible="(yes|no)">(.*?)</tr>', page, re.S):
        texts = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                                        cells, re.S)]
        rows.append({"release_id": html.unescape(rid), "data-eligible": eligible,
                     **dict(zip(columns, texts, strict=True))})
    return rows


def test_the_releases_page_shows_each_builds_soak_clock(soaked):
    response = soaked.get("/conveyor/releases?service=demo_shop")
    assert response.status_code == 200
    assert '<section class="soak" id="soak-demo_shop" data-service="demo_shop">' in response.text
    assert soak_rows(response.text) == [
        {"release_id": "demo_shop/manual__v1.3.0", "data-eligible": "yes", "version": "v1.3.0", "change": "major",
         "status": "passed", "started": "2025-03-12 15:00", "minimum": "1d", "soaked": "1d 1h", "remaining": "0s",
         "incident": "—", "eligible": "yes: eligible: soaked 1d 1h with no incident"},
        {"release_id": "demo_shop/manual__v1.2.0", "data-eligible": "no", "version": "v1.2.0", "change": "minor",
         "status": "incident", "started": "2025-03-12 12:00", "minimum": "1h", "soaked": "30m",
         "remaining": "0s", "incident": INCIDENT,
         "eligible": f"no: never promoted: incident during soak: {INCIDENT}"},
        {"release_id": "demo_shop/manual__v1.0.5", "data-eligible": "no", "version": "v1.0.5", "change": "minor",
         "status": "passed", "started": "2025-03-12 09:00", "minimum": "1h", "soaked": "2h", "remaining": "0s",
         "incident": "—", "eligible": "no: never promoted: older than v1.1.0, which production runs"},
    ]
    # The incident text is the ledger's, so it is escaped: shown, never run.
    assert "<script>" not in response.text
    assert "&lt;script&gt;alert(&#34;soak&#34;)&lt;/script&gt;" in response.text

    # All services: the sections of those with soaks; a service without soaks has none.
    assert soak_rows(soaked.get("/conveyor/releases").text) == soak_rows(response.text)
    other = soaked.get("/conveyor/releases?service=other").text
    assert "soak" not in other.lower()
    assert re.findall(r'<tr data-release-id="([^"]+)"', other) == ["other/manual__1"]


def test_the_soak_endpoint_gives_the_clocks(soaked):
    response = soaked.get("/conveyor/api/soak?service=demo_shop")
    assert response.status_code == 200, response.text
    clocks = response.json()
    assert [(c["version"], c["status"], c["eligible"]) for c in clocks] == [
        ("v1.3.0", "passed", True), ("v1.2.0", "incident", False), ("v1.0.5", "passed", False)]
    assert clocks[0] == {
        "release_id": "demo_shop/manual__v1.3.0", "service": "demo_shop", "version": "v1.3.0", "change": "major",
        "status": "passed", "started_at": "2025-03-12T15:00:00+00:00", "min_seconds": 86400.0,
        "soaked_seconds": 90000.0, "remaining_seconds": 0.0, "incident": None, "eligible": True,
        "why": "eligible: soaked 1d 1h with no incident", "promoted_release_id": None,
        "minimum": "1d", "soaked": "1d 1h", "remaining": "0s",
    }
    assert clocks[1]["incident"] == INCIDENT
    assert clocks[2]["why"] == "never promoted: older than v1.1.0, which production runs"

    assert soaked.get("/conveyor/api/soak").json() == clocks  # every service: only demo_shop has soaks
    assert soaked.get("/conveyor/api/soak?service=other").json() == []


@pytest.mark.parametrize(("query", "status", "message"), [
    ("service=nope", 404, "no releases are recorded for service 'nope'; known: demo_shop, other"),
    ("service=Bad-Id", 422, "service must be a service id"),
])
def test_the_soak_endpoint_refuses_unknown_services(soaked, query, status, message):
    response = soaked.get(f"/conveyor/api/soak?{query}")
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_the_chart_marks_values_exactly():
    svg = charts.bar_chart([{"date": "2025-01-01", "x": 1.5}, {"date": "2025-01-02", "x": None}],
                           [("x", "x", "#000")], title="A <chart>", chart_id="c")
    assert svg.startswith('<svg class="chart" id="c"')
    assert "A &lt;chart&gt;" in svg
    assert 'data-date="2025-01-01" data-key="x" data-value="1.5"' in svg
    assert 'data-date="2025-01-02" data-key="x" data-value=""' in svg
    assert [charts.duration(v) for v in (None, 42, 600, 7200, 64800, 3 * 86400)] == [
        "—", "42 s", "10 min", "2.0 h", "18.0 h", "3.0 d"]
    assert charts.percent(4 / 7) == "57.1%"


# ------------------------------------------------------------------------------- analyses and their charts


@pytest.fixture
def charted(tmp_path, auth_manager, token) -> Iterator[tuple[TestClient, dict]]:
    """A failed release whose wave-1 analysis recorded a real verdict and its timeline; its watch analysis is an
    older row without a timeline, and wave 2 was skipped. Yields a logged-in client and the wave-1 detail."""
    from tests.conveyor.analysis.evidence_support import failing_errors

    detail, _ = failing_errors(source="prometheus", graph_url="http://127.0.0.1:9090/graph?g0.expr=up")
    old = {key: value for key, value in detail.items() if key not in ("source", "graph_url")}
    old["details"] = {k: v for k, v in detail["details"].items() if k != "timeline"}
    ledger = Ledger(f"sqlite:///{tmp_path / 'charted.db'}")
    t0 = dt.datetime(2025, 3, 11, 10, tzinfo=dt.UTC)
    record_failed_release_with_rollback(ledger, FAILED_RID, t0=t0)
    ledger.upsert_stage(FAILED_RID, "wave_1.analysis", status="failed", detail=detail)
    ledger.upsert_stage(FAILED_RID, "wave_2.analysis", status="success", started_at=t0 + dt.timedelta(minutes=7),
                        detail={"label": "wave-2", "decision": "skipped", "reason": "empty wave"})
    ledger.upsert_stage(FAILED_RID, "watch.analysis", status="success", started_at=t0 + dt.timedelta(minutes=8),
                        detail={**old, "label": "watch"})
    root = FastAPI()
    root.mount(URL_PREFIX, create_app(lambda: ledger))
    with TestClient(root, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, detail
    ledger.dispose()


def chart_url(stage: str) -> str:
    return f"/conveyor/releases/{quote(FAILED_RID, safe='/:')}/charts/{stage}.svg"


def test_an_analysis_chart_is_served_as_svg_from_the_ledger(charted):
    import xml.etree.ElementTree as ET

    client, detail = charted
    response = client.get(chart_url("wave_1.analysis"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    root = ET.fromstring(response.text)
    series = {line.get("data-series") for line in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert series == {"canary", "baseline"}
    assert root.find("{http://www.w3.org/2000/svg}title").text == (
        "demo_shop v1.2.0 wave-1: fail, canary vs baseline")


@pytest.mark.parametrize(("path", "message"), [
    (chart_url("wave_9.analysis"), "has no analysis 'wave_9.analysis'"),
    (chart_url("wave_2.analysis"), "has no analysis 'wave_2.analysis'"),  # skipped: no verdict
    (chart_url("watch.analysis"), "recorded no per-interval data to draw"),  # an older row: no timeline
    ("/conveyor/releases/demo_shop/unknown/charts/wave_1.analysis.svg", "is not in the ledger"),
])
def test_a_chart_the_ledger_cannot_draw_is_a_404(charted, path, message):
    client, _ = charted
    response = client.get(path)
    assert response.status_code == 404
    assert message in html.unescape(response.text)


def test_a_chart_needs_a_login(charted):
    client, _ = charted
    response = client.get(chart_url("wave_1.analysis"), headers={"Authorization": ""})
    assert response.status_code == 401 and "Login required" in response.text
    assert client.get(chart_url("wave_1.analysis"), headers={"Authorization": "Bearer forged"}).status_code == 403


def test_the_release_page_shows_each_analysis_and_links_its_chart(charted):
    from conveyor.analysis.evidence_view import metric_rows

    client, detail = charted
    response = client.get(f"/conveyor/releases/{quote(FAILED_RID, safe='/:')}/changelog")
    assert response.status_code == 200
    sections = re.findall(r'<section class="analysis" data-stage="([^"]+)"', response.text)
    assert sections == ["wave_1.analysis", "watch.analysis"]  # the skipped wave has no verdict to show
    page = parse(response.text)
    assert page.links.count(chart_url("wave_1.analysis")) == 2  # the link, and the image's link
    assert f'src="{chart_url("wave_1.analysis")}"' in response.text
    assert chart_url("watch.analysis") not in response.text  # nothing to draw: no link to a 404
    assert "http://127.0.0.1:9090/graph?g0.expr=up" in page.links
    wave_1 = response.text.split('data-stage="wave_1.analysis"')[1].split("</section>")[0]
    for row in metric_rows(detail):
        assert f'<tr data-metric="{row["metric"]}"' in wave_1
        assert f"<td>{row['requests']}</td><td>{row['events']}</td>" in wave_1
    assert "<td>error rate</td>" in wave_1 and ">5.00%</td>" in wave_1 and ">1.00%</td>" in wave_1
    assert "source: prometheus" in wave_1


# ------------------------------------------------------------------------------------------ statistics


def stats_value(numbers: dict, metric: str):
    """The JSON value a page's ``data-metric`` names (``failed_changes.caught_rate`` ...)."""
    value = numbers
    for part in metric.split("."):
        value = value[part]
    return value


def stats_shown(metric: str, value) -> str:
    """The text the statistics page shows for a value."""
    if metric.endswith("_seconds"):
        return charts.duration(value)
    if metric.endswith("_rate"):
        return charts.percent(value)
    if metric == "releases.per_day":
        return charts.per_day(value)
    if metric == "releases.per_week":
        return f"{value:.1f}/week"
    return str(value)


def assert_stats_page_matches_json(metrics: dict[str, tuple[str, str]], numbers: dict) -> None:
    assert len(metrics) >= 20
    for metric, (value, text) in metrics.items():
        want = stats_value(numbers, metric)
        assert (value == "") if want is None else (float(value) == want), metric
        assert text == stats_shown(metric, want), metric


@pytest.fixture
def stats_ledger(tmp_path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'stats.db'}")
    seed_stats_history(ledger)
    yield ledger
    ledger.dispose()


@pytest.fixture
def stats_app(stats_ledger, auth_manager) -> Iterator[TestClient]:
    root = FastAPI()
    root.mount(URL_PREFIX, create_app(lambda: stats_ledger))
    with TestClient(root) as client:
        yield client


def bearer(auth_manager, username: str, role: str) -> dict[str, str]:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return {"Authorization": f"Bearer {auth_manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role))}"}


def test_the_stats_endpoint_gives_the_known_numbers(stats_app, stats_ledger, auth_manager):
    response = stats_app.get(f"/conveyor/api/stats?{SHOP_QUERY}", headers=bearer(auth_manager, "viewer", "viewer"))
    assert response.status_code == 200, response.text
    numbers = response.json()
    assert numbers == json.loads(json.dumps(stats_ledger.stats("shop", days=7, now=NOW)))
    assert numbers["releases"]["count"] == 10 and numbers["success_rate"] == 3 / 9
    assert numbers["failed_changes"]["caught_by_stage"] == {"soak": 1, "tests": 1, "wave_1": 1}
    missing = stats_app.get("/conveyor/api/stats?service=nope", headers=bearer(auth_manager, "viewer", "viewer"))
    assert missing.status_code == 404 and "known: other, shop" in missing.json()["detail"]


def test_the_stats_page_shows_the_json_numbers_and_charts(stats_app, auth_manager):
    headers = bearer(auth_manager, "viewer", "viewer")
    numbers = stats_app.get(f"/conveyor/api/stats?{SHOP_QUERY}", headers=headers).json()
    response = stats_app.get(f"/conveyor/stats?{SHOP_QUERY}", headers=headers)
    assert response.status_code == 200, response.text
    page = parse(response.text)
    assert_stats_page_matches_json(page.metrics, numbers)
    assert page.metrics["failed_changes.caught_rate"] == ("0.5", "50.0%")
    assert page.metrics["releases.per_week"] == ("10.0", "10.0/week")
    assert page.charts == ["chart-releases", "chart-stage-durations", "chart-catches"]
    catches = {(b["data-date"], b["data-key"]): b["data-value"] for b in page.bars
               if b["data-key"] in ("caught", "escaped")}
    assert catches[("tests", "caught")] == "1" and catches[("watch", "escaped")] == "1"
    assert catches[("incident", "escaped")] == "1" and catches[("incident", "caught")] == "0"
    builds = {b["data-date"]: b["data-value"] for b in page.bars if b["data-key"] == "build_median_seconds"}
    assert builds == {d["date"]: charts.data_value(d["build_median_seconds"]) for d in numbers["series"]}
    assert re.findall(r'<tr data-release="([^"]+)"', response.text) == [
        r["release_id"] for r in numbers["release_list"]]
    assert "/conveyor/api/stats?days=7&amp;service=shop&amp;end=" in response.text
    assert stats_app.get("/conveyor/stats?days=0", headers=headers).status_code == 422


def test_an_incident_is_recorded_over_rest_by_a_user_who_may_edit_dags(stats_app, stats_ledger, auth_manager):
    body = {"service": "shop", "release_id": "shop/H", "reason": "checkout slow since the promotion",
            "at": "2025-03-31T10:00:00Z"}
    assert stats_app.post("/conveyor/api/incidents", json=body).status_code == 401
    refused = stats_app.post("/conveyor/api/incidents", json=body, headers=bearer(auth_manager, "viewer", "viewer"))
    assert refused.status_code == 403 and "permission to edit" in refused.json()["detail"]
    assert stats_ledger.stats("shop", days=7, now=NOW)["failed_changes"]["escaped"] == 3

    response = stats_app.post("/conveyor/api/incidents", json=body, headers=bearer(auth_manager, "ops", "user"))
    assert response.status_code == 201, response.text
    assert response.json()["release_id"] == "shop/H" and response.json()["recorded_by"] == "ops"
    stats = stats_ledger.stats("shop", days=7, now=NOW)
    assert stats["failed_changes"]["escaped"] == 4 and stats["failed_changes"]["escaped_by_stage"]["incident"] == 2


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"service": "shop", "release_id": "shop/nope", "reason": "x"}, 404, "release 'shop/nope' is not in the ledger"),
    ({"service": "other", "release_id": "shop/A", "reason": "x"}, 422, "is a release of 'shop', not of 'other'"),
    ({"service": "shop", "release_id": "shop/A", "reason": "  "}, 422, "reason: an incident needs a reason"),
    ({"service": "Shop;rm", "release_id": "shop/A", "reason": "x"}, 422, "service must be a service id"),
    ({"service": "shop", "release_id": "shop/A"}, 422, "reason: Field required"),
])
def test_a_bad_incident_gets_a_clear_error(stats_app, auth_manager, body, status, message):
    response = stats_app.post("/conveyor/api/incidents", json=body, headers=bearer(auth_manager, "admin", "admin"))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


# ------------------------------------------------------------------------------------ plugin registration


def test_the_plugin_mounts_the_app_and_adds_the_nav_entries():
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from conveyor_plugin import ConveyorPlugin

    (app,) = ConveyorPlugin.fastapi_apps
    assert app["url_prefix"] == "/conveyor"
    assert isinstance(app["app"], FastAPI)
    views = [ExternalViewResponse.model_validate(v) for v in ConveyorPlugin.external_views]
    assert [(v.name, v.href, v.url_route, v.destination) for v in views] == [
        ("DORA metrics", "conveyor/dora", "conveyor-dora", "nav"),
        ("Release statistics", "conveyor/stats", "conveyor-stats", "nav"),
        ("Releases", "conveyor/releases", "conveyor-releases", "nav"),
        ("Regression calendar", "conveyor/regression", "conveyor-regression", "nav"),
    ]


def test_airflow_mounts_the_plugin_app():
    """Airflow's own plugin loader (the plugins folder of the test config) mounts /conveyor."""
    from airflow import plugins_manager
    from airflow.api_fastapi.app import init_plugins

    root = FastAPI()
    init_plugins(root)
    mounts = {getattr(route, "path", None) for route in root.routes}
    assert "/conveyor" in mounts
    apps, _ = plugins_manager.get_fastapi_plugins()
    assert any(a["name"] == "Conveyor release ledger" for a in apps)


def test_importing_the_plugin_touches_no_connection_or_database():
    """Parsing does no work: loading the plugin builds the app but looks up no connection, opens no database."""
    probe = (
        "import airflow.sdk, sqlalchemy\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('the plugin touched a database or a connection at import time')\n"
        "sqlalchemy.create_engine = sqlalchemy.engine.Engine.connect = refuse\n"
        "airflow.sdk.BaseHook.get_connection = classmethod(refuse)\n"
        "import conveyor_plugin\n"
        "assert conveyor_plugin.ConveyorPlugin.fastapi_apps[0]['url_prefix'] == '/conveyor'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started (workers, chromium)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except Exception as exc:  # keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class WebDriver:
    """Just enough of the W3C WebDriver protocol to drive chromium through chromedriver."""

    def __init__(self, base: str, http: httpx.Client):
        self.base, self.http = base, http
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"],
        }}
        response = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = response["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        response = self.http.request(method, self.base + path, json=body, timeout=60)
        data = response.json()
        if response.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {data.get('value')}")
        return data.get("value", data)

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def script(self, source: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": source, "args": list(args)})

    def async_script(self, source: str, *args):
        return self.cmd("POST", "/execute/async", {"script": source, "args": list(args)})

    def find(self, css: str) -> str:
        element = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(element.values()))

    def type(self, css: str, text: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def quit(self) -> None:
        try:
            self.cmd("DELETE", "")
        except Exception:
            pass


@pytest.fixture(scope="module")
def api_server(tmp_path_factory) -> Iterator[dict]:
    """A real ``airflow api-server`` (SQLite, SimpleAuthManager, this project's plugins) on a free port."""
    home = tmp_path_factory.mktemp("airflow-home")
    ledger_path = home / "ledger.db"
    ledger = Ledger(f"sqlite:///{ledger_path}")
    seed(ledger)
    ledger.dispose()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-pw", "viewer": "viewer-pw"}))
    (home / "dags").mkdir()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONVEYOR"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
                                       "SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "conveyor-browser-test-secret-" + "x" * 40,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_CONVEYOR_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}),
        "CONVEYOR_HOME": str(home / "conveyor"),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = open(home / "api-server.log", "w")  # closed below, after the server stopped
    server = subprocess.Popen([airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is None and httpx.get(f"{base}/api/v2/monitor/health").status_code == 200,
                 timeout=180, what=f"the API server (log: {home / 'api-server.log'})")
        yield {"base": base, "ledger_path": ledger_path, "log": home / "api-server.log"}
    finally:
        stop_group(server)
        log.close()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    port = free_port()
    driver_proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
    http = httpx.Client()
    base = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_for(lambda: http.get(f"{base}/status").json()["value"]["ready"], timeout=30, what="chromedriver")
        driver = WebDriver(base, http)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        http.close()
        stop_group(driver_proc)


PAGE_METRICS_JS = """
return Array.from(document.querySelectorAll('[data-metric]')).map(
    e => [e.dataset.metric, e.dataset.value, e.textContent.trim()]);
"""
FETCH_JSON_JS = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: 'same-origin'})
  .then(r => r.json().then(body => done({status: r.status, body: body})))
  .catch(e => done({status: 0, body: String(e)}));
"""


@pytest.mark.browser
def test_the_dora_page_in_a_real_browser_matches_the_json_endpoint(browser, api_server):
    base = api_server["base"]
    page_url = f"{base}/conveyor/dora?{SHOP_QUERY}"

    # Not logged in: the page says so and links to Airflow's login page.
    browser.get(page_url)
    assert "Login required" in browser.script("return document.body.innerText;")
    browser.click("#login-link")

    # Airflow's own login form (SimpleAuthManager); after it, back to the DORA page.
    wait_for(lambda: browser.script("return !!document.querySelector('input[name=username]');"),
             timeout=30, what="the login form")
    browser.type("input[name=username]", "viewer")
    browser.type("input[name=password]", "viewer-pw")
    browser.click("button[type=submit]")
    wait_for(lambda: browser.script("return location.pathname;") == "/conveyor/dora"
             and browser.script("return document.querySelectorAll('[data-metric]').length;") > 0,
             timeout=30, what=f"the DORA page after login (log: {api_server['log']})")

    rendered = {metric: (value, text) for metric, value, text in browser.script(PAGE_METRICS_JS)}
    api = browser.async_script(FETCH_JSON_JS, f"/conveyor/api/dora?{SHOP_QUERY}")
    assert api["status"] == 200, api
    numbers = api["body"]
    assert_page_matches_json(rendered, numbers)
    assert rendered["deployment_frequency.count"] == ("3", "3")
    assert rendered["lead_time.median_seconds"] == ("7200.0", "2.0 h")
    assert rendered["change_failure_rate.rate"][1] == "57.1%"
    assert rendered["time_to_restore.median_seconds"] == ("64800.0", "18.0 h")
    bars = browser.script(
        "return Array.from(document.querySelectorAll('#chart-deployments rect.bar[data-key=deployments]'))"
        ".map(r => [r.dataset.date, Number(r.dataset.value), r.getBoundingClientRect().height > 0]);")
    assert [(d, v) for d, v, _ in bars] == [(d["date"], d["deployments"]) for d in numbers["series"]]
    assert all(visible == (value > 0) for _, value, visible in bars)

    # The same numbers through the Airflow UI's navigation entry (the page in an iframe).
    browser.get(f"{base}/plugin/conveyor-dora")
    frame = wait_for(lambda: browser.script("return document.querySelector('iframe');"), timeout=60,
                     what="the plugin iframe in the Airflow UI")
    browser.cmd("POST", "/frame", {"id": frame})
    wait_for(lambda: browser.script("return document.querySelectorAll('[data-metric]').length;") > 0,
             timeout=30, what="the DORA page inside the Airflow UI")
    assert browser.script("return location.pathname;") == "/conveyor/dora"
    in_ui = {metric: (value, text) for metric, value, text in browser.script(PAGE_METRICS_JS)}
    default = browser.async_script(FETCH_JSON_JS, "/conveyor/api/dora")
    assert default["status"] == 200
    assert in_ui["deployment_frequency.count"][0] == str(default["body"]["deployment_frequency"]["count"])


@pytest.mark.browser
def test_the_stats_page_in_a_real_browser_matches_the_json_endpoint(browser, api_server):
    base = api_server["base"]
    browser.get(f"{base}/conveyor/stats?{SHOP_QUERY}")
    browser.click("#login-link")
    wait_for(lambda: browser.script("return !!document.querySelector('input[name=username]');"),
             timeout=30, what="the login form")
    browser.type("input[name=username]", "viewer")
    browser.type("input[name=password]", "viewer-pw")
    browser.click("button[type=submit]")
    wait_for(lambda: browser.script("return location.pathname;") == "/conveyor/stats"
             and browser.script("return document.querySelectorAll('[data-metric]').length;") > 0,
             timeout=30, what=f"the statistics page after login (log: {api_server['log']})")

    rendered = {metric: (value, text) for metric, value, text in browser.script(PAGE_METRICS_JS)}
    api = browser.async_script(FETCH_JSON_JS, f"/conveyor/api/stats?{SHOP_QUERY}")
    assert api["status"] == 200, api
    numbers = api["body"]
    assert_stats_page_matches_json(rendered, numbers)
    assert rendered["releases.count"] == (str(numbers["releases"]["count"]),) * 2
    bars = browser.script(
        "return Array.from(document.querySelectorAll('#chart-releases rect.bar[data-key=failed]'))"
        ".map(r => [r.dataset.date, Number(r.dataset.value), r.getBoundingClientRect().height > 0]);")
    assert [(d, v) for d, v, _ in bars] == [(d["date"], d["failed"]) for d in numbers["series"]]
    assert all(visible == (value > 0) for _, value, visible in bars)
