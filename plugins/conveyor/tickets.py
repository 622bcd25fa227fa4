"""Root-cause tickets: rendering, the local backend, and delivery to a ticket system. Pure, no Airflow.

A ticket is pre-filled with the evidence a five-whys review starts from: the failed stage and its
error, failing tests, a load suite's numbers against its thresholds, the metric comparison (a per-metric table, the metrics source's graph link, and a
chart of canary vs baseline attached or linked), the commit range, the hosts touched and the rollback
outcome (and, when the rollback left hosts off their version, what each host runs now and that a person
must act), and a link to the Airflow run. Its id is derived from the release id, so filing it again
(a rerun of the ticket task) updates the same ticket instead of opening a second one.

Every ticket is first written by the :class:`LocalTicketBackend` (files under ``$CONVEYOR_HOME/tickets``).
With ``tickets.backend: jira | github`` it is then delivered to that system (a :class:`TicketTracker`,
implemented over the providers' hooks in :mod:`conveyor.hooks.tickets`) by :func:`deliver_pending`:

* **deduplicated**: an open ticket of the same failure signature (service, failed stage, error kind; see
  :func:`conveyor.evidence.failure_signature`) updated within ``tickets.dedup_window`` gets a comment
  instead of a new ticket. The signature is a label on the ticket (``conveyor-sig-<12 hex>``).
* **never lost**: until the system has it, the local copy is marked ``pending`` for that system with the
  error; every later delivery pass (the next ticket task of any release, a retry of the task) tries the
  pending tickets again, oldest first.
* **once per release**: a ticket already delivered is not delivered again (the local copy remembers where
  it went), so a rerun of the ticket task never files a second ticket.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from conveyor.evidence import describe_rollback
from conveyor.exceptions import ConveyorError
from conveyor.loadtest import markdown_line
from conveyor.paths import tickets_dir

DELIVERED = ("filed", "commented")


@dataclass(frozen=True)
class Ticket:
    """A rendered ticket. ``attachments``: file name -> text (the analysis' SVG chart), stored beside the
    local copy and attached where the ticket system takes files (Jira)."""

    ticket_id: str
    title: str
    body: str
    fields: dict[str, Any]
    attachments: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ticket_id": self.ticket_id, "title": self.title, "body": self.body, **self.fields}


def _bullets(items: list[str], empty: str) -> str:
    return "\n".join(f"- {i}" for i in items) if items else f"- {empty}"


def _host_line(state: dict[str, Any]) -> str:
    version = state["version"] if state["version"] is not None else "?"
    mark = "" if state["ok"] else " **<- not back**"
    if state["note"].startswith("unreachable"):
        return f"{state['host']}: {state['note']}{mark}"
    return f"{state['host']}: {version} ({state['note']}){mark}"


def render_ticket(ticket_id: str, evidence: dict[str, Any]) -> Ticket:
    """Build the ticket from the evidence gathered by the ticket task (see ``TicketOperator``)."""
    service, version = evidence["service"], evidence.get("version") or evidence.get("git_ref")
    failed = evidence.get("failed_stage") or "unknown stage"
    title = f"[{service}] release {version} failed at {failed}"
    error = evidence.get("error") or "(no error message recorded)"
    commits = evidence.get("commits") or []
    commit_lines = [f"{c['sha'][:12]} {c['subject']} ({c['author']})" for c in commits[:50]]
    if len(commits) > 50:
        commit_lines.append(f"... and {len(commits) - 50} more")
    touched = evidence.get("hosts_touched") or []
    rollback = evidence.get("rollback") or {}
    states = evidence.get("host_states") or []
    action = evidence.get("action_required")
    analysis_text, attachments = _analysis_section(ticket_id, evidence)
    failing = evidence.get("failing_tests") or []
    pre_existing = evidence.get("pre_existing_tests") or []
    load_tests = evidence.get("load_tests") or {}
    approvals = evidence.get("approvals") or []
    act = ""
    if action:
        act = f"""
## A person must act
**{action}.**

Rollback: {describe_rollback(rollback)}

Hosts now (read over SSH when this ticket was filed):
{_bullets([_host_line(s) for s in states], "(no host could be read)")}

Put every host marked "not back" on its version from before the release (or finish the release), by hand,
and say so on this ticket.
"""
    body = f"""# {title}

| field | value |
|---|---|
| service | {service} |
| version | {version} (ref `{evidence.get('git_ref')}`, commit `{(evidence.get('commit') or '?')[:12]}`) |
| release | {evidence.get('release_id')} |
| change | {evidence.get('change_kind')}{' — EMERGENCY: ' + str(evidence.get('reason')) if evidence.get('emergency') else ''} |
| triggered by | {evidence.get('author') or 'schedule'} |
| failed stage | {failed} |
| failure signature | `{evidence.get('signature')}` (service, failed stage, error kind `{evidence.get('error_kind')}`) |
| Airflow run | {evidence.get('run_url')} |
{act}
## What happened
```
{error}
```

## Failing tests
{_bullets(failing, "none")}

## Pre-existing failures (also fail on production, not blocking)
{_bullets(pre_existing, "none")}

## Load tests on the replica
{_bullets([f"{name}: {markdown_line(load)}" for name, load in load_tests.items()], "none ran")}

## Metric comparison
{analysis_text}

## Hosts touched and rollback
{_bullets([f"{h['host']} ({h.get('wave')}): {h.get('from_version')} -> {h.get('to_version')} [{h.get('status')}]" for h in touched], "no production host changed")}
- rollback: {describe_rollback(rollback)}

## Sign-off
{_bullets([f"[{a.get('stage') or 'qa'}] {a['approver']}: {a['decision']} at {a['at']}" + (f" — {a['comment']}" if a.get('comment') else '') for a in approvals], "no sign-off recorded")}

## Commits in this release
{_bullets(commit_lines, "no commit range recorded")}

## Five whys
1. Why did the release fail? {error.splitlines()[0] if error else ''}
2. Why ...?
3. Why ...?
4. Why ...?
5. Why ...?

## Corrective actions
- [ ] Prevent this class of failure (test, check, alert) — owner: ___
"""
    fields = {k: evidence.get(k) for k in ("service", "version", "release_id", "failed_stage", "run_url",
                                           "signature", "error_kind")}
    fields.update({"error": error, "failing_tests": failing, "hosts_touched": [h["host"] for h in touched],
                   "load_tests": load_tests,
                   "rollback_status": rollback.get("status", "not needed"), "action_required": action,
                   "host_versions": {s["host"]: s["version"] if s["version"] is not None else s["note"]
                                     for s in states}})
    return Ticket(ticket_id=ticket_id, title=title, body=body, fields=fields, attachments=attachments)


def _analysis_section(ticket_id: str, evidence: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The metric comparison (table, links, each metric's reason and statistic) and the chart to attach."""
    from conveyor.analysis.evidence_view import analysis_markdown, chart_file_name, chart_svg

    analysis = evidence.get("analysis")
    if not isinstance(analysis, dict):
        return "- no metric comparison ran", {}
    stage = evidence.get("analysis_stage") or "analysis"
    chart = chart_svg(analysis)
    name = chart_file_name(ticket_id, stage) if chart is not None else None
    text = analysis_markdown(analysis, chart_url=evidence.get("chart_url"), chart_file=name)
    lines = [f"- {m.get('metric')}: {m.get('decision')} — {m.get('reason', '')}; statistic {m.get('statistic')}"
             for m in analysis.get("metrics", []) if isinstance(m, dict)]
    if lines:
        text += "\n\n" + "\n".join(lines)
    return text, ({name: chart} if name is not None and chart is not None else {})


# ------------------------------------------------------------------------------------ ticket systems


@dataclass(frozen=True)
class RemoteTicket:
    """A ticket in a ticket system: its key there (``OPS-12``, ``#7`` as ``7``) and its page."""

    key: str
    url: str | None = None


class TicketDeliveryError(ConveyorError):
    """A ticket system did not take a ticket. ``unavailable``: it is down (no connection, a timeout, an
    HTTP 5xx), as opposed to refusing the request (a 4xx: credentials, project, permissions)."""

    def __init__(self, message: str, *, unavailable: bool) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class TicketTracker(Protocol):
    """What Conveyor needs of a ticket system (``conveyor.hooks.tickets``: Jira, GitHub). Each method
    raises :class:`TicketDeliveryError` when the system does not answer or refuses."""

    def find_open(self, signature: str, since: dt.datetime) -> RemoteTicket | None:
        """The most recently updated open ticket labelled with ``signature`` and updated since ``since``."""

    def file(self, ticket: Ticket, signature: str) -> RemoteTicket:
        """Open a new ticket labelled with ``signature``."""

    def comment(self, key: str, text: str) -> None:
        """Add a comment to the ticket ``key``."""

    def attach(self, key: str, name: str, content: bytes, content_type: str) -> bool:
        """Attach a file to the ticket ``key``; False when the system takes no files (GitHub issues: the
        ticket links the release page's copy instead)."""


def signature_label(signature: str) -> str:
    """The label that marks a ticket with its failure signature (searched for deduplication)."""
    return f"conveyor-sig-{signature}"


def target_for(tickets: Any) -> dict[str, Any] | None:
    """Where a service's tickets go (its ``tickets`` section), as plain data kept with a pending ticket so
    that any later delivery pass can deliver it; ``None`` for the local backend."""
    if tickets.backend == "local":
        return None
    section = getattr(tickets, tickets.backend)
    target = {"backend": tickets.backend, "conn_id": section.conn_id, "labels": list(section.labels),
              "dedup_window_s": int(tickets.dedup_window.total_seconds())}
    if tickets.backend == "jira":
        target.update(project=section.project, issue_type=section.issue_type)
    else:
        target.update(repository=section.repository)
    return target


def _target_key(target: dict[str, Any]) -> tuple[str, ...]:
    return (target["backend"], target["conn_id"], target.get("project") or target.get("repository") or "")


def recurrence_comment(ticket: Ticket) -> str:
    """The comment that adds a release to an open ticket of the same failure: a summary, then the evidence."""
    f = ticket.fields
    return (f"The same failure happened again (signature `{f.get('signature')}`): release {f.get('release_id')} "
            f"of {f.get('service')} ({f.get('version')}) failed at {f.get('failed_stage')} "
            f"({f.get('error_kind')}). Run: {f.get('run_url')}. Conveyor ticket {ticket.ticket_id}.\n\n"
            + ticket.body)


def deliver(ticket: Ticket, tracker: TicketTracker, *, signature: str, window: dt.timedelta,
            now: dt.datetime) -> dict[str, Any]:
    """Comment on the open ticket of the same signature updated within ``window``, or file a new one."""
    existing = tracker.find_open(signature, now - window)
    if existing is not None:
        tracker.comment(existing.key, recurrence_comment(ticket))
        result = {"status": "commented", "key": existing.key, "url": existing.url}
    else:
        created = tracker.file(ticket, signature)
        result = {"status": "filed", "key": created.key, "url": created.url}
    if ticket.attachments:
        result.update(attach_files(ticket, tracker, result["key"]))
    return result


def attach_files(ticket: Ticket, tracker: TicketTracker, key: str) -> dict[str, Any]:
    """Attach the ticket's files to ``key``: ``{"attached": [names]}``, plus ``attach_error`` when the system
    did not take one. The ticket itself is delivered either way (its text links the chart), so a refused
    attachment never makes it pending, which would file or comment it a second time."""
    attached: list[str] = []
    for name, text in sorted(ticket.attachments.items()):
        try:
            if tracker.attach(key, name, text.encode(), "image/svg+xml"):
                attached.append(name)
        except TicketDeliveryError as exc:
            return {"attached": attached, "attach_error": str(exc)}
    return {"attached": attached}


def deliver_pending(local: LocalTicketBackend, tracker_for: Callable[[dict[str, Any]], TicketTracker], *,
                    now: dt.datetime, log: Callable[..., None] | None = None) -> list[dict[str, Any]]:
    """Deliver every pending local ticket, oldest first; return each one's record after the attempt.

    One pass holds the local backend's lock (two ticket tasks never deliver the same ticket twice). When a
    system is down, the pass stops trying it (its other pending tickets stay pending) and goes on with the
    others.
    """
    log = log or (lambda *args: None)
    attempted: list[dict[str, Any]] = []
    down: dict[tuple[str, ...], str] = {}
    with local.lock():
        for record in local.pending():
            delivery = record["delivery"]
            target = delivery["target"]
            if _target_key(target) in down:
                continue
            ticket = local.ticket(record["ticket_id"])
            try:
                result = deliver(ticket, tracker_for(target), signature=record.get("signature") or "unknown",
                                 window=dt.timedelta(seconds=target.get("dedup_window_s", 7 * 86400)), now=now)
            except Exception as exc:  # whatever the system did, the ticket stays here, pending
                unavailable = getattr(exc, "unavailable", True)
                message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TicketDeliveryError) else str(exc)
                if unavailable:
                    down[_target_key(target)] = message
                log("Ticket %s stays pending for %s (%s): %s", record["ticket_id"], target["backend"],
                    "down" if unavailable else "refused", message)
                delivery = {**delivery, "status": "pending", "error": message, "attempts": delivery.get("attempts", 0) + 1,
                            "last_attempt": now.isoformat()}
            else:
                log("Ticket %s %s %s %s", record["ticket_id"], result["status"], target["backend"], result["key"])
                delivery = {**delivery, **result, "error": None, "attempts": delivery.get("attempts", 0) + 1,
                            "last_attempt": now.isoformat(), "delivered_at": now.isoformat()}
            attempted.append(local.set_delivery(record["ticket_id"], delivery))
    return attempted


