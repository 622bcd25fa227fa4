"""Releases of the demo shop with its artifacts in S3 and its production hosts found in EC2 by tags,
both on moto's server (one per session), the hosts being the local fleet's.

The service file is the e2e one with two changes: ``artifact_store`` is ``s3://`` through an ``aws``
connection whose ``endpoint_url`` is moto's, and the production inventory is ``aws`` by tags. moto
holds one running instance per production host of the fleet, its private IP the host's loopback
address (moto takes ``PrivateIpAddress`` as given), so Conveyor reaches the fleet's real SSH servers
through what EC2 answers; the hosts are named by instance id. Decoys carry the same service tag but
another environment, or are stopped: a filter that let them in would send a deploy to an address
where no host listens and fail the release.

What is checked is read without Conveyor: the objects in the bucket (boto3), and each host's disk
and ``/health`` (the lab fleet's own status).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
import yaml

from tests.e2e.harness import Decision, HitlResponder, load_dag, put_fleet_on, release_record, ticket_for

pytestmark = [pytest.mark.e2e]

BUCKET = "conveyor-artifacts"
PREFIX = "releases"
TAGS = {"service": "demo_shop", "env": "production"}


class Moto:
    """moto's server on a free port of 127.0.0.1 (S3 and EC2), with boto3 clients and the Airflow connection."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def client(self, service: str):
        import boto3

        return boto3.client(service, region_name="us-east-1", endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def connection(self) -> str:
        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                           "extra": {"region_name": "us-east-1", "endpoint_url": self.endpoint}})

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def moto_aws():
    server = Moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def aws_fleet(release_env, e2e_services, moto_aws):
    """The bucket, one EC2 instance per production host of the fleet (plus decoys), and the demo's
    service file pointing at both. Yields ``{instance id: fleet host name}``."""
    fleet = release_env
    s3, ec2 = moto_aws.client("s3"), moto_aws.client("ec2")
    s3.create_bucket(Bucket=BUCKET)
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(address: str, name: str, tags: dict[str, str]) -> str:
        tag_list = [{"Key": "Name", "Value": name}] + [{"Key": k, "Value": v} for k, v in tags.items()]
        [inst] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, PrivateIpAddress=address,
                                   TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}])["Instances"]
        return inst["InstanceId"]

    production = [h for h in fleet.hosts() if h.environment == "production"]
    instances = {launch(h.address, f"shop {h.name}", TAGS): h.name for h in production}
    launch("127.0.0.98", "shop staging", {**TAGS, "env": "staging"})
    stopped = launch("127.0.0.99", "shop stopped", TAGS)
    ec2.stop_instances(InstanceIds=[stopped])

    ssh_port, app_port = fleet.spec.ssh_port, fleet.spec.app_port
    path = e2e_services / "demo_shop.yaml"
    original = path.read_text()
    spec = yaml.safe_load(original)
    spec["artifact_store"] = {"url": f"s3://{BUCKET}/{PREFIX}", "conn_id": "aws_e2e"}
    spec["environments"]["production"] = {"inventory": {"aws": {
        "aws_conn_id": "aws_e2e", "region": "us-east-1", "tags": TAGS, "address": "private_ip",
        "ssh_port": ssh_port, "health_url": f"http://{{address}}:{app_port}/health",
        "metrics_url": f"http://{{address}}:{app_port}/metrics"}}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_AWS_E2E", moto_aws.connection())
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        try:
            yield instances
        finally:
            path.write_text(original)


def host_truth(fleet) -> dict[str, tuple]:
    """Per production host of the fleet: (``current`` on its disk, the version /health serves, the app's pid)."""
    return {row["name"]: (row["version"], (row["health"] or {}).get("version"), row["app_pid"])
            for row in fleet.status() if row["environment"] == "production"}


def stored(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")["Body"].read()


def test_release_builds_to_s3_and_deploys_to_ec2_hosts_in_waves(aws_fleet, release_env, moto_aws):
    fleet, s3 = release_env, moto_aws.client("s3")
    put_fleet_on("v1.0.0")  # through the same inventory and store: v1.0.0 is built into S3 too
    result = run_release_with({"git_ref": "v1.1.0"})

    assert result["state"] == "success", result["states"]
    assert {n: (disk, served) for n, (disk, served, _) in host_truth(fleet).items()} == {
        n: ("v1.1.0", "v1.1.0") for n in aws_fleet.values()}

    # The artifact is in the bucket; what the build recorded is what S3 holds.
    release = release_record(result["run_id"])
    build = next(s for s in release["stages"] if s["stage"] == "build")["detail"]
    key = "demo_shop/v1.1.0/demo_shop-v1.1.0.tar.gz"
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/demo_shop/v1.1.0/")["Contents"]}
    assert listed == {f"{PREFIX}/{key}", f"{PREFIX}/{key}.sha256", f"{PREFIX}/demo_shop/v1.1.0/manifest.json"}
    sha = hashlib.sha256(stored(s3, key)).hexdigest()
    assert build["sha256"] == sha and build["key"] == key and BUCKET in build["url"] and build["url"].startswith("s3")
    assert json.loads(stored(s3, "demo_shop/v1.1.0/manifest.json"))["sha256"] == sha
    # Each host verified the checksum it was given before unpacking, and keeps it with the release.
    for name in aws_fleet.values():
        marker = fleet.host_home(name) / "app" / "releases" / "v1.1.0" / ".conveyor-sha256"
        assert marker.read_text().strip() == sha, name

    # The ledger names the hosts by instance id: exactly the tagged, running instances, in waves.
    prod_rows = {h["host"]: h for h in release["hosts"] if h["environment"] == "production"}
    assert sorted(prod_rows) == sorted(aws_fleet)
    assert {(h["from_version"], h["to_version"], h["status"]) for h in prod_rows.values()} == {
        ("v1.0.0", "v1.1.0", "deployed")}
    waves: dict[str, int] = {}
    for h in prod_rows.values():
        waves[h["wave"]] = waves.get(h["wave"], 0) + 1
    assert [waves[w] for w in sorted(waves)] == [1, 1, 1, 3]
    assert release["status"] == "success" and ticket_for(result["run_id"]) is None


def test_tampered_artifact_in_s3_is_refused_before_any_production_host_changes(aws_fleet, release_env, moto_aws):
    """The object is replaced while the release waits for its sign-off (after the build recorded its
    checksum and the replica ran it): the first production wave refuses it, no production host changes."""
    fleet, s3 = release_env, moto_aws.client("s3")
    put_fleet_on("v1.0.0")
    before = host_truth(fleet)
    key = f"{PREFIX}/demo_shop/v1.1.0/demo_shop-v1.1.0.tar.gz"

    def tamper() -> None:
        # A valid artifact, the wrong one: unchecked, it would unpack and go live as "v1.1.0".
        s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET,
                                                            "Key": f"{PREFIX}/demo_shop/v1.0.0/demo_shop-v1.0.0.tar.gz"})

    result = run_release_with({"git_ref": "v1.1.0"}, at_signoff=tamper)

    assert result["tampered"], "the release never reached its sign-off"
    assert result["state"] == "failed"
    failed = sorted(t for t, s in result["states"].items() if s == "failed" and t != "fail_run")
    assert failed == ["wave_1.deploy"], result["states"]
    assert host_truth(fleet) == before  # same version on disk and served, same app process: untouched
    release = release_record(result["run_id"])
    assert [h for h in release["hosts"] if h["environment"] == "production"] == []
    deploy = next(s for s in release["stages"] if s["stage"] == "wave_1.deploy")
    assert "is corrupted: sha256" in deploy["error"] and "does not match the recorded" in deploy["error"]
    ticket = ticket_for(result["run_id"])
    assert ticket["failed_stage"] == "wave_1.deploy" and "corrupted" in ticket["error"]
    assert ticket["hosts_touched"] == []


