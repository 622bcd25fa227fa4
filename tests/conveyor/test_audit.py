"""The dependency audit (``conveyor.audit``): real pip-audit against the lab's OSV server on a free port,
with the advisories each test writes; the decision (severity threshold, allow-list with expiry); and
every way an audit can fail to happen, each of which must stop the release ("could not audit")."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from conveyor.audit import (
    SEVERITIES,
    Advisory,
    CouldNotAudit,
    VulnerableDependencies,
    audit_artifact,
    audit_requirements,
    cvss3_base_score,
    decide,
    parse_report,
    read_lock_file,
    read_severity,
    severity_of,
    vulns_url,
)
from conveyor.config import AllowedAdvisory, Audit
from conveyor_lab.osv import OsvServer

TODAY = date(2026, 11, 12)
LOCK = "jinja2==3.1.4\nmarkupsafe==3.0.2\n"


def advisory(rid: str, package: str = "jinja2", fixed: str = "3.1.5", *, severity: str | None = None,
             cvss: str | None = None, aliases: tuple[str, ...] = ()) -> dict:
    """An OSV record affecting ``package`` below ``fixed``."""
    rec: dict = {"id": rid, "summary": f"{rid}: a test advisory", "aliases": list(aliases),
                 "affected": [{"package": {"ecosystem": "PyPI", "name": package},
                               "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}]}
    if severity:
        rec["database_specific"] = {"severity": severity}
    if cvss:
        rec["severity"] = [{"type": "CVSS_V3", "score": cvss}]
    return rec


@pytest.fixture
def osv(tmp_path):
    """The lab OSV server on a free port, serving no advisory until the test writes some (``publish``)."""
    path = tmp_path / "advisories.json"
    path.write_text("[]")
    with OsvServer(path) as server:
        yield server


def publish(osv: OsvServer, *records: dict) -> None:
    osv.advisories_file.write_text(json.dumps(list(records)))


def settings(osv_url: str, **values) -> Audit:
    return Audit.model_validate({"osv_url": osv_url, **values})


def allow(rid: str, until: date, reason: str = "no fix yet; input is trusted") -> AllowedAdvisory:
    return AllowedAdvisory(id=rid, until=until, reason=reason)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# ------------------------------------------------------------------- real pip-audit, decisions


def test_a_lock_file_without_advisories_passes_after_every_package_was_asked(osv):
    report = audit_requirements(LOCK, settings(osv.query_url), today=TODAY)

    assert report.packages == ("jinja2==3.1.4", "markupsafe==3.0.2")
    assert report.advisories == () and report.blocking == []
    assert osv.queries == 2  # pip-audit really asked the OSV server, once per pinned package
    assert report.summary() == "2 packages from requirements.txt: no known vulnerabilities"


def test_an_advisory_at_the_threshold_blocks_with_package_version_id_severity_and_fix(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="HIGH"))

    with pytest.raises(VulnerableDependencies) as blocked:
        audit_requirements(LOCK, settings(osv.query_url, block_at="high"), today=TODAY)

    assert str(blocked.value) == (
        "1 known vulnerability at or above high (or of unknown severity) in requirements.txt blocks the release:\n"
        "- jinja2 3.1.4: GHSA-aaaa-bbbb-cccc, severity high, fixed in 3.1.5")
    [found] = blocked.value.report.blocking
    assert (found.package, found.version, found.severity, found.fixed_in) == ("jinja2", "3.1.4", "high", ("3.1.5",))
    assert found.severity_from == "GHSA-aaaa-bbbb-cccc database_specific.severity HIGH"
    detail = blocked.value.report.to_dict()
    assert detail["blocking"][0]["id"] == "GHSA-aaaa-bbbb-cccc" and detail["allowed"] == []


def test_an_advisory_below_the_threshold_is_listed_and_does_not_block(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="MODERATE"))

    report = audit_requirements(LOCK, settings(osv.query_url, block_at="high"), today=TODAY)

    assert [(a.id, a.severity) for a in report.below_threshold] == [("GHSA-aaaa-bbbb-cccc", "moderate")]
    assert report.blocking == []
    assert "1 below high" in report.summary()


def test_a_lower_threshold_blocks_the_same_advisory(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="MODERATE"))

    with pytest.raises(VulnerableDependencies, match="severity moderate"):
        audit_requirements(LOCK, settings(osv.query_url, block_at="moderate"), today=TODAY)


def test_a_cvss_score_gives_the_severity_when_the_database_states_none(osv):
    publish(osv, advisory("PYSEC-2099-1", cvss="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"))

    with pytest.raises(VulnerableDependencies) as blocked:
        audit_requirements(LOCK, settings(osv.query_url, block_at="critical"), today=TODAY)

    [found] = blocked.value.report.blocking
    assert found.severity == "critical" and found.severity_from == "PYSEC-2099-1 CVSS_V3 base score 9.8"


def test_the_severity_is_read_from_the_github_alias_when_the_advisory_states_none(osv):
    """OSV serves a PyPI advisory (no severity) and its GitHub alias (with one): pip-audit merges them."""
    publish(osv, advisory("PYSEC-2099-7", aliases=("GHSA-xxxx-yyyy-zzzz",)),
            advisory("GHSA-xxxx-yyyy-zzzz", severity="LOW", aliases=("PYSEC-2099-7",)))

    report = audit_requirements(LOCK, settings(osv.query_url, block_at="moderate"), today=TODAY)

    [found] = report.below_threshold
    assert found.id == "PYSEC-2099-7" and found.aliases == ("GHSA-xxxx-yyyy-zzzz",)
    assert found.severity == "low" and found.severity_from.startswith("GHSA-xxxx-yyyy-zzzz database_specific")


def test_an_advisory_of_unknown_severity_blocks_even_at_critical(osv):
    publish(osv, advisory("PYSEC-2099-2"))

    with pytest.raises(VulnerableDependencies) as blocked:
        audit_requirements(LOCK, settings(osv.query_url, block_at="critical"), today=TODAY)

    assert ("- jinja2 3.1.4: PYSEC-2099-2, severity unknown (PYSEC-2099-2: the record states no severity), "
            "fixed in 3.1.5") in str(blocked.value)


def test_an_advisory_whose_record_cannot_be_read_counts_as_unknown_and_blocks(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="LOW"))
    osv.fail_lookups_with = 503

    with pytest.raises(VulnerableDependencies) as blocked:
        audit_requirements(LOCK, settings(osv.query_url), today=TODAY)

    assert "severity unknown (GHSA-aaaa-bbbb-cccc: HTTP 503 from http://127.0.0.1:" in str(blocked.value)


def test_an_allowed_advisory_does_not_block_and_is_listed_with_its_reason(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="CRITICAL"))
    audit = settings(osv.query_url, allow=[allow("GHSA-aaaa-bbbb-cccc", TODAY + timedelta(days=30))])

    report = audit_requirements(LOCK, audit, today=TODAY)

    [allowed] = report.allowed
    assert allowed.note == "allowed until 2026-12-12: no fix yet; input is trusted"
    assert report.blocking == []
    assert report.to_dict()["allowed"][0]["note"] == allowed.note
    assert osv.lookups == 0  # an allowed advisory needs no severity


def test_an_allow_list_entry_holds_through_its_last_day(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="HIGH"))
    audit = settings(osv.query_url, allow=[allow("GHSA-aaaa-bbbb-cccc", TODAY)])

    assert audit_requirements(LOCK, audit, today=TODAY).allowed


def test_an_expired_allow_list_entry_blocks_again_and_says_it_expired(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="HIGH"))
    audit = settings(osv.query_url, allow=[allow("GHSA-aaaa-bbbb-cccc", TODAY - timedelta(days=1))])

    with pytest.raises(VulnerableDependencies) as blocked:
        audit_requirements(LOCK, audit, today=TODAY)

    assert ("- jinja2 3.1.4: GHSA-aaaa-bbbb-cccc, severity high, fixed in 3.1.5 — allow-list entry expired on "
            "2026-11-11 (no fix yet; input is trusted)") in str(blocked.value)


def test_an_advisory_is_allowed_by_any_of_its_ids(osv):
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="HIGH", aliases=("CVE-2099-1234",)))
    audit = settings(osv.query_url, allow=[allow("CVE-2099-1234", TODAY + timedelta(days=1))])

    report = audit_requirements(LOCK, audit, today=TODAY)

    assert [a.id for a in report.allowed] == ["CVE-2099-1234"]  # pip-audit prefers CVE ids


def test_a_blocked_release_lists_blocking_then_allowed_then_lower_advisories(osv):
    publish(osv, advisory("GHSA-1111-1111-1111", severity="CRITICAL"),
            advisory("GHSA-2222-2222-2222", severity="HIGH"),
            advisory("GHSA-3333-3333-3333", package="markupsafe", fixed="3.0.3", severity="LOW"))
    audit = settings(osv.query_url, allow=[allow("GHSA-2222-2222-2222", TODAY + timedelta(days=7), "patched upstream")])

    with pytest.raises(VulnerableDependencies) as blocked:
        audit_requirements(LOCK, audit, today=TODAY)

    assert str(blocked.value).splitlines() == [
        "1 known vulnerability at or above high (or of unknown severity) in requirements.txt blocks the release:",
        "- jinja2 3.1.4: GHSA-1111-1111-1111, severity critical, fixed in 3.1.5",
        "allowed (audit.allow):",
        "- jinja2 3.1.4: GHSA-2222-2222-2222, severity unknown (not looked up: allowed), fixed in 3.1.5 — allowed "
        "until 2026-11-19: patched upstream",
        "below high (not blocking):",
        "- markupsafe 3.0.2: GHSA-3333-3333-3333, severity low, fixed in 3.0.3",
    ]


# ------------------------------------------------------------------------ could not audit


def test_an_unreachable_osv_endpoint_is_could_not_audit(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1/query"

    with pytest.raises(CouldNotAudit) as failed:
        audit_requirements(LOCK, settings(url), today=TODAY)

    message = str(failed.value)
    assert message.startswith(f"could not audit: pip-audit exited with 1 against {url} without a report: ")
    assert "requests.exceptions.ConnectionError" in message and "Connection refused" in message


def test_an_osv_endpoint_answering_errors_is_could_not_audit(osv):
    osv.fail_with = 500

    with pytest.raises(CouldNotAudit, match=r"without a report: requests\.exceptions\.HTTPError: 500 Server Error"):
        audit_requirements(LOCK, settings(osv.query_url), today=TODAY)


def test_a_wrong_osv_path_is_could_not_audit(osv):
    with pytest.raises(CouldNotAudit, match="404 Client Error"):
        audit_requirements(LOCK, settings(osv.base_url + "/v2/query"), today=TODAY)


def test_a_skipped_package_is_could_not_audit_although_pip_audit_found_nothing(osv):
    """pip-audit says "No known vulnerabilities found" (exit 0) for a package it could not look up."""
    lock = LOCK + "requests @ https://files.example.com/requests-2.32.4.tar.gz\n"

    with pytest.raises(CouldNotAudit) as failed:
        audit_requirements(lock, settings(osv.query_url), today=TODAY)

    assert str(failed.value) == ("could not audit: pip-audit skipped requests: URL requirements cannot be pinned "
                                 "to a specific package version")


def test_an_unpinned_requirement_is_could_not_audit(osv):
    with pytest.raises(CouldNotAudit, match=r"requirement jinja2 is not pinned to an exact version: jinja2>=3"):
        audit_requirements("jinja2>=3\n", settings(osv.query_url), today=TODAY)
    assert osv.queries == 0


@pytest.mark.parametrize("text", ["", "# nothing pinned here\n\n"])
def test_a_lock_file_that_lists_no_package_is_could_not_audit(osv, text):
    with pytest.raises(CouldNotAudit, match=r"^could not audit: the lock file lists no package \(nothing was audited\)$"):
        audit_requirements(text, settings(osv.query_url), today=TODAY)


def test_an_unparsable_lock_file_is_could_not_audit(osv):
    with pytest.raises(CouldNotAudit, match="contains invalid specifier at line 1"):
        audit_requirements("this is ][ not a requirement\n", settings(osv.query_url), today=TODAY)


class _SlowServer:
    """Answers every request with a 200 whose body comes one byte every ``every`` seconds, for ever: no
    socket read ever times out, so only a wall-clock bound ends a client."""

    def __init__(self, every: float = 0.3) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.every = every
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1/query"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
                while not self.stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(self.every)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_an_osv_endpoint_that_never_finishes_answering_is_cut_off_at_the_timeout():
    slow = _SlowServer()
    url = slow.url
    try:
        with pytest.raises(CouldNotAudit) as failed:
            audit_requirements(LOCK, settings(slow.url, timeout_s=4), today=TODAY)
    finally:
        slow.close()

    assert str(failed.value) == f"could not audit: pip-audit did not finish within 4 s (audit.timeout_s) against {url}"


# ---------------------------------------------------------------------- the artifact's lock file


def tarball(path: Path, files: dict[str, bytes | None]) -> Path:
    """A .tar.gz with ``files`` (None: a directory)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_the_lock_file_is_read_from_the_artifact(osv, tmp_path):
    artifact = tarball(tmp_path / "a.tar.gz", {"shop/__init__.py": b"", "requirements.txt": LOCK.encode()})
    publish(osv, advisory("GHSA-aaaa-bbbb-cccc", severity="HIGH"))

    with pytest.raises(VulnerableDependencies, match="jinja2 3.1.4: GHSA-aaaa-bbbb-cccc"):
        audit_artifact(artifact, settings(osv.query_url), today=TODAY)
    assert read_lock_file(tarball(tmp_path / "b.tar.gz", {"./deps/lock.txt": b"x==1\n"}), "deps/lock.txt") == "x==1\n"


