"""Fleet operators: deploy to hosts (replica or a production wave), reset replica data, plan waves,
roll back.

All of them are safe to rerun: a host already on the target version is left alone, the plan of a
release is made once, and the rollback compares each host with the version it ran when the
release planned its waves. Each opens one SSH session per host.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import DeployError, HealthCheckError, RollbackError
from conveyor.operators.base import FleetOperator, utcnow

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context

    from conveyor.artifacts import ArtifactInfo
    from conveyor.hooks.fleet import FleetSession
    from conveyor.hosts import Host


class DeployOperator(FleetOperator):
    """Deploy the artifact to a set of hosts in parallel (bounded), then health-check them.

    Either ``environment="replica"`` (all replica hosts) or ``plan`` + ``wave`` (one wave of the plan,
    in ``production`` or on the ``soak`` cluster). Raises :class:`DeployError` / :class:`HealthCheckError`
    naming the hosts. Before a wave changes any host, the gate checks the records: the release's sign-off
    (and tests), or for a promotion (``promotion=True``) the soak and the soaked release's sign-off.

    :param artifact: the build's result (templated, usually ``build.output``).
    :param environment: ``replica``, ``production`` or ``soak``.
    :param plan: the wave plan (templated, ``plan.output``), for waves.
    :param wave: index of the wave in the plan, for waves.
    :param promotion: the DAG is ``promote_<service>``: gate on :func:`conveyor.operators.soak.verify_promotion`.
    """

    template_fields = ("artifact", "plan")

    def __init__(self, *, artifact: Any, environment: str, plan: Any = None, wave: int | None = None,
                 promotion: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact
        self.environment = environment
        self.plan = plan
        self.wave = wave
        self.promotion = promotion

    def _hosts(self) -> list[Host]:
        from conveyor.hosts import Host
        from conveyor.inventory import resolve_hosts

        if self.environment == "replica":
            return resolve_hosts(self.service, "replica")
        by_name = {h["name"]: Host.from_dict(h) for h in self.plan["hosts"]}
        return [by_name[name] for name in self.plan["waves"][self.wave]]

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.artifacts import ArtifactInfo, ArtifactStore

        with self.ledger_stage(context) as stage:
            if self.promotion:
                # The promotion's gate: the soak, the soaked release's sign-off, the promotion's approval.
                from conveyor.operators.soak import verify_promotion

                verify_promotion(self, context, self.plan)
            elif self.environment != "replica":
                # The gate, where it acts: every wave, before any host changes, checks the sign-off in
                # the records (task states can be set by hand). Raises "sign-off missing: ...".
                from conveyor.operators.signoff import verify_production_signoff

                verify_production_signoff(self, context)
            info = ArtifactInfo.from_dict(self.artifact)
            hosts = self._hosts()
            if not hosts:
                self.log.info("Wave %s has no hosts (the fleet is smaller than the wave plan)", self.wave)
                stage.detail = {"hosts": [], "changed": []}
                return stage.detail
            tarball = ArtifactStore.for_service(self.service).fetch(info)  # verifies sha256
            label = "replica" if self.environment == "replica" else self._wave_label()
            self.log.info("Deploying %s to %s: %s", info.version, label, ", ".join(h.name for h in hosts))
            self._record_start(context, label, info.version, hosts)
            results, errors = self.on_each_host(hosts, lambda s: self._deploy_one(s, info, tarball))
            self._record(context, label, info.version, results, errors)
            unhealthy = {n: r.pop("unhealthy") for n, r in results.items() if "unhealthy" in r}
            if errors:  # every host that failed is named, the unhealthy ones too
                raise DeployError("deploy failed on " + "; ".join(
                    [f"{n}: {e}" for n, e in errors.items()] + [str(e) for e in unhealthy.values()]))
            if unhealthy:
                raise HealthCheckError("; ".join(str(e) for e in unhealthy.values()))
            health = {n: r.pop("health") for n, r in results.items()}
            changed = sorted(n for n, r in results.items() if r["changed"])
            self.log.info("%s healthy on %s (changed: %s)", label, info.version, ", ".join(changed) or "none")
            stage.detail = {"hosts": sorted(results), "changed": changed, "health": health, "wave": label}
        return stage.detail

    def _deploy_one(self, session: FleetSession, info: ArtifactInfo, tarball: Path) -> dict[str, Any]:
        """Deploy to one host, then wait for it to answer healthy on the version, in the same slot: a wave
        takes as long as its slowest host, not as long as its slowest deploy plus its slowest health check.
        A host that deployed but is not healthy is reported under ``unhealthy`` (it did change)."""
        from conveyor.health import wait_healthy

        result = session.deploy(info, tarball)
        health = self.service.deploy.health
        try:
            result["health"] = wait_healthy(session.host, info.version, timeout_s=health.timeout_s,
                                            interval_s=health.interval_s, probe_timeout_s=health.probe_timeout_s)
        except HealthCheckError as exc:
            result["unhealthy"] = exc
        return result

    def _wave_label(self) -> str:
        return f"{'soak-' if self.environment == 'soak' else ''}wave-{self.wave + 1}"

    def _original(self) -> dict[str, str | None]:
        """What each host of the waves ran before this release (the plan's record); nothing for the replica."""
        return (self.plan or {}).get("original", {}) if self.environment != "replica" else {}

    def _record_start(self, context: Context, label: str, version: str, hosts: list[Host]) -> None:
        """Wave hosts are recorded as ``deploying`` before any of them changes: a task killed halfway
        leaves a row for every host it may have touched (the rollback and the ticket read them).
        ``deploying`` never replaces what an earlier try recorded."""
        if self.environment == "replica":
            return
        original = self._original()
        for host in hosts:
            if original.get(host.name) == version:
                continue  # nothing will change there
            self.ledger.upsert_host_deployment(
                self.release_id(context), host.name, environment=self.environment, wave=label,
                from_version=original.get(host.name), to_version=version, status="deploying", at=utcnow(),
            )

    def _record(self, context: Context, label: str, version: str, results: dict[str, Any],
                errors: dict[str, Exception]) -> None:
        """One row per host. In production the change is measured against the plan (the version the host
        ran before the release), not against what this try found: a rerun after a try that was killed
        halfway still records the hosts that try changed as ``deployed``, from their original version."""
        release_id = self.release_id(context)
        original = self._original()
        for name, res in results.items():
            before = original[name] if name in original else res["from"]
            changed = res["changed"] or (self.environment != "replica" and before != res["to"])
            self.ledger.upsert_host_deployment(
                release_id, name, environment=self.environment, wave=label, from_version=before,
                to_version=res["to"], status="deployed" if changed else "unchanged", at=utcnow(),
            )
        for name in errors:
            self.ledger.upsert_host_deployment(
                release_id, name, environment=self.environment, wave=label, from_version=original.get(name),
                to_version=version, status="failed", at=utcnow(),
            )


class PopulateReplicaOperator(FleetOperator):
    """Reset the replica's data with the service's populate script, on every replica host.

    :param artifact: the build's result (templated); the script runs from that release's directory.
    """

    template_fields = ("artifact",)

    def __init__(self, *, artifact: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor import validation
        from conveyor.inventory import resolve_hosts

        with self.ledger_stage(context) as stage:
            populate = self.service.populate
            hosts = resolve_hosts(self.service, "replica")
            if populate is None:
                self.log.info("No populate script configured for %s", self.service.id)
                stage.detail = {"hosts": [h.name for h in hosts], "output": {}}
                return stage.detail
            version = validation.version(self.artifact["version"])

            def populate_one(session: FleetSession) -> str:
                command = populate.command.format(release_dir=f"{session.host.app_root}/releases/{version}")
                result = session.run_shell(command, step="populate")
                if not result.ok:
                    raise DeployError(f"populate failed: {result.describe()}")
                return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

            results, errors = self.on_each_host(hosts, populate_one)
            if errors:
                raise DeployError("; ".join(f"{n}: {e}" for n, e in errors.items()))
            for name, line in sorted(results.items()):
                self.log.info("%s: %s", name, line)
            stage.detail = {"hosts": sorted(results), "output": results}
        return stage.detail


class PlanWavesOperator(FleetOperator):
    """Find the production hosts, record the version each runs, split them into waves, and take a
    pre-deploy metrics snapshot (the baseline for the last wave and the post-deploy watch).

    The plan is made once per release: a rerun returns the plan the first run recorded, so the
    waves, and what the rollback returns each host to, never change under a release.

    :param n_waves: how many wave task groups the DAG has.
    :param environment: whose hosts the waves go to: ``production``, or the ``soak`` cluster.
    """

    def __init__(self, *, n_waves: int, environment: str = "production", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_waves = n_waves
        self.environment = environment

    def execute(self, context: Context) -> dict[str, Any]:
        recorded = (self.recorded_stage(context) or {}).get("detail") or {}
        with self.ledger_stage(context) as stage:
            if recorded.get("plan"):
                self.log.info("Reusing the wave plan recorded by the first run of this task")
                stage.detail = recorded
                return recorded["plan"]
            stage.detail = {"plan": self._plan()}
        return stage.detail["plan"]

    def _plan(self) -> dict[str, Any]:
        from conveyor.hooks.metrics import metric_source
        from conveyor.inventory import resolve_hosts
        from conveyor.waves import plan_waves

        hosts = resolve_hosts(self.service, self.environment)
        versions, errors = self.on_each_host(hosts, lambda s: s.current_version())
        if errors:
            raise DeployError("cannot read versions: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
        waves = plan_waves([h.name for h in hosts], self.service.waves, self.n_waves)
        # The baseline of the last wave and the watch; a source that cannot answer gives no snapshot
        # (those analyses then end inconclusive), never a failed plan.
        source = metric_source(self.service.analysis.source)
        scrapes = source.snapshot(hosts, lookback_s=self.service.analysis.window_s)
        if source.last_error:
            self.log.warning("Pre-deploy snapshot incomplete: %s", source.last_error)
        for i, wave in enumerate(waves):
            self.log.info("wave %d: %s", i + 1, ", ".join(wave) or "(empty)")
        return {
            "hosts": [h.to_dict() for h in hosts],
            "original": versions,
            "waves": waves,
            "pre_scrapes": scrapes,
            "planned_at": time.time(),
        }


class RollbackOperator(FleetOperator):
    """Return every production host that left its original version to that version, health-check
    it, and record the outcome. Does nothing (and says so) when no host changed.

    :param plan_task_id: the task whose XCom is the wave plan. Without a plan no production host
        was touched.
    """

    ui_color = "#fde2c8"

    def __init__(self, *, plan_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id

    #: The rollback runs whatever the ledger does: a ledger that is down is logged, never a reason to
    #: leave hosts on the release's version.
    ledger_required = False

    def execute(self, context: Context) -> dict[str, Any]:
        from conveyor.hosts import Host

        with self.ledger_stage(context) as stage:
            plan = context["ti"].xcom_pull(task_ids=self.plan_task_id)
            if not plan:
                self.log.info("No production host was planned, so none changed: nothing to roll back")
                stage.detail = {"rolled_back": [], "touched": [], "status": "nothing to roll back"}
                return stage.detail
            hosts = [Host.from_dict(h) for h in plan["hosts"]]
            deployed = self._deployed(context)
            results, errors = self.on_each_host(hosts, lambda s: self._back(s, plan["original"].get(s.host.name)))
            # Touched: moved back now, or recorded as deployed by this release (an earlier try of the
            # rollback, killed halfway, may already have put it back).
            touched = {n: {**r, "from": deployed.get(n, r["from"])}
                       for n, r in results.items() if r["changed"] or n in deployed}
            if not touched and not errors:
                self.log.info("Every production host still runs its original version: nothing to roll back")
                stage.detail = {"rolled_back": [], "touched": [], "status": "nothing to roll back"}
                return stage.detail
            unhealthy = self._check_health([h for h in hosts if h.name in touched], plan["original"])
            errors.update(unhealthy)
            self._record(context, plan["original"], touched, errors)
            if any(h.environment == "soak" for h in hosts) and not errors:
                self._end_soak(context, touched)
            stage.detail = {
                "rolled_back": sorted(n for n in touched if n not in errors),
                "touched": sorted(set(touched) | (set(errors) - set(results))),
                "failed": {n: str(e) for n, e in errors.items()},
                "status": "rolled back" if not errors else "rollback incomplete",
            }
            self.log.info("Rollback: %s", stage.detail)
            if errors:
                raise RollbackError("rollback incomplete: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
        return stage.detail

    def _end_soak(self, context: Context, touched: dict[str, Any]) -> None:
        """A soak cluster rolled back: the soak of this release (if it had started) ends unfinished."""
        from conveyor.operators.soak import abort_soak

        try:
            abort_soak(self, context, f"the soak cluster was rolled back ({', '.join(sorted(touched))})")
        except Exception as exc:  # the rollback's outcome stands; the soak row says "soaking" until superseded
            self.log.error("Could not end the soak in the ledger: %s: %s", type(exc).__name__, exc)

    def _deployed(self, context: Context) -> dict[str, str | None]:
        """Production hosts this release recorded as (being) deployed, with the version it put there."""
        try:
            release = self.ledger.get_release(self.release_id(context)) or {}
        except Exception as exc:  # the rollback goes on from what the hosts say
            self.log.error("Could not read the release's host records: %s: %s", type(exc).__name__, exc)
            return {}
        return {h["host"]: h.get("to_version") for h in release.get("hosts", [])
                if h.get("environment") != "replica" and h.get("status") in ("deploying", "deployed")
                and h.get("to_version") != h.get("from_version")}

    @staticmethod
    def _back(session: FleetSession, original: str | None) -> dict[str, Any]:
        """Put the host back on ``original`` if it left it; ``changed`` says whether it had."""
        current = session.current_version()
        if current is None and original is None:
            return {"from": None, "to": None, "changed": False}
        if original is None:
            raise RollbackError(f"{session.host.name} had no version before this release; cannot roll back")
        result = session.activate(original)  # also restarts an app left on another version by an earlier try
        return {"from": current, "to": original, "changed": result["changed"]}

    def _check_health(self, hosts: list[Host], original: dict[str, str | None]) -> dict[str, Exception]:
        from conveyor.health import wait_healthy
        from conveyor.parallel import for_each_host

        health = self.service.deploy.health
        _, errors = for_each_host(
            hosts, lambda h: wait_healthy(h, original[h.name], timeout_s=health.timeout_s,
                                          interval_s=health.interval_s, probe_timeout_s=health.probe_timeout_s),
            max_parallel=self.service.deploy.max_parallel,
        )
        return errors

    def _record(self, context: Context, original: dict[str, str | None], touched: dict[str, Any],
                errors: dict[str, Exception]) -> None:
        """One ``rollbacks`` row per host: ``rolled back``, or ``failed: <error>``.

        A write that fails never replaces the rollback's own error: when hosts failed to roll back, the
        :class:`RollbackError` raised next is the task's error and the ledger's is logged; when every host
        rolled back, the ledger's error fails the task (a retry records the rows again, the rollback being
        a no-op on hosts already back).
        """
        release_id = self.release_id(context)
        rows = [(name, {"from_version": res["from"], "to_version": res["to"], "status": "rolled back"})
                for name, res in touched.items() if name not in errors]
        rows += [(name, {"from_version": (touched.get(name) or {}).get("from"), "to_version": original.get(name),
                         "status": f"failed: {err}"[:4000]}) for name, err in errors.items()]
        unrecorded: list[Exception] = []
        for name, fields in rows:
            try:
                self.ledger.upsert_rollback(release_id, name, at=utcnow(), **fields)
            except Exception as exc:  # reported below, never instead of the rollback's error
                self.log.error("Could not record the rollback of %s in the ledger (%s): %s: %s", name,
                               fields["status"], type(exc).__name__, exc)
                unrecorded.append(exc)
        if unrecorded and not errors:
            raise unrecorded[0]
