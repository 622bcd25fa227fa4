"""Inventories: the local fleet's file, a static list, and EC2 instances found by tags (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.config import parse_service
from conveyor.exceptions import InvalidInputError
from conveyor.hosts import Host
from conveyor.inventory import resolve_hosts


def _service(production, replica="local"):
    doc = {"id": "toy", "repo": {"url": "/nowhere"}, "build": {"command": "true"},
           "environments": {"replica": {"inventory": replica}, "production": {"inventory": production}}}
    return parse_service(doc, Path("toy.yaml"))


def test_local_inventory_from_the_fleet_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    (tmp_path / "fleet").mkdir()
    hosts = [{"name": n, "environment": env, "address": a, "ssh_port": 2222, "app_root": "app",
              "restart": "bin/restart", "health_url": f"http://{a}:8000/health",
              "metrics_url": f"http://{a}:8000/metrics"}
             for n, env, a in [("prod-2", "production", "127.0.0.22"), ("prod-1", "production", "127.0.0.21"),
                               ("replica-1", "replica", "127.0.0.11")]]
    (tmp_path / "fleet" / "inventory.json").write_text(json.dumps({"hosts": hosts}))
    prod = resolve_hosts(_service("local"), "production")
    assert [h.name for h in prod] == ["prod-1", "prod-2"]
    assert prod[0].ssh_port == 2222 and prod[0].environment == "production"
    assert [h.name for h in resolve_hosts(_service("local"), "replica")] == ["replica-1"]


def test_local_inventory_without_a_fleet_says_how_to_start_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    with pytest.raises(InvalidInputError, match="make run"):
        resolve_hosts(_service("local"), "production")


def test_static_inventory_fills_defaults():
    service = _service({"hosts": [{"name": "web-1", "address": "10.0.0.5"}]})
    [host] = resolve_hosts(service, "production")
    assert host.health_url == "http://10.0.0.5:8000/health"
    assert host.ssh_port == 22 and host.app_root == "app"


@pytest.fixture(scope="module")
def moto_ec2():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def ec2(moto_ec2, monkeypatch):
    """A boto3 EC2 client on moto's server (a fresh region per test), and the Airflow connection to it."""
    import uuid

    import boto3

    region = "eu-west-1"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_TEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"region_name": region, "endpoint_url": moto_ec2}}))
    client = boto3.client("ec2", region_name=region, endpoint_url=moto_ec2,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    image = client.describe_images()["Images"][0]["ImageId"]
    run_tag = {"Key": "test_run", "Value": uuid.uuid4().hex}  # tests share the server: select our own

    def launch(name, tags):
        named = [{"Key": "Name", "Value": name}] if name is not None else []
        [inst] = client.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [*named, *tags, run_tag]}])["Instances"]
        return inst["InstanceId"]

    launch.tags = {run_tag["Key"]: run_tag["Value"]}
    return launch


def test_ec2_inventory_by_tags(ec2):
    prod = [{"Key": "service", "Value": "shop"}, {"Key": "env", "Value": "prod"}]
    b = ec2("shop-b", prod)
    a = ec2("shop-a", prod)
    ec2("shop-staging", [{"Key": "service", "Value": "shop"}, {"Key": "env", "Value": "staging"}])
    ec2("other", [{"Key": "service", "Value": "other"}, {"Key": "env", "Value": "prod"}])
    service = _service({"aws": {"aws_conn_id": "aws_test", "region": "eu-west-1",
                                "tags": {"service": "shop", "env": "prod", **ec2.tags}, "ssh_port": 2200,
                                "health_url": "http://{address}:9000/healthz"}})
    hosts = resolve_hosts(service, "production")
    assert {h.name: h.label for h in hosts} == {a: "shop-a", b: "shop-b"}  # the instance id is the identity
    assert [h.name for h in hosts] == sorted([a, b])
    assert all(h.ssh_port == 2200 for h in hosts)
    assert hosts[0].health_url == f"http://{hosts[0].address}:9000/healthz"
    assert hosts[0].address.count(".") == 3


def test_ec2_instances_sharing_a_name_with_spaces_are_distinct_hosts(ec2):
    """An auto-scaling group: every instance is called "web server"; the ids tell them apart."""
    tags = [{"Key": "service", "Value": "web"}]
    ids = sorted([ec2("web server", tags), ec2("web server", tags), ec2(None, tags)])
    service = _service({"aws": {"aws_conn_id": "aws_test", "region": "eu-west-1",
                                "tags": {"service": "web", **ec2.tags}}})
    hosts = resolve_hosts(service, "production")
    assert [h.name for h in hosts] == ids
    assert sorted(h.label for h in hosts) == ["", "web server", "web server"]
    assert len({h.address for h in hosts}) == 3
    labelled = next(h for h in hosts if h.label)
    assert labelled.display == f"{labelled.name} (web server)"
    assert Host.from_dict(labelled.to_dict()) == labelled  # travels through XCom unchanged


def test_a_host_without_a_label_still_loads_from_an_old_dict():
    old = {"name": "prod-1", "environment": "production", "address": "127.0.0.21", "ssh_port": 2222,
           "app_root": "app", "restart": "bin/restart", "health_url": "http://127.0.0.21:8000/health",
           "metrics_url": "http://127.0.0.21:8000/metrics"}
    host = Host.from_dict(old).validated()
    assert host.label == "" and host.display == "prod-1"


@pytest.mark.parametrize(("field", "value"), [("label", "web\x1b[31m"), ("label", "x" * 300),
                                              ("address", "10.0.0.5:22"), ("app_root", "/etc"),
                                              ("name", "web server")])
def test_a_host_record_is_validated(field, value):
    fields = {"name": "web-1", "environment": "production", "address": "10.0.0.5", field: value}
    with pytest.raises(InvalidInputError):
        Host.from_dict(fields).validated()


def test_an_ipv6_host_gets_bracketed_default_urls():
    [host] = resolve_hosts(_service({"hosts": [{"name": "web-6", "address": "2001:db8::5"}]}), "production")
    assert host.health_url == "http://[2001:db8::5]:8000/health"
    assert host.metrics_url == "http://[2001:db8::5]:8000/metrics"
