"""What a release is called and what it left behind: ids, and the ledger record read as evidence.

Pure functions over the ledger's release record (``Ledger.get_release``), no Airflow import: the
ticket, the failure summary of a run and the Required Actions read the same facts the same way.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

#: What the ticket, the run's failure message and the alert say when hosts were left off their version.
ACTION_REQUIRED = "a person must act"
# Rollback statuses after which hosts may be left on the release's version.
_ROLLBACK_NOT_DONE = ("failed", "did not finish", "did not run")
_ERROR_KIND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*:")


def release_id_for(service_id: str, run_id: str) -> str:
    """A release is ``<service>/<run_id>``: the same across retries and task reruns, so writes keyed by it upsert."""
    return f"{service_id}/{run_id}"


def ticket_id_for(release_id: str) -> str:
    """The release's root-cause ticket id: filing it again updates the same ticket."""
    return "RCA-" + hashlib.sha1(release_id.encode()).hexdigest()[:10].upper()


def responder_id(user: Any) -> str | None:
    """The user id in a HITL response's ``responded_by_user`` (a dict, a ``HITLUser`` or a plain id)."""
    if not user:
        return None
    if isinstance(user, dict):
        return user.get("id") or user.get("name")
    return getattr(user, "id", None) or str(user)


def failed_stages(release: dict[str, Any]) -> list[dict[str, Any]]:
    """The release's failed stages from the ledger record, first failure first."""
    failed = [s for s in release.get("stages", []) if s.get("status") == "failed"]
    return sorted(failed, key=lambda s: str(s.get("finished_at") or ""))


def error_kind(error: str | None) -> str:
    """The kind of a recorded stage error: its exception class (``AnalysisFailed: ...`` -> ``AnalysisFailed``)."""
    match = _ERROR_KIND_RE.match(error or "")
    return match.group(1).rsplit(".", 1)[-1] if match else "unknown"


