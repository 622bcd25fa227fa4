"""What a release is called and what it left behind: ids, and the ledger record read as evidence.

Pure functions over the ledger's release record (``Ledger.get_release``), no Airflow import: the
ticket, the failure summary of a run and the Required Actions read the same facts the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any


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


def gather_evidence(release: dict[str, Any], rollback: dict[str, Any] | None) -> dict[str, Any]:
    """Turn a ledger release record (with its stages, hosts, tests...) into ticket evidence."""
    stages = release.get("stages", [])
    failed = failed_stages(release)
    first = failed[0] if failed else None
    analysis = None
    for s in failed + stages:
        detail = s.get("detail") or {}
        if isinstance(detail, dict) and detail.get("decision") in ("fail", "inconclusive"):
            analysis = detail
            break
    tests = release.get("tests", [])
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
        "analysis": analysis,
        "commits": commits,
        "hosts_touched": [h for h in release.get("hosts", [])
                          if h.get("environment") == "production" and h.get("status") in ("deployed", "failed")],
        "rollback": rollback or {},
        "approvals": release.get("approvals", []),
    }
