"""How fast a staged rollout reaches a fleet: 50 production hosts, waves ``[1, "10%", "50%", "100%"]``.

Starts a private local fleet (50 production hosts on loopback addresses, no traffic) under a
temporary ``CONVEYOR_HOME``, builds the demo's v1.1.0 and v1.2.0, and runs the release's own
``DeployOperator`` once per wave (v1.0.0 -> v1.1.0), ``deploy.max_parallel`` 10, no bake time and no
judge between waves. Then, for the reference, the same operator with ``max_parallel`` 1 deploys
v1.2.0 to a 10-host sample one host at a time.

Measured, not modelled: each host's time is its SSH session (connect, upload, stage with the checksum
checked on the host, activate, restart, close) plus its wait until ``/health`` answers the new
version, timed around :meth:`FleetHook.session` and :func:`conveyor.health.wait_healthy`. Printed:

- ``rollout_wall_s``: wall-clock time from the first wave's start to the last wave's end;
- ``rollout_critical_path_s``: the sum over waves of each wave's slowest host (what the rollout would
  take if every host of a wave ran at once, at the speed measured); their ratio (goal <= 1.3);
- ``rollout_speedup_vs_serial``: the serial sample's time per host times 50, over ``rollout_wall_s``
  (goal >= 10);
- the SSH connections each deploy opened per host (counted where paramiko opens them).

Two more figures say where a gap to the goals comes from. ``rollout_bound_s`` is the least any
schedule with ``max_parallel`` slots could take at the measured host times (per wave, the larger of
its slowest host and its host-seconds over ``max_parallel``): a wave of 25 hosts needs at least three
rounds of 10, which the critical path above does not count. ``cpu_busy`` is the share of the
machine's CPU time that was busy during the rollout: the simulated hosts (one SSH daemon, fifty
apps) share the controller's cores, so hosts that would each have their own machine slow each
other down here; with the CPU saturated, the machine, not the rollout, sets the pace.

Neither goal can be met with these settings, whatever the machine: at ``max_parallel`` 10 the waves
(1, 4, 20 and 25 hosts) need at least 1 + 1 + 2 + 3 = 7 rounds, so with equal host times the ratio is
at least 7/4 = 1.75 and the speedup over one host at a time at most 50/7 = 7.1. The benchmark prints
these limits next to the measurement.

The machine is shared (2 cores, other work running): the figures move from run to run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

HOSTS = 50
WAVES = [1, "10%", "50%", "100%"]
MAX_PARALLEL = 10
SAMPLE = 10
GOAL_RATIO = 1.3
GOAL_SPEEDUP = 10.0


class _Xcom:
    def __init__(self, values: dict) -> None:
        self.values = values

    def xcom_pull(self, task_ids: str):
        return self.values.get(task_ids)


class Meter:
    """Per-host timings (SSH session, health wait) and SSH connections, for the step running now."""

    def __init__(self) -> None:
        self.session_s: dict[str, float] = defaultdict(float)
        self.health_s: dict[str, float] = defaultdict(float)
        self.connects: Counter[str] = Counter()

    def reset(self) -> None:
        self.session_s.clear()
        self.health_s.clear()
        self.connects.clear()

    def host_s(self, name: str) -> float:
        return self.session_s[name] + self.health_s[name]


@contextmanager
def metered(meter: Meter) -> Iterator[None]:
    """Time every host's SSH session and health wait, count paramiko connections, for the block."""
    import paramiko

    import conveyor.health
    from conveyor.hooks.fleet import FleetHook

    real_connect, real_session, real_wait = paramiko.SSHClient.connect, FleetHook.session, conveyor.health.wait_healthy

    def counting_connect(self, hostname, *args, **kwargs):
        meter.connects[hostname] += 1
        return real_connect(self, hostname, *args, **kwargs)

    @contextmanager
    def timed_session(self, host):
        started = time.monotonic()
        try:
            with real_session(self, host) as session:
                yield session
        finally:
            meter.session_s[host.name] += time.monotonic() - started

    def timed_wait(host, *args, **kwargs):
        started = time.monotonic()
        try:
            return real_wait(host, *args, **kwargs)
        finally:
            meter.health_s[host.name] += time.monotonic() - started

    paramiko.SSHClient.connect, FleetHook.session, conveyor.health.wait_healthy = (
        counting_connect, timed_session, timed_wait)
    try:
        yield
    finally:
        paramiko.SSHClient.connect, FleetHook.session, conveyor.health.wait_healthy = (
            real_connect, real_session, real_wait)


