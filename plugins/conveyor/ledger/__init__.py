"""The release ledger: what every release did, stored in SQLite or PostgreSQL, and DORA metrics over it.

``Ledger`` (no Airflow needed) is the core; ``conveyor.ledger.hook.LedgerHook`` builds one from the
``conveyor_ledger`` Airflow connection.
"""

from __future__ import annotations

from conveyor.ledger.core import Ledger
from conveyor.ledger.dora import compute_dora

__all__ = ["Ledger", "compute_dora"]