# ------------------------------------------------------------------------------------ the local backend


class LocalTicketBackend:
    """Tickets as files: ``<dir>/<id>.md`` (the ticket), ``<dir>/<id>.json`` (its fields and delivery) and its
    attachments beside them (``<dir>/<id>.<stage>.svg``, the analysis' chart; named in the ``.json``).

    ``delivery`` says where the ticket went: ``{"backend": "local", "status": "local"}``, or for a ticket
    system ``{"backend": "jira", "status": "pending" | "filed" | "commented", "key", "url", "error",
    "attempts", "target": {...}}``.
    """

    def __init__(self, directory: Path | None = None):
        self.directory = directory or tickets_dir()

    def _write(self, path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    def _meta_path(self, ticket_id: str) -> Path:
        return self.directory / f"{ticket_id}.json"

    def _attachment_path(self, name: str) -> Path:
        """A file beside the tickets; a name that would leave the directory is refused."""
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"attachment names are plain file names, got {name!r}")
        return self.directory / name

    def _read_meta(self, ticket_id: str) -> dict[str, Any] | None:
        path = self._meta_path(ticket_id)
        return json.loads(path.read_text()) if path.exists() else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self._write(self._meta_path(meta["ticket_id"]), json.dumps(meta, indent=2, sort_keys=True, default=str))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock over the directory's deliveries (``flock``; other processes wait)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".delivery.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def file(self, ticket: Ticket, created_at: str, target: dict[str, Any] | None = None) -> Path:
        """Create or update the ticket; the creation time of an existing ticket is kept, and so is its
        delivery once a ticket system has it (a rerun never delivers it twice). With a ``target``, a ticket
        not yet delivered is marked pending for it (:func:`deliver_pending` delivers it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self._read_meta(ticket.ticket_id) or {}
        created_at = previous.get("created_at", created_at)
        delivery = previous.get("delivery") or {}
        if target is None:
            delivery = delivery if delivery.get("status") in DELIVERED else {"backend": "local", "status": "local"}
        elif not (delivery.get("status") in DELIVERED and delivery.get("backend") == target["backend"]):
            delivery = {"backend": target["backend"], "status": "pending", "target": target,
                        "attempts": delivery.get("attempts", 0), "error": delivery.get("error")}
        path = self.directory / f"{ticket.ticket_id}.md"
        for name, text in sorted(ticket.attachments.items()):
            self._write(self._attachment_path(name), text)
        self._write(path, ticket.body)
        meta = {**ticket.to_dict(), "created_at": created_at, "path": str(path), "delivery": delivery,
                "attachments": sorted(ticket.attachments)}
        meta.pop("body")
        self._write_meta(meta)
        return path

    def set_delivery(self, ticket_id: str, delivery: dict[str, Any]) -> dict[str, Any]:
        meta = self._read_meta(ticket_id)
        if meta is None:
            raise KeyError(ticket_id)
        meta["delivery"] = delivery
        self._write_meta(meta)
        return meta

    def list(self) -> list[dict[str, Any]]:
        if not self.directory.exists():
            return []
        tickets = [json.loads(p.read_text()) for p in self.directory.glob("RCA-*.json")]
        return sorted(tickets, key=lambda t: t.get("created_at", ""), reverse=True)

    def pending(self) -> list[dict[str, Any]]:
        """Tickets waiting for their ticket system, oldest first."""
        waiting = [t for t in self.list() if (t.get("delivery") or {}).get("status") == "pending"]
        return sorted(waiting, key=lambda t: (t.get("created_at", ""), t["ticket_id"]))

    def get(self, ticket_id: str) -> dict[str, Any] | None:
        data = self._read_meta(ticket_id)
        if data is None:
            return None
        data["body"] = (self.directory / f"{ticket_id}.md").read_text()
        return data

    def ticket(self, ticket_id: str) -> Ticket:
        """The stored ticket as a :class:`Ticket` (to deliver it)."""
        data = self.get(ticket_id)
        if data is None:
            raise KeyError(ticket_id)
        fields = {k: v for k, v in data.items()
                  if k not in ("ticket_id", "title", "body", "created_at", "path", "delivery", "attachments")}
        attachments = {}
        for name in data.get("attachments") or []:
            path = self._attachment_path(name)
            if path.exists():
                attachments[name] = path.read_text()
        return Ticket(ticket_id=ticket_id, title=data["title"], body=data["body"], fields=fields,
                      attachments=attachments)


# ------------------------------------------------------------------------------- regression calendar


def regression_signature(service: str, area: str, failing: list[str]) -> str:
    """What makes two regression failures "the same": the service, the area and the tests that fail, as 12 hex
    digits. The version is left out: the same tests failing at the area's next turn are the same failure."""
    text = "\n".join((service, "regression", area, *sorted(failing)))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def render_regression_ticket(ticket_id: str, result: dict[str, Any], occurrences: list[dict[str, Any]]) -> Ticket:
    """The ticket of a failing regression area: ``result`` is the latest month's (service, area, month,
    version, release_id, run_url, failing_tests, passed, failed, signature); ``occurrences`` every month
    the same failure was seen, oldest first."""
    service, area, failing = result["service"], result["area"], list(result["failing_tests"])
    title = f"[{service}] regression area {area} fails on production's {result['version']}"
    seen = [f"{o['month']}: {o['version']}, {o['failed']} failing, run {o.get('run_url') or o['release_id']}"
            for o in occurrences]
    body = f"""# {title}

| field | value |
|---|---|
| service | {service} |
| area | {area} |
| month | {result['month']} |
| version tested | {result['version']} (what production runs, deployed to the replica) |
| results | {result['passed']} passed, {result['failed']} failed |
| failure signature | `{result['signature']}` (service, area, failing tests) |
| Airflow run | {result.get('run_url')} |

## Failing tests
{_bullets(failing, "none")}

## Seen in
{_bullets(seen, "this month only")}

The regression calendar (`regression_{service}`) ran this area against a replica of production: these
tests fail on the version production runs now. Next time the area's turn comes, the same failure is added
here.
"""
    fields = {"kind": "regression", "service": service, "area": area, "month": result["month"],
              "version": result["version"], "release_id": result["release_id"], "run_url": result.get("run_url"),
              "signature": result["signature"], "failing_tests": failing, "failed_stage": f"regression:{area}",
              "error_kind": "failing tests", "occurrences": occurrences}
    return Ticket(ticket_id=ticket_id, title=title, body=body, fields=fields)