def run_release_with(conf: dict, at_signoff=None) -> dict:
    """One release run to its end with ``dag.test()``; qa1 and qa2 approve, but only after
    ``at_signoff()`` ran (once the run is parked on its first Required Action)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    dag = load_dag()
    approvals = [Decision("qa1", "Approve"), Decision("qa2", "Approve")]
    responder = HitlResponder(dag.dag_id, [] if at_signoff else approvals)
    tampered = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with create_session() as session:
                parked = session.scalars(select(TI.id).where(
                    TI.dag_id == dag.dag_id, TI.state == TaskInstanceState.AWAITING_INPUT)).first()
            if parked is not None:
                at_signoff()
                tampered.set()
                responder.decisions.extend(approvals)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True) if at_signoff else None
    responder.start()
    if watcher:
        watcher.start()
    try:
        dr = dag.test(run_conf=conf)
    finally:
        stop.set()
        responder.stop()
        responder.join(timeout=5)
        if watcher:
            watcher.join(timeout=5)
    with create_session() as session:
        tis = session.scalars(select(TI).where(TI.dag_id == dag.dag_id, TI.run_id == dr.run_id)).all()
        states = {ti.task_id: getattr(ti.state, "value", ti.state) for ti in tis}
    return {"state": dr.state, "run_id": dr.run_id, "states": states, "tampered": tampered.is_set()}
