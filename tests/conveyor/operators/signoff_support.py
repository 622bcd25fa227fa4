"""The sign-off evidence a production deploy needs (``conveyor.operators.signoff.verify_production_signoff``),
written to a test's ledger the way the release writes it: the approvals (``QASignoffOperator``) and the
``tests`` stage (``TestSuitesOperator``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: The demo's approval stages after QA that a minor change needs (``manager`` is for major changes only).
LATER_STAGES: dict[str, tuple[str, ...]] = {"client": ("client1",)}


def record_signoff(ledger: Any, release_id: str, approvers: tuple[str, ...] = ("qa1", "qa2"),
                   tests: str | None = "success", later: dict[str, tuple[str, ...]] | None = None) -> None:
    """``approvers`` approved the release's QA stage, ``later`` (by default :data:`LATER_STAGES`) the stages
    after it, and its ``tests`` stage ended ``tests`` (None: no stage row)."""
    at = datetime(2026, 11, 23, 10, 5, tzinfo=UTC)
    for who in approvers:
        ledger.upsert_approval(release_id, who, decision="approved", comment=None, at=at)
    for stage, people in (LATER_STAGES if later is None else later).items():
        for who in people:
            ledger.upsert_approval(release_id, who, stage=stage, decision="approved", comment=None, at=at)
    if tests is not None:
        ledger.upsert_stage(release_id, "tests", status=tests, started_at=at, finished_at=at)
