"""``DependencyAuditOperator`` on the demo's real artifacts (built from the demo repository), with real
pip-audit against the lab's OSV server serving the demo's advisories, and a real SQLite ledger: v1.7.0's
lock file pins jinja2 3.1.4 (a high lab advisory) and is stopped; v1.1.0 passes; an audit that cannot be
done fails. The failed stage's error is what the root-cause ticket shows. And where the stage sits in
the release DAG."""

from __future__ import annotations

import shutil
import socket
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from conveyor.audit import CouldNotAudit, VulnerableDependencies
from conveyor.exceptions import ArtifactError
from conveyor.operators.audit import DependencyAuditOperator
from conveyor_lab.osv import DEMO_ADVISORIES, OsvServer
from tests.conveyor.operators.operator_support import operator_kwargs, stage_row

ROOT = Path(__file__).resolve().parents[3]
BLOCKED_LINE = "- jinja2 3.1.4: DEMO-2026-0001, severity high, fixed in 3.1.5"


@pytest.fixture
def osv(tmp_path):
    path = tmp_path / "advisories.json"
    shutil.copy(DEMO_ADVISORIES, path)
    with OsvServer(path) as server:
        yield server


@pytest.fixture
def audit_settings(tmp_path, monkeypatch, osv):
    """``audit_settings(**values)``: the demo service file with its audit section pointed at the test's OSV
    server (and ``values`` on top), as the service file the operator reads."""
    services = tmp_path / "services"
    services.mkdir()
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(services))

    def write(**values):
        spec = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
        if values.pop("audit", True) is None:
            spec.pop("audit")
        else:
            spec["audit"] = {**spec["audit"], "osv_url": osv.query_url, **values}
        (services / "demo_shop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    write()
    return write


def demo_artifact(version: str) -> dict:
    """The demo's artifact of ``version`` as ``build`` returns it (the demo repository made first)."""
    from conveyor.artifacts import build_artifact
    from conveyor.config import load_service
    from conveyor_lab.demo import create_demo_repo

    create_demo_repo()
    info = build_artifact(load_service("demo_shop"), version, log_fn=lambda *a: None).to_dict()
    info.pop("tarball")
    return info


def audit(version: str) -> DependencyAuditOperator:
    return DependencyAuditOperator(artifact=demo_artifact(version), **operator_kwargs("audit"))


def fail_as_airflow_would(op, context, error) -> None:
    """The DAG's failure callback, as Airflow calls it when the task raised ``error``."""
    from conveyor.operators.base import record_failure

    record_failure({**context, "task": op, "exception": error})


def test_a_lock_file_pinning_a_vulnerable_package_stops_the_release_and_the_ticket_lists_it(
        audit_settings, make_context, ledger, release_id):
    from conveyor.evidence import gather_evidence
    from conveyor.tickets import render_ticket

    op, context = audit("v1.7.0"), make_context()
    with pytest.raises(VulnerableDependencies) as blocked:
        op.execute(context)

    assert str(blocked.value).splitlines() == [
        "1 known vulnerability at or above high (or of unknown severity) in requirements.txt blocks the release:",
        BLOCKED_LINE]
    row = stage_row(ledger.get_release(release_id), "audit")
    assert row["status"] == "running"  # the failure callback marks it failed; the evidence is already kept
    assert [(a["package"], a["version"], a["id"], a["severity"], a["fixed_in"]) for a in row["detail"]["blocking"]] == [
        ("jinja2", "3.1.4", "DEMO-2026-0001", "high", ["3.1.5"])]
    assert row["detail"]["version"] == "v1.7.0" and "jinja2==3.1.4" in row["detail"]["packages"]

    fail_as_airflow_would(op, context, blocked.value)
    release = ledger.get_release(release_id)
    assert stage_row(release, "audit")["status"] == "failed"
    ticket = render_ticket("RCA-test", gather_evidence(release, None))
    assert ticket.fields["failed_stage"] == "audit"
    assert BLOCKED_LINE in ticket.body and ticket.fields["error"].startswith("VulnerableDependencies: 1 known")


def test_a_lock_file_without_known_vulnerabilities_passes(audit_settings, osv, make_context, ledger, release_id):
    result = audit("v1.1.0").execute(make_context())

    assert result["blocking"] == [] and result["allowed"] == [] and result["below_threshold"] == []
    assert result["packages"] == ["iniconfig==2.3.1", "packaging==26.3", "pluggy==1.7.0", "pygments==2.21.0",
                                  "pytest==9.2.0"]
    assert osv.queries == 5  # every pinned package was asked about
    row = stage_row(ledger.get_release(release_id), "audit")
    assert row["status"] == "success" and row["detail"]["summary"] == (
        "5 packages from requirements.txt: no known vulnerabilities")


def test_an_allowed_advisory_lets_the_release_through_with_its_reason(audit_settings, make_context, ledger,
                                                                      release_id):
    until = date.today() + timedelta(days=14)
    audit_settings(allow=[{"id": "DEMO-2026-0001", "until": until, "reason": "templates are ours; fix in 1.7.1"}])

    result = audit("v1.7.0").execute(make_context())

    [allowed] = result["allowed"]
    assert allowed["id"] == "DEMO-2026-0001"
    assert allowed["note"] == f"allowed until {until}: templates are ours; fix in 1.7.1"
    assert stage_row(ledger.get_release(release_id), "audit")["status"] == "success"


def test_an_expired_allowance_blocks_again(audit_settings, make_context, ledger):
    audit_settings(allow=[{"id": "DEMO-2026-0001", "until": date(2026, 1, 31), "reason": "until the fix"}])

    with pytest.raises(VulnerableDependencies, match=r"allow-list entry expired on 2026-01-31 \(until the fix\)"):
        audit("v1.7.0").execute(make_context())


def test_an_unreachable_advisory_source_is_a_failure_not_a_pass(audit_settings, make_context, ledger, release_id):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    audit_settings(osv_url=f"http://127.0.0.1:{port}/v1/query")
    op, context = audit("v1.1.0"), make_context()

    with pytest.raises(CouldNotAudit) as failed:
        op.execute(context)

    assert str(failed.value).startswith(f"could not audit: pip-audit exited with 1 against "
                                        f"http://127.0.0.1:{port}/v1/query without a report: ")
    fail_as_airflow_would(op, context, failed.value)
    row = stage_row(ledger.get_release(release_id), "audit")
    assert row["status"] == "failed" and row["error"].startswith("CouldNotAudit: could not audit: ")


def test_a_lock_file_missing_from_the_artifact_is_could_not_audit(audit_settings, make_context, ledger):
    audit_settings(lock_file="deps/requirements.lock")

    with pytest.raises(CouldNotAudit, match=r"the artifact has no lock file 'deps/requirements.lock'"):
        audit("v1.1.0").execute(make_context())


def test_a_service_file_that_lost_its_audit_section_fails_closed(audit_settings, make_context, ledger):
    op = audit("v1.1.0")
    audit_settings(audit=None)

    with pytest.raises(CouldNotAudit, match="has no audit section any more"):
        op.execute(make_context())


def test_an_artifact_that_does_not_match_its_checksum_is_not_audited(audit_settings, osv, make_context, ledger):
    artifact = {**demo_artifact("v1.1.0"), "sha256": "0" * 64}
    op = DependencyAuditOperator(artifact=artifact, **operator_kwargs("audit"))

    with pytest.raises(ArtifactError, match="is corrupted"):
        op.execute(make_context())
    assert osv.queries == 0


# ------------------------------------------------------------------------------ in the DAG


def test_the_release_dag_audits_between_build_and_the_replica(audit_settings):
    from conveyor.pipeline import release_dag

    dag = release_dag("demo_shop")

    assert dag.get_task("audit").upstream_task_ids == {"build"}
    assert dag.get_task("replica.deploy").upstream_task_ids == {"audit", "build"}  # build: its artifact (XCom)
    assert "audit" in dag.get_task("release_failed").upstream_task_ids
    assert dag.get_task("audit").artifact.operator is dag.get_task("build")  # build.output

    audit_settings(audit=None)
    without = release_dag("demo_shop")
    assert "audit" not in without.task_ids
    assert without.get_task("replica.deploy").upstream_task_ids == {"build"}
