"""Steady synthetic traffic to the fleet's apps: one Poisson stream of requests per host.

Runs inside the fleet daemon's event loop as a bare asyncio protocol (one short HTTP/1.1 exchange
per connection), with a bounded number of requests in flight: the machine is shared with Airflow,
so the generator must stay light. The requests are the demo's mix (:func:`conveyor_lab.demo.traffic_request`).
Outcomes are not recorded here: the app's own ``/metrics`` counts requests, errors and latency, which
is what canary analysis reads. Each request comes from one of ``USERS`` simulated users (the
``X-Shop-User`` header), which is what the demo's feature flags are sticky by.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from conveyor_lab.demo import traffic_request
from conveyor_lab.fleet.spec import FleetSpec, HostSpec

log = logging.getLogger(__name__)

RequestPicker = Callable[[random.Random], tuple[str, str, "bytes | None"]]
#: Environments that always get traffic: production, and the dev cluster's soak hosts, which the canary
#: judge watches while a build soaks there. Replicas get it only with ``FleetSpec.traffic_to_replicas``.
ALWAYS_SERVED = ("production", "soak")
USERS = 1000  # distinct user ids: enough that a 5% rollout holds about 50 of them
MAX_IN_FLIGHT = 200  # across all hosts; beyond it new arrivals are dropped (apps stuck until the timeout)


class _Exchange(asyncio.Protocol):
    """One request on one connection: send it, keep the status line, wait for the server to close."""

    def __init__(self, request: bytes, done: asyncio.Future):
        self.request = request
        self.done = done
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if len(self.head) < 64:
            self.head += data[:64]

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            parts = self.head.split(b"\r\n", 1)[0].split()
            self.done.set_result(int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None)


async def send_request(address: str, port: int, method: str, path: str, body: bytes | None,
                       timeout: float, *, user: str | None = None) -> int | None:
    """One HTTP request; returns the status code, or None on error or timeout.

    A bare protocol rather than streams or an HTTP client: this runs ~100 times a second next to
    Airflow, and the demo app closes every connection after one response anyway (HTTP/1.0).
    """
    loop = asyncio.get_running_loop()
    head = [f"{method} {path} HTTP/1.1", f"Host: {address}:{port}", "User-Agent: conveyor-traffic",
            "Connection: close"]
    if user is not None:
        head.append(f"X-Shop-User: {user}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    done: asyncio.Future = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: _Exchange(request, done), address, port)
            return await done
    except (OSError, TimeoutError):
        return None
    finally:
        if transport is not None and not done.done():
            transport.abort()  # timed out: drop the connection without waiting for the server


class TrafficGenerator:
    """Poisson arrivals at ``spec.traffic_rate`` requests/s to each production and soak host (and replicas)."""

    def __init__(self, spec: FleetSpec, picker: RequestPicker | None = None, seed: int | None = None):
        self.spec = spec
        self.picker = picker or traffic_request
        self.rng = random.Random(seed)
        self.targets: list[HostSpec] = [
            h for h in spec.hosts()
            if h.environment in ALWAYS_SERVED or (h.environment == "replica" and spec.traffic_to_replicas)
        ]
        self.sent = 0
        self.dropped = 0
        self._in_flight: set[asyncio.Task] = set()
        self._streams: list[asyncio.Task] = []

    def start(self) -> None:
        if self.spec.traffic_rate <= 0 or not self.targets:
            log.info("traffic generator off")
            return
        for host in self.targets:
            self._streams.append(asyncio.create_task(self._stream(host), name=f"traffic-{host.name}"))
        log.info("traffic: %.1f req/s to each of %s", self.spec.traffic_rate, ", ".join(h.name for h in self.targets))

    async def _stream(self, host: HostSpec) -> None:
        loop = asyncio.get_running_loop()
        rate = self.spec.traffic_rate
        due = loop.time() + self.rng.uniform(0, 1 / rate)  # spread the streams' first arrivals
        while True:
            # Arrival times on an absolute clock, so the rate holds however long each step takes;
            # after a stall (a suspended laptop) start afresh instead of sending a burst.
            due = max(due + self.rng.expovariate(rate), loop.time() - 1.0)
            await asyncio.sleep(max(0.0, due - loop.time()))
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                self.dropped += 1
                continue
            method, path, body = self.picker(self.rng)
            user = f"u{self.rng.randrange(USERS)}"
            task = asyncio.create_task(
                send_request(host.address, host.app_port, method, path, body, self.spec.traffic_timeout, user=user)
            )
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            self.sent += 1

    async def stop(self) -> None:
        tasks = [*self._streams, *self._in_flight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()
