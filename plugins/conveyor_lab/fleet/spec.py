"""The shape of the local fleet: how many hosts, on which loopback addresses and ports.

Pure data, no processes: :class:`FleetSpec` is saved as ``fleet/spec.json`` by ``fleet up`` so the
daemon, ``fleet status`` and ``fleet down`` all see the same hosts.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from conveyor.exceptions import InvalidInputError

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class HostSpec:
    """One simulated host: an SSH server on ``address:ssh_port`` and the app on ``address:app_port``."""

    name: str
    environment: str  # "replica" | "production" | "soak" (the dev cluster)
    address: str
    ssh_port: int
    app_port: int

    @property
    def health_url(self) -> str:
        return f"http://{self.address}:{self.app_port}/health"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.app_port}/metrics"


@dataclass(frozen=True)
class FleetSpec:
    """The knobs of the local fleet.

    :param replicas: number of replica hosts (``replica-1``..), on ``replica_base`` and up.
    :param production: number of production hosts (``prod-1``..), on ``production_base`` and up.
    :param dev: number of developer (soak) cluster hosts (``dev-1``..), on ``dev_base`` and up; their
        environment is ``soak``: builds run there for a while before they are promoted to production.
    :param ssh_port: the SSH port on every host address.
    :param app_port: the app's HTTP port on every host address.
    :param traffic_rate: requests per second sent to each host (a Poisson stream); 0 turns traffic off.
    :param traffic_timeout: seconds one traffic request may take before it counts as failed.
    :param traffic_to_replicas: send traffic to replica hosts too, not only to production and soak.
    :param python: the interpreter that runs the app on the hosts (and ``python`` in their PATH).
    """

    replicas: int = 2
    production: int = 6
    dev: int = 2
    replica_base: str = "127.0.0.11"
    production_base: str = "127.0.0.21"
    dev_base: str = "127.0.0.31"
    ssh_port: int = 2222
    app_port: int = 8000
    traffic_rate: float = 10.0
    traffic_timeout: float = 2.0
    traffic_to_replicas: bool = True
    username: str = "conveyor"
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        for name in ("replicas", "production", "dev"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 50:
                raise InvalidInputError(f"fleet {name}: expected 0..50 hosts, got {value!r}")
        for name in ("ssh_port", "app_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise InvalidInputError(f"fleet {name}: expected a TCP port, got {value!r}")
        if self.ssh_port == self.app_port:
            raise InvalidInputError("fleet ssh_port and app_port must differ")
        if not 0 <= self.traffic_rate <= 1000:
            raise InvalidInputError(f"fleet traffic_rate: expected 0..1000 requests/s, got {self.traffic_rate!r}")
        if not 0 < self.traffic_timeout <= 60:
            raise InvalidInputError(f"fleet traffic_timeout: expected 0..60 s, got {self.traffic_timeout!r}")
        seen: dict[str, str] = {}
        for h in self.hosts():
            if h.address in seen:
                raise InvalidInputError(
                    f"fleet addresses overlap: {seen[h.address]} and {h.name} are both on {h.address} "
                    f"({self.replicas} replicas from replica_base {self.replica_base}, {self.production} production "
                    f"from production_base {self.production_base}, {self.dev} dev from dev_base {self.dev_base})"
                )
            seen[h.address] = h.name

    def _addresses(self, base: str, count: int, what: str) -> list[str]:
        try:
            first = ipaddress.IPv4Address(base)
        except ValueError:
            raise InvalidInputError(f"fleet {what}: {base!r} is not an IPv4 address") from None
        out = [first + i for i in range(count)]
        if any(a not in LOOPBACK for a in out) or any(int(a) & 0xFF in (0, 255) for a in out):
            raise InvalidInputError(f"fleet {what}: {count} addresses from {base} leave 127.0.0.1-127.255.255.254")
        return [str(a) for a in out]

    def hosts(self) -> list[HostSpec]:
        """Every host: replicas, then production, then the dev (soak) cluster, each in name order."""
        out = []
        groups = (("replica", "replica", "replica_base", self.replicas),
                  ("production", "prod", "production_base", self.production),
                  ("soak", "dev", "dev_base", self.dev))
        for environment, prefix, base_field, count in groups:
            base = getattr(self, base_field)
            for i, address in enumerate(self._addresses(base, count, base_field), start=1):
                out.append(HostSpec(f"{prefix}-{i}", environment, address, self.ssh_port, self.app_port))
        return out

    def summary(self) -> str:
        """The host count of each environment, for people: ``2 replica, 6 production, 2 soak hosts``."""
        counts = (("replica", self.replicas), ("production", self.production), ("soak", self.dev))
        parts = [f"{n} {environment}" for environment, n in counts if n]
        return ", ".join(parts) + " hosts" if parts else "no hosts"

    def host(self, name: str) -> HostSpec:
        for h in self.hosts():
            if h.name == name:
                return h
        raise InvalidInputError(f"no fleet host named {name!r}: hosts are {[h.name for h in self.hosts()]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FleetSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on every address (bound on 0.0.0.0, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
