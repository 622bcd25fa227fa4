"""The local fleet as a pytest fixture: ``local_fleet`` (session scope).

Import it where it is needed (``from tests.fleet_fixtures import local_fleet``). It brings up a
fleet of 2 replicas + 6 production hosts + the 2-host dev (soak) cluster, each a real
SSH server, seeded with the demo shop v1.0.0, traffic on, under the test session's ``CONVEYOR_HOME``,
on ports chosen at run time so it never meets a fleet started by ``make run``, and yields the
:class:`conveyor_lab.fleet.Fleet`. At the end of the session it stops the fleet and fails if any
of its processes is left.

Importing the fixture into several modules is safe: every copy shares one fleet, started by the
first user and stopped by the last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.paths import PROJECT_ROOT

_shared: dict = {"fleet": None, "users": 0}


def free_fleet_spec(**overrides):
    """A :class:`FleetSpec` on free ports (the addresses are the usual 127.0.0.x ones).

    Without the dev (soak) cluster unless ``dev`` is given: the tests written before it expect their
    fleets' host lists, and two more SSH servers and apps would slow every session on a shared machine.
    """
    from conveyor_lab.fleet import FleetSpec
    from conveyor_lab.fleet.spec import free_ports

    ssh_port, app_port = free_ports(2)
    return FleetSpec(**{"ssh_port": ssh_port, "app_port": app_port, "dev": 0, **overrides})


def fleet_processes(fleet) -> list[int]:
    """Every process of ``fleet`` still alive: daemon, apps, and anything carrying its marker."""
    from conveyor_lab.fleet import procs

    known = [pid for pid in fleet.pids().values() if procs.alive(pid)]
    return sorted(set(known) | set(fleet.leftover_processes()))


def stop_and_check(fleet, pids: list[int]) -> None:
    """``fleet.down()``, then assert that none of ``pids`` (nor any marked process) is alive."""
    from conveyor_lab.fleet import procs

    fleet.down()
    left = sorted({p for p in pids if procs.alive(p)} | set(fleet.leftover_processes()))
    assert not left, f"fleet processes left behind after down(): {left}"


@pytest.fixture(scope="session")
def local_fleet():
    """A running local fleet (shared by the whole session); yields the ``Fleet``."""
    from conveyor.paths import fleet_dir
    from conveyor_lab.fleet import Fleet

    if _shared["fleet"] is None:
        home = fleet_dir()
        if not os.environ.get("CONVEYOR_HOME") or home.is_relative_to(Path(PROJECT_ROOT) / ".conveyor"):
            pytest.fail("local_fleet needs CONVEYOR_HOME set to a temporary directory (tests/conftest.py does it)")
        fleet = Fleet(free_fleet_spec(dev=2), home=home, echo=lambda line: print(f"[fleet] {line}"))
        try:
            fleet.up(seed_version="v1.0.0", wait=True)
        except BaseException:
            fleet.down()
            raise
        _shared["fleet"] = fleet
    _shared["users"] += 1
    fleet = _shared["fleet"]
    try:
        yield fleet
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared["fleet"] = None
            stop_and_check(fleet, fleet_processes(fleet))
