"""Fleet operators: deploy to hosts (replica or a production wave), reset replica data, plan waves,
roll back.

All of them are safe to rerun: a host already on the target version is left alone, and the
rollback compares each host with the version it ran when the release planned its waves.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import DeployError, HealthCheckError, RollbackError
from conveyor.operators.base import ConveyorOperator, utcnow

if TYPE_CHECKING:
    from airflow.sdk import Context

    from conveyor.hooks.fleet import FleetHook
    from conveyor.inventory import Host


class FleetOperator(ConveyorOperator):
    """Base of the operators that act on a service's hosts: the fleet hook and the health check."""

    @cached_property
    def fleet(self) -> FleetHook:
        from conveyor.hooks.fleet import FleetHook

        return FleetHook(self.service["deploy"]["ssh_conn_id"])

    def _health(self, hosts: list[Host], version: str | None) -> dict[str, Any]:
        from conveyor.deploy import for_each_host, wait_healthy

        cfg = self.service["deploy"]["health"]
        results, errors = for_each_host(
            hosts, lambda h: wait_healthy(h, version, timeout_s=cfg["timeout_s"], interval_s=cfg["interval_s"]),
            max_parallel=self.service["deploy"]["max_parallel"],
        )
        if errors:
            raise HealthCheckError("; ".join(str(e) for e in errors.values()))
        return results


