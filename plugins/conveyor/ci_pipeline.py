"""The continuous-integration DAG, ``ci_<service>``, built per service from ``include/services/<id>.yaml``.

```
find_commits -> ci[sha] (one mapped task per new commit) -> report
```

Every ``ci.poll_interval`` (or when a push webhook triggers a run with ``{"commit": "<sha>"}``) the
run fetches the repository, builds and tests each new commit of the release branch, records its CI
status in the ledger, and notifies at once for a red commit, naming it and its author. The release
DAG's scheduled runs release the newest green commit (:mod:`conveyor.operators.gate`).

Parsing does no work: building the DAG reads the service's YAML file and nothing else.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from conveyor.config import load_service
from conveyor.durations import format_duration
from conveyor.validation import COMMIT_RE

log = logging.getLogger(__name__)

DOC = """
### Continuous integration of `{id}`

For every new commit on **{branch}** this DAG runs the build and the **{suite}** suite (no hosts
needed) and records the commit's CI status (green or red) in the release ledger. A red commit is
announced at once ({channel}), naming the commit and its author, and the run ends failed.

* **Polling:** {polling}. Each run checks the commits pushed since the newest one CI has judged
  (at most {max_commits}).
* **Push webhook:** `POST /api/v2/dags/{dag_id}/dagRuns` with
  `{{"logical_date": null, "conf": {{"commit": "<sha>"}}}}` checks that commit (again, if it was
  already judged) along with any other new ones.

Scheduled releases (`release_{id}`) take the newest green commit of {branch}; when the newest judged
commit is red they skip with *line stopped at &lt;commit&gt;*. Service file: `{path}`.
"""


def ci_dag(service_id: str):
    """Build the ``ci_<service_id>`` DAG (call it from a file in ``dags/``)."""
    from airflow.sdk import DAG, Param, task

    service = load_service(service_id)
    interval = service.ci.poll_interval
    branch = service.repo.release_branch
    dag_id = f"ci_{service.id}"
    doc = DOC.format(
        id=service.id, dag_id=dag_id, branch=branch, path=service.path.name, max_commits=service.ci.max_commits,
        suite=service.ci_suite.name if service.ci_suite else "(none: build only)",
        polling=f"every {format_duration(interval)}" if interval else "off (`ci.poll_interval: null`): webhook runs only",
        channel="notification log" + (", Slack" if service.notifications.slack_webhook_conn_id else ""),
    )

    with DAG(
        dag_id=dag_id,
        description=f"CI of {service.id}: build and test every new commit of {branch}, record green/red",
        schedule=interval,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one poller at a time: two runs would check the same commits
        params={
            "commit": Param(
                None, type=["null", "string"], pattern=COMMIT_RE.pattern, title="Commit",
                description="A commit SHA to check (what a push webhook sends); empty: poll for new commits.",
            ),
        },
        tags=["conveyor", "ci", service.id],
        doc_md=doc,
        default_args={"owner": service.owner, "retries": 0},
    ) as dag:

        @task(task_id="find_commits")
        def find_commits() -> list[dict[str, str]]:
            """The new commits of the release branch, oldest first, plus the webhook's commit if any."""
            from airflow.sdk import get_current_context

            from conveyor.artifacts import mirror
            from conveyor.ci import commit_info, new_commits
            from conveyor.operators.base import ledger_for

            params = get_current_context()["params"]
            svc = load_service(service_id)
            ledger = ledger_for()
            commits = new_commits(svc, ledger=ledger)
            wanted = params.get("commit")
            if wanted:
                commit = commit_info(mirror(svc), wanted)  # BuildError when the repository has no such commit
                commits = [c for c in commits if c["sha"] != commit["sha"]] + [commit]
            log.info("%d commit(s) to check: %s", len(commits),
                     ", ".join(f"{c['sha'][:12]} {c['subject']}" for c in commits) or "none")
            return commits

        @task(task_id="ci", map_index_template="{{ ci_commit_label }}", max_active_tis_per_dagrun=1)
        def run_ci(commit: dict[str, str]) -> dict[str, Any]:
            """Build and test one commit, record its status; a red commit notifies at once."""
            from airflow.sdk import get_current_context

            from conveyor.ci import check_commit
            from conveyor.operators.base import ledger_for

            context = get_current_context()
            context["ci_commit_label"] = f"{commit['sha'][:12]} {commit['subject'][:60]}"
            return check_commit(load_service(service_id), commit, ledger=ledger_for(), context=context,
                                log_fn=log.info)

        @task(task_id="report")
        def report(results: list[dict[str, Any]]) -> dict[str, Any]:
            """Sum the run up; fail it when a commit is red (so the grid shows CI red)."""
            from conveyor.ci import RED
            from conveyor.exceptions import CommitsRed

            results = list(results)
            red = [r for r in results if r["status"] == RED]
            for r in results:
                log.info("%-5s %s %s: %s -- %s", r["status"].upper(), r["sha"][:12], r["author"], r["subject"],
                         r["detail"][:300])
            if red:
                raise CommitsRed(f"{len(red)} red commit(s) on {branch}: " + ", ".join(
                    f"{r['sha'][:12]} ({r['author']}: {r['subject']})" for r in red))
            return {"checked": len(results), "red": 0}

        report(run_ci.expand(commit=find_commits()))
    return dag


__all__ = ["ci_dag"]
