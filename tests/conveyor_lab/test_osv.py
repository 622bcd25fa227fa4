"""The lab's OSV server (``conveyor_lab.osv``): OSV's query and record endpoints over real HTTP, from an
advisories file the test writes; and the demo's advisories (v1.7.0's lock file is affected, v1.1.0's is not)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conveyor_lab.osv import DEMO_ADVISORIES, OsvServer, affects, load_advisories

ROOT = Path(__file__).resolve().parents[2]


def record(rid: str, name: str, events: list[dict]) -> dict:
    return {"id": rid, "summary": f"{rid} summary",
            "affected": [{"package": {"ecosystem": "PyPI", "name": name},
                          "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def query(osv: OsvServer, name: str, version: str, ecosystem: str = "PyPI") -> tuple[int, dict]:
    payload = {"package": {"name": name, "ecosystem": ecosystem}, "version": version}
    return post(osv.query_url, json.dumps(payload).encode())


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def advisories(tmp_path) -> Path:
    path = tmp_path / "advisories.json"
    path.write_text(json.dumps([
        record("TEST-1", "Jinja2", [{"introduced": "0"}, {"fixed": "3.1.5"}]),
        record("TEST-2", "zope.interface", [{"introduced": "5.0"}, {"last_affected": "5.4"}]),
        {"id": "TEST-3", "affected": [{"package": {"ecosystem": "PyPI", "name": "tiny"}, "versions": ["1.0rc1"]}]},
        {"id": "TEST-4", "affected": [{"package": {"ecosystem": "npm", "name": "jinja2"},
                                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]},
    ]))
    return path


@pytest.fixture
def osv(advisories):
    with OsvServer(advisories) as server:
        yield server


@pytest.mark.parametrize(("name", "version", "expected"), [
    ("jinja2", "3.1.4", ["TEST-1"]),         # PEP 503 names: Jinja2 == jinja2
    ("JINJA_2", "3.1.4", []),                 # ... but jinja-2 is another project
    ("jinja2", "3.1.5", []),                  # fixed is exclusive
    ("jinja2", "0.1", ["TEST-1"]),            # introduced "0": every version before the fix
    ("Zope-Interface", "5.4", ["TEST-2"]),    # last_affected is inclusive
    ("zope.interface", "5.4.1", []),
    ("zope.interface", "4.9", []),            # before introduced
    ("tiny", "1.0rc1", ["TEST-3"]),           # an explicit versions list
    ("tiny", "1.0", []),
])
def test_a_query_answers_the_advisories_that_cover_the_version(osv, name, version, expected):
    status, body = query(osv, name, version)

    assert status == 200
    assert [v["id"] for v in body.get("vulns", [])] == expected
    if not expected:
        assert body == {}  # as api.osv.dev answers a package without advisories


def test_other_ecosystems_do_not_match_pypi_packages(osv):
    assert query(osv, "jinja2", "3.1.4", ecosystem="npm") == (200, {})
    assert not affects({"id": "X", "affected": [{"package": {"ecosystem": "npm", "name": "jinja2"},
                                                 "versions": ["3.1.4"]}]}, "jinja2", "3.1.4")


def test_a_record_is_served_by_id_and_an_unknown_id_is_404(osv):
    status, body = get(f"{osv.base_url}/v1/vulns/TEST-2")
    assert status == 200 and body["id"] == "TEST-2" and body["affected"][0]["package"]["name"] == "zope.interface"

    assert get(f"{osv.base_url}/v1/vulns/NOPE-1") == (404, {"code": 5, "message": "Bug not found."})
    assert get(f"{osv.base_url}/v1/vulns/..%2Fetc")[0] == 404


def test_a_malformed_query_is_refused_with_400(osv):
    assert post(osv.query_url, b"not json")[0] == 400
    assert post(osv.query_url, json.dumps({"version": "1.0"}).encode())[0] == 400
    assert post(f"{osv.base_url}/v1/querybatch", b"{}")[0] == 404


def test_the_file_is_read_again_on_each_request(osv, advisories):
    assert query(osv, "markupsafe", "2.0.0") == (200, {})

    advisories.write_text(json.dumps([record("TEST-9", "MarkupSafe", [{"introduced": "0"}, {"fixed": "2.0.1"}])]))

    status, body = query(osv, "markupsafe", "2.0.0")
    assert status == 200 and [v["id"] for v in body["vulns"]] == ["TEST-9"]


def test_a_server_told_to_fail_answers_every_query_with_that_status(osv):
    osv.fail_with = 503
    assert query(osv, "jinja2", "3.1.4")[0] == 503
    osv.fail_with = None
    assert query(osv, "jinja2", "3.1.4")[0] == 200


def test_a_broken_advisories_file_is_refused_at_start(tmp_path):
    path = tmp_path / "advisories.json"
    path.write_text(json.dumps({"id": "not a list"}))
    with pytest.raises(ValueError, match="expected a JSON list of OSV records"):
        OsvServer(path)


def test_the_demo_advisories_cover_v1_7_0s_lock_file_and_not_v1_1_0s():
    records = load_advisories(DEMO_ADVISORIES)
    base = ROOT / "include" / "demo" / "app" / "requirements.txt"
    v170 = ROOT / "include" / "demo" / "history" / "requirements-v1.7.0.txt"

    def hits(lock: Path) -> list[str]:
        pins = [line.split("==") for line in lock.read_text().splitlines() if line and not line.startswith("#")]
        return [r["id"] for name, version in pins for r in records if affects(r, name, version)]

    assert hits(base) == []
    assert hits(v170) == ["DEMO-2026-0001"]
    assert next(r for r in records if r["id"] == "DEMO-2026-0001")["database_specific"]["severity"] == "HIGH"


def test_the_command_line_server_serves_the_demo_advisories(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "conveyor_lab.osv", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "lab OSV server on http://127.0.0.1:" in proc.stdout.readline()
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/v1/vulns/DEMO-2026-0001")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        assert status == 200 and body["affected"][0]["package"]["name"] == "jinja2"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM: a clean stop
