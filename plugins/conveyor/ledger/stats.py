"""Release statistics over ledger rows: a pure function, no database and no Airflow.

Everything is derived from what the ledger already keeps (releases with their stages, hosts, approvals,
tests and rollbacks, plus the ``incidents`` recorded after a release); nothing is stored twice.

Definitions (see docs/ledger.md, "Statistics"):

*Period.* As for DORA (:mod:`conveyor.ledger.dora`): the ``days`` whole UTC days ending with the day of
``now``. A release belongs to the period when its ``started_at`` lies in it.

*Phase.* A stage's first task-group component, with related ones joined, so that charts compare like with
like: ``build`` (validate, build, audit, a promotion's select), ``test`` (replica, tests), ``sign-off``
(``<stage>_signoff``), ``waves`` (plan, ``wave_<k>``), ``soak``, ``watch`` (watch, finalize) and ``recovery``
(release_failed, rollback, ticket, fail_run). A phase's duration is from its first stage's start to its
last stage's end.

*Outcome.* ``success`` and ``soaked`` (a soak service's release that soaked with no incident; its
promotion is a release of its own, labelled ``promotion``) are successes; ``failed`` and ``rolled_back``
are failures; anything else (running, cancelled) is not decided and counts in neither.

*Stopped at.* A failed release's first failed stage (by end, then start), recovery stages left out.

*Failed change, caught or escaped.* Every failed release of the period is a failed change, and so is every
successful one with an incident recorded after it. It was *caught in deployment testing* (before full
production) when it stopped before the last production wave: build, test, sign-off, soak, or a wave other
than the last (the last is the number of waves in the ``plan`` stage's recorded plan; without a plan, a
wave counts as caught). It *escaped* when it stopped at the last wave, at the watch or at finalize, or when
an incident was recorded against it. A failed release with no failed stage recorded is ``unclassified``.

*Approval wait.* An approval's ``at`` minus the start of the task that waited for it: the k-th approval of
a stage (by time) belongs to the task ``<stage>_signoff.approval_<k>``.

*Tests.* ``run`` excludes skipped cases; ``failed`` counts ``failed`` and ``error`` outcomes, of which
``pre_existing`` were known failures that did not stop the release.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from conveyor.ledger.schema import FAILED_RELEASE_STATUSES, to_utc

SUCCESS_STATUSES = frozenset({"success", "soaked"})
PHASES = ("build", "test", "sign-off", "waves", "soak", "watch", "recovery")
RECOVERY_STAGES = frozenset({"release_failed", "rollback", "ticket", "fail_run"})
# Host statuses that mean a host was (or may have been) changed (as for DORA).
TOUCHED_HOST_STATUSES = frozenset({"deploying", "deployed", "failed", "rolled_back"})
_WAVE_RE = re.compile(r"^wave_(\d+)$")
_APPROVAL_TASK_RE = re.compile(r"^(?P<group>.+)_signoff\.approval_(?P<k>\d+)$")
_PHASE_OF = {"validate": "build", "build": "build", "audit": "build", "replica": "test", "tests": "test",
             "select": "build", "plan": "waves", "soak": "soak", "watch": "watch", "finalize": "watch"}


def phase_of(stage: str) -> str | None:
    """The phase of a stage row's name (``wave_2.analysis`` -> ``waves``); ``None`` for an unknown stage."""
    head = stage.split(".", 1)[0]
    if head in RECOVERY_STAGES:
        return "recovery"
    if head.endswith("_signoff"):
        return "sign-off"
    if _WAVE_RE.match(head):
        return "waves"
    return _PHASE_OF.get(head)


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _waves_planned(stages: list[Mapping[str, Any]]) -> int | None:
    for row in stages:
        if row["stage"] == "plan":
            plan = (row.get("detail") or {}).get("plan")
            if isinstance(plan, Mapping) and isinstance(plan.get("waves"), list):
                return len(plan["waves"])
    return None


def stopped_at(release: Mapping[str, Any]) -> str | None:
    """The stage that stopped a failed release (its first failed stage, recovery left out), else None."""
    if release.get("status") not in FAILED_RELEASE_STATUSES:
        return None
    failed = [s for s in release.get("stages") or [] if s.get("status") == "failed"
              and phase_of(s["stage"]) != "recovery"]
    far_future = dt.datetime.max.replace(tzinfo=dt.UTC)
    failed.sort(key=lambda s: (to_utc(s.get("finished_at")) or far_future, to_utc(s.get("started_at")) or far_future))
    return failed[0]["stage"] if failed else None


