"""The release ledger: every release, stage, host change, approval, test result, rollback and ticket.

:class:`Ledger` is plain SQLAlchemy Core over SQLite or PostgreSQL and imports nothing from Airflow;
:class:`conveyor.ledger.hook.LedgerHook` builds one from an Airflow connection.

Every write is an idempotent upsert keyed by the release id (``INSERT .. ON CONFLICT DO UPDATE``), so a
task that runs twice leaves the same rows. Updates merge rather than overwrite:

* a value passed as ``None`` never erases a stored value;
* ``started_at``, ``deployed_at``, ``created_at`` and ``from_version`` keep their first value (a rerun
  does not move the start of a stage, nor forget which version a host ran before the release);
* a final status (:data:`~conveyor.ledger.schema.TERMINAL_STATUSES`) is not replaced by a non-final one,
  so a late "running" cannot hide a "success"; a no-op status (:data:`~conveyor.ledger.schema.WEAK_STATUSES`,
  a host that already ran the version on a rerun) never replaces a recorded one;
* a stage recorded as ``success`` loses the error of an earlier failed attempt (a successful rerun), and
  a ticket whose ``delivery`` is ``filed``, ``commented`` or ``local`` loses its earlier ``delivery_error``;
* ``reset=True`` turns all of this off for the fields passed: they are written exactly as given. That
  is how a deliberate rerun re-opens a stage.

Every value fits its column on both dialects, so a write never fails on what it carries: a string longer
than its column is cut with a marker (:func:`fit_text`), a NUL byte (which PostgreSQL refuses in text and
JSON) becomes U+FFFD, and a JSON float that is not finite (which JSON and PostgreSQL's JSONB refuse)
becomes the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine

from conveyor.ledger import migrations, schema
from conveyor.ledger.dora import commit_shas, compute_dora
from conveyor.ledger.stats import compute_stats

log = logging.getLogger(__name__)

# Host deployment statuses that mean the host was (or may have been) changed.
_TOUCHED_HOST_STATUSES = ("deploying", "deployed", "failed", "rolled_back")
# Merge policy per column; anything not listed is "latest" (the new value unless it is None).
_FIRST_WINS = frozenset({"started_at", "deployed_at", "created_at", "from_version"})
# Error columns written together with a status: a status among these clears the error.
_CLEARED_BY = {"error": ("status", ("success",)), "delivery_error": ("delivery", ("filed", "commented", "local"))}


def _make_engine(url: str | URL) -> Engine:
    url = sa.engine.make_url(url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    # pysqlite's own transaction handling never emits BEGIN for DDL and cannot take the write lock up
    # front; drive transactions ourselves (SQLAlchemy's documented recipe), with BEGIN IMMEDIATE for writes.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("conveyor_sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine


def _release_analysis(label: Any) -> bool:
    """Whether a stage detail's label is a release's canary analysis: ``wave-N`` or ``watch``."""
    return isinstance(label, str) and (label == "watch" or label.startswith("wave-"))


def _as_dicts(result) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in result]


# What a cut value ends with: an ellipsis and the start of the full value's SHA-1, so that two long values
# with the same beginning (two parametrized tests, say) stay two different keys.
_CUT_MARK_LENGTH = 10


def fit_text(value: str, length: int) -> str:
    """``value`` if it has at most ``length`` characters, else its start, ``…#`` and 8 hex digits of its
    SHA-1 (``length`` characters in all): the same value always cuts the same way."""
    if len(value) <= length:
        return value
    digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:_CUT_MARK_LENGTH - 2]
    return value[: max(0, length - _CUT_MARK_LENGTH)] + "…#" + digest[: min(8, length - 2)]


def _no_nul(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _json_safe(value: Any) -> Any:
    """A JSON value both dialects store: no NUL in strings or keys, no NaN or infinity."""
    if isinstance(value, str):
        return _no_nul(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {_no_nul(str(k)) if not isinstance(k, int | float) else k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _fit(column: sa.Column, value: Any) -> Any:
    """``value`` as the column can store it (see the module docs)."""
    if isinstance(column.type, sa.JSON):
        return _json_safe(value)
    if not isinstance(value, str):
        return value
    value = _no_nul(value)
    length = getattr(column.type, "length", None)
    if length is not None and len(value) > length:
        log.warning("Ledger: %s.%s is %d characters, cut to %d", column.table.name, column.name, len(value), length)
        value = fit_text(value, length)
    return value


class Ledger:
    """The release ledger at a SQLAlchemy URL (``sqlite:////path/ledger.db``, ``postgresql+psycopg2://...``).

    The schema is created or upgraded on first use (:meth:`migrate`); constructing a ``Ledger`` does not
    connect.
    """

    def __init__(self, url: str | URL):
        self.url = sa.engine.make_url(url)
        if self.url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"the ledger supports sqlite and postgresql URLs, not {self.url.drivername!r}")
        self._engine: Engine | None = None
        self._migrated = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Ledger({self.url.render_as_string(hide_password=True)!r})"

    # -- plumbing ---------------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = _make_engine(self.url)
        return self._engine

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; return the migration versions this call applied."""
        with self._lock:
            applied = migrations.migrate(self.engine)
            self._migrated = True
        return applied

    def schema_version(self) -> int:
        return migrations.current_version(self.engine)

    def _ensure(self) -> None:
        if not self._migrated:
            self.migrate()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        self._ensure()
        with self.engine.connect().execution_options(conveyor_sqlite_begin="IMMEDIATE") as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._ensure()
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def test_connection(self) -> tuple[bool, str]:
        """Connect, migrate and report the schema version, as Airflow's connection test expects."""
        try:
            self._ensure()
            version = self.schema_version()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Ledger reachable ({self.dialect}), schema version {version}"

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _upsert(
        self,
        table: sa.Table,
        key: Mapping[str, Any],
        fields: Mapping[str, Any],
        *,
        reset: bool = False,
        insert_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """``INSERT .. ON CONFLICT (key) DO UPDATE`` with the merge rules of this module.

        ``insert_defaults`` are values used only when the row is created (never in the update).
        """
        key_names = [c.name for c in table.primary_key.columns]
        unknown = set(fields) - (set(table.c.keys()) - set(key_names))
        if unknown:
            raise ValueError(f"unknown {table.name} field(s): {', '.join(sorted(unknown))}")
        key = {name: _fit(table.c[name], value) for name, value in key.items()}
        fields = {name: _fit(table.c[name], value) for name, value in fields.items()}
        defaults = {name: _fit(table.c[name], value) for name, value in (insert_defaults or {}).items()}
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(table).values({**defaults, **key, **fields})
        excluded = stmt.excluded
        updates: dict[str, Any] = {}
        for name in fields:
            current, new = table.c[name], excluded[name]
            if reset:
                updates[name] = new
            elif name in _FIRST_WINS:
                updates[name] = sa.func.coalesce(current, new)
            elif name == "status":
                terminal = sorted(schema.TERMINAL_STATUSES)
                updates[name] = sa.case(
                    (sa.and_(current.in_(terminal), new.not_in(terminal)), current),
                    (sa.and_(current.is_not(None), new.in_(sorted(schema.WEAK_STATUSES))), current),
                    else_=sa.func.coalesce(new, current),
                )
            elif name in _CLEARED_BY and _CLEARED_BY[name][0] in fields:
                # A stage that ends in success drops the error of an earlier failed attempt; a ticket that
                # reached its system drops the error of an earlier failed delivery.
                status, done = _CLEARED_BY[name]
                updates[name] = sa.case(
                    (excluded[status].in_(done), new), else_=sa.func.coalesce(new, current)
                )
            else:
                updates[name] = sa.func.coalesce(new, current)
        if updates:
            stmt = stmt.on_conflict_do_update(index_elements=key_names, set_=updates)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=key_names)
        with self._write() as conn:
            conn.execute(stmt)

    # -- writes -----------------------------------------------------------------------------------------

    def upsert_release(self, release_id: str, *, reset: bool = False, **fields: Any) -> None:
        """Create or update a release; ``fields`` are columns of ``releases``.

        Release ids are ``<service>/<run_id>``: when the first write of a release does not name the
        service (a failure sentinel that runs after validation failed), it is taken from the id.
        """
        service = fields.get("service") or release_id.partition("/")[0]
        self._upsert(
            schema.releases, {"release_id": release_id}, fields, reset=reset, insert_defaults={"service": service}
        )

    def upsert_stage(
        self,
        release_id: str,
        stage: str,
        *,
        status: str,
        started_at: dt.datetime | None = None,
        finished_at: dt.datetime | None = None,
        detail: dict | None = None,
        error: str | None = None,
        reset: bool = False,
    ) -> None:
        """Record a stage of a release; ``reset=True`` re-opens a finished stage (clears what is not given)."""
        fields = {
            "status": status,
            "started_at": started_at,
            "finished_at": finished_at,
            "detail": detail,
            "error": error,
        }
        self._upsert(schema.stages, {"release_id": release_id, "stage": stage}, fields, reset=reset)

    def upsert_host_deployment(self, release_id: str, host: str, **fields: Any) -> None:
        """Record a host's change in a release (environment, wave, from/to version, status, at)."""
        self._upsert(schema.host_deployments, {"release_id": release_id, "host": host}, fields)

    def upsert_approval(
        self,
        release_id: str,
        approver: str,
        stage: str = "qa",
        *,
        decision: str,
        comment: str | None = None,
        at: dt.datetime,
    ) -> None:
        """Record a person's decision in an approval stage (one row per release, stage and person)."""
        self._upsert(
            schema.approvals,
            {"release_id": release_id, "stage": stage, "approver": approver},
            {"decision": decision, "comment": comment, "at": at},
        )

    def upsert_test_result(
        self,
        release_id: str,
        suite: str,
        test: str,
        *,
        outcome: str,
        message: str | None = None,
        pre_existing: bool = False,
    ) -> None:
        self._upsert(
            schema.test_results,
            {"release_id": release_id, "suite": suite, "test": test},
            {"outcome": outcome, "message": message, "pre_existing": bool(pre_existing)},
        )

    def upsert_rollback(self, release_id: str, host: str, **fields: Any) -> None:
        """Record a host's rollback in a release (from/to version, status, at)."""
        self._upsert(schema.rollbacks, {"release_id": release_id, "host": host}, fields)

    def upsert_ticket(self, ticket_id: str, **fields: Any) -> None:
        """Record a root-cause ticket (release_id, service, path, url, title, created_at)."""
        self._upsert(schema.tickets, {"ticket_id": ticket_id}, fields)

    def upsert_commit(self, service: str, commit_sha: str, **fields: Any) -> None:
        """Record a commit of a service (author, message, committed_at, ci_status, checked_at)."""
        self._upsert(schema.commits, {"service": service, "commit_sha": commit_sha}, fields)

    # -- reads ------------------------------------------------------------------------------------------

    def get_commits(self, service: str, shas: list[str]) -> dict[str, dict[str, Any]]:
        """The ``commits`` rows of ``shas`` that the ledger has, by sha."""
        c = schema.commits
        shas = list(shas)
        rows: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            for i in range(0, len(shas), 500):
                query = sa.select(c).where(c.c.service == service, c.c.commit_sha.in_(shas[i:i + 500]))
                rows.update({row._mapping["commit_sha"]: dict(row._mapping) for row in conn.execute(query)})
        return rows

    def get_release(self, release_id: str) -> dict[str, Any] | None:
        """The release row with ``stages``, ``hosts``, ``approvals``, ``tests``, ``rollbacks``, ``tickets``."""
        t = schema
        release_id = _fit(t.releases.c.release_id, release_id)  # the key as a write stored it
        with self._read() as conn:
            row = conn.execute(sa.select(t.releases).where(t.releases.c.release_id == release_id)).first()
            if row is None:
                return None
            release = dict(row._mapping)
            children = {
                "stages": (t.stages, [t.stages.c.started_at, t.stages.c.stage]),
                "hosts": (t.host_deployments, [t.host_deployments.c.host]),
                "approvals": (t.approvals, [t.approvals.c.at, t.approvals.c.approver]),
                "tests": (t.test_results, [t.test_results.c.suite, t.test_results.c.test]),
                "rollbacks": (t.rollbacks, [t.rollbacks.c.host]),
                "tickets": (t.tickets, [t.tickets.c.ticket_id]),
            }
            for name, (table, order) in children.items():
                query = sa.select(table).where(table.c.release_id == release_id).order_by(*order)
                release[name] = _as_dicts(conn.execute(query))
        return release

    def list_releases(
        self,
        service: str | None = None,
        since: dt.datetime | None = None,
        limit: int | None = 100,
        *,
        status: str | list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Releases, newest first (by ``started_at``); optionally of one service, started since a time."""
        r = schema.releases
        query = sa.select(r)
        if service is not None:
            query = query.where(r.c.service == service)
        if since is not None:
            query = query.where(r.c.started_at >= schema.to_utc(since))
        if status is not None:
            query = query.where(r.c.status.in_([status] if isinstance(status, str) else list(status)))
        query = query.order_by(r.c.started_at.desc().nulls_last(), r.c.release_id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return _as_dicts(conn.execute(query))

    def last_successful_release(self, service: str) -> dict[str, Any] | None:
        """The service's most recent release with status ``success`` (by ``deployed_at``, then ``finished_at``)."""
        r = schema.releases
        query = (
            sa.select(r)
            .where(r.c.service == service, r.c.status == "success")
            .order_by(
                r.c.deployed_at.desc().nulls_last(),
                r.c.finished_at.desc().nulls_last(),
                r.c.release_id.desc(),
            )
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    # -- soaks ------------------------------------------------------------------------------------------

    def upsert_soak(self, release_id: str, **fields: Any) -> None:
        """Create or update the soak of the build ``release_id`` released (columns of ``soaks``)."""
        self._upsert(schema.soaks, {"release_id": release_id}, fields)

    def get_soak(self, release_id: str) -> dict[str, Any] | None:
        s = schema.soaks
        release_id = _fit(s.c.release_id, release_id)
        with self._read() as conn:
            row = conn.execute(sa.select(s).where(s.c.release_id == release_id)).first()
        return dict(row._mapping) if row else None

    def list_soaks(self, service: str, *, status: str | list[str] | None = None,
                   limit: int | None = 100) -> list[dict[str, Any]]:
        """The service's soaks, newest first (by ``started_at``)."""
        s = schema.soaks
        query = sa.select(s).where(s.c.service == service)
        if status is not None:
            query = query.where(s.c.status.in_([status] if isinstance(status, str) else list(status)))
        query = query.order_by(s.c.started_at.desc(), s.c.release_id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return _as_dicts(conn.execute(query))

    # -- regression calendar ----------------------------------------------------------------------------

    def upsert_regression_result(self, service: str, month: str, area: str, **fields: Any) -> None:
        """Record an area's result of a month (``YYYY-MM``): release_id, outcome (passed | failed), passed,
        failed, failing_tests, version, ticket_id, at. A rerun in the same month replaces the result."""
        self._upsert(schema.regression_results, {"service": service, "month": month, "area": area}, fields,
                     reset=True)

    def list_regression_results(self, service: str, *, year: int | None = None) -> list[dict[str, Any]]:
        """The service's regression results, by month then area; optionally of one year."""
        r = schema.regression_results
        query = sa.select(r).where(r.c.service == service)
        if year is not None:
            query = query.where(r.c.month.like(f"{int(year):04d}-%"))
        with self._read() as conn:
            return _as_dicts(conn.execute(query.order_by(r.c.month, r.c.area)))

    # -- flag changes -----------------------------------------------------------------------------------

    def upsert_flag_change(self, release_id: str, flag: str, environment: str, step: str, **fields: Any) -> None:
        """Record what a flag rollout set (``enabled``, ``rollout``, ``by``, ``reason``, ``at``, ``service``)."""
        self._upsert(schema.flag_changes, {"release_id": release_id, "flag": flag, "environment": environment,
                                           "step": step}, fields)

    def list_flag_changes(self, service: str, flag: str | None = None, limit: int | None = 200) -> list[dict[str, Any]]:
        """A service's flag changes, newest first."""
        f = schema.flag_changes
        query = sa.select(f).where(f.c.service == service)
        if flag is not None:
            query = query.where(f.c.flag == flag)
        query = query.order_by(f.c.at.desc(), f.c.release_id.desc(), f.c.step.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return _as_dicts(conn.execute(query))

    def services(self) -> list[str]:
        """Every service with at least one release, sorted."""
        r = schema.releases
        with self._read() as conn:
            return list(conn.execute(sa.select(r.c.service).distinct().order_by(r.c.service)).scalars())

    def analysis_measurements(self, service: str, *, exclude_release: str | None = None,
                              limit: int = 100) -> list[dict[str, Any]]:
        """What the service's recorded canary analyses measured about its fleet, newest first.

        The ``samples`` of each errors verdict judged against live baseline hosts (its ``spread_estimate``,
        ``moved_estimate`` and their hosts: see :class:`conveyor.analysis.FleetMemory`), from the last
        ``limit`` stages with details of the service's releases other than ``exclude_release`` (the
        waves' and the watch's analyses; a flag rollout's steps compare other things).
        """
        r, st = schema.releases, schema.stages
        query = (
            sa.select(st.c.detail)
            .join(r, r.c.release_id == st.c.release_id)
            .where(r.c.service == service, st.c.detail.is_not(None))
            .order_by(st.c.finished_at.desc().nulls_last(), st.c.release_id.desc(), st.c.stage.desc())
            .limit(limit)
        )
        if exclude_release is not None:
            query = query.where(r.c.release_id != _fit(r.c.release_id, exclude_release))
        out = []
        with self._read() as conn:
            for detail in conn.execute(query).scalars():
                if not isinstance(detail, dict) or not _release_analysis(detail.get("label")):
                    continue  # not a release's canary analysis (a flag rollout's step compares flag-on with flag-off)
                metrics = detail.get("metrics")
                for metric in metrics if isinstance(metrics, list) else []:
                    if not isinstance(metric, dict) or metric.get("metric") != "errors":
                        continue
                    samples = metric.get("samples")
                    if isinstance(samples, dict) and samples.get("mode") == "live":
                        out.append(samples)
        return out

    def previous_successful_release(self, release_id: str) -> dict[str, Any] | None:
        """The service's last successful release deployed before this one (started, if not deployed)."""
        r = schema.releases
        with self._read() as conn:
            row = conn.execute(sa.select(r).where(r.c.release_id == release_id)).first()
            if row is None:
                return None
            release = row._mapping
            reference = release["deployed_at"] or release["started_at"]
            query = sa.select(r).where(
                r.c.service == release["service"], r.c.status == "success", r.c.release_id != release_id
            )
            if reference is not None:
                query = query.where(sa.func.coalesce(r.c.deployed_at, r.c.finished_at) < reference)
            query = query.order_by(
                r.c.deployed_at.desc().nulls_last(), r.c.finished_at.desc().nulls_last(), r.c.release_id.desc()
            ).limit(1)
            previous = conn.execute(query).first()
        return dict(previous._mapping) if previous else None

    def changelog(self, release_id: str) -> dict[str, Any] | None:
        """The commits a release shipped: those since the previous successful release.

        The list comes from the release's ``commit_range`` (written by the build from its manifest: the
        commits from the commit production ran to the release's commit), completed with what the
        ``commits`` table knows (time, CI status). Returns ``None`` for an unknown release, else
        ``{"release", "previous", "from_commit", "to_commit", "commits"}``.
        """
        release = self.get_release(release_id)
        if release is None:
            return None
        commit_range = release.get("commit_range")
        entries: list[dict[str, Any]] = []
        raw = commit_range.get("commits") if isinstance(commit_range, Mapping) else commit_range
        for item in raw or []:
            if isinstance(item, Mapping):
                entries.append(
                    {
                        "sha": item.get("sha") or item.get("commit_sha"),
                        "author": item.get("author"),
                        "message": item.get("subject") or item.get("message"),
                        "committed_at": schema.to_utc(item.get("date") or item.get("committed_at")),
                    }
                )
            else:
                entries.append({"sha": str(item), "author": None, "message": None, "committed_at": None})
        entries = [e for e in entries if e["sha"]]
        c = schema.commits
        known: dict[str, dict[str, Any]] = {}
        shas = [e["sha"] for e in entries]
        with self._read() as conn:
            for i in range(0, len(shas), 500):
                query = sa.select(c).where(c.c.service == release["service"], c.c.commit_sha.in_(shas[i : i + 500]))
                known.update({row["commit_sha"]: row for row in _as_dicts(conn.execute(query))})
        for entry in entries:
            stored = known.get(entry["sha"], {})
            for field in ("author", "message", "committed_at"):
                if entry[field] is None:
                    entry[field] = stored.get(field)
            entry["ci_status"] = stored.get("ci_status")
        previous = self.previous_successful_release(release_id)
        from_commit = commit_range.get("from") if isinstance(commit_range, Mapping) else None
        return {
            "release": release,
            "previous": previous,
            "from_commit": from_commit or (previous or {}).get("commit_sha"),
            "to_commit": (commit_range.get("to") if isinstance(commit_range, Mapping) else None)
            or release.get("commit_sha"),
            "commits": entries,
        }

    # -- metrics ----------------------------------------------------------------------------------------

    def dora(self, service: str | None, days: int, now: dt.datetime | None = None) -> dict[str, Any]:
        """DORA metrics of one service (or all with ``None``) over the last ``days`` days.

        See :mod:`conveyor.ledger.dora` for the definitions; a release "changed production" here when a
        production host was touched (``deploying``, ``deployed``, ``failed`` or ``rolled_back``), it rolled a
        production host back, or it has a ``deployed_at``. A soak's deploys and rollbacks (environment
        ``soak``) are not production's: a soak incident is not a failed change.
        """
        now = schema.to_utc(now) or dt.datetime.now(dt.UTC)
        r, h, rb, c = schema.releases, schema.host_deployments, schema.rollbacks, schema.commits
        touched = sa.union(
            sa.select(h.c.release_id).where(
                h.c.environment == schema.PRODUCTION, h.c.status.in_(_TOUCHED_HOST_STATUSES)
            ),
            # a rollback of production hosts (a soak's rollback puts the soak cluster back: not production)
            sa.select(rb.c.release_id).select_from(rb.outerjoin(
                h, sa.and_(h.c.release_id == rb.c.release_id, h.c.host == rb.c.host)
            )).where(sa.or_(h.c.environment.is_(None), h.c.environment == schema.PRODUCTION)),
        ).subquery()
        query = sa.select(r, touched.c.release_id.is_not(None).label("touched")).outerjoin(
            touched, touched.c.release_id == r.c.release_id
        )
        if service is not None:
            query = query.where(r.c.service == service)
        with self._read() as conn:
            releases = _as_dicts(conn.execute(query))
            for release in releases:
                release["production_changed"] = bool(release.pop("touched")) or (
                    release["deployed_at"] is not None
                )
            wanted = {(x["service"], sha) for x in releases for sha in commit_shas(x["commit_range"])}
            commit_rows: list[dict[str, Any]] = []
            by_service: dict[str, list[str]] = {}
            for svc, sha in wanted:
                by_service.setdefault(svc, []).append(sha)
            for svc, shas in by_service.items():
                for i in range(0, len(shas), 500):
                    chunk = shas[i : i + 500]
                    commit_rows += _as_dicts(
                        conn.execute(
                            sa.select(c.c.service, c.c.commit_sha, c.c.committed_at).where(
                                c.c.service == svc, c.c.commit_sha.in_(chunk)
                            )
                        )
                    )
        result = compute_dora(releases, commit_rows, now=now, days=days)
        return {"service": service, **result}

    # -- incidents and statistics -----------------------------------------------------------------------

    def add_incident(self, release_id: str, *, reason: str, at: dt.datetime | None = None,
                     recorded_by: str | None = None) -> dict[str, Any]:
        """Record an incident after a release (what escaped to production); return the row.

        The release must be in the ledger and the reason must say something; recording the same release
        and moment again updates the reason. Raises :class:`LookupError` for an unknown release and
        :class:`ValueError` for an empty reason.
        """
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("an incident needs a reason (what went wrong in production)")
        release = self.get_release(release_id)
        if release is None:
            raise LookupError(f"release {release_id!r} is not in the ledger")
        now = dt.datetime.now(dt.UTC)
        at = schema.to_utc(at) or now
        row = {"release_id": release["release_id"], "at": at, "service": release["service"], "reason": reason,
               "recorded_by": recorded_by, "recorded_at": now}
        self._upsert(schema.incidents, {"release_id": row["release_id"], "at": at},
                     {k: v for k, v in row.items() if k not in ("release_id", "at")})
        return row

    def list_incidents(self, service: str | None = None) -> list[dict[str, Any]]:
        """Recorded incidents, oldest first; optionally of one service."""
        i = schema.incidents
        query = sa.select(i).order_by(i.c.at, i.c.release_id)
        if service is not None:
            query = query.where(i.c.service == service)
        with self._read() as conn:
            return _as_dicts(conn.execute(query))

    def _full_releases(self, service: str | None, since: dt.datetime) -> list[dict[str, Any]]:
        """Releases started since ``since`` with their children, as :meth:`get_release` gives one (in bulk)."""
        t = schema
        query = sa.select(t.releases).where(t.releases.c.started_at >= since)
        if service is not None:
            query = query.where(t.releases.c.service == service)
        children = {"stages": t.stages, "hosts": t.host_deployments, "approvals": t.approvals,
                    "tests": t.test_results, "rollbacks": t.rollbacks}
        with self._read() as conn:
            releases = {row["release_id"]: row for row in _as_dicts(conn.execute(query))}
            for release in releases.values():
                release.update({name: [] for name in children})
            ids = list(releases)
            for name, table in children.items():
                for k in range(0, len(ids), 500):
                    rows = conn.execute(sa.select(table).where(table.c.release_id.in_(ids[k:k + 500])))
                    for row in _as_dicts(rows):
                        releases[row["release_id"]][name].append(row)
        return list(releases.values())

    def stats(self, service: str | None, days: int, now: dt.datetime | None = None) -> dict[str, Any]:
        """Release statistics of one service (or all with ``None``) over the last ``days`` days.

        See :mod:`conveyor.ledger.stats` for the definitions.
        """
        if days < 1:
            raise ValueError("days must be at least 1")
        now = schema.to_utc(now) or dt.datetime.now(dt.UTC)
        start = dt.datetime.combine(now.date() - dt.timedelta(days=days - 1), dt.time(), tzinfo=dt.UTC)
        releases = self._full_releases(service, start)
        result = compute_stats(releases, now=now, days=days, incidents=self.list_incidents(service))
        return {"service": service, **result}