@pytest.mark.parametrize(("files", "why"), [
    ({"shop/__init__.py": b""}, "the artifact has no lock file 'requirements.txt' (audit.lock_file)"),
    ({"requirements.txt": None}, "'requirements.txt' in the artifact is not a regular file"),
    ({"requirements.txt": b"\xff\xfe jinja2==3.1.4"}, "'requirements.txt' in the artifact is not UTF-8 text"),
])
def test_a_missing_or_unreadable_lock_file_is_could_not_audit(osv, tmp_path, files, why):
    artifact = tarball(tmp_path / "a.tar.gz", files)

    with pytest.raises(CouldNotAudit) as failed:
        audit_artifact(artifact, settings(osv.query_url), today=TODAY)

    assert str(failed.value) == f"could not audit: {why}"
    assert osv.queries == 0


def test_a_corrupt_artifact_is_could_not_audit(osv, tmp_path):
    broken = tmp_path / "a.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")

    with pytest.raises(CouldNotAudit, match=r"^could not audit: cannot read the artifact a\.tar\.gz: "):
        audit_artifact(broken, settings(osv.query_url), today=TODAY)


# ------------------------------------------------------------------------------- pure parts


def judged(severity: str, block_at: str) -> str:
    [a] = decide([Advisory("p", "1", "GHSA-1", severity=severity)], block_at, (), TODAY)
    return a.verdict


