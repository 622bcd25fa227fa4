"""How long each task of a release may run: its ``execution_timeout``, from the service file. No Airflow.

:func:`task_timeouts` gives every task of the release DAG (by task id) the longest it can take when
every step it waits on runs to its own bound, plus :data:`BOOKKEEPING_S` for the ledger, XCom and
artifact-store work around them. The steps' bounds are the service's: ``deploy.timeouts`` (connect,
one remote command, one upload), ``deploy.health`` (the wait for a host, one probe),
``build.timeout_s``, the suites' ``timeout_s``, ``audit.timeout_s``; git commands have their own
(:data:`conveyor.commands.GIT_TIMEOUT_S`). Hosts are worked on ``deploy.max_parallel`` at a time, so a
step on ``n`` hosts takes ``ceil(n / max_parallel)`` rounds.

How many hosts: a static inventory (``hosts: [...]``) says; an inventory resolved at run time
(``local``, ``aws``) is counted as :data:`RUNTIME_INVENTORY_HOSTS` per environment (parsing a DAG
reads nothing but its service file). Waves split that count as :func:`conveyor.waves.plan_waves` does.

What is *not* here: the Human-in-the-loop tasks (the QA sign-off, the "continue or roll back?"
decisions) wait for a person with their ``response_timeout`` (``qa.timeout``,
``analysis.decision_timeout``) and get no ``execution_timeout`` (on Airflow 3.3 it is deprecated there
and moved into ``response_timeout``). The canary analyses defer: their ``execution_timeout`` bounds
each stretch on a worker (before the deferral, after the resume), and the wait in the triggerer is
bounded by the deferral's own timeout (:mod:`conveyor.operators.analysis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from conveyor.commands import GIT_TIMEOUT_S
from conveyor.config import ServiceConfig
from conveyor.waves import plan_waves

BOOKKEEPING_S = 300.0  # ledger rows, XCom, logs and the artifact store around a task's bounded steps
RUNTIME_INVENTORY_HOSTS = 50  # hosts counted per environment when the inventory is resolved at run time
CHECKOUT_GIT_CALLS = 4  # a checkout: the mirror's fetch, a clone, a checkout, a rev-parse
BUILD_GIT_CALLS = 10  # a build: the mirror, the ref, its tags and description, the log, a checkout
METRICS_ROUND_S = 30.0  # one round of /metrics scrapes by the plan (8 hosts at a time)
METRICS_PARALLEL = 8
TICKET_S = 2 * BOOKKEEPING_S  # filing a ticket with a remote tracker, its retries and the local copy


@dataclass(frozen=True)
class HostWork:
    """The longest one host's session can take for each kind of work a task does there, in seconds."""

    read: float  # connect, install the remote script, ``current``
    deploy: float  # connect, install, current, upload, stage, activate, restart, cleanup, one probe
    health: float  # waiting for the host to answer healthy: timeout, one more interval, one more probe
    rollback: float  # connect, install, current, current, activate, restart, one probe
    prune: float  # connect, install, prune
    populate: float  # connect, the populate command


def host_work(service: ServiceConfig) -> HostWork:
    """Per-host worst cases from ``deploy.timeouts`` and ``deploy.health``."""
    t, health = service.deploy.timeouts, service.deploy.health
    connect, command, upload, probe = t.connect_s, t.command_s, t.upload_s, health.probe_timeout_s
    return HostWork(
        read=connect + 2 * command,
        deploy=connect + upload + 6 * command + probe,
        health=health.timeout_s + health.interval_s + probe,
        rollback=connect + 5 * command + probe,
        prune=connect + 2 * command,
        populate=connect + command,
    )


def fleet_size(service: ServiceConfig, environment: str) -> int:
    """Hosts of ``environment`` as far as the service file tells (see the module docs)."""
    inventory = service.environment(environment).inventory
    return len(inventory.hosts) if inventory.hosts is not None else RUNTIME_INVENTORY_HOSTS


def rounds(hosts: int, max_parallel: int) -> int:
    """How many rounds ``hosts`` take, ``max_parallel`` at a time."""
    return math.ceil(hosts / max_parallel)


def wave_hosts(service: ServiceConfig, environment: str = "production") -> list[int]:
    """Hosts in each wave of the DAG (one per ``waves`` entry), for the fleet size the file tells."""
    hosts = fleet_size(service, environment)
    return [len(w) for w in plan_waves(list(range(hosts)), service.waves, len(service.waves))]


def _deploy_s(service: ServiceConfig, hosts: int) -> float:
    """Deploy to ``hosts`` hosts, then wait for them to answer healthy."""
    work = host_work(service)
    return rounds(hosts, service.deploy.max_parallel) * (work.deploy + work.health)


