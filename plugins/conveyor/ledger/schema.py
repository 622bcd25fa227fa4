"""The release ledger's tables, described with SQLAlchemy Core.

These ``Table`` objects are the *current* schema and are what the queries use. The database is created
and brought up to date only by :mod:`conveyor.ledger.migrations`; a change to a table here needs a new
migration there (``ALTER TABLE ...``) so that existing ledgers follow.

Times are stored in UTC (:class:`UTCDateTime`): SQLite has no time zone type, so values are kept as naive
UTC there and handed back as aware UTC datetimes on both dialects.

Every column takes what the code writes into it (PostgreSQL refuses a ``VARCHAR(n)`` overflow where
SQLite does not): free text (errors, statuses with their error, authors) is ``TEXT``; a bounded column is
as wide as the largest value its source can give (``RELEASE_ID_LENGTH``: a service id and Airflow's
250-character run id); anything still longer is cut by :func:`conveyor.ledger.core.fit_text`, with a
marker and a digest so that two long keys stay two rows.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# A status in this set is final: a later upsert with a non-final status (say "running") does not replace
# it unless the caller asks for it with ``reset=True``.
TERMINAL_STATUSES = frozenset({"success", "failed", "rolled_back", "rejected", "cancelled", "skipped",
                               # a soak's ends (``soaks``): an incident stops a build's soak for good
                               "incident", "superseded", "promoted", "aborted"})
# Statuses recorded only when there is no status yet, never replacing one: "unchanged" (a rerun finds the
# host already on the version and must not forget that the first run deployed it) and "deploying" (written
# before a host changes, so a task killed halfway leaves a row; a rerun's must not hide the outcome).
WEAK_STATUSES = frozenset({"unchanged", "deploying"})
# Release statuses that count as a failed change for DORA's change failure rate.
FAILED_RELEASE_STATUSES = frozenset({"failed", "rolled_back"})
PRODUCTION = "production"
# ``<service>/<run_id>``: a service id (up to 63 characters) and Airflow's run id (VARCHAR(250)), with room.
RELEASE_ID_LENGTH = 400
# A stage is a task id (with its task group), which Airflow allows up to 250 characters.
STAGE_LENGTH = 250
# An approval stage's name (``conveyor.config.STAGE_NAME_RE``: at most 40 characters).
STAGE_NAME_LENGTH = 40
# A host name (RFC 1035: up to 253 characters) or a cloud instance id.
HOST_LENGTH = 255


def to_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    """An aware UTC datetime from a datetime or ISO 8601 string; naive values are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime or ISO 8601 string, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned as an aware UTC ``datetime``."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.DateTime(timezone=True))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value, dialect):
        value = to_utc(value)
        if value is not None and dialect.name != "postgresql":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return to_utc(value)


def _json() -> sa.types.TypeEngine:
    # none_as_null: a Python None must be SQL NULL (so COALESCE keeps earlier values), not JSON 'null'.
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("service", sa.String(100), nullable=False),
    sa.Column("version", sa.String(100)),
    sa.Column("commit_sha", sa.String(64)),
    sa.Column("git_ref", sa.String(250)),
    sa.Column("change_kind", sa.String(20)),
    sa.Column("emergency", sa.Boolean),
    sa.Column("reason", sa.Text),
    sa.Column("author", sa.Text),  # Airflow's triggering user name (up to 512 characters)
    sa.Column("run_id", sa.String(250)),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("status", sa.String(30)),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    # The first time every production host ran this version.
    sa.Column("deployed_at", UTCDateTime),
    # Commit shas shipped by this release (since the previous successful release), newest first.
    sa.Column("commit_range", _json()),
    sa.Column("labels", _json()),
)

stages = sa.Table(
    "stages",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("stage", sa.String(STAGE_LENGTH), primary_key=True),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("detail", _json()),
    sa.Column("error", sa.Text),
)

