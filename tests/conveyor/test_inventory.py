"""Inventories: the local fleet's file, a static list, and EC2 instances found by tags (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.config import parse_service
from conveyor.exceptions import InvalidInputError
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


def test_ec2_inventory_by_tags(moto_ec2, monkeypatch):
    import boto3

    monkeypatch.setenv("AIRFLOW_CONN_AWS_TEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"region_name": "eu-west-1", "endpoint_url": moto_ec2}}))
    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=moto_ec2,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(name, tags):
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}, *tags]}])

    launch("shop-b", [{"Key": "service", "Value": "shop"}, {"Key": "env", "Value": "prod"}])
    launch("shop-a", [{"Key": "service", "Value": "shop"}, {"Key": "env", "Value": "prod"}])
    launch("shop-staging", [{"Key": "service", "Value": "shop"}, {"Key": "env", "Value": "staging"}])
    launch("other", [{"Key": "service", "Value": "other"}, {"Key": "env", "Value": "prod"}])
    service = _service({"aws": {"aws_conn_id": "aws_test", "region": "eu-west-1",
                                "tags": {"service": "shop", "env": "prod"}, "ssh_port": 2200,
                                "health_url": "http://{address}:9000/healthz"}})
    hosts = resolve_hosts(service, "production")
    assert [h.name for h in hosts] == ["shop-a", "shop-b"]
    assert all(h.ssh_port == 2200 for h in hosts)
    assert hosts[0].health_url == f"http://{hosts[0].address}:9000/healthz"
    assert hosts[0].address.count(".") == 3
