"""Test environment: a private AIRFLOW_HOME (SQLite) and CONVEYOR_HOME per test session.

The variables are set before anything imports Airflow, as Airflow's own best-practices page
recommends; nothing here touches the developer's `.airflow/` or `.conveyor/`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.watchdog import pytest_configure, pytest_runtest_protocol  # noqa: F401 - every test's bound

ROOT = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="conveyor-tests-"))

os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_SESSION_DIR / 'airflow' / 'airflow.db'}"
os.environ["AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP"] = r"(airflow|conveyor)\..*"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
os.environ["CONVEYOR_HOME"] = str(_SESSION_DIR / "conveyor")
os.environ.pop("AIRFLOW_CONN_CONVEYOR_FLEET", None)
os.environ.pop("AIRFLOW_CONN_CONVEYOR_LEDGER", None)
(_SESSION_DIR / "airflow").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata database (SQLite) for tests that run DAGs."""
    from airflow.utils import db

    db.resetdb()
    return
