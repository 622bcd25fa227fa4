"""Airflow DAG: the weekly release statistics summary, every Monday at 08:00 UTC.

One task reads the release ledger and, for every service with a release in the week before (Monday to
Sunday, UTC), sends a summary of its statistics (releases, success rate, failed changes caught before full production and
where, durations, approval waits, rollbacks) as a `weekly_stats` notification: always to the
notification log, and to Slack when the service's file names `notifications.slack_webhook_conn_id`.
The same numbers are on the Statistics page (`/conveyor/stats`); definitions in docs/ledger.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import dag, get_current_context, task

DAYS = 7
log = logging.getLogger(__name__)


def last_full_week_end(when: dt.datetime) -> dt.datetime:
    """The end of the day before ``when`` (UTC): a Monday's run reports Monday to Sunday, whole days, so that
    consecutive weeks neither overlap nor leave hours out."""
    when = when.astimezone(dt.UTC)
    return dt.datetime.combine(when.date(), dt.time(), tzinfo=dt.UTC) - dt.timedelta(microseconds=1)


def summary_text(stats: dict[str, Any]) -> str:
    """One service's statistics (:meth:`conveyor.ledger.core.Ledger.stats`) as a message for people."""
    from conveyor.web.charts import duration, percent

    r, fc = stats["releases"], stats["failed_changes"]

    def by_stage(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{stage} {n}' for stage, n in counts.items())})" if counts else ""

    lines = [
        f"Release statistics of {stats['service']}, {stats['period']['start'][:10]} to "
        f"{stats['period']['end'][:10]}:",
        f"{r['count']} releases ({r['promotions']} promotions), {r['succeeded']} succeeded, {r['failed']} failed; "
        f"success rate {percent(stats['success_rate'])}",
        f"failed changes {fc['count']}: {fc['caught']} caught before full production{by_stage(fc['caught_by_stage'])}, "
        f"{fc['escaped']} escaped{by_stage(fc['escaped_by_stage'])}; caught {percent(fc['caught_rate'])}",
        f"median release {duration(stats['duration']['median_seconds'])}, median approval wait "
        f"{duration(stats['approvals']['median_wait_seconds'])}, {stats['tests']['run']} tests run "
        f"({stats['tests']['failed']} failed), {stats['rollbacks']['hosts']} hosts rolled back",
    ]
    return "\n".join(lines)


def send_weekly_summary(ledger: Any, now: dt.datetime, context: Any) -> list[dict[str, Any]]:
    """Send each service's summary of the ``DAYS`` days ending at ``now``; return what was sent.

    A service whose file is missing or broken still gets its summary in the notification log (the ledger
    keeps services that no file describes any more); only Slack needs the file.
    """
    from conveyor.config import load_service
    from conveyor.exceptions import ConveyorError
    from conveyor.notifiers import alert
    from conveyor.paths import services_dir

    sent = []
    for service in ledger.services():
        stats = ledger.stats(service, days=DAYS, now=now)
        if not stats["releases"]["count"]:
            continue
        webhook = None
        if (services_dir() / f"{service}.yaml").exists():
            try:
                webhook = load_service(service).notifications.slack_webhook_conn_id
            except ConveyorError as exc:
                log.warning("%s: service file unreadable, summary to the notification log only: %s", service, exc)
        text = summary_text(stats)
        error = alert(context, event="weekly_stats", text=text, slack_webhook_conn_id=webhook)
        sent.append({"service": service, "text": text, "slack_webhook_conn_id": webhook, "slack_error": error})
    return sent


@dag(
    dag_id="release_stats",
    schedule="0 8 * * 1",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["conveyor", "statistics"],
    doc_md=__doc__,
    default_args={"owner": "release-eng", "retries": 1},
)
def release_stats():
    @task
    def weekly_summary() -> list[dict[str, Any]]:
        """The summary of the whole week (Monday to Sunday) before the Monday the run is for."""
        from conveyor.operators.base import ledger_for

        context = get_current_context()
        end = context.get("data_interval_end") or dt.datetime.now(dt.UTC)
        ledger = ledger_for()
        try:
            return send_weekly_summary(ledger, last_full_week_end(end), context)
        finally:
            ledger.dispose()

    weekly_summary()


release_stats()
