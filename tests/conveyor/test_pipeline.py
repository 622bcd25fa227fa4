"""The release DAG's messages: the sign-off's subject and body, and the notifications, say the ref
``validate`` checked (on a scheduled run, the CI gate's commit) and never the raw ``git_ref`` param."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123abcd0123abcd0123abcd0123abcd0123abcd"


class TaskInstance:
    """What templates call on ``ti``: the XComs of the run, by task id."""

    def __init__(self, xcoms: dict) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str | None = None, **_: object):
        return self.xcoms.get(task_ids)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags["release_demo_shop"]


def context(task, xcoms: dict) -> dict:
    return {"ti": TaskInstance(xcoms), "task": task, "run_id": "scheduled__1",
            "params": {"git_ref": "main", "change": "minor", "emergency": False, "reason": ""},
            "dag_run": SimpleNamespace(triggering_user_name=None, run_id="scheduled__1", dag_id="release_demo_shop")}


XCOMS = {
    "validate": {"git_ref": SHA, "emergency": False, "change_kind": "minor", "author": None},
    "build": {"version": "v1.1.0-2-g0123abcd0123", "commit": SHA, "commit_count": 1,
              "manifest": {"commit_range": {"commits": [{"sha": SHA, "subject": "Cart: faster totals",
                                                         "author": "Ana"}]}}},
    "tests": {"suites": {"unit": {"passed": 12, "failed": 1}}, "pre_existing": ["unit::test_old_bug"]},
    "replica.deploy": {"health": {"replica-1": {"ok": True, "version": "v1.1.0-2-g0123abcd0123"}}},
    "ticket": {"ticket_id": "RCA-1", "title": "[demo_shop] release failed"},
}


def render_notification(task, notifier, xcoms: dict) -> str:
    notifier = copy.deepcopy(notifier)  # rendering fills the fields in place, as in a task's own process
    notifier.render_template_fields(context(task, xcoms))
    return notifier.text


def test_sign_off_shows_the_checked_ref_and_the_evidence(dag):
    approval = dag.get_task("qa_signoff.approval_1")
    ctx = context(approval, XCOMS)
    subject = approval.render_template(approval.subject, ctx)
    assert subject == f"QA sign-off 1/2: {SHA} of demo_shop"
    body = approval.render_template(approval.body, ctx)
    for expected in (f"ref `{SHA}`", "**v1.1.0-2-g0123abcd0123**", "triggered by the schedule",
                     "Cart: faster totals (Ana)", "/conveyor/releases/demo_shop/scheduled__1/changelog",
                     "unit: 12 passed, 1 failed", "`unit::test_old_bug`", "replica-1 ok on v1.1.0-2-g0123abcd0123"):
        assert expected in body, expected
    assert "main" not in subject + body


@pytest.mark.parametrize(("task_id", "callback"), [("validate", "on_success_callback"),
                                                   ("finalize", "on_success_callback"),
                                                   ("ticket", "on_success_callback")])
def test_notifications_name_the_checked_ref(dag, task_id, callback):
    task = dag.get_task(task_id)
    [notifier] = getattr(task, callback)
    text = render_notification(task, notifier, XCOMS)
    assert f"{SHA} of demo_shop" in text and "main" not in text, text


def test_a_run_whose_ref_was_never_checked_says_so(dag):
    task = dag.get_task("ticket")
    [notifier] = task.on_success_callback
    text = render_notification(task, notifier, {"ticket": XCOMS["ticket"]})  # validate failed: no XCom
    assert "main (not validated) of demo_shop FAILED" in text, text


def test_the_dag_doc_is_the_service_s(dag):
    assert "### Release `demo_shop`" in dag.doc_md
    assert "unit, integration, load" in dag.doc_md and "qa1, qa2, qa3" in dag.doc_md
    assert "1 → 25% → 50% → 100%" in dag.doc_md