def file_regression_ticket(local: LocalTicketBackend, result: dict[str, Any], *, window: dt.timedelta,
                           now: dt.datetime, target: dict[str, Any] | None = None) -> tuple[Ticket, Path]:
    """File (or add to) the ticket of a failing area; ``result`` as :func:`render_regression_ticket` takes it.

    Deduplicated by signature: a ticket of the same signature whose last occurrence is within ``window`` is
    the same ticket (this month is added to its occurrences; a rerun of the month changes nothing more), else
    a new one. With a ticket system (``target``), a new month on a delivered ticket is delivered again:
    :func:`deliver_pending` then comments on the open ticket of the signature.
    """
    signature = result["signature"]
    same = [t for t in local.list() if t.get("kind") == "regression" and t.get("signature") == signature
            and _last_seen(t) >= now - window]
    previous = max(same, key=_last_seen) if same else None
    month = result["month"]
    if previous is not None:
        ticket_id = previous["ticket_id"]
        occurrences = [o for o in previous.get("occurrences") or [] if o["month"] != month]
    else:
        key = f"regression/{result['service']}/{result['area']}/{month}/{signature}"
        ticket_id = "RCA-" + hashlib.sha1(key.encode()).hexdigest()[:10].upper()
        occurrences = []
    new_month = previous is not None and all(o["month"] != month for o in previous.get("occurrences") or [])
    occurrences = sorted([*occurrences, {k: result.get(k) for k in ("month", "version", "release_id", "run_url",
                                                                    "failed")} | {"at": now.isoformat()}],
                         key=lambda o: o["month"])
    ticket = render_regression_ticket(ticket_id, result, occurrences)
    path = local.file(ticket, created_at=now.isoformat(), target=target)
    delivery = (local.get(ticket_id) or {}).get("delivery") or {}
    if target is not None and new_month and delivery.get("status") in DELIVERED:
        local.set_delivery(ticket_id, {**delivery, "status": "pending", "target": target, "error": None})
    return ticket, path


def _last_seen(ticket: dict[str, Any]) -> dt.datetime:
    """When a regression ticket's failure was last seen (its newest occurrence, else its creation)."""
    times = [o.get("at") for o in ticket.get("occurrences") or [] if o.get("at")] or [ticket.get("created_at")]
    try:
        return max(dt.datetime.fromisoformat(t) for t in times if t)
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
