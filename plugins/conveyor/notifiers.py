"""Release notifications: every message goes to the local notification log and, when the service
names a Slack webhook connection, to Slack through the Slack provider's own webhook hook.

``ReleaseNotifier`` is a :class:`airflow.sdk.BaseNotifier`, usable wherever Airflow takes a
notifier: DAG/task callbacks and the QA sign-off's ``notifiers``. Its text is templated.
"""

from __future__ import annotations

import json
import time
from typing import Any

from airflow.sdk import BaseNotifier

from conveyor.paths import conveyor_home

SLACK_TIMEOUT_S = 10


def notification_log():
    return conveyor_home() / "notifications.log"


class ReleaseNotifier(BaseNotifier):
    """Send a release event.

    :param event: a short machine-readable kind (``started``, ``approval``, ``rollback``, ``succeeded``,
        ``failed``, ``rollback_failed``: hosts were left off their version and a person must act...).
    :param text: the message (templated).
    :param slack_webhook_conn_id: a Slack incoming-webhook connection, or None for the log only.
    """

    template_fields = ("text",)

    def __init__(self, *, event: str, text: str, slack_webhook_conn_id: str | None = None) -> None:
        super().__init__()
        self.event = event
        self.text = text
        self.slack_webhook_conn_id = slack_webhook_conn_id

    def notify(self, context: Any) -> str | None:
        """Write the log line, then post to Slack. A Slack that is down or slow (bounded by
        ``SLACK_TIMEOUT_S``) is logged and returned, never raised: a notification must not fail the
        task or the approval that sends it (the log has the message either way)."""
        dag_run = context.get("dag_run")
        record = {
            "at": time.time(), "event": self.event, "text": self.text,
            "dag_id": getattr(dag_run, "dag_id", None), "run_id": getattr(dag_run, "run_id", None),
        }
        path = notification_log()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if not self.slack_webhook_conn_id:
            return None
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        try:
            SlackWebhookHook(slack_webhook_conn_id=self.slack_webhook_conn_id, timeout=SLACK_TIMEOUT_S).send(
                text=self.text)
        except Exception as exc:  # the notification log has it; Slack did not take it
            self.log.error("Could not send the %s notification to Slack: %s: %s", self.event, type(exc).__name__, exc)
            return f"{type(exc).__name__}: {exc}"
        return None


def alert(context: Any, *, event: str, text: str, slack_webhook_conn_id: str | None) -> str | None:
    """Send a release event now (not as a callback); returns Slack's error, if any (never raised)."""
    return ReleaseNotifier(event=event, text=text, slack_webhook_conn_id=slack_webhook_conn_id).notify(context)


def read_notifications() -> list[dict[str, Any]]:
    path = notification_log()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
