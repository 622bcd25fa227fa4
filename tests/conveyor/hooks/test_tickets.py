"""Jira and GitHub as ticket systems, against small local HTTP servers that implement the endpoints the
providers' clients call (``JiraHook`` -> atlassian-python-api, ``GithubHook`` -> PyGithub) and record
what they receive: the payloads (project, issue type, labels, summary, body with the evidence), the
deduplication across releases, and a system that is down (connection refused, HTTP 5xx, a timeout) and
comes back.

The servers keep issues in memory and answer the way the real APIs do for these calls (Jira REST v2;
GitHub REST v3 under GitHub Enterprise's ``/api/v3`` base).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from conveyor.cli import main as conveyor_main
from conveyor.hooks.tickets import GithubTicketHook, JiraTicketHook, tracker_for
from conveyor.tickets import (
    LocalTicketBackend,
    Ticket,
    TicketDeliveryError,
    deliver,
    deliver_pending,
    signature_label,
)

UTC = dt.UTC
WEEK = dt.timedelta(days=7)
SIG = "0123456789ab"


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


# ----------------------------------------------------------------------------------- the servers


class FakeTracker:
    """A ticket system on 127.0.0.1: issues in memory, every request recorded, and a ``mode``:
    ``"up"``, ``"error"`` (HTTP 503 to everything) or ``"slow"`` (answers after ``delay_s``).
    ``stop()`` then ``start()`` takes it down (connection refused) and brings it back on the same port."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.issues: dict[str, dict[str, Any]] = {}
        self.mode = "up"
        self.delay_s = 0.0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle
    def start(self) -> FakeTracker:
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type") or ""
                if content_type.startswith("multipart/form-data"):  # a file upload (Jira attachments)
                    body = {"files": multipart_files(content_type, raw),
                            "x-atlassian-token": self.headers.get("X-Atlassian-Token")}
                else:
                    body = json.loads(raw) if raw else None
                tracker.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                         "json": body, "auth": self.headers.get("Authorization")})
                if tracker.mode == "slow":
                    time.sleep(tracker.delay_s)
                if tracker.mode == "error":
                    status, answer = 503, {"message": "Service Unavailable"}
                else:
                    status, answer = tracker.answer(method, url.path, parse_qs(url.query), body)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json;charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, method: str, pattern: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and re.fullmatch(pattern, r["path"])]

    def answer(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        raise NotImplementedError


def multipart_files(content_type: str, raw: bytes) -> list[dict[str, Any]]:
    """The parts of a ``multipart/form-data`` body: form field, file name, content type, bytes."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    return [{"field": part.get_param("name", header="content-disposition"), "filename": part.get_filename(),
             "content_type": part.get_content_type(), "content": part.get_payload(decode=True)}
            for part in message.iter_parts()]


class FakeJira(FakeTracker):
    """``POST /rest/api/2/issue``, ``GET /rest/api/2/issue/{key}``, ``POST /rest/api/2/issue/{key}/comment``,
    ``POST /rest/api/2/issue/{key}/attachments`` (multipart field ``file``; refused without
    ``X-Atlassian-Token: no-check``, as Jira's XSRF check does) and ``GET /rest/api/2/search?jql=...`` (the
    JQL Conveyor writes: project, labels, statusCategory, updated >= "-<n>m")."""

    projects = ("OPS",)

    def answer(self, method, path, query, body):
        if method == "POST" and path == "/rest/api/2/issue":
            fields = body["fields"]
            missing = [f for f in ("project", "issuetype", "summary") if f not in fields]
            if missing:
                return 400, {"errorMessages": [], "errors": {f: f"{f} is required" for f in missing}}
            if fields["project"].get("key") not in self.projects:
                return 400, {"errorMessages": [], "errors": {"project": "valid project is required"}}
            key = f"{fields['project']['key']}-{len(self.issues) + 1}"
            self.issues[key] = {"key": key, "fields": fields, "comments": [], "attachments": [], "done": False,
                                "updated": dt.datetime.now(UTC)}
            return 201, {"id": str(10000 + len(self.issues)), "key": key, "self": f"{self.url}/rest/api/2/issue/{key}"}
        match = re.fullmatch(r"/rest/api/2/issue/([A-Z]+-\d+)/attachments", path)
        if method == "POST" and match and match.group(1) in self.issues:
            if (body or {}).get("x-atlassian-token") != "no-check":
                return 403, {"message": "XSRF check failed"}
            files = [f for f in body["files"] if f["field"] == "file"]
            if not files:
                return 400, {"errorMessages": ["no file"]}
            self.issues[match.group(1)]["attachments"] += files
            return 200, [{"id": str(i), "filename": f["filename"], "mimeType": f["content_type"],
                          "size": len(f["content"])} for i, f in enumerate(files)]
        match = re.fullmatch(r"/rest/api/2/issue/([A-Z]+-\d+)(/comment)?", path)
        if match and match.group(1) in self.issues:
            issue = self.issues[match.group(1)]
            if match.group(2) and method == "POST":
                issue["comments"].append(body["body"])
                issue["updated"] = dt.datetime.now(UTC)
                return 201, {"id": str(len(issue["comments"])), "body": body["body"]}
            return 200, {"key": issue["key"], "fields": issue["fields"]}
        if method == "GET" and path == "/rest/api/2/search":
            jql = query["jql"][0]
            project = re.search(r'project = "([^"]+)"', jql).group(1)
            label = re.search(r'labels = "([^"]+)"', jql).group(1)
            minutes = int(re.search(r'updated >= "-(\d+)m"', jql).group(1))
            since = dt.datetime.now(UTC) - dt.timedelta(minutes=minutes)
            found = [i for i in self.issues.values()
                     if i["fields"]["project"]["key"] == project and label in i["fields"].get("labels", [])
                     and not ("statusCategory != Done" in jql and i["done"]) and i["updated"] >= since]
            found.sort(key=lambda i: i["updated"], reverse=True)
            limit = int(query.get("maxResults", ["50"])[0])
            return 200, {"startAt": 0, "maxResults": limit, "total": len(found),
                         "issues": [{"key": i["key"], "fields": {"summary": i["fields"]["summary"]}}
                                    for i in found[:limit]]}
        if method == "GET" and path == "/rest/api/2/myself":
            return 200, {"name": "conveyor", "displayName": "Conveyor"}
        return 404, {"errorMessages": [f"no route {method} {path}"]}


class FakeGithub(FakeTracker):
    """GitHub Enterprise's REST API under ``/api/v3``: ``GET /repos/{o}/{r}``, ``POST /repos/{o}/{r}/issues``,
    ``GET /repos/{o}/{r}/issues/{n}``, ``POST /repos/{o}/{r}/issues/{n}/comments``, ``GET /search/issues``."""

    repository = "acme/shop"

    def _issue_json(self, n: int) -> dict[str, Any]:
        issue = self.issues[str(n)]
        api = f"{self.url}/api/v3/repos/{self.repository}/issues/{n}"
        return {"id": n, "number": n, "url": api, "html_url": f"{self.url}/{self.repository}/issues/{n}",
                "title": issue["title"], "body": issue["body"], "state": issue["state"],
                "labels": [{"name": name} for name in issue["labels"]], "comments": len(issue["comments"]),
                "updated_at": issue["updated"].strftime("%Y-%m-%dT%H:%M:%SZ")}

    def answer(self, method, path, query, body):
        repo = f"/api/v3/repos/{self.repository}"
        if method == "GET" and path == repo:
            owner, name = self.repository.split("/")
            return 200, {"id": 1, "name": name, "full_name": self.repository, "owner": {"login": owner},
                         "url": f"{self.url}{repo}", "html_url": f"{self.url}/{self.repository}"}
        if method == "POST" and path == f"{repo}/issues":
            n = len(self.issues) + 1
            self.issues[str(n)] = {"title": body["title"], "body": body.get("body"), "labels": body.get("labels", []),
                                   "state": "open", "comments": [], "updated": dt.datetime.now(UTC)}
            return 201, self._issue_json(n)
        match = re.fullmatch(rf"{repo}/issues/(\d+)(/comments)?", path)
        if match and match.group(1) in self.issues:
            n = int(match.group(1))
            if match.group(2) and method == "POST":
                self.issues[str(n)]["comments"].append(body["body"])
                self.issues[str(n)]["updated"] = dt.datetime.now(UTC)
                return 201, {"id": len(self.issues[str(n)]["comments"]), "body": body["body"]}
            return 200, self._issue_json(n)
        if method == "GET" and path == "/api/v3/search/issues":
            q = query["q"][0]
            label = re.search(r'label:"([^"]+)"', q).group(1)
            since = dt.datetime.strptime(re.search(r"updated:>=(\S+)", q).group(1), "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=UTC)
            assert f"repo:{self.repository}" in q and "is:issue" in q
            found = [int(n) for n, i in self.issues.items() if label in i["labels"] and i["updated"] >= since
                     and not ("is:open" in q and i["state"] != "open")]
            found.sort(key=lambda n: self.issues[str(n)]["updated"], reverse=True)
            return 200, {"total_count": len(found), "incomplete_results": False,
                         "items": [self._issue_json(n) for n in found]}
        return 404, {"message": "Not Found"}


@pytest.fixture
def jira(monkeypatch):
    server = FakeJira().start()
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_TEST", json.dumps(
        {"conn_type": "jira", "host": server.url, "login": "conveyor-bot", "password": "jira-api-token"}))
    yield server
    server.stop()


@pytest.fixture
def github(monkeypatch):
    server = FakeGithub().start()
    monkeypatch.setenv("AIRFLOW_CONN_GITHUB_TEST", json.dumps(
        {"conn_type": "github", "host": f"{server.url}/api/v3", "password": "ghp_testtoken"}))
    yield server
    server.stop()


JIRA_TARGET = {"backend": "jira", "conn_id": "jira_test", "project": "OPS", "issue_type": "Incident",
               "labels": ["conveyor", "release-failure"], "dedup_window_s": int(WEEK.total_seconds())}
GITHUB_TARGET = {"backend": "github", "conn_id": "github_test", "repository": FakeGithub.repository,
                 "labels": ["conveyor"], "dedup_window_s": int(WEEK.total_seconds())}


def ticket(n: int = 1, signature: str = SIG) -> Ticket:
    release = f"demo_shop/manual__{n}"
    body = (f"# [demo_shop] release v1.{n}.0 failed at wave_1.analysis\n\n## What happened\n```\n"
            "AnalysisFailed: wave-1: error rate 5.0% vs 1.0%\n```\n\n## Hosts touched and rollback\n"
            "- prod-1 (wave-1): v1.0.0 -> v1.2.0 [deployed]\n")
    return Ticket(ticket_id=f"RCA-{n:010d}", title=f"[demo_shop] release v1.{n}.0 failed at wave_1.analysis",
                  body=body, fields={"service": "demo_shop", "release_id": release, "version": f"v1.{n}.0",
                                     "failed_stage": "wave_1.analysis", "error_kind": "AnalysisFailed",
                                     "signature": signature, "run_url": f"http://airflow/runs/{n}"})


# ------------------------------------------------------------------------------------------ Jira


def test_jira_files_an_issue_with_the_evidence(jira):
    hook = tracker_for(JIRA_TARGET)
    result = deliver(ticket(1), hook, signature=SIG, window=WEEK, now=now())

    assert result == {"status": "filed", "key": "OPS-1", "url": f"{jira.url}/browse/OPS-1"}
    [search] = jira.calls("GET", "/rest/api/2/search")
    jql = search["query"]["jql"][0]
    assert 'project = "OPS"' in jql and f'labels = "conveyor-sig-{SIG}"' in jql
    assert "statusCategory != Done" in jql and 'updated >= "-10080m"' in jql  # the 7-day window
    [create] = jira.calls("POST", "/rest/api/2/issue")
    fields = create["json"]["fields"]
    assert fields["project"] == {"key": "OPS"} and fields["issuetype"] == {"name": "Incident"}
    assert fields["labels"] == ["conveyor", "release-failure", f"conveyor-sig-{SIG}"]
    assert fields["summary"] == "[demo_shop] release v1.1.0 failed at wave_1.analysis"
    assert "AnalysisFailed: wave-1: error rate 5.0% vs 1.0%" in fields["description"]
    assert "prod-1 (wave-1): v1.0.0 -> v1.2.0 [deployed]" in fields["description"]
    assert create["auth"].startswith("Basic ")  # the connection's login and API token


def test_jira_deduplicates_by_signature_within_the_window(jira):
    hook = tracker_for(JIRA_TARGET)
    first = deliver(ticket(1), hook, signature=SIG, window=WEEK, now=now())
    again = deliver(ticket(2), hook, signature=SIG, window=WEEK, now=now())  # the next release, the same failure
    other = deliver(ticket(3, "fedcba987654"), hook, signature="fedcba987654", window=WEEK, now=now())

    assert first["key"] == again["key"] == "OPS-1" and again["status"] == "commented"
    assert other == {"status": "filed", "key": "OPS-2", "url": f"{jira.url}/browse/OPS-2"}
    assert len(jira.calls("POST", "/rest/api/2/issue")) == 2
    [comment] = jira.calls("POST", r"/rest/api/2/issue/OPS-1/comment")
    text = comment["json"]["body"]
    assert "The same failure happened again" in text and "demo_shop/manual__2" in text and "RCA-0000000002" in text
    assert "release v1.2.0 failed at wave_1.analysis" in text  # and the evidence of that release

    jira.issues["OPS-1"]["done"] = True  # closed: the failure is back, so it is a new ticket
    assert deliver(ticket(4), hook, signature=SIG, window=WEEK, now=now())["key"] == "OPS-3"
    jira.issues["OPS-3"]["updated"] -= dt.timedelta(days=8)  # open, but last seen outside the window
    assert deliver(ticket(5), hook, signature=SIG, window=WEEK, now=now())["key"] == "OPS-4"


# ---------------------------------------------------------------------------------------- GitHub


def test_github_enterprise_files_an_issue_under_api_v3(github):
    hook, at = tracker_for(GITHUB_TARGET), now()
    result = deliver(ticket(1), hook, signature=SIG, window=WEEK, now=at)

    assert result == {"status": "filed", "key": "1", "url": f"{github.url}/acme/shop/issues/1"}
    assert all(r["path"].startswith("/api/v3/") for r in github.requests)
    [search] = github.calls("GET", "/api/v3/search/issues")
    q = search["query"]["q"][0]
    assert f'repo:acme/shop is:issue is:open label:"conveyor-sig-{SIG}"' in q
    since = (at - WEEK).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"updated:>={since}" in q
    [create] = github.calls("POST", "/api/v3/repos/acme/shop/issues")
    assert create["json"]["title"] == "[demo_shop] release v1.1.0 failed at wave_1.analysis"
    assert create["json"]["labels"] == ["conveyor", f"conveyor-sig-{SIG}"]
    assert "AnalysisFailed: wave-1: error rate 5.0% vs 1.0%" in create["json"]["body"]
    assert "ghp_testtoken" in create["auth"]


def test_github_deduplicates_across_releases(github):
    hook = tracker_for(GITHUB_TARGET)
    deliver(ticket(1), hook, signature=SIG, window=WEEK, now=now())
    again = deliver(ticket(2), hook, signature=SIG, window=WEEK, now=now())
    assert again == {"status": "commented", "key": "1", "url": f"{github.url}/acme/shop/issues/1"}
    assert len(github.calls("POST", "/api/v3/repos/acme/shop/issues")) == 1
    [comment] = github.calls("POST", "/api/v3/repos/acme/shop/issues/1/comments")
    assert "demo_shop/manual__2" in comment["json"]["body"]
    github.issues["1"]["state"] = "closed"
    assert deliver(ticket(3), hook, signature=SIG, window=WEEK, now=now())["key"] == "2"


# ------------------------------------------------------------------------------ the analysis' chart

CHART = "RCA-0000000001.wave_1.analysis.svg"
CHART_URL = "http://airflow.example/conveyor/releases/demo_shop/manual__1/charts/wave_1.analysis.svg"


def charted(n: int = 1) -> Ticket:
    """A ticket with the analysis' chart, drawn from a real verdict, and its link to the release page."""
    from conveyor.analysis.evidence_view import chart_svg
    from tests.conveyor.analysis.evidence_support import failing_errors

    plain = ticket(n)
    body = plain.body + f"\n## Metric comparison\n[chart of canary vs baseline](<{CHART_URL}>) (file `{CHART}`)\n"
    return Ticket(ticket_id=plain.ticket_id, title=plain.title, body=body, fields=plain.fields,
                  attachments={CHART: chart_svg(failing_errors()[0])})


def test_jira_gets_the_chart_as_an_attachment_of_the_new_issue_and_of_a_recurrence(jira):
    hook = tracker_for(JIRA_TARGET)
    first = deliver(charted(1), hook, signature=SIG, window=WEEK, now=now())
    assert first == {"status": "filed", "key": "OPS-1", "url": f"{jira.url}/browse/OPS-1", "attached": [CHART]}
    [upload] = jira.calls("POST", "/rest/api/2/issue/OPS-1/attachments")
    assert upload["auth"].startswith("Basic ") and upload["json"]["x-atlassian-token"] == "no-check"
    [stored] = jira.issues["OPS-1"]["attachments"]
    assert (stored["filename"], stored["content_type"]) == (CHART, "image/svg+xml")
    assert stored["content"].decode() == charted(1).attachments[CHART]  # the bytes, unchanged
    assert CHART_URL in jira.issues["OPS-1"]["fields"]["description"]

    again = deliver(charted(2), hook, signature=SIG, window=WEEK, now=now())  # the same failure, next release
    assert (again["status"], again["key"], again["attached"]) == ("commented", "OPS-1", [CHART])
    assert len(jira.issues["OPS-1"]["attachments"]) == 2


def test_a_refused_attachment_leaves_the_ticket_delivered_and_says_why(jira):
    hook = JiraTicketHook("jira_test", project="OPS")
    original = jira.answer

    def no_uploads(method, path, query, body):
        if path.endswith("/attachments"):
            return 413, {"errorMessages": ["the attachment is too large"]}
        return original(method, path, query, body)

    jira.answer = no_uploads
    result = deliver(charted(1), hook, signature=SIG, window=WEEK, now=now())
    assert (result["status"], result["key"], result["attached"]) == ("filed", "OPS-1", [])
    assert re.match(r"jira refused \(attach .*\.svg to OPS-1: HTTP 413\)", result["attach_error"])
    assert len(jira.calls("POST", "/rest/api/2/issue")) == 1  # filed once: not pending, never filed again


def test_github_links_the_chart_on_the_release_page_and_uploads_nothing(github):
    result = deliver(charted(1), tracker_for(GITHUB_TARGET), signature=SIG, window=WEEK, now=now())
    assert result == {"status": "filed", "key": "1", "url": f"{github.url}/acme/shop/issues/1", "attached": []}
    assert CHART_URL in github.issues["1"]["body"]
    assert [r["path"] for r in github.requests if r["method"] == "POST"] == ["/api/v3/repos/acme/shop/issues"]


def test_a_pending_ticket_keeps_its_chart_until_jira_takes_it(jira, tmp_path):
    local = LocalTicketBackend(tmp_path / "tickets")
    jira.stop()
    local.file(charted(1), created_at="2026-11-22T10:00:00+00:00", target=JIRA_TARGET)
    [pending] = deliver_pending(local, tracker_for, now=now())
    assert pending["delivery"]["status"] == "pending" and (tmp_path / "tickets" / CHART).exists()
    jira.start()
    [delivered] = deliver_pending(local, tracker_for, now=now())
    assert (delivered["delivery"]["status"], delivered["delivery"]["attached"]) == ("filed", [CHART])
    assert jira.issues["OPS-1"]["attachments"][0]["filename"] == CHART


# ------------------------------------------------------------------------------ down, or refused


@pytest.mark.parametrize("system", ["jira", "github"])
def test_a_system_that_is_down_or_refuses_says_which(system, request):
    server = request.getfixturevalue(system)
    target = JIRA_TARGET if system == "jira" else GITHUB_TARGET

    server.mode = "error"
    with pytest.raises(TicketDeliveryError, match=rf"{system} is down \(search: HTTP 503\)") as down:
        tracker_for(target).find_open(SIG, now() - WEEK)
    assert down.value.unavailable and len(server.requests) == 1  # reported at once, not retried in a loop

    server.mode = "up"
    server.stop()
    with pytest.raises(TicketDeliveryError, match=rf"{system} is down") as refused:
        tracker_for(target).find_open(SIG, now() - WEEK)
    assert refused.value.unavailable

    server.start()
    server.mode, server.delay_s = "slow", 3.0
    hook = (JiraTicketHook("jira_test", project="OPS", timeout_s=1) if system == "jira"
            else GithubTicketHook("github_test", repository="acme/shop", timeout_s=1))
    with pytest.raises(TicketDeliveryError, match=rf"{system} is down") as slow:
        hook.find_open(SIG, now() - WEEK)
    assert slow.value.unavailable

    server.mode = "up"
    bad = {**target, "project": "NOPE"} if system == "jira" else {**target, "repository": "acme/nope"}
    with pytest.raises(TicketDeliveryError, match=rf"{system} refused") as refused:
        tracker_for(bad).file(ticket(1), SIG)
    assert not refused.value.unavailable


def test_jira_says_why_it_refused(jira):
    with pytest.raises(TicketDeliveryError, match=r"jira refused \(create issue: HTTP 400\): valid project is required"):
        tracker_for({**JIRA_TARGET, "project": "NOPE"}).file(ticket(1), SIG)


# ---------------------------------------------------------------------- never lost: pending, retried


def test_a_ticket_is_kept_locally_while_the_system_is_down_and_delivered_when_it_is_back(jira, tmp_path,
                                                                                          monkeypatch, capsys):
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    local = LocalTicketBackend(tmp_path / "tickets")
    jira.stop()  # connection refused
    local.file(ticket(1), created_at="2026-11-22T10:00:00+00:00", target=JIRA_TARGET)
    [first] = deliver_pending(local, tracker_for, now=now())
    assert first["delivery"]["status"] == "pending" and first["delivery"]["attempts"] == 1
    assert "jira is down" in first["delivery"]["error"]
    jira.start()
    jira.mode = "error"  # back, but answering 503
    local.file(ticket(2), created_at="2026-11-22T11:00:00+00:00", target=JIRA_TARGET)  # the next release
    attempted = deliver_pending(local, tracker_for, now=now())
    assert [t["delivery"]["status"] for t in attempted] == ["pending"]  # the pass stops at the first "down"
    assert len(jira.requests) == 1
    assert [t["ticket_id"] for t in local.pending()] == ["RCA-0000000001", "RCA-0000000002"]

    assert conveyor_main(["tickets", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"RCA-0000000001 .* pending jira \(2 tries\)", listing), listing
    assert re.search(r"RCA-0000000002 .* pending jira", listing), listing
    assert conveyor_main(["tickets", "list", "--pending"]) == 0
    assert capsys.readouterr().out.count("pending jira") == 2

    jira.mode = "up"
    attempted = deliver_pending(local, tracker_for, now=now())  # the next ticket task, of any release
    assert [(t["ticket_id"], t["delivery"]["status"], t["delivery"]["key"]) for t in attempted] == [
        ("RCA-0000000001", "filed", "OPS-1"), ("RCA-0000000002", "commented", "OPS-1")]  # oldest first: deduplicated
    assert local.pending() == [] and len(jira.calls("POST", "/rest/api/2/issue")) == 1

    # A rerun of the first release's ticket task files the same ticket again: nothing new reaches Jira.
    requests = len(jira.requests)
    local.file(ticket(1), created_at="2026-11-23T10:00:00+00:00", target=JIRA_TARGET)
    assert deliver_pending(local, tracker_for, now=now()) == [] and len(jira.requests) == requests
    assert local.get("RCA-0000000001")["delivery"]["key"] == "OPS-1"
    assert local.get("RCA-0000000001")["created_at"] == "2026-11-22T10:00:00+00:00"

    assert conveyor_main(["tickets", "list"]) == 0
    assert re.search(r"RCA-0000000001 .* jira OPS-1", capsys.readouterr().out)


def test_two_delivery_passes_at_once_file_one_ticket(jira, tmp_path):
    local = LocalTicketBackend(tmp_path / "tickets")
    local.file(ticket(1), created_at="2026-11-22T10:00:00+00:00", target=JIRA_TARGET)
    jira.mode, jira.delay_s = "slow", 0.5
    results: list[list[dict]] = []
    threads = [threading.Thread(target=lambda: results.append(deliver_pending(local, tracker_for, now=now())))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 1]  # the second pass found nothing pending
    assert len(jira.calls("POST", "/rest/api/2/issue")) == 1


def test_signature_labels_are_valid_labels_on_both_systems():
    label = signature_label(SIG)
    assert re.fullmatch(r"[a-z0-9-]{1,50}", label)  # no spaces (Jira), short (GitHub: 50 characters)
