"""The session fleet, with its SSH connection and the fast demo service, for the fleet hook's tests."""

from __future__ import annotations

from tests.conveyor.hooks.fleet_support import calls, fleet_env, fleet_on_v1_0_0, local_fleet  # noqa: F401 - fixtures