def cpu_times() -> tuple[int, int]:
    """(total, idle) CPU time of the whole machine so far, in clock ticks (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]  # idle + iowait


def signed_off(ledger_url: str, release_id: str) -> None:
    """The records a production wave's gate reads: the release, two QA approvals, passing tests."""
    from conveyor.ledger import Ledger

    ledger = Ledger(ledger_url)
    ledger.upsert_release(release_id, service="demo_shop", author="dev", emergency=False, status="running")
    for who in ("qa1", "qa2"):
        ledger.upsert_approval(release_id, who, decision="approved", at=dt.datetime.now(dt.UTC))
    ledger.upsert_stage(release_id, "tests", status="success")
    ledger.dispose()


def write_service(directory: Path) -> None:
    """The demo's service file with the benchmark's waves and parallelism. The health wait is 60 s
    (not the demo's 20 s): ten apps restarting at once on two shared cores take their time."""
    spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    spec["waves"] = WAVES
    spec["deploy"] = {**spec["deploy"], "max_parallel": MAX_PARALLEL,
                      "health": {**spec["deploy"]["health"], "timeout_s": 60}}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-rollout-"))
    os.environ.update({
        "CONVEYOR_HOME": str(home / "conveyor"), "AIRFLOW_HOME": str(home / "airflow"),
        "CONVEYOR_SERVICES_DIR": str(home / "services"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "AIRFLOW_CONN_BENCH_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(home / "ledger.db")}),
    })
    write_service(home / "services")
    from conveyor.artifacts import build_artifact
    from conveyor.config import load_service
    from conveyor.inventory import resolve_hosts
    from conveyor.operators.deploy import DeployOperator
    from conveyor.waves import plan_waves
    from conveyor_lab.fleet import Fleet, FleetSpec
    from conveyor_lab.fleet.spec import free_ports

    ssh_port, app_port = free_ports(2)
    fleet = Fleet(FleetSpec(replicas=0, production=HOSTS, dev=0, production_base="127.0.0.101", ssh_port=ssh_port,
                            app_port=app_port, traffic_rate=0), home=home / "conveyor" / "fleet", echo=lambda _: None)
    ledger_url = f"sqlite:///{home / 'ledger.db'}"
    meter = Meter()
    waves_out: list[dict] = []
    started = time.monotonic()
    try:
        fleet.up(seed_version="v1.0.0", wait=True)
        up_s = time.monotonic() - started
        os.environ["AIRFLOW_CONN_CONVEYOR_FLEET"] = fleet.connection_uri()
        service = load_service("demo_shop")
        new, sample_version = (build_artifact(service, v, log_fn=lambda *a: None) for v in ("v1.1.0", "v1.2.0"))
        hosts = resolve_hosts(service, "production")
        assert len(hosts) == HOSTS, f"expected {HOSTS} production hosts, found {len(hosts)}"
        plan = {"hosts": [h.to_dict() for h in hosts], "original": {h.name: "v1.0.0" for h in hosts},
                "waves": plan_waves([h.name for h in hosts], WAVES, len(WAVES)), "pre_scrapes": {}}
        signed_off(ledger_url, "demo_shop/bench-rollout")
        context = {"dag_run": SimpleNamespace(run_id="bench-rollout", dag_id="release_demo_shop"), "params": {},
                   "ti": _Xcom({"plan": plan})}
        address = {h.name: h.address for h in hosts}

        # The rollout: one DeployOperator per wave, back to back (no bake, no judge).
        rollout_started, cpu_before = time.monotonic(), cpu_times()
        with metered(meter):
            for i, wave in enumerate(plan["waves"]):
                meter.reset()
                task = DeployOperator(task_id=f"wave_{i + 1}.deploy", environment="production", artifact=new.to_dict(),
                                      plan=plan, wave=i, service_id="demo_shop", ledger_conn_id="bench_ledger")
                wave_started = time.monotonic()
                detail = task.execute(context)
                wall = time.monotonic() - wave_started
                if sorted(detail["changed"]) != sorted(wave):
                    raise SystemExit(f"wave {i + 1} changed {detail['changed']}, expected {wave}")
                per_host = [meter.host_s(n) for n in wave]
                waves_out.append({
                    "wave": i + 1, "hosts": len(wave), "wall": wall, "slowest": max(per_host),
                    "median": statistics.median(per_host), "bound": max(max(per_host), sum(per_host) / MAX_PARALLEL),
                    "session": max(meter.session_s[n] for n in wave),
                    "health": max(meter.health_s[n] for n in wave),
                    "connects": sorted({meter.connects[address[n]] for n in wave}),
                })
        rollout_wall = time.monotonic() - rollout_started
        cpu_after = cpu_times()
        cpu_busy = 1 - (cpu_after[1] - cpu_before[1]) / max(1, cpu_after[0] - cpu_before[0])

        # The reference: the same task, one host at a time, on a sample of the fleet.
        sample = [h.name for h in hosts[:SAMPLE]]
        serial_plan = {**plan, "original": {n: "v1.1.0" for n in sample}, "waves": [sample]}
        signed_off(ledger_url, "demo_shop/bench-serial")
        serial_context = {"dag_run": SimpleNamespace(run_id="bench-serial", dag_id="release_demo_shop"),
                          "params": {}, "ti": _Xcom({"plan": serial_plan})}
        task = DeployOperator(task_id="serial.deploy", environment="production", artifact=sample_version.to_dict(),
                              plan=serial_plan, wave=0, service_id="demo_shop", ledger_conn_id="bench_ledger")
        task.service = service.model_copy(update={"deploy": service.deploy.model_copy(update={"max_parallel": 1})})
        meter.reset()
        with metered(meter):
            serial_started = time.monotonic()
            detail = task.execute(serial_context)
            serial_wall = time.monotonic() - serial_started
        if sorted(detail["changed"]) != sorted(sample):
            raise SystemExit(f"the serial sample changed {detail['changed']}, expected {sample}")
        serial_connects = sorted({meter.connects[address[n]] for n in sample})
        serial_host_median = statistics.median(meter.host_s(n) for n in sample)
    finally:
        fleet.down(purge=True)

    critical = sum(w["slowest"] for w in waves_out)
    bound = sum(w["bound"] for w in waves_out)
    serial_per_host = serial_wall / SAMPLE
    serial_estimate = serial_per_host * HOSTS
    ratio = rollout_wall / critical
    speedup = serial_estimate / rollout_wall
    connects = sorted({c for w in waves_out for c in w["connects"]} | set(serial_connects))
    print(f"Rollout of {HOSTS} production hosts, waves {WAVES}, max_parallel {MAX_PARALLEL}, no bake "
          f"(fleet up {up_s:.0f} s, total {time.monotonic() - started:.0f} s)")
    print(f"{'wave':<6}{'hosts':>6}{'wall s':>9}{'slowest host s':>16}{'median host s':>15}{'bound s':>9}"
          f"{'ssh':>6}{'health':>8}{'ssh conns/host':>16}")
    for w in waves_out:
        print(f"{w['wave']:<6}{w['hosts']:>6}{w['wall']:>9.1f}{w['slowest']:>16.1f}{w['median']:>15.1f}"
              f"{w['bound']:>9.1f}{w['session']:>6.1f}{w['health']:>8.1f}{'/'.join(map(str, w['connects'])):>16}")
    print(f"serial sample: {SAMPLE} hosts one at a time in {serial_wall:.1f} s ({serial_per_host:.2f} s per host, "
          f"median host {serial_host_median:.2f} s; {HOSTS} hosts so: {serial_estimate:.0f} s), "
          f"ssh conns/host {'/'.join(map(str, serial_connects))}")
    print("(a host's time: its SSH session plus its health wait; ssh, health: the wave's longest of each; "
          f"bound: the least {MAX_PARALLEL} slots could take at those times)")
    rounds = sum(math.ceil(w["hosts"] / MAX_PARALLEL) for w in waves_out)
    print(f"at equal host times and no contention these waves take {rounds} rounds of {MAX_PARALLEL}: "
          f"ratio >= {rounds / len(waves_out):.2f}, speedup vs serial <= {HOSTS / rounds:.1f}")
    print(f"rollout_wall_s={rollout_wall:.1f} rollout_critical_path_s={critical:.1f} ratio={ratio:.2f} "
          f"goal_ratio={GOAL_RATIO} rollout_speedup_vs_serial={speedup:.1f} goal_speedup={GOAL_SPEEDUP:g} "
          f"ssh_connections_per_host_deploy={'/'.join(map(str, connects))} rollout_bound_s={bound:.1f} "
          f"ratio_to_bound={rollout_wall / bound:.2f} cpu_busy={cpu_busy:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
