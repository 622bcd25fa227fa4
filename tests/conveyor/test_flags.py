"""The flag store's pure parts: names, shares, the flags file, the local backend's rules, the service file."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conveyor.config import parse_service
from conveyor.exceptions import ServiceConfigError
from conveyor.flags import (
    FlagState,
    FlagStoreError,
    InvalidFlagError,
    LocalFlagStore,
    flag_name,
    parse_flags_file,
    render_flags_file,
    rollout_share,
)
from conveyor.hosts import Host

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["new_checkout", "a", "f2"])
def test_flag_names_accepted(name):
    assert flag_name(name) == name


@pytest.mark.parametrize("name", ["", "New", "1flag", "a-b", "a;rm -rf", "a b", "a\n", "x" * 64, None, 3])
def test_flag_names_refused(name):
    with pytest.raises(InvalidFlagError, match="flag name"):
        flag_name(name)


@pytest.mark.parametrize("value", [-1, 101, 50.0, "50", True, None])
def test_rollout_outside_0_100_refused(value):
    with pytest.raises(InvalidFlagError, match="0 to 100"):
        rollout_share(value)


def test_state_share_is_zero_while_off_and_keeps_the_rollout():
    assert FlagState("a", False, 40).share == 0
    assert FlagState("a", True, 40).share == 40
    with pytest.raises(InvalidFlagError, match="enabled"):
        FlagState("a", "yes", 40)  # type: ignore[arg-type]


def test_flags_file_round_trip_is_sorted_and_stable():
    states = {"b": FlagState("b", True, 5), "a": FlagState("a", False, 100)}
    data = render_flags_file(states)
    assert list(json.loads(data)) == ["a", "b"]
    assert parse_flags_file(data.decode()) == states
    assert render_flags_file(dict(reversed(states.items()))) == data
    assert parse_flags_file("") == {}


@pytest.mark.parametrize(("text", "message"), [
    ("[1]", "expected an object"),
    ("{", "not JSON"),
    ('{"a": {"enabled": true, "rollout": 150}}', "0 to 100"),
    ('{"a": {"enabled": true, "extra": 1}}', "expected"),
    ('{"Bad": {"enabled": true}}', "flag name"),
])
def test_bad_flags_file_named_in_the_error(text, message):
    with pytest.raises(FlagStoreError, match=message) as caught:
        parse_flags_file(text, where="prod-1:flags.json")
    assert "prod-1:flags.json" in str(caught.value)


# ------------------------------------------------------------------------- local backend rules
class MemoryHost:
    """A host's files in memory, as LocalFlagStore sees them through a session."""

    def __init__(self, fail: bool = False):
        self.files: dict[str, bytes] = {}
        self.fail = fail
        self.writes = 0

    def read_bytes(self, remote: str) -> bytes | None:
        return self.files.get(remote)

    def write_atomic(self, remote: str, data: bytes) -> None:
        if self.fail:
            raise OSError("disk full")
        self.writes += 1
        self.files[remote] = data


def memory_store(**disks: MemoryHost) -> LocalFlagStore:
    hosts = [Host(name=name, environment="production", address="127.0.0.1") for name in disks]

    @contextmanager
    def session(host):
        yield disks[host.name]

    return LocalFlagStore(lambda environment: hosts if environment == "production" else [], session)


def test_local_set_writes_every_host_keeps_other_flags_and_reads_back():
    one, two = MemoryHost(), MemoryHost()
    one.files["flags.json"] = render_flags_file({"other": FlagState("other", True, 100)})
    store = memory_store(one=one, two=two)
    assert store.get("new_checkout", environment="production") == FlagState("new_checkout")
    assert store.set("new_checkout", True, 25, environment="production") == FlagState("new_checkout", True, 25)
    assert json.loads(one.files["flags.json"]) == {"new_checkout": {"enabled": True, "rollout": 25},
                                                   "other": {"enabled": True, "rollout": 100}}
    assert json.loads(two.files["flags.json"]) == {"new_checkout": {"enabled": True, "rollout": 25}}
    assert store.get("new_checkout", environment="production") == FlagState("new_checkout", True, 25)
    store.set("new_checkout", True, 25, environment="production")  # already so: nothing written again
    assert (one.writes, two.writes) == (1, 1)


def test_local_set_tries_every_host_and_names_the_failed_ones_then_get_refuses_to_guess():
    good, bad = MemoryHost(), MemoryHost(fail=True)
    store = memory_store(good=good, bad=bad)
    with pytest.raises(FlagStoreError, match=r"not set on every host of production: bad: disk full"):
        store.set("fast_recommendations", True, 100, environment="production")
    assert json.loads(good.files["flags.json"])["fast_recommendations"] == {"enabled": True, "rollout": 100}
    with pytest.raises(FlagStoreError, match="differs between the hosts"):
        store.get("fast_recommendations", environment="production")


def test_local_store_validates_before_touching_hosts_and_needs_hosts():
    host = MemoryHost()
    store = memory_store(h=host)
    with pytest.raises(InvalidFlagError):
        store.set("x; reboot", True, 10, environment="production")
    with pytest.raises(InvalidFlagError):
        store.set("x", True, 101, environment="production")
    assert host.files == {}
    with pytest.raises(FlagStoreError, match="no hosts in environment 'replica'"):
        store.get("x", environment="replica")


# ------------------------------------------------------------------------- the service file
def demo(**changes):
    document = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    document.update(changes)
    return document


def test_demo_service_declares_its_flags_on_the_local_store():
    service = parse_service(demo(), Path("demo_shop.yaml"))
    assert [f.name for f in service.flags] == ["new_checkout", "fast_recommendations"]
    assert service.flag_store.backend == "local"