@pytest.mark.parametrize("block_at", SEVERITIES)
@pytest.mark.parametrize("severity", [*SEVERITIES, "unknown"])
def test_an_advisory_blocks_exactly_at_and_above_the_threshold(severity, block_at):
    at_or_above = severity == "unknown" or SEVERITIES.index(severity) >= SEVERITIES.index(block_at)
    assert judged(severity, block_at) == ("blocks" if at_or_above else "below threshold")


def test_the_longest_lasting_allow_list_entry_of_an_advisory_counts():
    entries = [allow("CVE-1", TODAY + timedelta(days=3), "renewed"), allow("GHSA-1", TODAY - timedelta(days=9))]
    [a] = decide([Advisory("p", "1", "GHSA-1", aliases=("CVE-1",), severity="critical")], "high", entries, TODAY)
    assert (a.verdict, a.note) == ("allowed", "allowed until 2026-11-15: renewed")

    [b] = decide([Advisory("p", "1", "GHSA-1", severity="critical")], "high", entries, TODAY)
    assert (b.verdict, b.note) == ("blocks", "allow-list entry expired on 2026-11-03 (no fix yet; input is trusted)")


@pytest.mark.parametrize(("vector", "score"), [
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
    ("CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
    ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
    ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.6),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
])
def test_cvss3_base_scores_match_the_specification(vector, score):
    assert cvss3_base_score(vector) == score


