"""Ticket systems behind the providers' hooks: Jira (``apache-airflow-providers-atlassian-jira``) and GitHub
issues (``apache-airflow-providers-github``), each a :class:`conveyor.tickets.TicketTracker`.

The provider's hook reads the Airflow connection (Jira: ``host`` = the site URL, ``login``, ``password`` = an
API token; GitHub: ``password`` = a token, or a GitHub App in the extras, and ``host`` = the API base URL for
GitHub Enterprise, ``https://<host>/api/v3``). On top of it these hooks bound every call (a
``timeout_s`` per request and no silent retry loop: a system that is down is reported at once, and the
ticket stays pending locally until a later pass) and turn every error into a
:class:`~conveyor.tickets.TicketDeliveryError` that says whether the system is down or refused.

Endpoints used. Jira: ``POST /rest/api/2/issue``, ``POST /rest/api/2/issue/{key}/comment``,
``POST /rest/api/2/issue/{key}/attachments`` (the analysis' chart; multipart, ``X-Atlassian-Token:
no-check``), ``GET /rest/api/2/search?jql=...`` (Jira Cloud, ``*.atlassian.net``: ``GET
/rest/api/3/search/jql``). GitHub: ``GET /repos/{owner}/{repo}``, ``POST /repos/{owner}/{repo}/issues``,
``GET /repos/{owner}/{repo}/issues/{n}``, ``POST /repos/{owner}/{repo}/issues/{n}/comments``,
``GET /search/issues?q=...``; GitHub's API takes no files on issues, so the ticket links the chart on
the release page instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

from airflow.sdk import BaseHook

from conveyor.tickets import RemoteTicket, Ticket, TicketDeliveryError, TicketTracker, signature_label

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 20
# The ticket systems' own limits on a text field (Jira: 32767 characters; GitHub: 65536).
_JIRA_TEXT_MAX = 32_000
_GITHUB_TEXT_MAX = 65_000


def _cut(text: str, limit: int, ticket_id: str | None = None) -> str:
    if len(text) <= limit:
        return text
    tail = f"\n\n… (cut at {limit} characters; the whole ticket: `conveyor tickets show {ticket_id}`)"
    return text[: limit - len(tail)] + tail


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _delivery_error(system: str, action: str, exc: BaseException) -> TicketDeliveryError:
    """What went wrong, and whether the system is down (no answer, timeout, 5xx) or refused (4xx)."""
    import requests

    status = _http_status(exc)
    if status is not None:
        unavailable = status >= 500 or status == 429
        what = f"HTTP {status}"
    else:
        unavailable = isinstance(exc, requests.ConnectionError | requests.Timeout | OSError)
        what = type(exc).__name__
    verb = "is down" if unavailable else "refused"
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else what
    return TicketDeliveryError(f"{system} {verb} ({action}: {what}): {detail}", unavailable=unavailable)


def _calling(system: str, action: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except TicketDeliveryError:
        raise
    except Exception as exc:  # every failure of the call says which system, what for, and down or refused
        raise _delivery_error(system, action, exc) from exc


class JiraTicketHook(BaseHook):
    """Root-cause tickets as Jira issues, through the Jira provider's :class:`JiraHook`.

    :param jira_conn_id: the Jira connection.
    :param project: the project key issues are created in.
    :param issue_type: the issue type's name (``Bug``).
    :param labels: labels every issue gets (besides its signature label).
    :param timeout_s: seconds each request may take.
    """

    conn_name_attr = "jira_conn_id"
    default_conn_name = "jira_default"
    conn_type = "jira"
    hook_name = "Conveyor tickets (Jira)"

    def __init__(self, jira_conn_id: str = default_conn_name, *, project: str, issue_type: str = "Bug",
                 labels: tuple[str, ...] | list[str] = (), timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__()
        self.jira_conn_id = jira_conn_id
        self.project = project
        self.issue_type = issue_type
        self.labels = list(labels)
        self.timeout_s = timeout_s

    @cached_property
    def client(self) -> Any:
        from airflow.providers.atlassian.jira.hooks.jira import JiraHook

        client = _calling("jira", "connection", lambda: JiraHook(jira_conn_id=self.jira_conn_id).get_conn())
        client.timeout = self.timeout_s
        # Jira Cloud has removed GET /rest/api/2/search; the client then uses /rest/api/3/search/jql.
        client.cloud = client.url.rstrip("/").endswith(".atlassian.net")
        return client

    def get_conn(self) -> Any:
        return self.client

    def _browse(self, key: str) -> str:
        return f"{self.client.url.rstrip('/')}/browse/{key}"

    def find_open(self, signature: str, since: dt.datetime) -> RemoteTicket | None:
        # Relative to Jira's clock, in whole minutes: an absolute date would be read in the Jira user's time zone.
        minutes = max(1, round((dt.datetime.now(dt.UTC) - since).total_seconds() / 60))
        project = self.project.replace('"', '\\"')
        jql = (f'project = "{project}" AND labels = "{signature_label(signature)}" AND statusCategory != Done '
               f'AND updated >= "-{minutes}m" ORDER BY updated DESC')
        found = _calling("jira", "search", lambda: self.client.jql(jql, fields=["summary", "status", "updated"],
                                                                   limit=1))
        issues = (found or {}).get("issues") or []
        return RemoteTicket(issues[0]["key"], self._browse(issues[0]["key"])) if issues else None

    def file(self, ticket: Ticket, signature: str) -> RemoteTicket:
        fields = {
            "project": {"key": self.project},
            "issuetype": {"name": self.issue_type},
            "summary": ticket.title[:250],
            "description": _cut(ticket.body, _JIRA_TEXT_MAX, ticket.ticket_id),
            "labels": [*self.labels, signature_label(signature)],
        }
        created = _calling("jira", "create issue", lambda: self.client.issue_create(fields))
        key = (created or {}).get("key")
        if not key:
            raise TicketDeliveryError(f"jira refused (create issue): no issue key in the answer {created!r}",
                                      unavailable=False)
        return RemoteTicket(key, self._browse(key))

    def comment(self, key: str, text: str) -> None:
        _calling("jira", f"comment on {key}",
                 lambda: self.client.issue_add_comment(key, _cut(text, _JIRA_TEXT_MAX)))

    def attach(self, key: str, name: str, content: bytes, content_type: str) -> bool:
        # requests' (file name, bytes, content type) form: the file keeps its name and type, no temp file
        _calling("jira", f"attach {name} to {key}",
                 lambda: self.client.add_attachment_object(key, (name, content, content_type)))
        return True

    def test_connection(self) -> tuple[bool, str]:
        try:
            user = _calling("jira", "who am I", lambda: self.client.myself())
        except TicketDeliveryError as exc:
            return False, str(exc)
        return True, f"Connected to Jira as {(user or {}).get('name') or (user or {}).get('displayName')}"


class GithubTicketHook(BaseHook):
    """Root-cause tickets as GitHub issues, through the GitHub provider's :class:`GithubHook`.

    The provider's hook resolves the credentials (token or GitHub App) and the base URL (GitHub Enterprise:
    ``https://<host>/api/v3``); the client is rebuilt from them with a request timeout and without
    PyGithub's default of ten retries, so a GitHub that is down is reported at once.

    :param github_conn_id: the GitHub connection.
    :param repository: ``owner/name`` of the repository issues are opened in.
    :param labels: labels every issue gets (besides its signature label).
    :param timeout_s: seconds each request may take.
    """

    conn_name_attr = "github_conn_id"
    default_conn_name = "github_default"
    conn_type = "github"
    hook_name = "Conveyor tickets (GitHub issues)"

    def __init__(self, github_conn_id: str = default_conn_name, *, repository: str,
                 labels: tuple[str, ...] | list[str] = (), timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__()
        self.github_conn_id = github_conn_id
        self.repository = repository
        self.labels = list(labels)
        self.timeout_s = timeout_s

    @cached_property
    def client(self) -> Any:
        from airflow.providers.github.hooks.github import GithubHook
        from github import Github

        base = _calling("github", "connection", lambda: GithubHook(github_conn_id=self.github_conn_id).get_conn())
        requester = base.requester
        return Github(auth=requester.auth, base_url=requester.base_url, timeout=int(self.timeout_s), retry=0,
                      seconds_between_requests=None, seconds_between_writes=None)

    def get_conn(self) -> Any:
        return self.client

    @cached_property
    def _repo(self) -> Any:
        return _calling("github", f"repository {self.repository}", lambda: self.client.get_repo(self.repository))

    def find_open(self, signature: str, since: dt.datetime) -> RemoteTicket | None:
        updated = since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        query = (f'repo:{self.repository} is:issue is:open label:"{signature_label(signature)}" '
                 f"updated:>={updated}")

        def first() -> Any:
            return next(iter(self.client.search_issues(query, sort="updated", order="desc")), None)

        issue = _calling("github", "search", first)
        return RemoteTicket(str(issue.number), issue.html_url) if issue is not None else None

    def file(self, ticket: Ticket, signature: str) -> RemoteTicket:
        labels = [*self.labels, signature_label(signature)]
        body = _cut(ticket.body, _GITHUB_TEXT_MAX, ticket.ticket_id)
        issue = _calling("github", "create issue",
                         lambda: self._repo.create_issue(title=ticket.title[:250], body=body, labels=labels))
        return RemoteTicket(str(issue.number), issue.html_url)

    def comment(self, key: str, text: str) -> None:
        def add() -> None:
            self._repo.get_issue(int(key)).create_comment(_cut(text, _GITHUB_TEXT_MAX))

        _calling("github", f"comment on #{key}", add)

    def attach(self, key: str, name: str, content: bytes, content_type: str) -> bool:
        return False  # GitHub's REST API cannot upload files to an issue: the ticket links the release page

    def test_connection(self) -> tuple[bool, str]:
        try:
            repo = self._repo
        except TicketDeliveryError as exc:
            return False, str(exc)
        return True, f"Connected to GitHub: {repo.full_name}"


def tracker_for(target: dict[str, Any]) -> TicketTracker:
    """The ticket system of a delivery target (:func:`conveyor.tickets.target_for`)."""
    if target["backend"] == "jira":
        return JiraTicketHook(target["conn_id"], project=target["project"], issue_type=target.get("issue_type", "Bug"),
                              labels=target.get("labels", ()))
    if target["backend"] == "github":
        return GithubTicketHook(target["conn_id"], repository=target["repository"], labels=target.get("labels", ()))
    raise ValueError(f"unknown ticket backend {target['backend']!r}")
