"""Who decides "continue or roll back?" after an inconclusive canary (issue 10, item 2): the deciders
(``analysis.deciders``, by default the QA group) minus the run's author, never the author.

``InconclusiveDecisionOperator.execute`` writes the Required Action through Airflow's
``upsert_hitl_detail`` (recorded here instead of written to a metadata database) and parks the task;
``execute_complete`` gets the answer as Airflow hands it over.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest

from conveyor.exceptions import AnalysisInconclusive
from conveyor.operators.analysis import InconclusiveDecisionOperator

INCONCLUSIVE = {"label": "wave-1", "decision": "inconclusive", "reason": "too little traffic",
                "canary": ["prod-1"], "baseline": ["prod-2"]}


class XComs:
    def __init__(self, verdict: dict) -> None:
        self.verdict = verdict

    def xcom_pull(self, task_ids: str | None = None, **_: object) -> dict:
        return self.verdict


def decide(assigned=("qa1", "qa2", "qa3")) -> InconclusiveDecisionOperator:
    return InconclusiveDecisionOperator(task_id="decide", analysis_task_id="wave_1.analysis", service_id="demo_shop",
                                        assigned=list(assigned), timeout=timedelta(minutes=30))


def context(author: str | None = "dev", verdict: dict = INCONCLUSIVE) -> dict:
    return {"dag_run": SimpleNamespace(run_id="manual__1", triggering_user_name=author), "ti": XComs(verdict),
            "task_instance": SimpleNamespace(id=uuid4()), "params": {}}


def answer(who: str, option: str) -> dict:
    return {"chosen_options": [option], "params_input": {}, "responded_at": datetime(2026, 11, 23, 10, 5, tzinfo=UTC),
            "responded_by_user": {"id": who, "name": who}}


@pytest.fixture
def requests(monkeypatch) -> list[dict]:
    """The Required Actions the operator writes (Airflow's ``upsert_hitl_detail`` calls)."""
    written: list[dict] = []
    monkeypatch.setattr("airflow.providers.standard.operators.hitl.upsert_hitl_detail",
                        lambda **kw: written.append(kw))
    return written


def assignees(request: dict) -> list[str]:
    return [u["id"] for u in request["assigned_users"] or []]


def test_the_author_is_never_asked(requests):
    from airflow.sdk.exceptions import TaskAwaitingInput

    with pytest.raises(TaskAwaitingInput):
        decide().execute(context(author="qa1"))
    assert assignees(requests[-1]) == ["qa2", "qa3"]
    with pytest.raises(TaskAwaitingInput):
        decide().execute(context(author="dev"))
    assert assignees(requests[-1]) == ["qa1", "qa2", "qa3"]


def test_the_required_action_shows_the_evidence(requests):
    """Issue 11: the body has the per-metric table, the Prometheus graph and the chart on the release page."""
    from airflow.sdk.exceptions import TaskAwaitingInput

    from conveyor.analysis.evidence_view import markdown_table
    from tests.conveyor.analysis.evidence_support import too_little_traffic

    graph = "http://127.0.0.1:9090/graph?g0.expr=shop_http_requests_total&g0.range_input=1m"
    verdict, _ = too_little_traffic(source="prometheus", graph_url=graph)
    assert verdict["decision"] == "inconclusive"
    with pytest.raises(TaskAwaitingInput):
        decide().execute(context(verdict=verdict))
    [request] = requests
    body = request["body"]
    assert body.startswith("The analysis could not decide. Canary: `['prod-1']`; baseline: "
                           "`['prod-2', 'prod-3', 'prod-4']`.")
    assert f"**wave-1**: **inconclusive** — {verdict['reason']}" in body
    assert markdown_table(verdict) in body and "| error rate | 0.00% | 0.00% | 30 / 90 |" in body
    assert f"[Prometheus graph](<{graph}>)" in body and "source: prometheus" in body
    assert ("[chart of canary vs baseline](<http://localhost:8080/conveyor/releases/demo_shop/manual__1/charts/"
            "wave_1.analysis.svg>)") in body
    assert body.endswith(InconclusiveDecisionOperator.ASK)


def test_nobody_left_to_decide_rolls_back_at_once(requests):
    with pytest.raises(AnalysisInconclusive, match=r"analysis wave-1 inconclusive and nobody may decide: the "
                       r"deciders \(ops\) minus the run's author 'ops' leave nobody; rolling back"):
        decide(assigned=["ops"]).execute(context(author="ops"))
    assert requests == []  # nobody was asked


def test_a_pass_asks_nobody(requests):
    result = decide().execute(context(verdict={**INCONCLUSIVE, "decision": "pass"}))
    assert result == {"decision": "pass", "asked": False}
    assert requests == []


def test_an_answer_by_the_author_does_not_count():
    """With no deciders anyone may answer in Airflow: the author's Continue rolls the release back."""
    with pytest.raises(AnalysisInconclusive, match="the decision by dev does not count: the run's author cannot "
                                                   "decide; rolling back"):
        decide(assigned=()).execute_complete(context(author="dev"), answer("dev", "Continue"))
    with pytest.raises(AnalysisInconclusive, match="the decision by dev does not count"):  # written around the API
        decide(assigned=("dev", "qa1")).execute_complete(context(author="dev"), answer("dev", "Continue"))


def test_an_answer_by_someone_not_a_decider_does_not_count():
    with pytest.raises(AnalysisInconclusive, match=r"the decision by ops does not count: not one of the deciders "
                                                   r"\(qa1, qa2, qa3\)"):
        decide().execute_complete(context(), answer("ops", "Continue"))


def test_a_decider_continues_or_rolls_back():
    assert decide().execute_complete(context(), answer("qa2", "Continue")) == {
        "decision": "continue", "asked": True, "by": "qa2"}
    with pytest.raises(AnalysisInconclusive, match="qa2 chose to roll back"):
        decide().execute_complete(context(), answer("qa2", "Roll back"))
    assert decide(assigned=()).execute_complete(context(), answer("ops", "Continue"))["by"] == "ops"


def test_the_release_dag_asks_the_qa_group_by_default():
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags")).dags["release_demo_shop"]
    for task_id in ("wave_1.decide", "watch.decide"):
        assert dag.get_task(task_id).deciders == ["qa1", "qa2", "qa3"]
