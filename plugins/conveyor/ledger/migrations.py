"""The ledger's migrations: an ordered list applied once each, recorded in ``schema_version``.

:func:`migrate` is idempotent and safe when several processes (Airflow workers) use a new ledger at the
same moment: the whole upgrade runs in one transaction that first takes a lock, then re-reads which
migrations are applied, so the loser of the race finds nothing left to do.

* SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock up front (waiting up to the busy timeout);
  a lock error is retried a few times. SQLite DDL is transactional, so a failed migration leaves nothing.
* PostgreSQL: ``pg_advisory_xact_lock`` serialises migrators and is released at commit; DDL is
  transactional there too.

To change the schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from conveyor.ledger import schema

log = logging.getLogger(__name__)

# An arbitrary constant identifying "the Conveyor ledger migration" among advisory locks.
_PG_LOCK_KEY = 0x436F6E76  # "Conv"
_SQLITE_LOCK_RETRIES = 5


class Migration(NamedTuple):
    version: int
    name: str
    apply: Callable[[Connection], None]


def _create_core_tables(conn: Connection) -> None:
    for table in schema.V1_TABLES:
        conn.execute(CreateTable(table, if_not_exists=True))


def _add_query_indexes(conn: Connection) -> None:
    for index in schema.V2_INDEXES:
        index.create(conn, checkfirst=True)


def _add_commit_ci_detail(conn: Connection) -> None:
    # Migration 1 creates tables from the current schema, so a new database already has the column.
    if "ci_detail" not in {c["name"] for c in sa.inspect(conn).get_columns("commits")}:
        conn.execute(sa.text("ALTER TABLE commits ADD COLUMN ci_detail TEXT"))


# Columns that migration 4 widens: (table, column, new type). Release ids hold Airflow's 250-character run
# ids after the service; stages are task ids; hosts are RFC 1035 names; free text is TEXT.
_WIDER_V4 = (
    *((table, "release_id", "VARCHAR(400)") for table in ("releases", "stages", "host_deployments", "approvals",
                                                          "test_results", "rollbacks", "tickets")),
    ("releases", "author", "TEXT"),
    ("commits", "author", "TEXT"),
    ("rollbacks", "status", "TEXT"),
    ("stages", "stage", "VARCHAR(250)"),
    ("host_deployments", "host", "VARCHAR(255)"),
    ("rollbacks", "host", "VARCHAR(255)"),
)


def _widen_text_columns(conn: Connection) -> None:
    # SQLite does not enforce a VARCHAR's length (a column's type is only an affinity), so there is nothing to
    # change there; PostgreSQL widens a VARCHAR or turns it into TEXT without rewriting the table.
    if conn.dialect.name != "postgresql":
        return
    for table, column, kind in _WIDER_V4:
        conn.execute(sa.text(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE {kind}'))


_TICKET_DELIVERY_V5 = (
    ("backend", "VARCHAR(30)"),
    ("external_key", "VARCHAR(250)"),
    ("signature", "VARCHAR(64)"),
    ("delivery", "VARCHAR(30)"),
    ("delivery_error", "TEXT"),
)


def _add_ticket_delivery(conn: Connection) -> None:
    # Migration 1 creates tables from the current schema, so a new database already has the columns.
    present = {c["name"] for c in sa.inspect(conn).get_columns("tickets")}
    for column, kind in _TICKET_DELIVERY_V5:
        if column not in present:
            conn.execute(sa.text(f"ALTER TABLE tickets ADD COLUMN {column} {kind}"))


def _add_approval_stage(conn: Connection) -> None:
    # The stage joins the approvals' key (a person may approve two stages when a stage allows it), and
    # neither dialect changes a primary key in place portably: copy into a table of the new shape.
    # Migration 1 creates tables from the current schema, so a new database already has the column.
    if "stage" in {c["name"] for c in sa.inspect(conn).get_columns("approvals")}:
        return
    conn.execute(sa.text("ALTER TABLE approvals RENAME TO approvals_v5"))
    if conn.dialect.name == "postgresql":  # the old key's name would clash with the new table's
        conn.execute(sa.text("ALTER TABLE approvals_v5 RENAME CONSTRAINT approvals_pkey TO approvals_v5_pkey"))
    conn.execute(CreateTable(schema.approvals))
    conn.execute(sa.text("INSERT INTO approvals (release_id, approver, stage, decision, comment, at) "
                         "SELECT release_id, approver, 'qa', decision, comment, at FROM approvals_v5"))
    conn.execute(sa.text("DROP TABLE approvals_v5"))


def _create_soaks(conn: Connection) -> None:
    conn.execute(CreateTable(schema.soaks, if_not_exists=True))
    sa.Index("ix_soaks_service_started", schema.soaks.c.service, schema.soaks.c.started_at).create(
        conn, checkfirst=True)


def _create_incidents(conn: Connection) -> None:
    conn.execute(CreateTable(schema.incidents, if_not_exists=True))
    sa.Index("ix_incidents_service_at", schema.incidents.c.service, schema.incidents.c.at).create(
        conn, checkfirst=True)


def _create_regression_results(conn: Connection) -> None:
    conn.execute(CreateTable(schema.regression_results, if_not_exists=True))


def _create_flag_changes(conn: Connection) -> None:
    conn.execute(CreateTable(schema.flag_changes, if_not_exists=True))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables", _create_core_tables),
    Migration(2, "indexes for service/time queries", _add_query_indexes),
    Migration(3, "commits.ci_detail: why CI judged a commit red", _add_commit_ci_detail),
    Migration(4, "wider text columns: long run ids, authors, stage names, rollback errors", _widen_text_columns),
    Migration(5, "tickets: backend, external key, failure signature and delivery status", _add_ticket_delivery),
    Migration(6, "approvals.stage: approval stages beyond QA, part of the key", _add_approval_stage),
    Migration(7, "soaks: builds soaking on the developer cluster before promotion", _create_soaks),
    Migration(8, "incidents: problems recorded after a release, for the release statistics", _create_incidents),
    Migration(9, "regression_results: the regression calendar's result per service, month and area",
              _create_regression_results),
    Migration(10, "flag_changes: every change a flag rollout made, who and why", _create_flag_changes),
)
LATEST_VERSION = MIGRATIONS[-1].version


def applied_versions(conn: Connection) -> set[int]:
    if not sa.inspect(conn).has_table(schema.schema_version.name):
        return set()
    return set(conn.execute(sa.select(schema.schema_version.c.version)).scalars())


def _upgrade(conn: Connection) -> list[int]:
    conn.execute(CreateTable(schema.schema_version, if_not_exists=True))
    done = applied_versions(conn)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        log.info("Applying ledger migration %s: %s", migration.version, migration.name)
        migration.apply(conn)
        conn.execute(
            sa.insert(schema.schema_version).values(
                version=migration.version, name=migration.name, applied_at=dt.datetime.now(dt.UTC)
            )
        )
        applied.append(migration.version)
    return applied


def migrate(engine: Engine) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied by this call."""
    if engine.dialect.name == "sqlite":
        for attempt in range(_SQLITE_LOCK_RETRIES):
            try:
                with engine.connect().execution_options(conveyor_sqlite_begin="IMMEDIATE") as conn:
                    with conn.begin():
                        return _upgrade(conn)
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc).lower() or attempt == _SQLITE_LOCK_RETRIES - 1:
                    raise
                log.info("Ledger is locked by another migrator; retrying (%s)", attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        return _upgrade(conn)


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return max(applied_versions(conn), default=0)