def task_timeouts(service: ServiceConfig, waves_to: str | None = None) -> dict[str, timedelta]:
    """The ``execution_timeout`` of every non-human task of the release DAG, by task id.

    ``waves_to``: the environment the DAG's waves go to (``production``; ``soak`` for the release DAG of a
    service with a soak cluster). Default: ``soak`` when the service has one. The promotion DAG's
    (``promote_<service>``) are here too, for ``waves_to="production"``.
    """
    waves_to = waves_to or ("soak" if service.soak is not None else "production")
    work, parallel = host_work(service), service.deploy.max_parallel
    replica, production = fleet_size(service, "replica"), fleet_size(service, "production")
    waves = fleet_size(service, waves_to)  # the hosts the waves, the watch and the rollback work on
    checkout = CHECKOUT_GIT_CALLS * GIT_TIMEOUT_S
    suites = sum(suite.timeout_s for suite in service.tests)
    triage = (suites + 2 * checkout + 2 * _deploy_s(service, replica)) if service.triage.enabled else 0.0
    seconds: dict[str, float] = {
        "validate": checkout,
        # production's version is read host after host, until one answers
        "build": service.build.timeout_s + BUILD_GIT_CALLS * GIT_TIMEOUT_S + production * work.read,
        "replica.deploy": _deploy_s(service, replica),
        "replica.populate": rounds(replica, parallel) * work.populate,
        "tests": checkout + suites + triage,
        "plan": rounds(waves, parallel) * work.read + rounds(waves, METRICS_PARALLEL) * METRICS_ROUND_S,
        "watch.analysis": 0.0,
        "finalize": rounds(waves, parallel) * work.read + rounds(waves + replica, parallel) * work.prune,
        "release_failed": 0.0,
        "rollback": rounds(waves, parallel) * (work.rollback + work.health),
        "ticket": TICKET_S,
        "fail_run": 0.0,
    }
    if service.audit is not None:
        seconds["audit"] = service.audit.timeout_s
    if service.soak is not None:
        # the soak's stretches on a worker: its hosts' versions before the deferral; the wait is the trigger's
        seconds["soak"] = rounds(waves, parallel) * work.read
        # the promotion's choice: production's versions
        seconds["select"] = rounds(production, parallel) * work.read
    for i, hosts in enumerate(wave_hosts(service, waves_to), start=1):
        seconds[f"wave_{i}.deploy"] = _deploy_s(service, hosts)
        seconds[f"wave_{i}.analysis"] = 0.0  # a worker's stretches only: the wait is the trigger's
    return {task_id: timedelta(seconds=math.ceil(s + BOOKKEEPING_S)) for task_id, s in seconds.items()}


def regression_timeouts(service: ServiceConfig) -> dict[str, timedelta]:
    """The ``execution_timeout`` of every task of ``regression_<service>``, by task id (same bounds as the
    release's: production's version read host after host, a build, the replica, the areas' suites in turn)."""
    assert service.regression is not None
    work, parallel = host_work(service), service.deploy.max_parallel
    replica, production = fleet_size(service, "replica"), fleet_size(service, "production")
    checkout = CHECKOUT_GIT_CALLS * GIT_TIMEOUT_S
    seconds: dict[str, float] = {
        "plan": 0.0,
        "production_version": production * work.read + service.build.timeout_s + BUILD_GIT_CALLS * GIT_TIMEOUT_S,
        "replica.deploy": _deploy_s(service, replica),
        "replica.populate": rounds(replica, parallel) * work.populate,
        # at most every area runs (the rotation's month, or one area by hand)
        "areas": checkout + sum(suite.timeout_s for suite in service.regression.areas.values()),
        "tickets": TICKET_S,
        "report": 0.0,
    }
    return {task_id: timedelta(seconds=math.ceil(s + BOOKKEEPING_S)) for task_id, s in seconds.items()}


def flag_timeouts(service: ServiceConfig) -> dict[str, timedelta]:
    """The ``execution_timeout`` of every non-human task of ``flag_<service>``, by task id: the replica's
    deploy and tests as a release's; a flag change writes a file on every host of an environment (or calls
    Unleash); the 100% step also reads every production host's page first."""
    work, parallel = host_work(service), service.deploy.max_parallel
    replica, production = fleet_size(service, "replica"), fleet_size(service, "production")
    release = task_timeouts(service, waves_to="production")
    write = rounds(max(replica, production), parallel) * work.read  # read, then write, each host's flags file
    seconds: dict[str, float] = {
        "validate": 0.0,
        "production_version": production * work.read + service.build.timeout_s + BUILD_GIT_CALLS * GIT_TIMEOUT_S,
        "replica.deploy": _deploy_s(service, replica),
        "replica.populate": rounds(replica, parallel) * work.populate,
        "replica.flag_on": write,
        "tests": release["tests"].total_seconds() - BOOKKEEPING_S,
        "replica_flag_off": write,
        "finalize": write,
        "release_failed": 0.0,
        "flag_off": 2 * write,
        "ticket": TICKET_S,
        "fail_run": 0.0,
    }
    for i in range(1, len(service.flag_rollout.steps) + 1):
        seconds[f"step_{i}.set"] = write + rounds(production, METRICS_PARALLEL) * METRICS_ROUND_S
        seconds[f"step_{i}.analysis"] = 0.0  # a worker's stretches only: the wait is the trigger's
    return {task_id: timedelta(seconds=math.ceil(s + BOOKKEEPING_S)) for task_id, s in seconds.items()}
