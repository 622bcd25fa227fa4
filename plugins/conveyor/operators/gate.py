"""The CI gate of scheduled releases: release the newest green commit, stop the line on a red one.

A scheduled release run does not release its ``git_ref`` param (the branch name): it releases the
newest commit of the release branch that ``ci_<service>`` judged green (see
:func:`conveyor.ci.release_candidate`). When the newest judged commit is red the run skips (it does
not fail: nothing went wrong in the release process) with ``line stopped at <commit>`` and a
notification; when nothing changed since the last successful release it skips quietly. Manual and
API-triggered runs are not gated: whoever triggers one names what to release.

:func:`release_gate` is called from the release's ``validate`` task, which then releases the commit
it returns (``build`` reads the ref from ``validate``'s XCom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowSkipException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.config import ServiceConfig
    from conveyor.ledger import Ledger


def is_scheduled(context: Context) -> bool:
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return str(getattr(run_type, "value", run_type) or "").endswith("scheduled")


def release_gate(context: Context, service: ServiceConfig, ledger: Ledger) -> str | None:
    """The commit a scheduled run releases; None for other runs (they release their ``git_ref``).

    Raises :class:`AirflowSkipException` when the line is stopped at a red commit (after notifying
    the service's channel, naming the commit and its author) or when nothing changed since the last
    successful release (quietly).
    """
    from conveyor.ci import LINE_STOPPED, RELEASE, scheduled_release_gate
    from conveyor.notifiers import ReleaseNotifier

    if not is_scheduled(context):
        return None
    decision, sha, message = scheduled_release_gate(service, ledger)
    if decision == RELEASE and sha:
        return sha
    if decision == LINE_STOPPED:
        ReleaseNotifier(event="line_stopped", text=f"Scheduled release of {service.id} skipped: {message}",
                        slack_webhook_conn_id=service.notifications.slack_webhook_conn_id).notify(context)
    raise AirflowSkipException(message)


__all__ = ["is_scheduled", "release_gate"]
