"""The weekly statistics DAG: parses without lookups, and its task sends each service's summary."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path

import pytest

from conveyor.ledger import Ledger
from tests.conveyor.ledger.test_ledger import NOW
from tests.conveyor.ledger.test_stats import seed_stats_history
from tests.dags.test_dag_integrity import _bag, forbid_connections  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]


def load_dag_module():
    spec = importlib.util.spec_from_file_location("release_stats_dag", ROOT / "dags" / "release_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dag_is_weekly_and_parses_without_lookups(forbid_connections):  # noqa: F811
    dag = _bag(ROOT / "dags").dags["release_stats"]
    assert dag.task_ids == ["weekly_summary"]
    assert dag.schedule == "0 8 * * 1"  # Airflow's cron timetables are UTC unless told otherwise
    assert dag.doc_md and "Monday" in dag.doc_md
    assert dag.get_task("weekly_summary").owner == "release-eng"


def test_a_run_reports_the_whole_week_before_its_monday():
    module = load_dag_module()
    end = module.last_full_week_end(dt.datetime(2025, 3, 31, 8, tzinfo=dt.UTC))  # a Monday
    assert end == dt.datetime(2025, 3, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)


class FakeSlack:
    """Slack cannot run here: the provider's webhook hook, recording what it was asked to send."""

    sent: list[tuple[str, str]] = []

    def __init__(self, *, slack_webhook_conn_id: str, timeout: int):
        self.conn_id = slack_webhook_conn_id

    def send(self, *, text: str) -> None:
        FakeSlack.sent.append((self.conn_id, text))


@pytest.fixture
def services(tmp_path, monkeypatch) -> Path:
    """A service file for ``shop`` (the demo's, renamed) that names a Slack webhook connection."""
    folder = tmp_path / "services"
    folder.mkdir()
    text = (ROOT / "include" / "services" / "demo_shop.yaml").read_text()
    text = text.replace("id: demo_shop", "id: shop").replace("slack_webhook_conn_id: null",
                                                              "slack_webhook_conn_id: slack_stats")
    (folder / "shop.yaml").write_text(text)
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(folder))
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    from airflow.providers.slack.hooks import slack_webhook

    FakeSlack.sent = []
    monkeypatch.setattr(slack_webhook, "SlackWebhookHook", FakeSlack)
    return folder


def test_the_task_sends_each_services_summary(services, tmp_path):
    module = load_dag_module()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    seed_stats_history(ledger)
    try:
        sent = module.send_weekly_summary(ledger, NOW, {})
    finally:
        ledger.dispose()
    shop_text = (
        "Release statistics of shop, 2025-03-25 to 2025-03-31:\n"
        "10 releases (1 promotions), 3 succeeded, 6 failed; success rate 33.3%\n"
        "failed changes 7: 3 caught before full production (soak 1, tests 1, wave_1 1), "
        "3 escaped (incident 1, watch 1, wave_2 1); caught 50.0%\n"
        "median release 1.0 h, median approval wait 22 min, 8 tests run (3 failed), 4 hosts rolled back"
    )
    assert [(s["service"], s["slack_webhook_conn_id"], s["slack_error"]) for s in sent] == [
        ("other", None, None), ("shop", "slack_stats", None)]
    assert sent[1]["text"] == shop_text
    assert sent[0]["text"].splitlines()[1] == "1 releases (0 promotions), 1 succeeded, 0 failed; success rate 100.0%"
    assert FakeSlack.sent == [("slack_stats", shop_text)]  # "other" has no service file: the log only
    log = [json.loads(line) for line in (tmp_path / "home" / "notifications.log").read_text().splitlines()]
    assert [(r["event"], r["text"]) for r in log] == [("weekly_stats", sent[0]["text"]), ("weekly_stats", shop_text)]


def test_a_quiet_week_sends_nothing(services, tmp_path):
    module = load_dag_module()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    seed_stats_history(ledger)
    try:
        assert module.send_weekly_summary(ledger, dt.datetime(2025, 5, 1, tzinfo=dt.UTC), {}) == []
    finally:
        ledger.dispose()
    assert FakeSlack.sent == [] and not (tmp_path / "home" / "notifications.log").exists()