def failure_signature(service: str | None, stage: str | None, error: str | None) -> str:
    """What makes two failures "the same" for the ticket system: the service, the failed stage and the kind
    of error (its exception class), as 12 hex digits. Versions, hosts and messages are left out, so the
    same breakage in the next release lands on the same open ticket."""
    text = "\n".join((service or "?", stage or "unknown stage", error_kind(error)))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _rollback_rows(release: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    rolled_back, failed = [], {}
    for row in release.get("rollbacks", []):
        status = str(row.get("status") or "")
        if status == "rolled back":
            rolled_back.append(row["host"])
        elif status.startswith("failed"):
            failed[row["host"]] = status.removeprefix("failed").lstrip(": ") or "failed"
    return sorted(rolled_back), failed


def production_hosts_touched(release: dict[str, Any]) -> list[dict[str, Any]]:
    """The release's production host rows that say the host was (or may have been) changed."""
    return [h for h in release.get("hosts", [])
            if h.get("environment") == "production" and h.get("status") in ("deploying", "deployed", "failed")]


def rollback_outcome(release: dict[str, Any], result: dict[str, Any] | None, *,
                     stage: str = "rollback") -> dict[str, Any]:
    """How the rollback went, whether its task succeeded or failed.

    ``result`` is the rollback task's return value (XCom), which only a successful task leaves; without
    it the ledger says: the rollback stage (its status, the detail the task recorded before it raised, the
    error the failure callback recorded) and the ``rollbacks`` rows. ``status`` is the task's own
    (``rolled back``, ``nothing to roll back``), ``failed``, ``did not finish`` (the stage never ended),
    ``did not run`` (hosts changed but no rollback is recorded) or ``not needed``; ``action_required`` is
    true when hosts may be left on the release's version.
    """
    if result:  # the task succeeded, so every host it had to move is back: its own account is the truth
        outcome = {"error": None, **result, "status": result.get("status") or "rolled back"}
        outcome["failed"] = dict(outcome.get("failed") or {})
        outcome["action_required"] = bool(outcome["failed"])
        return outcome
    rolled_back, failed = _rollback_rows(release)
    row = next((s for s in release.get("stages", []) if s.get("stage") == stage), None)
    detail = (row or {}).get("detail") or {}
    if row is not None and row.get("status") == "failed":
        outcome = {"status": "failed", "error": row.get("error")}
    elif row is not None and row.get("status") in ("running", None):
        outcome = {"status": "did not finish", "error": row.get("error")}
    elif row is not None:
        outcome = {"status": detail.get("status") or row.get("status"), "error": row.get("error")}
    elif failed:
        outcome = {"status": "failed", "error": None}
    elif rolled_back:
        outcome = {"status": "rolled back", "error": None}
    elif production_hosts_touched(release):
        outcome = {"status": "did not run", "error": None}
    else:
        outcome = {"status": "not needed", "error": None}
    outcome["rolled_back"] = sorted(set(rolled_back) | set(detail.get("rolled_back") or []))
    outcome["failed"] = {**(detail.get("failed") or {}), **failed}
    outcome["touched"] = sorted(set(detail.get("touched") or []) | set(rolled_back) | set(failed))
    outcome["action_required"] = outcome["status"] in _ROLLBACK_NOT_DONE or bool(outcome["failed"])
    if outcome["action_required"] and outcome["status"] not in _ROLLBACK_NOT_DONE:
        outcome["status"] = "failed"
    return outcome


def original_versions(release: dict[str, Any], plan: dict[str, Any] | None = None) -> dict[str, str | None]:
    """The version each production host ran before the release: the wave plan's, else the ledger's rows."""
    original: dict[str, str | None] = {}
    for row in release.get("rollbacks", []):
        if row.get("to_version"):
            original[row["host"]] = row["to_version"]
    for row in release.get("hosts", []):
        if row.get("environment") == "production" and row.get("from_version"):
            original[row["host"]] = row["from_version"]
    original.update((plan or {}).get("original") or {})
    return original


def host_states(versions: dict[str, str | None], unreachable: dict[str, str], original: dict[str, str | None],
                release_version: str | None) -> list[dict[str, Any]]:
    """Each host as read right now: its version, the one it ran before the release, and whether it is back.

    ``ok`` is true for a host on its version from before the release (or on the release's version when it
    never had one); an unreachable host is never ok.
    """
    rows = []
    for host in sorted(set(versions) | set(unreachable)):
        before = original.get(host)
        if host in unreachable:
            rows.append({"host": host, "version": None, "original": before, "ok": False,
                         "note": f"unreachable: {unreachable[host]}"})
            continue
        now = versions[host]
        if now == before:
            note, ok = "its version before the release", True
        elif release_version is not None and now == release_version:
            note, ok = f"still the release's version; it ran {before or 'nothing'} before", before is None
        else:
            note, ok = f"neither its version before the release ({before or 'none'}) nor the release's", False
        rows.append({"host": host, "version": now, "original": before, "ok": ok, "note": note})
    return rows


def describe_hosts(states: list[dict[str, Any]]) -> str:
    """``prod-1 on v1.0.0 (its version before the release), prod-2 unreachable: ...`` in one line."""
    return ", ".join(f"{s['host']} {s['note']}" if s["version"] is None and not s["ok"]
                     else f"{s['host']} on {s['version'] or 'no version'} ({s['note']})" for s in states)


def describe_rollback(rollback: dict[str, Any]) -> str:
    """The rollback in one line, for the ticket, the run's failure message and the alert."""
    status = rollback.get("status") or "not needed"
    parts = [status.upper() if rollback.get("action_required") else status]
    if rollback.get("rolled_back"):
        parts.append("rolled back: " + ", ".join(rollback["rolled_back"]))
    if rollback.get("failed"):
        parts.append("failed on " + "; ".join(f"{h}: {e}" for h, e in sorted(rollback["failed"].items())))
    elif rollback.get("action_required") and rollback.get("error"):
        parts.append(str(rollback["error"]).splitlines()[0])
    return "; ".join(parts)


def gather_evidence(release: dict[str, Any], rollback: dict[str, Any] | None,
                    host_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Turn a ledger release record (with its stages, hosts, tests...) into ticket evidence.

    ``rollback`` is :func:`rollback_outcome`'s; ``host_states`` (:func:`host_states`) what the hosts run
    now, read when the rollback did not finish its work.
    """
    stages = release.get("stages", [])
    failed = failed_stages(release)
    first = failed[0] if failed else None
    rollback = rollback or {}
    states = host_states or []
    stranded = [s for s in states if not s["ok"]]
    action = None
    if stranded:
        action = f"{ACTION_REQUIRED}: the rollback did not put every host back ({describe_hosts(stranded)})"
    elif rollback.get("action_required"):  # no host read, or every host read is back: the rollback still failed
        action = (f"{ACTION_REQUIRED}: the rollback {rollback.get('status')}; check the hosts it names "
                  "(a host back on its version may still be unhealthy)")
    analysis = analysis_stage = None
    for s in failed + stages:
        detail = s.get("detail") or {}
        if isinstance(detail, dict) and detail.get("decision") in ("fail", "inconclusive"):
            analysis, analysis_stage = detail, s.get("stage")
            break
    tests = release.get("tests", [])
    load_tests = {name: suite["load"] for s in stages if s.get("stage") == "tests"
                  for name, suite in ((s.get("detail") or {}).get("suites") or {}).items()
                  if isinstance(suite, dict) and isinstance(suite.get("load"), dict)}
    commits = (release.get("commit_range") or {}).get("commits", [])
    return {
        **{k: release.get(k) for k in ("release_id", "service", "version", "git_ref", "change_kind", "emergency",
                                       "reason", "author")},
        "commit": release.get("commit_sha"),
        "failed_stage": first["stage"] if first else None,
        "error": first.get("error") if first else None,
        "failing_tests": [f"{t['suite']}::{t['test']}" for t in tests
                          if t.get("outcome") == "failed" and not t.get("pre_existing")],
        "pre_existing_tests": [f"{t['suite']}::{t['test']}" for t in tests if t.get("pre_existing")],
        "load_tests": load_tests,  # a load suite's numbers against its thresholds, by suite
        "analysis": analysis,
        "analysis_stage": analysis_stage,  # its ledger stage: the chart's name and URL
        "commits": commits,
        "hosts_touched": [h for h in release.get("hosts", [])
                          if h.get("environment") == "production" and h.get("status") in ("deploying", "deployed",
                                                                                        "failed")],
        "rollback": rollback,
        "host_states": states,
        "action_required": action,
        "error_kind": error_kind(first.get("error") if first else None),
        "signature": failure_signature(release.get("service"), first["stage"] if first else None,
                                       first.get("error") if first else None),
        "approvals": release.get("approvals", []),
    }
