"""``LedgerHook``: the release ledger behind an Airflow connection.

Connection (``conveyor_ledger`` by default), read by field and from an allow-list of extras:

* ``conn_type`` ``sqlite``: ``host`` is the database file path;
* ``conn_type`` ``postgres`` / ``postgresql``: ``host``, ``port``, ``login``, ``password``, ``schema``
  (the database); extra ``sslmode`` is passed on;
* any type: extra ``sqlalchemy_url`` wins over the fields.

When the connection id is not defined at all, the ledger is the SQLite file
``$CONVEYOR_HOME/ledger.db``, so the local platform works without configuration.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy.engine import URL, make_url

from conveyor.ledger.core import Ledger
from conveyor.paths import conveyor_home

_ALLOWED_EXTRAS = ("sqlalchemy_url", "sslmode")


def default_ledger_url() -> URL:
    return URL.create("sqlite", database=str(conveyor_home() / "ledger.db"))


class LedgerHook(BaseHook):
    """Gives tasks the release ledger (:class:`conveyor.ledger.core.Ledger`) of a connection.

    :param ledger_conn_id: the connection; when it is not defined, the local SQLite ledger is used.
    """

    conn_name_attr = "ledger_conn_id"
    default_conn_name = "conveyor_ledger"
    conn_type = "conveyor_ledger"
    hook_name = "Conveyor release ledger"

    def __init__(self, ledger_conn_id: str = default_conn_name):
        super().__init__()
        self.ledger_conn_id = ledger_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"schema": "Database", "host": "Host (or SQLite file path)"},
            "placeholders": {"extra": '{"sqlalchemy_url": "postgresql+psycopg2://user@host/db"}'},
        }

    def ledger_url(self) -> URL:
        """The SQLAlchemy URL of the ledger, from the connection or the local default."""
        try:
            conn = self.get_connection(self.ledger_conn_id)
        except AirflowNotFoundException:
            self.log.info("Connection %s is not defined; using the local SQLite ledger", self.ledger_conn_id)
            return default_ledger_url()
        extra = conn.extra_dejson or {}
        options = {name: extra[name] for name in _ALLOWED_EXTRAS if extra.get(name) not in (None, "")}
        if "sqlalchemy_url" in options:
            return make_url(str(options["sqlalchemy_url"]))
        conn_type = (conn.conn_type or "").lower()
        if conn_type == "sqlite":
            path = conn.host or conn.schema
            if not path:
                raise ValueError(f"connection {self.ledger_conn_id}: sqlite needs the file path in host")
            return URL.create("sqlite", database=path)
        if conn_type in ("postgres", "postgresql"):
            query = {"sslmode": str(options["sslmode"])} if "sslmode" in options else {}
            return URL.create(
                "postgresql+psycopg2",
                username=conn.login or None,
                password=conn.password or None,
                host=conn.host or None,
                port=conn.port or None,
                database=conn.schema or None,
                query=query,
            )
        raise ValueError(
            f"connection {self.ledger_conn_id}: conn_type {conn.conn_type!r} is not sqlite or postgres "
            "and no sqlalchemy_url extra is set"
        )

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url())

    def get_conn(self) -> Ledger:
        return self.ledger

    def test_connection(self) -> tuple[bool, str]:
        try:
            ledger = self.ledger
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return ledger.test_connection()
