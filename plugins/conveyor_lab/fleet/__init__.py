"""The local fleet: simulated replica, production and dev (soak) hosts, each a real SSH server on loopback.

``conveyor fleet up`` (or :meth:`Fleet.up`) starts 2 replica, 6 production and 2 dev hosts on
127.0.0.11-12, 127.0.0.21-26 and 127.0.0.31-32 (environment ``soak``: the developer cluster where
builds run for a while before production), each with an SSH server (port 2222) whose logins land in the host's
own home directory, the demo shop on port 8000, and steady traffic to every shop. Conveyor releases
to these hosts exactly as it would to real ones: over SSH with the fleet connection
(:meth:`Fleet.connection_uri`) and the inventory in ``fleet/inventory.json``.

Importing this package starts nothing and imports neither asyncssh nor Airflow.
"""

from __future__ import annotations

from conveyor_lab.fleet.layout import FleetError, FleetPaths
from conveyor_lab.fleet.manager import Fleet
from conveyor_lab.fleet.spec import FleetSpec, HostSpec

__all__ = ["Fleet", "FleetError", "FleetPaths", "FleetSpec", "HostSpec"]
