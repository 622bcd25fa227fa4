"""DORA metrics over ledger rows: a pure function, no database and no Airflow.

Definitions (after DORA's four keys as GitLab computes them), for one service or for all of them:

*Period.* The ``days`` whole UTC calendar days ending with the day of ``now``: from midnight UTC of
``now.date() - (days - 1)`` up to ``now`` (inclusive). The per-day series has exactly one entry per day.

*Deployment.* A release with status ``success`` and a ``deployed_at`` (the first moment every production
host ran its version). It counts on the day of ``deployed_at``.

*Changed production.* A release whose ``production_changed`` key is true; when the key is absent, a release
with a ``deployed_at`` or with status ``rolled_back``. (:meth:`conveyor.ledger.core.Ledger.dora` sets the
key from the ledger: any production host touched, any rollback, or a ``deployed_at``.)

*Failed change.* A release that changed production and ended ``failed`` or ``rolled_back``. Its time is
``finished_at`` (falling back to ``started_at``).

Deployment frequency
    deployments in the period, and that count divided by ``days``.
Lead time for changes
    for every commit shipped by a deployment in the period: ``deployed_at`` minus the commit's
    ``committed_at``. Each commit counts once, at the first successful deployment whose ``commit_range``
    lists it (a commit of a rolled-back release counts when a later release ships it). Commits with no
    known time are counted in ``commits_without_time`` and left out. Negative values (clock skew) count
    as 0. Reported as the median and the 90th percentile (linear interpolation between closest ranks,
    i.e. ``statistics.quantiles(method="inclusive")``), in seconds.
Change failure rate
    failed changes in the period divided by (failed changes + deployments) in the period. Releases still
    running are not decided yet and count in neither. ``None`` when nothing changed production.
Time to restore service
    an incident opens at a failed change of a service when none is open, and closes at the ``deployed_at``
    of the service's next deployment; failed changes in between join the open incident. The value is the
    median of close minus open, in seconds, over incidents opened in the period and already closed;
    incidents still open are counted in ``open_incidents``.
Series
    one dict per day: ``deployments``, ``failed_changes``, ``change_failure_rate``,
    ``lead_time_median_seconds`` (commits deployed that day) and ``time_to_restore_median_seconds``
    (incidents closed that day).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from conveyor.ledger.schema import FAILED_RELEASE_STATUSES, to_utc


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=10, method="inclusive")[8])


def _rate(failed: int, total: int) -> float | None:
    return failed / total if total else None


def _commit_times(commits: Iterable[Mapping[str, Any]] | Mapping[tuple[str, str], Any]) -> dict:
    if isinstance(commits, Mapping):
        return {key: to_utc(value) for key, value in commits.items()}
    return {(c["service"], c["commit_sha"]): to_utc(c.get("committed_at")) for c in commits}


def commit_shas(commit_range: Any) -> list[str]:
    """The commit shas of a release's ``commit_range``, in the order stored (newest first).

    Accepts what the ledger holds: the build manifest's ``{"from", "to", "commits": [{"sha", ...}]}``,
    a list of such commit dicts, or a plain list of shas. ``None`` is no commits.
    """
    if not commit_range:
        return []
    if isinstance(commit_range, Mapping):
        commit_range = commit_range.get("commits") or []
    if isinstance(commit_range, str):
        raise TypeError("commit_range must be a list or a manifest dict, not a string")
    shas = []
    for item in commit_range:
        sha = (item.get("sha") or item.get("commit_sha")) if isinstance(item, Mapping) else item
        if sha:
            shas.append(str(sha))
    return shas


def _changed_production(release: Mapping[str, Any]) -> bool:
    if "production_changed" in release and release["production_changed"] is not None:
        return bool(release["production_changed"])
    return release.get("deployed_at") is not None or release.get("status") == "rolled_back"


def compute_dora(
    releases: Iterable[Mapping[str, Any]],
    commits: Iterable[Mapping[str, Any]] | Mapping[tuple[str, str], Any],
    *,
    now: dt.datetime,
    days: int,
) -> dict[str, Any]:
    """The four DORA keys and a per-day series; see the module docstring for the definitions.

    :param releases: release rows (``release_id``, ``service``, ``status``, ``started_at``,
        ``finished_at``, ``deployed_at``, ``commit_range`` (see :func:`commit_shas`), optionally
        ``production_changed``); all of the service's history may be passed, rows outside the period
        are used only for context.
    :param commits: commit rows (``service``, ``commit_sha``, ``committed_at``) or a mapping
        ``(service, commit_sha) -> committed_at``.
    :param now: end of the period (aware; naive is taken as UTC).
    :param days: length of the period in whole UTC days, at least 1.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    now = to_utc(now)
    first_day = now.date() - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC)
    day_list = [first_day + dt.timedelta(days=i) for i in range(days)]

    def in_period(when: dt.datetime | None) -> bool:
        return when is not None and start <= when <= now

    committed_at = _commit_times(commits)
    rows = []
    for release in releases:
        row = dict(release)
        for key in ("started_at", "finished_at", "deployed_at"):
            row[key] = to_utc(row.get(key))
        rows.append(row)

    # Deployments and failed changes, each with the moment it counts at.
    deployments = [r for r in rows if r.get("status") == "success" and r["deployed_at"] is not None]
    failures = [
        r
        for r in rows
        if r.get("status") in FAILED_RELEASE_STATUSES
        and _changed_production(r)
        and (r["finished_at"] or r["started_at"]) is not None
    ]
    failure_time = {id(r): r["finished_at"] or r["started_at"] for r in failures}

    per_day: dict[dt.date, dict[str, list]] = defaultdict(lambda: defaultdict(list))

    deployed_in_period = [r for r in deployments if in_period(r["deployed_at"])]
    failed_in_period = [r for r in failures if in_period(failure_time[id(r)])]
    for r in deployed_in_period:
        per_day[r["deployed_at"].date()]["deployments"].append(r)
    for r in failed_in_period:
        per_day[failure_time[id(r)].date()]["failures"].append(r)

    # Lead time: every commit once, at its first successful deployment.
    seen: set[tuple[str, str]] = set()
    lead_times: list[float] = []
    without_time = 0
    for r in sorted(deployments, key=lambda r: r["deployed_at"]):
        for sha in commit_shas(r.get("commit_range")):
            key = (r["service"], sha)
            if key in seen:
                continue
            seen.add(key)
            if not in_period(r["deployed_at"]):
                continue
            when = committed_at.get(key)
            if when is None:
                without_time += 1
                continue
            seconds = max(0.0, (r["deployed_at"] - when).total_seconds())
            lead_times.append(seconds)
            per_day[r["deployed_at"].date()]["lead_times"].append(seconds)

    # Time to restore: incidents per service, from the first failed change to the next deployment.
    events_by_service: dict[str, list[tuple[dt.datetime, int, str]]] = defaultdict(list)
    for r in deployments:
        events_by_service[r["service"]].append((r["deployed_at"], 1, "deploy"))
    for r in failures:
        events_by_service[r["service"]].append((failure_time[id(r)], 0, "failure"))
    restores: list[float] = []
    open_incidents = 0
    for events in events_by_service.values():
        opened: dt.datetime | None = None
        for when, _, kind in sorted(events):
            if when > now:
                break
            if kind == "failure":
                opened = opened or when
            elif opened is not None:
                if in_period(opened):
                    seconds = (when - opened).total_seconds()
                    restores.append(seconds)
                    per_day[when.date()]["restores"].append(seconds)
                opened = None
        if opened is not None and in_period(opened):
            open_incidents += 1

    series = []
    for day in day_list:
        bucket = per_day.get(day, {})
        deployed = len(bucket.get("deployments", []))
        failed = len(bucket.get("failures", []))
        series.append(
            {
                "date": day.isoformat(),
                "deployments": deployed,
                "failed_changes": failed,
                "change_failure_rate": _rate(failed, failed + deployed),
                "lead_time_median_seconds": _median(bucket.get("lead_times", [])),
                "time_to_restore_median_seconds": _median(bucket.get("restores", [])),
            }
        )

    deployed_count = len(deployed_in_period)
    failed_count = len(failed_in_period)
    return {
        "period": {"start": start.isoformat(), "end": now.isoformat(), "days": days},
        "deployment_frequency": {"count": deployed_count, "per_day": deployed_count / days},
        "lead_time": {
            "median_seconds": _median(lead_times),
            "p90_seconds": _p90(lead_times),
            "commits": len(lead_times),
            "commits_without_time": without_time,
        },
        "change_failure_rate": {
            "rate": _rate(failed_count, failed_count + deployed_count),
            "failed": failed_count,
            "total": failed_count + deployed_count,
        },
        "time_to_restore": {
            "median_seconds": _median(restores),
            "incidents": len(restores),
            "open_incidents": open_incidents,
        },
        "series": series,
    }
