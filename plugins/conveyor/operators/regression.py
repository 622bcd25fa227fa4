"""The regression calendar's operators (``regression_<service>``, :func:`conveyor.pipeline.regression_dag`):
choose the month's areas, find production's version, run the areas against the replica, file a ticket per
failing area.

A regression run is keyed like a release (``<service>/<run_id>``: its stages are in the ledger under that
id); its results are the ledger's ``regression_results``, one row per service, month and area, so a rerun
of the month replaces them instead of adding rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.exceptions import BuildError, InvalidInputError
from conveyor.operators.base import ConveyorOperator, FleetOperator, utcnow
from conveyor.operators.testing import TestSuitesOperator, base_url

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.config import Regression


def run_month(context: Context) -> tuple[int, int]:
    """The year and month a run is about: when it was due to run (the 1st, for a scheduled run)."""
    dag_run = context["dag_run"]
    when = getattr(dag_run, "run_after", None) or context.get("logical_date") or utcnow()
    return when.year, when.month


def month_areas(regression: Regression, params: dict[str, Any], year: int, month: int) -> dict[str, Any]:
    """The run's month (``YYYY-MM``) and its areas: the ``area`` param alone, else the rotation's for the
    ``month`` param (default: the run's month). Raises :class:`InvalidInputError` for an unknown area."""
    if params.get("month") is not None:
        month = int(params["month"])
        if not 1 <= month <= 12:
            raise InvalidInputError(f"month must be 1-12, got {params['month']!r}")
    area = params.get("area")
    if area:
        if area not in regression.areas:
            raise InvalidInputError(f"area {area!r} is not one of the service's regression areas "
                                    f"({', '.join(regression.areas)})")
        areas = [area]
    else:
        areas = list(regression.areas_in(month))
    return {"month": f"{year:04d}-{month:02d}", "areas": areas}


class RegressionPlanOperator(ConveyorOperator):
    """Decide the run's month and areas (see :func:`month_areas`); skip the run when the month has none."""

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        with self.ledger_stage(context) as stage:
            regression = self.service.regression
            if regression is None:
                raise InvalidInputError(f"{self.service.path}: regression: not defined")
            plan = month_areas(regression, context["params"], *run_month(context))
            stage.detail = plan
            if not plan["areas"]:
                raise AirflowSkipException(f"no regression area runs in {plan['month']}")
            self.log.info("Regression of %s, %s: %s", self.service.id, plan["month"], ", ".join(plan["areas"]))
        return plan


class ProductionVersionOperator(FleetOperator):
    """Production's current version, as an artifact: read over SSH (the first production host that answers
    with a version), else the ledger's last successful release; built (or reused) from that tag."""

    def _version(self) -> tuple[str, str]:
        from conveyor.inventory import resolve_hosts

        for host in resolve_hosts(self.service, "production"):
            try:
                with self.fleet.session(host) as session:
                    version = session.current_version()
            except Exception as e:  # an unreachable host: ask the next one
                self.log.warning("cannot read the version of %s: %s", host.name, e)
                continue
            if version:
                return version, f"production host {host.name}"
        last = self.ledger.last_successful_release(self.service.id) or {}
        if last.get("version"):
            return last["version"], f"the ledger's last successful release {last['release_id']}"
        raise BuildError(f"cannot tell which version production runs: no production host of {self.service.id} "
                         "answered with one and the ledger has no successful release")

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import build_artifact

        with self.ledger_stage(context) as stage:
            version, source = self._version()
            self.log.info("Production runs %s (from %s)", version, source)
            info = build_artifact(self.service, version, log_fn=self.log.info)
            result = info.to_dict()
            result.pop("tarball", None)
            stage.detail = {"version": info.version, "commit": info.commit, "source": source}
        return result


class RegressionAreasOperator(TestSuitesOperator):
    """Run the month's areas against the replica (on production's version), exactly as the release's tests
    run, and record each area's result in the ledger. Failing tests do not fail the task: the tickets and
    the report come after it.

    :param artifact: production's version as an artifact (templated); its commit is checked out.
    :param plan: the month and its areas (templated, the plan's output).
    """

    template_fields = ("artifact", "plan")

    def __init__(self, *, artifact: Any, plan: Any, **kwargs: Any) -> None:
        super().__init__(artifact=artifact, **kwargs)
        self.plan = plan

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import checkout
        from conveyor.inventory import resolve_hosts

        with self.ledger_stage(context) as stage:
            regression = self.service.regression
            unknown = [a for a in self.plan["areas"] if a not in regression.areas]
            if unknown:  # the service file changed since the plan
                raise InvalidInputError(f"{self.service.path}: regression.areas: no area {', '.join(unknown)}")
            version, month, release_id = self.artifact["version"], self.plan["month"], self.release_id(context)
            src = checkout(self.service, self.artifact["commit"])
            urls = ",".join(base_url(h.health_url) for h in resolve_hosts(self.service, "replica"))
            runs = self._run_suites(src, [regression.areas[a] for a in self.plan["areas"]], urls, version)
            results = []
            for area, run in runs.items():
                failing = sorted(run.failing)
                result = {"area": area, "outcome": "failed" if failing else "passed", "passed": run.count("passed"),
                          "failed": len(failing), "failing_tests": failing}
                self.ledger.upsert_regression_result(
                    self.service.id, month, area, release_id=release_id, version=version, ticket_id=None,
                    at=utcnow(), **{k: v for k, v in result.items() if k != "area"})
                results.append(result)
                self.log.info("Area %s: %s (%d passed, %d failed)", area, result["outcome"].upper(),
                              result["passed"], result["failed"])
            stage.detail = {"month": month, "version": version,
                            "areas": {r["area"]: r["outcome"] for r in results}}
        return {"month": month, "version": version, "release_id": release_id, "results": results}


class RegressionTicketsOperator(ConveyorOperator):
    """File one ticket per failing area (:func:`conveyor.tickets.file_regression_ticket`: the same failure
    seen again within ``regression.dedup_window`` is added to its ticket, not filed again), deliver it to the
    service's ticket system, and record it in the ledger (``tickets``, and the area's result).

    :param results: the areas' results (templated, the areas task's output).
    """

    template_fields = ("results",)
    ui_color = "#fff3c4"

    def __init__(self, *, results: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results = results

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.hooks.tickets import tracker_for
        from conveyor.operators.ticket import run_url
        from conveyor.tickets import (
            LocalTicketBackend,
            deliver_pending,
            file_regression_ticket,
            regression_signature,
            target_for,
        )

        service, month, version = self.service, self.results["month"], self.results["version"]
        local, target, now = LocalTicketBackend(), target_for(service.tickets), utcnow()
        url = run_url(context["dag_run"].dag_id, context["dag_run"].run_id)
        filed: dict[str, dict[str, Any]] = {}
        for result in self.results["results"]:
            if result["outcome"] != "failed":
                continue
            facts = {**result, "service": service.id, "month": month, "version": version, "run_url": url,
                     "release_id": self.results["release_id"],
                     "signature": regression_signature(service.id, result["area"], result["failing_tests"])}
            ticket, path = file_regression_ticket(local, facts, window=service.regression.dedup_window, now=now,
                                                  target=target)
            self.log.info("Area %s: ticket %s (%s)", result["area"], ticket.ticket_id, path)
            filed[ticket.ticket_id] = {"area": result["area"], "path": str(path), "title": ticket.title,
                                       "signature": facts["signature"]}
            self.ledger.upsert_regression_result(
                service.id, month, result["area"], release_id=facts["release_id"], version=version,
                ticket_id=ticket.ticket_id, at=now, **{k: v for k, v in result.items() if k != "area"})
        if target is not None and local.pending():
            deliver_pending(local, tracker_for, now=now, log=self.log.warning)
        for ticket_id, ticket in filed.items():
            delivery = (local.get(ticket_id) or {}).get("delivery") or {}
            self.ledger.upsert_ticket(
                ticket_id, release_id=self.results["release_id"], service=service.id, path=ticket["path"],
                title=ticket["title"], created_at=now, signature=ticket["signature"], backend=delivery.get("backend"),
                external_key=delivery.get("key"), url=delivery.get("url"), delivery=delivery.get("status"),
                delivery_error=delivery.get("error"))
        return {"tickets": {t["area"]: ticket_id for ticket_id, t in filed.items()}}