host_deployments = sa.Table(
    "host_deployments",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("host", sa.String(HOST_LENGTH), primary_key=True),
    sa.Column("environment", sa.String(50)),
    sa.Column("wave", sa.String(50)),
    sa.Column("from_version", sa.String(100)),
    sa.Column("to_version", sa.String(100)),
    sa.Column("status", sa.String(30)),
    sa.Column("at", UTCDateTime),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("approver", sa.String(250), primary_key=True),
    # Added by migration 6: the approval stage (``qa``, ``manager``, ...); rows from before it are ``qa``.
    sa.Column("stage", sa.String(STAGE_NAME_LENGTH), primary_key=True, server_default="qa"),
    sa.Column("decision", sa.String(30), nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("at", UTCDateTime, nullable=False),
)

test_results = sa.Table(
    "test_results",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("suite", sa.String(250), primary_key=True),
    sa.Column("test", sa.String(500), primary_key=True),
    sa.Column("outcome", sa.String(30), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("pre_existing", sa.Boolean, nullable=False, default=False),
)

rollbacks = sa.Table(
    "rollbacks",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("host", sa.String(HOST_LENGTH), primary_key=True),
    sa.Column("from_version", sa.String(100)),
    sa.Column("to_version", sa.String(100)),
    sa.Column("status", sa.Text),  # "rolled back", or "failed: <the error>"
    sa.Column("at", UTCDateTime),
)

tickets = sa.Table(
    "tickets",
    metadata,
    sa.Column("ticket_id", sa.String(250), primary_key=True),
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH)),
    sa.Column("service", sa.String(100)),
    sa.Column("path", sa.Text),
    sa.Column("url", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("created_at", UTCDateTime),
    # Added by migration 5: where the ticket went (local, jira, github), its key there, the failure signature
    # it was deduplicated on, and the delivery: "local", "filed", "commented" (on an open ticket of the same
    # signature) or "pending" (the tracker was down; kept locally and retried, delivery_error says why).
    sa.Column("backend", sa.String(30)),
    sa.Column("external_key", sa.String(250)),
    sa.Column("signature", sa.String(64)),
    sa.Column("delivery", sa.String(30)),
    sa.Column("delivery_error", sa.Text),
)

commits = sa.Table(
    "commits",
    metadata,
    sa.Column("service", sa.String(100), primary_key=True),
    sa.Column("commit_sha", sa.String(64), primary_key=True),
    sa.Column("author", sa.Text),  # git's author name: any length
    sa.Column("message", sa.Text),
    sa.Column("committed_at", UTCDateTime),
    sa.Column("ci_status", sa.String(30)),
    sa.Column("checked_at", UTCDateTime),
    sa.Column("ci_detail", sa.Text),  # added by migration 3: why CI judged the commit red
)

# A build's soak on the developer cluster (migration 7): one row per release that soaked a build. The
# status goes ``soaking`` -> ``passed`` (the watch covered the minimum with no incident) -> ``promoted``,
# or ``incident`` (for good), ``superseded`` (another build replaced it before its minimum) or ``aborted``
# (the release failed around it: its watch could not run, or it timed out; the soak cluster was rolled back).
soaks = sa.Table(
    "soaks",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("service", sa.String(100)),
    sa.Column("version", sa.String(100)),
    sa.Column("commit_sha", sa.String(64)),
    sa.Column("change_kind", sa.String(20)),
    sa.Column("artifact", _json()),  # the build (ArtifactInfo as a dict): what a promotion deploys
    sa.Column("hosts", _json()),  # the soak cluster's hosts
    sa.Column("status", sa.String(30)),
    sa.Column("started_at", UTCDateTime),  # every soak host ran the build from then
    sa.Column("min_seconds", sa.Float),  # the minimum that applies (min or major_min)
    sa.Column("watched_until", UTCDateTime),  # the watch's last look with no incident
    sa.Column("ended_at", UTCDateTime),
    sa.Column("incident", sa.Text),  # why the soak stopped for good
    sa.Column("detail", _json()),  # the watch's summary: windows judged, health
    sa.Column("promoted_release_id", sa.String(RELEASE_ID_LENGTH)),
    sa.Column("promoted_at", UTCDateTime),
)

# Incidents recorded after a release (migration 8): what escaped to production, for the statistics
# (:mod:`conveyor.ledger.stats`). One row per release and moment; a repeated record updates the reason.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),
    sa.Column("at", UTCDateTime, primary_key=True),  # when the incident began (default: when it was recorded)
    sa.Column("service", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("recorded_by", sa.Text),  # the Airflow user (REST) or the OS user (CLI)
    sa.Column("recorded_at", UTCDateTime),
)

# The regression calendar's results (migration 9): one row per service, month (``YYYY-MM``) and area,
# written by ``regression_<service>``; a rerun in the same month replaces the month's result.
regression_results = sa.Table(
    "regression_results",
    metadata,
    sa.Column("service", sa.String(100), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("area", sa.String(32), primary_key=True),  # conveyor.validation.SUITE_NAME_RE: at most 32
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH)),  # <service>/<run_id> of the regression run
    sa.Column("outcome", sa.String(30), nullable=False),  # passed | failed
    sa.Column("passed", sa.Integer),
    sa.Column("failed", sa.Integer),
    sa.Column("failing_tests", _json()),  # names of the failing tests
    sa.Column("version", sa.String(100)),  # production's version, which the replica ran
    sa.Column("ticket_id", sa.String(250)),  # the failing area's ticket
    sa.Column("at", UTCDateTime, nullable=False),
)

# Every change a flag rollout (``flag_<service>``) made to a flag (migration 10): who, why, where, to what.
# Keyed by the run, the flag, the environment and the step, so a rerun records nothing twice.
flag_changes = sa.Table(
    "flag_changes",
    metadata,
    sa.Column("release_id", sa.String(RELEASE_ID_LENGTH), primary_key=True),  # <service>/<run_id> of the rollout
    sa.Column("flag", sa.String(63), primary_key=True),
    sa.Column("environment", sa.String(50), primary_key=True),
    sa.Column("step", sa.String(50), primary_key=True),  # replica | step-<n> | off
    sa.Column("service", sa.String(100)),
    sa.Column("enabled", sa.Boolean),
    sa.Column("rollout", sa.Integer),
    sa.Column("by", sa.Text),  # who triggered the rollout (Airflow user), or "the schedule"
    sa.Column("reason", sa.Text),
    sa.Column("at", UTCDateTime),
)

# Tables created by the first migration, in creation order.
V1_TABLES = (releases, stages, host_deployments, approvals, test_results, rollbacks, tickets, commits)

# Indexes added by the second migration (queries by service and time: history pages, DORA, gates).
V2_INDEXES = (
    sa.Index("ix_releases_service_started", releases.c.service, releases.c.started_at),
    sa.Index("ix_releases_service_status", releases.c.service, releases.c.status),
    sa.Index("ix_tickets_release", tickets.c.release_id),
)
