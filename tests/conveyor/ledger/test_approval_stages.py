"""Approval stages in the ledger (issue 13): each decision is recorded with its stage, a person may decide
in two stages of one release, and a ledger from before the stages (schema version 5) keeps its approvals,
as the QA stage's. On SQLite and on the local PostgreSQL server, like ``test_ledger``."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from conveyor.ledger import Ledger, migrations, schema
from tests.conveyor.ledger.test_ledger import ledger, ledger_url, postgres_url  # noqa: F401 - fixtures

AT = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
RID = "demo_shop/manual__stages"


def _as_of_version_5(url: str) -> None:
    """A ledger as migrations 1-5 left it: ``approvals`` keyed by (release, approver), no stage."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(CreateTable(schema.schema_version))
        for table in schema.V1_TABLES:
            if table is not schema.approvals:
                conn.execute(CreateTable(table))
        conn.execute(sa.text("CREATE TABLE approvals (release_id VARCHAR(400) NOT NULL, approver VARCHAR(250) NOT "
                             "NULL, decision VARCHAR(30) NOT NULL, comment TEXT, at TIMESTAMP NOT NULL, "
                             "PRIMARY KEY (release_id, approver))"))
        for migration in migrations.MIGRATIONS[1:5]:
            migration.apply(conn)
        for migration in migrations.MIGRATIONS[:5]:
            conn.execute(sa.insert(schema.schema_version).values(version=migration.version, name=migration.name,
                                                                 applied_at=AT))
        conn.execute(sa.text("INSERT INTO approvals VALUES (:r, 'qa1', 'approved', 'checked', :at), "
                             "(:r, 'qa2', 'rejected', 'wrong prices', :at)"), {"r": RID, "at": AT.replace(tzinfo=None)})
    engine.dispose()


def test_a_person_decides_once_per_stage_and_every_decision_names_its_stage(ledger):  # noqa: F811
    ledger.upsert_release(RID, service="demo_shop", status="running")
    ledger.upsert_approval(RID, "qa1", decision="approved", at=AT)  # the QA stage, as before the stages
    ledger.upsert_approval(RID, "qa1", stage="manager", decision="approved", comment="ok", at=AT + dt.timedelta(1))
    ledger.upsert_approval(RID, "client1", stage="client", decision="rejected", comment="no", at=AT + dt.timedelta(2))
    ledger.upsert_approval(RID, "client1", stage="client", decision="rejected", comment="no", at=AT + dt.timedelta(2))

    rows = [(a["stage"], a["approver"], a["decision"], a["comment"]) for a in ledger.get_release(RID)["approvals"]]
    assert rows == [("qa", "qa1", "approved", None), ("manager", "qa1", "approved", "ok"),
                    ("client", "client1", "rejected", "no")]


def test_a_ledger_from_before_the_stages_keeps_its_approvals_as_the_qa_stage(ledger_url):  # noqa: F811
    _as_of_version_5(ledger_url)
    old = Ledger(ledger_url)
    try:
        assert old.migrate() == list(range(6, migrations.LATEST_VERSION + 1))
        assert old.schema_version() == migrations.LATEST_VERSION
        old.upsert_release(RID, service="demo_shop", status="running")
        old.upsert_approval(RID, "qa1", stage="client", decision="approved", at=AT + dt.timedelta(1))

        rows = [(a["stage"], a["approver"], a["decision"], a["comment"]) for a in old.get_release(RID)["approvals"]]
        assert rows == [("qa", "qa1", "approved", "checked"), ("qa", "qa2", "rejected", "wrong prices"),
                        ("client", "qa1", "approved", None)]
        assert old.migrate() == []  # applied once
    finally:
        old.dispose()
