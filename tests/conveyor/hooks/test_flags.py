"""The local flag store on the session fleet: a flag pushed over SSH to one production host changes what
that host's shop answers, and its metrics say which requests had the flag on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from conveyor.flags import FlagState, LocalFlagStore
from conveyor.hooks.flags import flag_store
from conveyor.hooks.fleet import FleetHook
from tests.conveyor.hooks.fleet_support import fleet_env, host_home, hosts, local_fleet, service  # noqa: F401

ATTEMPTS = 400  # requests before giving up on a 500 that comes 1 time in 4 (P(none) ~ 1e-50)


def status_of(url: str, user: str) -> int:
    request = urllib.request.Request(url, headers={"X-Shop-User": user})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def metrics(host) -> str:
    with urllib.request.urlopen(host.metrics_url, timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture
def one_host(fleet_env):  # noqa: F811
    """A flag store over the first production host only; its flags file is removed afterwards."""
    host = next(iter(hosts("production").values()))
    store = LocalFlagStore(lambda environment: [host] if environment == "production" else [], FleetHook().session)
    try:
        yield host, store
    finally:
        (host_home(fleet_env, host.name) / "flags.json").unlink(missing_ok=True)


def test_fast_recommendations_on_one_host_fails_requests_then_off_again(one_host, fleet_env):  # noqa: F811
    host, store = one_host
    base = host.health_url.rsplit("/health", 1)[0]
    users = [f"flagtest-{uuid.uuid4().hex[:8]}-{i}" for i in range(20)]

    assert store.set("fast_recommendations", True, 100, environment="production") == \
        FlagState("fast_recommendations", True, 100)
    on_disk = json.loads((host_home(fleet_env, host.name) / "flags.json").read_text())
    assert on_disk == {"fast_recommendations": {"enabled": True, "rollout": 100}}
    assert store.get("fast_recommendations", environment="production").share == 100
    assert not [p.name for p in host_home(fleet_env, host.name).glob("flags.json.*")]  # no temporary left

    statuses = []
    for i in range(ATTEMPTS):
        statuses.append(status_of(f"{base}/recommendations/{i % 50 + 1}", users[i % len(users)]))
        if 500 in statuses:
            break
    assert 500 in statuses, f"no HTTP 500 in {len(statuses)} flag-on requests"
    assert 'shop_flag_requests_total{flag="fast_recommendations",variant="on"' in metrics(host)

    assert store.set("fast_recommendations", False, 100, environment="production").share == 0
    assert store.get("fast_recommendations", environment="production") == \
        FlagState("fast_recommendations", False, 100)
    after = [status_of(f"{base}/recommendations/{i % 50 + 1}", users[i % len(users)]) for i in range(40)]
    assert set(after) == {200}
    assert 'shop_flag_requests_total{flag="fast_recommendations",variant="off"' in metrics(host)


def test_the_demo_service_gets_the_local_store_over_its_fleet(fleet_env):  # noqa: F811
    store = flag_store(service())
    assert isinstance(store, LocalFlagStore)
    assert store.get("new_checkout", environment="replica") == FlagState("new_checkout")  # no file: off
