"""Root-cause tickets: rendering (pure) and the local backend (files under ``$CONVEYOR_HOME/tickets``).

A ticket is pre-filled with the evidence a five-whys review starts from: the failed stage and its
error, failing tests, the metric comparison, the commit range, the hosts touched and the rollback
outcome, and a link to the Airflow run. Its id is derived from the release id, so filing it again
(a rerun of the ticket task) updates the same ticket instead of opening a second one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.paths import tickets_dir


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    title: str
    body: str
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"ticket_id": self.ticket_id, "title": self.title, "body": self.body, **self.fields}


def _bullets(items: list[str], empty: str) -> str:
    return "\n".join(f"- {i}" for i in items) if items else f"- {empty}"


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
    analysis = evidence.get("analysis")
    analysis_text = "- no metric comparison ran"
    if analysis:
        rows = [f"- {analysis.get('label', 'analysis')}: **{analysis.get('decision')}** — {analysis.get('reason', '')}"]
        for m in analysis.get("metrics", []):
            rows.append(
                f"  - {m.get('metric')}: {m.get('decision')}; effect {m.get('effect')}, interval "
                f"{m.get('interval')}, statistic {m.get('statistic')}, samples {json.dumps(m.get('samples'))}"
            )
        analysis_text = "\n".join(rows)
    failing = evidence.get("failing_tests") or []
    pre_existing = evidence.get("pre_existing_tests") or []
    approvals = evidence.get("approvals") or []
    body = f"""# {title}

| field | value |
|---|---|
| service | {service} |
| version | {version} (ref `{evidence.get('git_ref')}`, commit `{(evidence.get('commit') or '?')[:12]}`) |
| release | {evidence.get('release_id')} |
| change | {evidence.get('change_kind')}{' — EMERGENCY: ' + str(evidence.get('reason')) if evidence.get('emergency') else ''} |
| triggered by | {evidence.get('author') or 'schedule'} |
| failed stage | {failed} |
| Airflow run | {evidence.get('run_url')} |

## What happened
```
{error}
```

## Failing tests
{_bullets(failing, "none")}

## Pre-existing failures (also fail on production, not blocking)
{_bullets(pre_existing, "none")}

## Metric comparison
{analysis_text}

## Hosts touched and rollback
{_bullets([f"{h['host']} ({h.get('wave')}): {h.get('from_version')} -> {h.get('to_version')} [{h.get('status')}]" for h in touched], "no production host changed")}
- rollback: {rollback.get('status', 'not needed')}{'; rolled back: ' + ', '.join(rollback.get('rolled_back', [])) if rollback.get('rolled_back') else ''}{'; FAILED: ' + json.dumps(rollback.get('failed')) if rollback.get('failed') else ''}

## Sign-off
{_bullets([f"{a['approver']}: {a['decision']} at {a['at']}" + (f" — {a['comment']}" if a.get('comment') else '') for a in approvals], "no sign-off recorded")}

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
    fields = {k: evidence.get(k) for k in ("service", "version", "release_id", "failed_stage", "run_url")}
    fields.update({"error": error, "failing_tests": failing, "hosts_touched": [h["host"] for h in touched],
                   "rollback_status": rollback.get("status", "not needed")})
    return Ticket(ticket_id=ticket_id, title=title, body=body, fields=fields)


class LocalTicketBackend:
    """Tickets as files: ``<dir>/<id>.md`` (the ticket) and ``<dir>/<id>.json`` (its fields)."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory or tickets_dir()

    def _write(self, path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    def file(self, ticket: Ticket, created_at: str) -> Path:
        """Create or update the ticket; the creation time of an existing ticket is kept."""
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / f"{ticket.ticket_id}.json"
        if meta_path.exists():
            created_at = json.loads(meta_path.read_text()).get("created_at", created_at)
        self._write(self.directory / f"{ticket.ticket_id}.md", ticket.body)
        meta = {**ticket.to_dict(), "created_at": created_at, "path": str(self.directory / f"{ticket.ticket_id}.md")}
        meta.pop("body")
        self._write(meta_path, json.dumps(meta, indent=2, sort_keys=True, default=str))
        return self.directory / f"{ticket.ticket_id}.md"

    def list(self) -> list[dict[str, Any]]:
        if not self.directory.exists():
            return []
        tickets = [json.loads(p.read_text()) for p in self.directory.glob("RCA-*.json")]
        return sorted(tickets, key=lambda t: t.get("created_at", ""), reverse=True)

    def get(self, ticket_id: str) -> dict[str, Any] | None:
        meta = self.directory / f"{ticket_id}.json"
        if not meta.exists():
            return None
        data = json.loads(meta.read_text())
        data["body"] = (self.directory / f"{ticket_id}.md").read_text()
        return data