def test_unleash_store_with_defaults():
    service = parse_service(demo(flag_store={"backend": "unleash", "unleash": {"project": "shop"}}),
                            Path("demo_shop.yaml"))
    assert service.flag_store.unleash.conn_id == "unleash_default"
    assert service.flag_store.unleash.environments == {"replica": "development", "production": "production"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"flag_store": {"backend": "launchdarkly"}}, "flag_store.backend: Input should be 'local' or 'unleash'"),
    ({"flag_store": {"backend": "unleash"}}, "flag_store.unleash: required when backend is 'unleash'"),
    ({"flag_store": {"backend": "local", "unleash": {}}}, "flag_store.unleash: given but backend is 'local'"),
    ({"flag_store": {"backend": "unleash", "unleash": {"token": "x"}}}, "flag_store.unleash: unknown field 'token'"),
    ({"flag_store": {"backend": "unleash", "unleash": {"environments": {"staging": "dev"}}}},
     "flag_store.unleash.environments.staging"),
    ({"flags": [{"name": "Bad-Name", "description": "x"}]}, "flags[0].name"),
    ({"flags": [{"name": "a"}]}, "flags[0].description: Field required"),
    ({"flags": [{"name": "a", "description": "x"}, {"name": "a", "description": "y"}]}, "flag names must be unique"),
])
def test_bad_flag_settings_refused_naming_file_and_field(changes, message):
    with pytest.raises(ServiceConfigError) as caught:
        parse_service(demo(**changes), Path("include/services/demo_shop.yaml"))
    assert str(caught.value).startswith("include/services/demo_shop.yaml: ")
    assert message in str(caught.value)


def test_a_service_on_unleash_gets_the_unleash_store():
    from conveyor.hooks.flags import UnleashFlagStore, flag_store

    document = demo(flag_store={"backend": "unleash", "unleash": {"conn_id": "flags", "project": "shop",
                                                                  "environments": {"production": "prod"}}})
    store = flag_store(parse_service(document, Path("demo_shop.yaml")))
    assert isinstance(store, UnleashFlagStore)
    assert (store.hook.unleash_conn_id, store.project, store.environments) == ("flags", "shop", {"production": "prod"})


# ------------------------------------------------------------------------------ rollout steps, judge input


@pytest.mark.parametrize(("value", "message"), [
    ([], "must be a list of percentages"), ("10,100", "must be a list of percentages"),
    ([10, 5], "must increase"), ([0, 100], "must increase, from 1 to 100"), ([10, 101], "from 0 to 100"),
    ([1, 2, 3, 4, 5], "at most 4 steps"), ([True, 100], "whole percentage"),
])
def test_rollout_steps_refused_before_anything_changes(value, message):
    from conveyor.flags import rollout_steps

    with pytest.raises(InvalidFlagError, match=message):
        rollout_steps(value, at_most=4)


def test_rollout_steps_accepted():
    from conveyor.flags import rollout_steps

    assert rollout_steps([1, 10, 50, 100], at_most=4) == (1, 10, 50, 100)
    assert rollout_steps([100], at_most=4) == (100,)


def test_flag_rollout_settings_default_to_the_demo_families_and_refuse_steps_that_do_not_increase(tmp_path):
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "include/services/demo_shop.yaml").read_text())
    service = parse_service(doc, tmp_path / "demo_shop.yaml")
    assert service.flag_rollout.steps == (1, 10, 50, 100)
    assert (service.flag_rollout.requests_metric, service.flag_rollout.variant_label) == (
        "shop_flag_requests_total", "variant")
    with pytest.raises(ServiceConfigError, match=r"flag_rollout.steps: .*steps must increase, got \[10, 10\]"):
        parse_service({**doc, "flag_rollout": {"steps": [10, 10]}}, tmp_path / "demo_shop.yaml")
    with pytest.raises(ServiceConfigError, match=r"flag_rollout.steps\[0\]: Input should be greater than or equal to 1"):
        parse_service({**doc, "flag_rollout": {"steps": [0, 100]}}, tmp_path / "demo_shop.yaml")


def test_a_flag_variant_is_read_alone_from_a_hosts_page():
    """The judge's view of one variant: only the samples labelled with it count (the totals stay whole)."""
    from conveyor.analysis import parse_prometheus
    from conveyor.hooks.metrics import flag_target

    page = "\n".join([
        'shop_flag_requests_total{flag="f",variant="on",method="GET",route="/r",status="200"} 90',
        'shop_flag_requests_total{flag="f",variant="on",method="GET",route="/r",status="500"} 10',
        'shop_flag_requests_total{flag="f",variant="off",method="GET",route="/r",status="200"} 900',
        'shop_flag_requests_total{flag="g",variant="on",method="GET",route="/r",status="500"} 99',
        'shop_flag_request_duration_seconds_bucket{flag="f",variant="on",le="0.1"} 80',
        'shop_flag_request_duration_seconds_bucket{flag="f",variant="on",le="+Inf"} 100',
        'shop_flag_request_duration_seconds_bucket{flag="f",variant="off",le="+Inf"} 900',
        'shop_flag_request_duration_seconds_count{flag="f",variant="on"} 100',
    ])
    on = parse_prometheus(page, 1.0, requests_metric="shop_flag_requests_total",
                          latency_metric="shop_flag_request_duration_seconds", match={"flag": "f", "variant": "on"})
    assert on.requests == {"200": 90.0, "500": 10.0} and on.latency_count == 100.0
    assert on.latency_buckets == {0.1: 80.0, float("inf"): 100.0}
    every = parse_prometheus(page, 1.0, requests_metric="shop_flag_requests_total")
    assert every.requests == {"200": 990.0, "500": 109.0}
    assert flag_target("http://h:8000/metrics", {"variant": "on", "flag": "f"}) == \
        "http://h:8000/metrics#flag=f&variant=on"
