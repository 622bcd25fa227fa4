"""Root-cause tickets rendered from what a failed release really leaves: a ledger record written the way
the operators write it (a real ``Ledger`` on SQLite) and a real verdict of the canary judge."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from conveyor.analysis import AnalysisSettings, Verdict, judge
from conveyor.evidence import gather_evidence, ticket_id_for
from conveyor.ledger import Ledger
from conveyor.tickets import LocalTicketBackend, render_ticket
from tests.conveyor.analysis.test_judging import series

RID = "demo_shop/manual__1"
AT = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


def failing_verdict() -> Verdict:
    """The judge on a canary erring at 5% against baselines at 1%, asked until it decides."""
    canary = {"prod-1": series(60, 100, 5)}
    baseline = {f"prod-{i}": series(60, 100, 1) for i in range(2, 5)}
    settings = AnalysisSettings(window_s=600)
    for k in range(1, 62):
        verdict = judge({h: s[:k] for h, s in canary.items()}, {h: s[:k] for h, s in baseline.items()}, settings,
                        elapsed_s=(k - 1) * 10.0)
        if verdict.decision != "continue":
            return verdict
    raise AssertionError("the judge never decided")


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.dispose()


def record_canary_failure(ledger: Ledger, verdict: Verdict) -> None:
    """validate, build, tests, sign-off, wave 1 and its failed analysis: the operators' own calls."""
    ledger.upsert_release(RID, service="demo_shop", git_ref="v1.2.0", change_kind="minor", emergency=False,
                          author="dev", run_id="manual__1", dag_id="release_demo_shop", status="running",
                          started_at=AT)
    ledger.upsert_release(RID, version="v1.2.0", commit_sha="c" * 40, commit_range={
        "from": "a" * 40, "to": "c" * 40,
        "commits": [{"sha": "b" * 40, "author": "Bob", "email": "b@x", "date": "2026-11-21T09:00:00+00:00",
                     "subject": "Cache recommendations"}]})
    ledger.upsert_test_result(RID, "integration", "test_search_ignores_case", outcome="failed", message="boom",
                              pre_existing=True)
    ledger.upsert_approval(RID, "qa1", decision="approved", comment=None, at=AT + dt.timedelta(minutes=1))
    ledger.upsert_approval(RID, "qa2", decision="approved", comment="looks fine", at=AT + dt.timedelta(minutes=2))
    for host, env, wave in (("prod-1", "production", "wave-1"), ("replica-1", "replica", "replica")):
        ledger.upsert_host_deployment(RID, host, environment=env, wave=wave, from_version="v1.0.0",
                                      to_version="v1.2.0", status="deployed", at=AT + dt.timedelta(minutes=3))
    detail = {"label": "wave-1", "canary": ["prod-1"], "baseline": ["prod-2", "prod-3", "prod-4"],
              "elapsed_s": verdict.elapsed_s, **verdict.to_dict()}
    ledger.upsert_stage(RID, "wave_1.analysis", status="running", started_at=AT + dt.timedelta(minutes=4))
    ledger.upsert_stage(RID, "wave_1.analysis", status="running", detail=detail)
    ledger.upsert_stage(RID, "wave_1.analysis", status="failed", finished_at=AT + dt.timedelta(minutes=5),
                        error=f"AnalysisFailed: wave-1: {verdict.reason}")
    ledger.upsert_release(RID, status="failed", finished_at=AT + dt.timedelta(minutes=6))
    ledger.upsert_rollback(RID, "prod-1", from_version="v1.2.0", to_version="v1.0.0", status="rolled back",
                           at=AT + dt.timedelta(minutes=7))


def test_ticket_carries_the_evidence_the_release_left(ledger, tmp_path):
    verdict = failing_verdict()
    assert verdict.decision == "fail"
    record_canary_failure(ledger, verdict)
    rollback = {"status": "rolled back", "rolled_back": ["prod-1"], "touched": ["prod-1"], "failed": {}}
    evidence = gather_evidence(ledger.get_release(RID), rollback)
    evidence["run_url"] = "http://localhost:8080/dags/release_demo_shop/runs/manual__1"
    ticket = render_ticket(ticket_id_for(RID), evidence)

    assert ticket.title == "[demo_shop] release v1.2.0 failed at wave_1.analysis"
    metric = next(m for m in verdict.to_dict()["metrics"] if m["decision"] == "fail")
    for expected in (
        verdict.reason,                                         # the judge's own sentence
        f"{metric['metric']}: fail",                            # the failing metric, as the judge names it
        "Cache recommendations (Bob)",                          # the commit range
        "prod-1 (wave-1): v1.0.0 -> v1.2.0 [deployed]",         # the host touched
        "rolled back: prod-1",                                  # and what the rollback did
        "integration::test_search_ignores_case",                # a pre-existing failure
        "qa1: approved", "qa2: approved", "looks fine",         # the sign-off, as recorded
        "Five whys",
        "http://localhost:8080/dags/release_demo_shop/runs/manual__1",
    ):
        assert expected in ticket.body, expected
    hosts_section = ticket.body.split("## Hosts touched")[1].split("##")[0]
    assert "replica-1" not in hosts_section  # only production hosts are "touched"
    assert ticket.fields["failing_tests"] == []  # the only failure is pre-existing


def test_filing_twice_updates_one_ticket(ledger, tmp_path):
    record_canary_failure(ledger, failing_verdict())
    evidence = gather_evidence(ledger.get_release(RID), {"status": "rolled back", "rolled_back": ["prod-1"]})
    ticket = render_ticket(ticket_id_for(RID), evidence)
    backend = LocalTicketBackend(tmp_path / "tickets")
    backend.file(ticket, created_at="2026-11-22T10:06:00")
    backend.file(ticket, created_at="2026-11-22T11:00:00")  # a rerun of the ticket task
    [listed] = backend.list()
    assert listed["ticket_id"] == ticket_id_for(RID) and listed["created_at"] == "2026-11-22T10:06:00"
    assert listed["hosts_touched"] == ["prod-1"] and listed["rollback_status"] == "rolled back"
    assert json.loads((tmp_path / "tickets" / f"{ticket_id_for(RID)}.json").read_text())["service"] == "demo_shop"
    assert "Metric comparison" in backend.get(ticket_id_for(RID))["body"]
