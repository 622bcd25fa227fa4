"""Soak clocks: how long each build has soaked on the developer cluster, and whether it may be promoted.

Pure (no Airflow, no database): the ledger's ``soaks`` rows (:meth:`conveyor.ledger.Ledger.list_soaks`)
in, :class:`SoakClock` out. The release DAG's ``soak`` task writes the rows; ``promote_<service>``
picks its candidate with :func:`pick_candidate` and its production gate checks the candidate again
with :func:`soak_clocks` right before production changes; the Releases page and ``conveyor soak
status`` show the same clocks.

A build is **eligible** for promotion when its soak ``passed`` (the watch covered the whole minimum,
``min`` or ``major_min``, with no incident), it has not been promoted already, and it is not older
than what production runs. Never eligible: a build with an incident (an incident stops its soak for
good), a build still soaking or whose soak ended before its minimum (superseded by a newer build, or
its watch stopped: a soak task marked *success* by hand writes nothing, so the clock stays short).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from conveyor.durations import format_duration

SOAKING, PASSED, INCIDENT, SUPERSEDED, PROMOTED = "soaking", "passed", "incident", "superseded", "promoted"
ABORTED = "aborted"  # the release failed around the soak (its watch could not run, it timed out): cluster rolled back
_RELEASE = re.compile(r"^v?(\d+(?:\.\d+)*)$")


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _span(seconds: float) -> str:
    """A duration for people: whole seconds, in the largest units that keep it exact enough."""
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def version_key(version: str | None) -> tuple[int, ...] | None:
    """``v1.10.2`` -> ``(1, 10, 2)``; None for anything else (a ``git describe`` string, a branch build)."""
    m = _RELEASE.match(version or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


@dataclass(frozen=True)
class SoakClock:
    """One build's soak as people read it: started, minimum, soaked, remaining, incidents, eligibility."""

    release_id: str
    service: str
    version: str
    change: str | None
    status: str
    started_at: dt.datetime
    min_seconds: float
    soaked_seconds: float  # what counts toward the minimum: watched (or, while soaking, elapsed)
    remaining_seconds: float
    incident: str | None
    eligible: bool
    why: str  # why it is (not) eligible, in a sentence
    promoted_release_id: str | None = None

    @property
    def minimum(self) -> str:
        return format_duration(dt.timedelta(seconds=self.min_seconds))

    @property
    def soaked(self) -> str:
        return _span(self.soaked_seconds)

    @property
    def remaining(self) -> str:
        return _span(self.remaining_seconds)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        out.update(minimum=self.minimum, soaked=self.soaked, remaining=self.remaining)
        return out


def _older(row: Mapping[str, Any], production: str | None, rows: list[Mapping[str, Any]]) -> str | None:
    """Why ``row``'s build is older than production's (None: it is not, or that cannot be told).

    Build order first: production's version soaked here too (it was promoted from a soak), so the ledger
    knows which came first. Otherwise the versions themselves, when both are release numbers.
    """
    if not production or row["version"] == production:
        return None
    known = [r for r in rows if r["version"] == production]
    if known:
        theirs = min(_utc(r["started_at"]) for r in known)
        if _utc(row["started_at"]) < theirs:
            return f"older than {production}, which production runs (built after it)"
        return None
    mine, theirs = version_key(row["version"]), version_key(production)
    if mine is not None and theirs is not None and mine < theirs:
        return f"older than {production}, which production runs"
    return None


def soak_clocks(rows: Iterable[Mapping[str, Any]], *, production_version: str | None,
                now: dt.datetime) -> list[SoakClock]:
    """Every soak's clock, newest first, judged against what production runs now."""
    rows = sorted(rows, key=lambda r: (_utc(r["started_at"]), r["release_id"]), reverse=True)
    out = []
    for row in rows:
        started = _utc(row["started_at"])
        minimum = float(row["min_seconds"])
        status = row["status"]
        watched = _utc(row.get("watched_until"))
        ended = _utc(row.get("ended_at"))
        if status == SOAKING:
            soaked = (now - started).total_seconds()
        elif status in (PASSED, PROMOTED):  # what the watch covered
            soaked = ((watched or ended or started) - started).total_seconds()
        else:  # it ended (incident, superseded, aborted): a later write of watched_until does not extend it
            soaked = ((ended or watched or started) - started).total_seconds()
        remaining = max(0.0, minimum - soaked) if status in (SOAKING, PASSED) else 0.0
        eligible = False
        if status == INCIDENT:
            why = f"never promoted: incident during soak: {row.get('incident') or 'unrecorded'}"
        elif status == PROMOTED:
            why = f"promoted ({row.get('promoted_release_id') or 'release unknown'})"
        elif status == SUPERSEDED:
            by = (row.get("detail") or {}).get("superseded_by") or "another build replaced it on the soak cluster"
            why = f"soak ended after {_span(soaked)} of {format_duration(dt.timedelta(seconds=minimum))}: {by}"
        elif status == ABORTED:
            why = (f"soak aborted after {_span(soaked)} of {format_duration(dt.timedelta(seconds=minimum))}: "
                   f"{(row.get('detail') or {}).get('aborted') or 'the release failed'}")
        elif status == SOAKING:
            why = (f"soaking: {_span(soaked)} of {format_duration(dt.timedelta(seconds=minimum))}, "
                   f"{_span(remaining)} to go" if remaining > 0 else
                   f"soaking: the minimum has passed but the watch has not closed the soak yet "
                   f"({_span(soaked)} elapsed)")
        elif status == PASSED and soaked + 1e-6 < minimum:
            why = (f"not soaked: the watch covered {_span(soaked)} of "
                   f"{format_duration(dt.timedelta(seconds=minimum))}")
        elif status == PASSED:
            older = _older(row, production_version, rows)
            if row["version"] == production_version:
                why = f"production already runs {production_version}"
            elif older:
                why = f"never promoted: {older}"
            else:
                eligible, why = True, f"eligible: soaked {_span(soaked)} with no incident"
        else:
            why = f"unknown soak status {status!r}"
        out.append(SoakClock(
            release_id=row["release_id"], service=row["service"], version=row["version"],
            change=row.get("change_kind"), status=status, started_at=started, min_seconds=minimum,
            soaked_seconds=soaked, remaining_seconds=remaining, incident=row.get("incident"),
            eligible=eligible, why=why, promoted_release_id=row.get("promoted_release_id"),
        ))
    return out


def pick_candidate(clocks: Iterable[SoakClock], version: str | None = None) -> tuple[SoakClock | None, str]:
    """The build to promote and why: the newest eligible one, or the one named by ``version``.

    Returns ``(None, reason)`` when there is none (or the named one may not be promoted): the reason
    says what each soak lacks, newest first.
    """
    clocks = list(clocks)
    if version:
        named = [c for c in clocks if c.version == version]
        if not named:
            return None, f"{version} has not soaked on the soak cluster (no soak recorded)"
        for clock in named:
            if clock.eligible:
                return clock, clock.why
        return None, f"{version} may not be promoted: {named[0].why}"
    for clock in clocks:
        if clock.eligible:
            return clock, clock.why
    if not clocks:
        return None, "no build has soaked yet"
    listed = "; ".join(f"{c.version}: {c.why}" for c in clocks[:5])
    return None, f"no build is eligible for promotion ({listed})"


__all__ = ["ABORTED", "INCIDENT", "PASSED", "PROMOTED", "SOAKING", "SUPERSEDED", "SoakClock", "pick_candidate",
           "soak_clocks", "version_key"]
