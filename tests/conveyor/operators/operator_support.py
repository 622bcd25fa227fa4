"""Helpers for the operator tests: operator arguments and wave plans (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

LEDGER_CONN_ID = "test_ledger"
SERVICE_ID = "demo_shop"


def operator_kwargs(task_id: str) -> dict[str, Any]:
    """What every Conveyor operator of these tests takes: its task id, the service, the test's ledger."""
    return {"task_id": task_id, "service_id": SERVICE_ID, "ledger_conn_id": LEDGER_CONN_ID}


def plan_of(names: list[str], waves: list[list[str]], original: dict[str, str | None] | None = None) -> dict[str, Any]:
    """A wave plan (the shape ``PlanWavesOperator`` returns) over the inventory's production hosts."""
    from tests.conveyor.hooks.fleet_support import SEED, hosts

    by_name = hosts("production")
    return {
        "hosts": [by_name[n].to_dict() for n in names],
        "original": original if original is not None else dict.fromkeys(names, SEED),
        "waves": waves,
    }


def host_rows(release: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The release's host deployment rows by host name."""
    return {row["host"]: row for row in (release or {}).get("hosts", [])}


def stage_row(release: dict[str, Any] | None, stage: str) -> dict[str, Any] | None:
    return next((s for s in (release or {}).get("stages", []) if s["stage"] == stage), None)