def _caught(stage: str, waves: int | None) -> bool:
    head = stage.split(".", 1)[0]
    wave = _WAVE_RE.match(head)
    if wave:
        return waves is None or int(wave.group(1)) < waves
    return phase_of(stage) not in ("watch", None)


def approval_waits(release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each approval with the seconds its task waited for it (``None`` when the task's start is unknown)."""
    started = {}
    for row in release.get("stages") or []:
        match = _APPROVAL_TASK_RE.match(row["stage"])
        if match:
            started[(match["group"], int(match["k"]))] = to_utc(row.get("started_at"))
    out = []
    seen: Counter[str] = Counter()
    for approval in sorted(release.get("approvals") or [], key=lambda a: to_utc(a["at"])):
        stage = approval.get("stage") or "qa"
        seen[stage] += 1
        at = to_utc(approval["at"])
        out.append({"stage": stage, "approver": approval["approver"], "decision": approval["decision"],
                    "at": at.isoformat(), "wait_seconds": _seconds(started.get((stage, seen[stage])), at)})
    return out


def release_stats(release: Mapping[str, Any], incidents: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One release's statistics from its :meth:`~conveyor.ledger.core.Ledger.get_release` record."""
    far_future = dt.datetime.max.replace(tzinfo=dt.UTC)
    stages = sorted(release.get("stages") or [],
                    key=lambda s: (to_utc(s.get("started_at")) or far_future, s["stage"]))  # as get_release orders
    started, finished = to_utc(release.get("started_at")), to_utc(release.get("finished_at"))
    spans: dict[str, list[dt.datetime]] = defaultdict(list)
    stage_rows = []
    for row in stages:
        start, end = to_utc(row.get("started_at")), to_utc(row.get("finished_at"))
        stage_rows.append({"stage": row["stage"], "status": row.get("status"), "seconds": _seconds(start, end)})
        phase = phase_of(row["stage"])
        if phase and start and end:
            spans[phase] += [start, end]
    tests = list(release.get("tests") or [])
    failed_tests = [t for t in tests if t.get("outcome") in ("failed", "error")]
    hosts: Counter[str] = Counter(h.get("environment") or "unknown" for h in release.get("hosts") or []
                                  if h.get("status") in TOUCHED_HOST_STATUSES)
    rollbacks = list(release.get("rollbacks") or [])
    status = release.get("status")
    stop = stopped_at(release)
    recorded_incidents = [i for i in incidents if i.get("release_id") == release.get("release_id")]
    if status in FAILED_RELEASE_STATUSES:
        if stop is None:
            failure = {"caught": None, "stage": None}
        else:
            failure = {"caught": _caught(stop, _waves_planned(stages)), "stage": stop.split(".", 1)[0]}
    elif status in SUCCESS_STATUSES and recorded_incidents:
        failure = {"caught": False, "stage": "incident"}
    else:
        failure = None
    return {
        "release_id": release.get("release_id"),
        "service": release.get("service"),
        "version": release.get("version"),
        "status": status,
        "promotion": "promotion" in (release.get("labels") or []),
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "duration_seconds": _seconds(started, finished),
        "stages": stage_rows,
        "phases": {p: _seconds(min(spans[p]), max(spans[p])) for p in PHASES if spans.get(p)},
        "tests": {"run": sum(1 for t in tests if t.get("outcome") != "skipped"), "failed": len(failed_tests),
                  "pre_existing": sum(1 for t in failed_tests if t.get("pre_existing"))},
        "stopped_at": stop,
        "approvals": approval_waits(release),
        "rollbacks": {"hosts": len(rollbacks),
                      "failed": sum(1 for r in rollbacks if str(r.get("status") or "").startswith("failed"))},
        "hosts_touched": dict(sorted(hosts.items())),
        "incidents": len(recorded_incidents),
        "failed_change": failure,
    }


def compute_stats(
    releases: Iterable[Mapping[str, Any]],
    *,
    now: dt.datetime,
    days: int,
    incidents: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Per-release and per-period statistics; see the module docstring for the definitions.

    :param releases: full release records (as :meth:`~conveyor.ledger.core.Ledger.get_release` returns them:
        the row with ``stages``, ``hosts``, ``approvals``, ``tests``, ``rollbacks``, ``labels``); rows that
        did not start in the period, and flag rollouts (label ``flag``), are left out.
    :param now: end of the period (aware; naive is taken as UTC).
    :param days: length of the period in whole UTC days, at least 1.
    :param incidents: recorded incidents (``release_id``, ``at``, ``reason``); those after ``now`` are ignored.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    now = to_utc(now)
    first_day = now.date() - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC)
    known_incidents = [i for i in incidents if (to_utc(i.get("at")) or now) <= now]
    # A flag rollout (``flag_<service>``, label ``flag``) is in the ledger as a run of its own, but ships no
    # build: it is not a release here.
    in_period = [r for r in releases if (when := to_utc(r.get("started_at"))) is not None and start <= when <= now
                 and "flag" not in (r.get("labels") or [])]
    in_period.sort(key=lambda r: (to_utc(r["started_at"]), r.get("release_id") or ""), reverse=True)
    rows = [release_stats(r, known_incidents) for r in in_period]

    successes = [r for r in rows if r["status"] in SUCCESS_STATUSES]
    failures = [r for r in rows if r["status"] in FAILED_RELEASE_STATUSES]
    changes = [r for r in rows if r["failed_change"] is not None]
    caught = [r for r in changes if r["failed_change"]["caught"] is True]
    escaped = [r for r in changes if r["failed_change"]["caught"] is False]
    waits = [a["wait_seconds"] for r in rows for a in r["approvals"] if a["wait_seconds"] is not None]
    durations = [r["duration_seconds"] for r in rows if r["duration_seconds"] is not None]

    per_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_day[r["started_at"][:10]].append(r)
    series = []
    for i in range(days):
        day = (first_day + dt.timedelta(days=i)).isoformat()
        bucket = per_day.get(day, [])
        entry: dict[str, Any] = {
            "date": day, "releases": len(bucket),
            "succeeded": sum(1 for r in bucket if r["status"] in SUCCESS_STATUSES),
            "failed": sum(1 for r in bucket if r["status"] in FAILED_RELEASE_STATUSES),
        }
        for phase in PHASES:
            entry[f"{phase}_median_seconds"] = _median([r["phases"][phase] for r in bucket if phase in r["phases"]])
        series.append(entry)
    weeks: Counter[str] = Counter()
    for r in rows:
        day = dt.date.fromisoformat(r["started_at"][:10])
        weeks[(day - dt.timedelta(days=day.weekday())).isoformat()] += 1

    decided = len(successes) + len(failures)
    classified = len(caught) + len(escaped)
    return {
        "period": {"start": start.isoformat(), "end": now.isoformat(), "days": days},
        "releases": {
            "count": len(rows), "per_day": len(rows) / days, "per_week": len(rows) * 7 / days,
            "promotions": sum(1 for r in rows if r["promotion"]),
            "succeeded": len(successes), "failed": len(failures), "undecided": len(rows) - decided,
            "weeks": [{"week_of": week, "releases": count} for week, count in sorted(weeks.items())],
        },
        "success_rate": len(successes) / decided if decided else None,
        "duration": {"median_seconds": _median(durations),
                     "max_seconds": max(durations) if durations else None},
        "phases": {phase: _median([r["phases"][phase] for r in rows if phase in r["phases"]]) for phase in PHASES},
        "tests": {key: sum(r["tests"][key] for r in rows) for key in ("run", "failed", "pre_existing")},
        "approvals": {"count": sum(len(r["approvals"]) for r in rows), "median_wait_seconds": _median(waits),
                      "max_wait_seconds": max(waits) if waits else None},
        "rollbacks": {"releases": sum(1 for r in rows if r["rollbacks"]["hosts"]),
                      "hosts": sum(r["rollbacks"]["hosts"] for r in rows),
                      "failed": sum(r["rollbacks"]["failed"] for r in rows)},
        "hosts_touched": dict(sorted(sum((Counter(r["hosts_touched"]) for r in rows), Counter()).items())),
        "failed_changes": {
            "count": len(changes), "caught": len(caught), "escaped": len(escaped),
            "unclassified": len(changes) - classified,
            "caught_rate": len(caught) / classified if classified else None,
            "caught_by_stage": dict(sorted(Counter(r["failed_change"]["stage"] for r in caught).items())),
            "escaped_by_stage": dict(sorted(Counter(r["failed_change"]["stage"] for r in escaped).items())),
            "incidents": sum(r["incidents"] for r in rows),
        },
        "series": series,
        "release_list": rows,
    }
