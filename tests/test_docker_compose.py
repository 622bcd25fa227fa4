"""docker-compose.yaml is checked, not started (no Docker engine here): shape, pins, mounts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_runs_the_distributed_stack():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-worker", "airflow-triggerer", "airflow-init"} <= set(services)
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW_CONN_CONVEYOR_LEDGER"].startswith("postgresql://")


def test_compose_pins_airflow_and_mounts_the_project():
    compose = _compose()
    pins = (ROOT / "requirements.lock").read_text()
    for name, svc in compose["services"].items():
        if not name.startswith("airflow-"):
            continue
        assert "apache/airflow:3.3.2" in svc["image"], name
        mounts = {m for v in svc["volumes"] for m in re.findall(r":(/opt/airflow/[\w-]+)", v)}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts, name
    assert "apache-airflow==3.3.2" in pins
    extra = compose["x-airflow-common"]["environment"]["_PIP_ADDITIONAL_REQUIREMENTS"]
    for req in ("asyncssh==", "psycopg2-binary=="):
        pinned = next(line for line in pins.splitlines() if line.lower().startswith(req.lower()))
        assert pinned in extra, f"{pinned} not pinned in compose"


def test_compose_creates_the_ledger_database():
    compose = _compose()
    init = [v for v in compose["services"]["postgres"]["volumes"] if "create-ledger-db.sql" in v]
    assert init
    sql = (ROOT / init[0].split(":")[0].removeprefix("./")).read_text()
    assert "CREATE DATABASE conveyor_ledger" in sql
