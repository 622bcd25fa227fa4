"""Which hosts make up an environment: the local fleet, a static list, or EC2 instances found by tags.

Resolved at run time (never at parse time) into :class:`~conveyor.hosts.Host` records, which are
plain data and travel between tasks through XCom as dicts.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import InvalidInputError
from conveyor.hosts import MAX_LABEL, Host
from conveyor.paths import fleet_dir
from conveyor.validation import url_host

if TYPE_CHECKING:
    from conveyor.config import AwsInventory, ServiceConfig

DEFAULT_APP_PORT = 8000
log = logging.getLogger(__name__)


def _local_inventory() -> dict[str, Any]:
    path = fleet_dir() / "inventory.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(
            f"the local fleet is not running ({path} is missing): start it with `make run` or `conveyor fleet up`"
        ) from None


def _fill(host: dict[str, Any], environment: str) -> Host:
    address = url_host(host["address"])  # an IPv6 address goes in brackets
    defaults = {
        "health_url": f"http://{address}:{DEFAULT_APP_PORT}/health",
        "metrics_url": f"http://{address}:{DEFAULT_APP_PORT}/metrics",
    }
    fields = {**defaults, **{k: v for k, v in host.items() if v is not None}, "environment": environment}
    return Host.from_dict(fields).validated()


def _aws_hosts(spec: AwsInventory, environment: str) -> list[Host]:
    from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

    hook = EC2Hook(aws_conn_id=spec.aws_conn_id, region_name=spec.region, api_type="client_type")
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(spec.tags.items())]
    filters.append({"Name": "instance-state-name", "Values": ["running"]})
    hosts = []
    paginator = hook.conn.get_paginator("describe_instances")
    for page in paginator.paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                attr = {"private_ip": "PrivateIpAddress", "public_ip": "PublicIpAddress",
                        "private_dns": "PrivateDnsName", "public_dns": "PublicDnsName"}[spec.address]
                address = inst.get(attr)
                if not address:
                    continue
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                # The instance id is the host's identity: Name tags repeat (every instance of an
                # auto-scaling group has the same one) and may contain spaces; they are only a label.
                label = "".join(c if c.isprintable() else "?" for c in tags.get("Name", ""))[:MAX_LABEL]
                host: dict[str, Any] = {"name": inst["InstanceId"], "address": address, "label": label}
                for key in ("ssh_port", "app_root", "restart", "health_url", "metrics_url"):
                    value = getattr(spec, key)
                    if value is not None:
                        host[key] = value.format(address=url_host(address)) if key.endswith("_url") else (
                            value.format(address=address) if isinstance(value, str) else value)
                hosts.append(_fill(host, environment))
    return sorted(hosts, key=lambda h: h.name)


def resolve_hosts(service: ServiceConfig, environment: str) -> list[Host]:
    """The hosts of ``environment`` (``replica`` or ``production``) for ``service``, sorted by name."""
    spec = service.environment(environment).inventory
    if spec.local:
        inventory = _local_inventory()
        hosts = [_fill(h, environment) for h in inventory["hosts"] if h.get("environment") == environment]
    elif spec.hosts is not None:
        hosts = [_fill(h.model_dump(exclude_none=True), environment) for h in spec.hosts]
    else:
        hosts = _aws_hosts(spec.aws, environment)
    if not hosts:
        raise InvalidInputError(f"no {environment} hosts found for {service.id}")
    names = [h.name for h in hosts]
    if len(names) != len(set(names)):
        raise InvalidInputError(f"duplicate host names in the {environment} inventory: {names}")
    hosts = sorted(hosts, key=lambda h: h.name)
    log.info("%s %s hosts: %s", service.id, environment, ", ".join(h.display for h in hosts))
    return hosts