class DeployOperator(FleetOperator):
    """Deploy the artifact to a set of hosts in parallel (bounded), then health-check them.

    Either ``environment="replica"`` (all replica hosts) or ``plan`` + ``wave`` (one production
    wave from the plan). Raises :class:`DeployError` / :class:`HealthCheckError` naming the hosts.

    :param artifact: the build's result (templated, usually ``build.output``).
    :param environment: ``replica`` or ``production``.
    :param plan: the wave plan (templated, ``plan.output``), for production.
    :param wave: index of the wave in the plan, for production.
    """

    template_fields = ("artifact", "plan")

    def __init__(self, *, artifact: Any, environment: str, plan: Any = None, wave: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact
        self.environment = environment
        self.plan = plan
        self.wave = wave

    def _hosts(self) -> list[Host]:
        from conveyor.inventory import Host, resolve_hosts

        if self.environment == "replica":
            return resolve_hosts(self.service, "replica")
        by_name = {h["name"]: Host.from_dict(h) for h in self.plan["hosts"]}
        return [by_name[name] for name in self.plan["waves"][self.wave]]

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import ArtifactInfo, ArtifactStore
        from conveyor.deploy import deploy_host, for_each_host

        info = ArtifactInfo.from_dict(self.artifact)
        hosts = self._hosts()
        if not hosts:
            self.log.info("Wave %s has no hosts (the fleet is smaller than the wave plan)", self.wave)
            return {"hosts": [], "changed": []}
        store = ArtifactStore.for_service(self.service)
        tarball = store.fetch(info)  # verifies sha256
        release_id = self.release_id(context)
        wave_label = "replica" if self.environment == "replica" else f"wave-{self.wave + 1}"
        self.log.info("Deploying %s to %s: %s", info.version, wave_label, ", ".join(h.name for h in hosts))
        results, errors = for_each_host(
            hosts, lambda h: deploy_host(self.fleet, h, info, tarball),
            max_parallel=self.service["deploy"]["max_parallel"],
        )
        for name, res in results.items():
            self.ledger.upsert_host_deployment(
                release_id, name, environment=self.environment, wave=wave_label, from_version=res["from"],
                to_version=res["to"], status="deployed" if res["changed"] else "unchanged", at=utcnow(),
            )
        original = (self.plan or {}).get("original", {}) if self.environment == "production" else {}
        for name in errors:
            self.ledger.upsert_host_deployment(
                release_id, name, environment=self.environment, wave=wave_label, from_version=original.get(name),
                to_version=info.version, status="failed", at=utcnow(),
            )
        if errors:
            raise DeployError("deploy failed on " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
        health = self._health(hosts, info.version)
        changed = sorted(n for n, r in results.items() if r["changed"])
        self.log.info("%s healthy on %s (changed: %s)", wave_label, info.version, ", ".join(changed) or "none")
        return {"hosts": sorted(results), "changed": changed, "health": health, "wave": wave_label}


class PopulateReplicaOperator(FleetOperator):
    """Reset the replica's data with the service's populate script, on every replica host.

    :param artifact: the build's result (templated); the script runs from that release's directory.
    """

    template_fields = ("artifact",)

    def __init__(self, *, artifact: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor import validation
        from conveyor.deploy import for_each_host
        from conveyor.inventory import resolve_hosts

        populate = self.service["populate"]
        hosts = resolve_hosts(self.service, "replica")
        if not populate:
            self.log.info("No populate script configured for %s", self.service.id)
            return {"hosts": [h.name for h in hosts], "output": {}}
        version = validation.version(self.artifact["version"])

        def run_one(host: Host) -> str:
            command = populate["command"].format(release_dir=f"{host.app_root}/releases/{version}")
            result = self.fleet.run_shell(host, command)
            if not result.ok:
                raise DeployError(f"populate failed: {result.describe()}")
            return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

        results, errors = for_each_host(hosts, run_one, max_parallel=self.service["deploy"]["max_parallel"])
        if errors:
            raise DeployError("; ".join(f"{n}: {e}" for n, e in errors.items()))
        for name, line in sorted(results.items()):
            self.log.info("%s: %s", name, line)
        return {"hosts": sorted(results), "output": results}


class PlanWavesOperator(FleetOperator):
    """Find the production hosts, record the version each runs, split them into waves, and take a
    pre-deploy metrics snapshot (the baseline for the last wave and the post-deploy watch).

    :param n_waves: how many wave task groups the DAG has.
    """

    def __init__(self, *, n_waves: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_waves = n_waves

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor.deploy import current_version, for_each_host
        from conveyor.hooks.metrics import MetricsHook
        from conveyor.inventory import resolve_hosts
        from conveyor.waves import plan_waves

        # On a rerun the plan must not change: reuse the first plan recorded for this release.
        release = self.ledger.get_release(self.release_id(context)) or {}
        stage = self.stage or self.task_id
        previous = next((s for s in release.get("stages", []) if s["stage"] == stage), None)
        if previous and (previous.get("detail") or {}).get("plan"):
            self.log.info("Reusing the wave plan recorded by the first run of this task")
            return {"plan": previous["detail"]["plan"]}

        hosts = resolve_hosts(self.service, "production")
        versions, errors = for_each_host(hosts, lambda h: current_version(self.fleet, h),
                                         max_parallel=self.service["deploy"]["max_parallel"])
        if errors:
            raise DeployError("cannot read versions: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
        waves = plan_waves([h.name for h in hosts], self.service["waves"], self.n_waves)
        metrics = MetricsHook()
        scrapes, _ = for_each_host(hosts, metrics.scrape_dict, max_parallel=8)
        plan = {
            "hosts": [h.to_dict() for h in hosts],
            "original": versions,
            "waves": waves,
            "pre_scrapes": scrapes,
            "planned_at": time.time(),
        }
        for i, wave in enumerate(waves):
            self.log.info("wave %d: %s", i + 1, ", ".join(wave) or "(empty)")
        return {"plan": plan}

    def execute(self, context: Context) -> Any:
        # The whole plan goes into the stage detail (so a rerun reuses it); XCom carries the plan.
        return super().execute(context)["plan"]


class RollbackOperator(FleetOperator):
    """Return every production host that left its original version to that version, health-check
    it, and record the outcome. Does nothing (and says so) when no host changed.

    :param plan: the wave plan (templated); by default the ``plan`` task's XCom, if it ran. Without a
        plan no production host was touched.
    """

    template_fields = ("plan",)
    ui_color = "#fde2c8"

    def __init__(self, *, plan: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def run(self, context: Context) -> dict[str, Any]:
        from conveyor.deploy import activate_version, current_version, for_each_host, wait_healthy
        from conveyor.inventory import Host

        plan = self.plan or context["ti"].xcom_pull(task_ids="plan")
        if not plan:
            self.log.info("No production host was planned, so none changed: nothing to roll back")
            return {"rolled_back": [], "touched": [], "status": "nothing to roll back"}
        release_id = self.release_id(context)
        hosts = [Host.from_dict(h) for h in plan["hosts"]]
        original = plan["original"]
        cfg = self.service["deploy"]["health"]
        current, errors_seen = for_each_host(hosts, lambda h: current_version(self.fleet, h), max_parallel=8)
        touched = [h for h in hosts if h.name in current and current[h.name] != original.get(h.name)]
        if not touched and not errors_seen:
            self.log.info("Every production host still runs its original version: nothing to roll back")
            return {"rolled_back": [], "touched": [], "status": "nothing to roll back"}

        def back(host: Host) -> dict[str, Any]:
            target = original[host.name]
            if target is None:
                raise RollbackError(f"{host.name} had no version before this release; cannot roll back")
            res = activate_version(self.fleet, host, target)
            wait_healthy(host, target, timeout_s=cfg["timeout_s"], interval_s=cfg["interval_s"])
            return res

        results, errors = for_each_host(touched, back, max_parallel=self.service["deploy"]["max_parallel"])
        errors.update(errors_seen)
        for name, res in results.items():
            self.ledger.upsert_rollback(release_id, name, from_version=current[name], to_version=res["to"],
                                        status="rolled back", at=utcnow())
        for name, err in errors.items():
            self.ledger.upsert_rollback(release_id, name, from_version=current.get(name),
                                        to_version=original.get(name), status=f"failed: {err}"[:500], at=utcnow())
        summary = {"rolled_back": sorted(results), "touched": sorted(h.name for h in touched),
                   "failed": {n: str(e) for n, e in errors.items()},
                   "status": "rolled back" if not errors else "rollback incomplete"}
        self.log.info("Rollback: %s", summary)
        if errors:
            raise RollbackError("rollback incomplete: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
        return summary