@pytest.mark.parametrize("vector", ["CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                                    "AV:N/AC:L/Au:N/C:P/I:P/A:P", "CVSS:3.1/AV:X/AC:L", "", "CVSS:3.1/AV:N"])
def test_what_is_not_a_cvss3_vector_has_no_score(vector):
    assert cvss3_base_score(vector) is None


@pytest.mark.parametrize(("record", "expected"), [
    ({"id": "A", "database_specific": {"severity": "MODERATE"}}, "moderate"),
    ({"id": "A", "database_specific": {"severity": "Medium"}}, "moderate"),
    ({"id": "A", "affected": [{"ecosystem_specific": {"severity": "CRITICAL"}}]}, "critical"),
    ({"id": "A", "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N"},
                              {"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]},
     "critical"),  # the highest score
    ({"id": "A", "severity": [{"type": "CVSS_V3", "score": "7.5"}]}, "high"),
    ({"id": "A", "severity": [{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/"
                                                           "SI:N/SA:N"}]}, None),
    ({"id": "A", "database_specific": {"severity": "SEVERE"}}, None),
    ({"id": "A"}, None),
])
def test_the_severity_of_an_osv_record(record, expected):
    found = severity_of(record)
    assert (found[0] if found else None) == expected


def test_the_record_url_sits_next_to_the_query_url():
    assert vulns_url("https://api.osv.dev/v1/query", "GHSA-q2x7-8rv6-6q7h") == (
        "https://api.osv.dev/v1/vulns/GHSA-q2x7-8rv6-6q7h")
    assert vulns_url("http://127.0.0.1:8470/v1/query", "a/b?c") == "http://127.0.0.1:8470/v1/vulns/a%2Fb%3Fc"


def test_an_id_that_is_not_an_advisory_id_is_never_requested():
    asked = []
    found = read_severity(Advisory("p", "1", "../../admin", aliases=("x y",)), "http://127.0.0.1:1/v1/query",
                          time.monotonic() + 10, fetch=lambda url, timeout: asked.append(url))

    assert asked == []
    assert found.severity == "unknown" and "not an advisory id" in found.severity_from


@pytest.mark.parametrize(("report", "why"), [
    ("", "pip-audit's report is not JSON it documents"),
    ('{"dependencies": {}}', "pip-audit's report is not JSON it documents"),
    ('{"dependencies": [], "fixes": []}', "the lock file lists no package"),
    ('{"dependencies": [{"name": "a", "skip_reason": "whatever"}]}', "pip-audit skipped a: whatever"),
    ('{"dependencies": [{"name": "a", "version": "1", "vulns": [{"fix_versions": []}]}]}',
     "pip-audit's report is not JSON it documents"),
    ('{"dependencies": ["a==1"]}', "pip-audit's report is not JSON it documents"),
])
def test_a_report_that_audited_nothing_is_could_not_audit(report, why):
    with pytest.raises(CouldNotAudit, match=why):
        parse_report(report)


def test_one_vulnerability_reported_twice_under_one_id_is_listed_once():
    """pip-audit reports a PYSEC record and the GHSA record that names it both under the PYSEC id."""
    report = json.dumps({"dependencies": [{"name": "jinja2", "version": "3.1.4", "vulns": [
        {"id": "PYSEC-2099-1", "fix_versions": ["3.1.5"], "aliases": ["CVE-2099-1"]},
        {"id": "PYSEC-2099-1", "fix_versions": ["3.1.5"], "aliases": ["GHSA-aaaa-bbbb-cccc"]}]}]})

    packages, [found] = parse_report(report)

    assert packages == ["jinja2==3.1.4"]
    assert (found.id, found.aliases, found.fixed_in) == ("PYSEC-2099-1", ("CVE-2099-1", "GHSA-aaaa-bbbb-cccc"),
                                                         ("3.1.5",))
