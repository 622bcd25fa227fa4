"""The dependency audit: an artifact's lock file checked with pip-audit against an OSV endpoint.

One audit (:func:`audit_artifact`) is three steps, each of which can only fail closed:

1. **Read the lock file** (``audit.lock_file``) out of the artifact's tarball.
2. **pip-audit** it: ``python -m pip_audit -s osv --osv-url <audit.osv_url> -r <lock file>
   --no-deps --disable-pip -f json -o <report>``. ``--no-deps --disable-pip`` audits the pinned
   requirements as written: nothing is resolved, downloaded or installed, and a requirement that
   is not pinned to one version (``==``) is an error. The whole run is bounded by
   ``audit.timeout_s`` (:func:`conveyor.commands.run_command`).
3. **Severity and decision**: pip-audit's report carries no severity, so each advisory's OSV record
   is read (``GET <osv>/v1/vulns/<id>``, next to the query URL) for its severity (see
   :func:`severity_of`), then :func:`decide` applies ``audit.block_at`` and ``audit.allow``.

"Could not audit" is a failure, never a pass (:class:`CouldNotAudit`): pip-audit prints "No known
vulnerabilities found" also when it audited nothing, so the report itself is checked. A missing or
unreadable lock file, a lock file that lists no package, a package pip-audit skipped, a
non-zero exit without a report, an unreachable or failing OSV endpoint and a timeout all stop the
release with ``could not audit: <why>``. An advisory whose severity cannot be read counts as
blocking (``severity unknown``): the allow-list is the way to let it through, with a reason and an
end date. Known vulnerabilities that block raise :class:`VulnerableDependencies`, listing each.

Pure: no Airflow import (the operator, :mod:`conveyor.operators.audit`, fetches the artifact).
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.commands import run_command, tool_env
from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    from conveyor.config import AllowedAdvisory, Audit

SEVERITIES = ("low", "moderate", "high", "critical")  # lowest first, as ``audit.block_at``
UNKNOWN = "unknown"
#: What OSV databases write in ``database_specific.severity`` (GitHub: LOW/MODERATE/HIGH/CRITICAL).
_SEVERITY_WORDS = {"low": "low", "moderate": "moderate", "medium": "moderate", "high": "high",
                   "critical": "critical", "important": "high"}
_ADVISORY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
MAX_LOCK_FILE_BYTES = 1 << 20  # a lock file is text; anything bigger is not one
_LOOKUP_TIMEOUT_S = 15.0
_ERROR_LINES = 40  # advisories listed in the error message (all of them are in the stage detail)


class DependencyAuditError(ConveyorError):
    """The dependency audit stopped the release."""


class CouldNotAudit(DependencyAuditError):
    """The audit could not be done: never a pass. ``str(e)`` starts with "could not audit: "."""

    def __init__(self, why: str) -> None:
        super().__init__(f"could not audit: {why}")
        self.why = why


class VulnerableDependencies(DependencyAuditError):
    """Known vulnerabilities at or above ``audit.block_at`` (or of unknown severity) block the release."""

    def __init__(self, message: str, report: AuditReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Advisory:
    """One known vulnerability of one pinned package, as the audit judged it."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fixed_in: tuple[str, ...] = ()
    summary: str = ""
    severity: str = UNKNOWN  # one of SEVERITIES, or "unknown"
    severity_from: str = ""  # where the severity was read, or why it is unknown
    verdict: str = ""  # "blocks" | "allowed" | "below threshold"
    note: str = ""  # the allow-list entry's reason (allowed), or that it expired (blocks)

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def line(self) -> str:
        """``jinja2 3.1.4: DEMO-2026-0001 (CVE-2099-0001), severity high, fixed in 3.1.5``."""
        aka = f" ({', '.join(self.aliases)})" if self.aliases else ""
        severity = self.severity if self.severity != UNKNOWN else f"unknown ({self.severity_from})"
        fixed = f"fixed in {', '.join(self.fixed_in)}" if self.fixed_in else "no fixed version"
        note = f" — {self.note}" if self.note else ""
        return f"{self.package} {self.version}: {self.id}{aka}, severity {severity}, {fixed}{note}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aliases"], d["fixed_in"] = list(self.aliases), list(self.fixed_in)
        return d


@dataclass(frozen=True)
class AuditReport:
    """What an audit found and decided (the stage's ledger detail: :meth:`to_dict`)."""

    lock_file: str
    osv_url: str
    block_at: str
    packages: tuple[str, ...]  # "name==version", every package audited
    advisories: tuple[Advisory, ...] = field(default_factory=tuple)

    def _with(self, verdict: str) -> list[Advisory]:
        return [a for a in self.advisories if a.verdict == verdict]

    @property
    def blocking(self) -> list[Advisory]:
        return self._with("blocks")

    @property
    def allowed(self) -> list[Advisory]:
        return self._with("allowed")

    @property
    def below_threshold(self) -> list[Advisory]:
        return self._with("below threshold")

    def summary(self) -> str:
        found = len(self.advisories)
        if not found:
            return f"{len(self.packages)} packages from {self.lock_file}: no known vulnerabilities"
        return (f"{len(self.packages)} packages from {self.lock_file}: {found} known vulnerabilit"
                f"{'y' if found == 1 else 'ies'}, {len(self.blocking)} blocking (at or above "
                f"{self.block_at}, or of unknown severity), {len(self.allowed)} allowed, "
                f"{len(self.below_threshold)} below {self.block_at}")

    def message(self) -> str:
        """The error of a blocked release: every blocking advisory, then the allowed and the lower ones."""
        one = len(self.blocking) == 1
        lines = [f"{len(self.blocking)} known vulnerabilit{'y' if one else 'ies'} at or above {self.block_at} (or "
                 f"of unknown severity) in {self.lock_file} {'blocks' if one else 'block'} the release:"]
        sections = [("", self.blocking), ("allowed (audit.allow):", self.allowed),
                    (f"below {self.block_at} (not blocking):", self.below_threshold)]
        listed = 0
        for title, advisories in sections:
            if advisories and title:
                lines.append(title)
            for a in advisories:
                if listed == _ERROR_LINES:
                    lines.append(f"- ... and {len(self.advisories) - listed} more (the audit stage's detail "
                                 "lists them all)")
                    return "\n".join(lines)
                lines.append(f"- {a.line()}")
                listed += 1
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lock_file": self.lock_file, "osv_url": self.osv_url, "block_at": self.block_at,
            "packages": list(self.packages), "summary": self.summary(),
            "blocking": [a.to_dict() for a in self.blocking],
            "allowed": [a.to_dict() for a in self.allowed],
            "below_threshold": [a.to_dict() for a in self.below_threshold],
        }


# ------------------------------------------------------------------------------- the decision


def rank(severity: str) -> int:
    """A severity's place on ``SEVERITIES`` (unknown: above critical, so it always blocks)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def decide(advisories: Iterable[Advisory], block_at: str, allow: Sequence[AllowedAdvisory],
           today: date) -> list[Advisory]:
    """Each advisory with its verdict: ``allowed`` (an allow-list entry naming it, or one of its
    aliases, whose ``until`` is today or later), else ``blocks`` (severity at or above ``block_at``,
    or unknown; an expired entry is named), else ``below threshold``."""
    judged = []
    for a in advisories:
        entries = sorted((e for e in allow if e.id in a.ids), key=lambda e: e.until)
        entry = entries[-1] if entries else None  # the one that lasts longest
        if entry is not None and today <= entry.until:
            judged.append(_replace(a, verdict="allowed", note=f"allowed until {entry.until}: {entry.reason}"))
        elif rank(a.severity) >= rank(block_at):
            note = f"allow-list entry expired on {entry.until} ({entry.reason})" if entry is not None else ""
            judged.append(_replace(a, verdict="blocks", note=note))
        else:
            judged.append(_replace(a, verdict="below threshold"))
    return judged


def _replace(a: Advisory, **changes: Any) -> Advisory:
    return Advisory(**{**a.__dict__, **changes})


# ------------------------------------------------------------------------------ severity


def cvss3_base_score(vector: str) -> float | None:
    """The CVSS v3.0/v3.1 base score of a vector (``CVSS:3.1/AV:N/AC:L/...``); None if it is not one."""
    parts = vector.strip().split("/")
    if not parts or not re.fullmatch(r"CVSS:3\.[01]", parts[0]):
        return None
    try:
        m = dict(p.split(":", 1) for p in parts[1:])
        scope_changed = m["S"] == "C"
        av = {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2}[m["AV"]]
        ac = {"L": 0.77, "H": 0.44}[m["AC"]]
        pr = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}[m["PR"]]
        ui = {"N": 0.85, "R": 0.62}[m["UI"]]
        cia = [{"H": 0.56, "L": 0.22, "N": 0.0}[m[k]] for k in ("C", "I", "A")]
        if m["S"] not in ("U", "C"):
            return None
    except (KeyError, ValueError):
        return None
    iss = 1 - (1 - cia[0]) * (1 - cia[1]) * (1 - cia[2])
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if scope_changed else 6.42 * iss
    if impact <= 0:
        return 0.0
    exploitability = 8.22 * av * ac * pr * ui
    raw = min((1.08 if scope_changed else 1.0) * (impact + exploitability), 10.0)
    return _roundup(raw)


def _roundup(value: float) -> float:
    """CVSS v3.1's Roundup: the smallest number with one decimal that is >= value (float-safe)."""
    scaled = round(value * 100000)
    return scaled / 100000.0 if scaled % 10000 == 0 else (scaled // 10000 + 1) / 10.0


def severity_for_score(score: float) -> str:
    """CVSS qualitative ratings, on the GitHub scale: < 4 low, < 7 moderate, < 9 high, else critical."""
    if score < 4.0:
        return "low"
    if score < 7.0:
        return "moderate"
    if score < 9.0:
        return "high"
    return "critical"


def severity_of(record: dict[str, Any]) -> tuple[str, str] | None:
    """``(severity, where it came from)`` from an OSV record, or None if it states none we can read.

    In order: the database's own rating (``database_specific.severity``: GitHub advisories write
    LOW/MODERATE/HIGH/CRITICAL; also per ``affected`` entry), then the highest CVSS v3 base score in
    ``severity`` (a bare number is taken as a score). CVSS v4 vectors alone are not scored.
    """
    rid = record.get("id", "?")
    places = [("database_specific", record.get("database_specific"))]
    places += [(f"affected[{i}].{k}", (a or {}).get(k)) for i, a in enumerate(record.get("affected") or [])
               for k in ("database_specific", "ecosystem_specific")]
    for where, specific in places:
        word = specific.get("severity") if isinstance(specific, dict) else None
        if isinstance(word, str) and word.strip().lower() in _SEVERITY_WORDS:
            return _SEVERITY_WORDS[word.strip().lower()], f"{rid} {where}.severity {word}"
    scores = []
    for entry in record.get("severity") or []:
        text = str((entry or {}).get("score", "")) if isinstance(entry, dict) else ""
        score = cvss3_base_score(text)
        if score is None and re.fullmatch(r"\d{1,2}(\.\d)?", text) and float(text) <= 10:
            score = float(text)
        if score is not None:
            scores.append((score, entry.get("type", "score")))
    if scores:
        score, kind = max(scores)
        return severity_for_score(score), f"{rid} {kind} base score {score:g}"
    return None


def vulns_url(osv_url: str, advisory_id: str) -> str:
    """The OSV record's URL next to the query URL: ``.../v1/query`` -> ``.../v1/vulns/<id>``."""
    return urllib.parse.urljoin(osv_url, "vulns/" + urllib.parse.quote(advisory_id, safe=""))


def fetch_record(url: str, timeout: float) -> dict[str, Any] | None:
    """An OSV record (None on 404); ``OSError``/``ValueError`` for anything else that went wrong."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "conveyor-audit"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_LOCK_FILE_BYTES)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise OSError(f"HTTP {e.code} from {url}") from None
    record = json.loads(body)
    if not isinstance(record, dict):
        raise ValueError(f"{url} answered JSON that is not an OSV record")
    return record


Fetch = Callable[[str, float], "dict[str, Any] | None"]


def read_severity(advisory: Advisory, osv_url: str, deadline: float, fetch: Fetch = fetch_record) -> Advisory:
    """The advisory with its severity, read from its OSV record (GHSA ids first: they carry one)."""
    ids = sorted(dict.fromkeys(advisory.ids), key=lambda i: not i.startswith("GHSA-"))
    problems = []
    for advisory_id in ids:
        if not _ADVISORY_ID_RE.fullmatch(advisory_id):
            problems.append(f"{advisory_id!r}: not an advisory id")
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CouldNotAudit(f"ran out of time reading the severity of {advisory.id} from {osv_url}")
        try:
            record = fetch(vulns_url(osv_url, advisory_id), min(_LOOKUP_TIMEOUT_S, remaining))
        except (OSError, ValueError) as e:
            problems.append(f"{advisory_id}: {e}")
            continue
        if record is None:
            problems.append(f"{advisory_id}: no OSV record")
            continue
        found = severity_of(record)
        if found is not None:
            return _replace(advisory, severity=found[0], severity_from=found[1])
        problems.append(f"{advisory_id}: the record states no severity")
    return _replace(advisory, severity=UNKNOWN, severity_from="; ".join(problems) or "no id to look up")


# ------------------------------------------------------------------------------- pip-audit


def pip_audit_command(requirements: Path, osv_url: str, report: Path, cache_dir: Path,
                      timeout_s: float) -> list[str]:
    """The pip-audit command line: pinned requirements as written, nothing resolved or installed."""
    return [sys.executable, "-m", "pip_audit", "--vulnerability-service", "osv", "--osv-url", osv_url,
            "--requirement", str(requirements), "--no-deps", "--disable-pip", "--format", "json",
            "--output", str(report), "--progress-spinner", "off", "--cache-dir", str(cache_dir),
            "--timeout", str(max(1, int(min(timeout_s, 60))))]


def parse_report(text: str) -> tuple[list[str], list[Advisory]]:
    """pip-audit's JSON report: the audited packages (``name==version``) and their advisories.

    :class:`CouldNotAudit` when the report is not one, lists no package, or skipped any package.
    """
    try:
        data = json.loads(text)
        deps = data["dependencies"]
        if not isinstance(deps, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CouldNotAudit(f"pip-audit's report is not JSON it documents: {text[:200]!r}") from None
    skipped = [f"{d.get('name')}: {d.get('skip_reason')}" for d in deps if "skip_reason" in d]
    if skipped:
        raise CouldNotAudit("pip-audit skipped " + "; ".join(skipped))
    if not deps:
        raise CouldNotAudit("the lock file lists no package (nothing was audited)")
    try:
        return _advisories(deps)
    except (KeyError, TypeError, AttributeError):
        raise CouldNotAudit(f"pip-audit's report is not JSON it documents: {text[:200]!r}") from None


def _advisories(deps: list[dict[str, Any]]) -> tuple[list[str], list[Advisory]]:
    packages, advisories = [], []
    for d in deps:
        packages.append(f"{d['name']}=={d['version']}")
        found: list[Advisory] = []
        for v in d.get("vulns") or []:
            new = Advisory(package=d["name"], version=d["version"], id=v["id"],
                           aliases=tuple(sorted(set(v.get("aliases") or ()) - {v["id"]})),
                           fixed_in=tuple(v.get("fix_versions") or ()), summary=(v.get("description") or "")[:300])
            # pip-audit can report one vulnerability twice under the same id (a PYSEC record and a
            # GHSA record naming it as an alias both sort to the PYSEC id): merge what shares an id.
            same = next((i for i, a in enumerate(found) if set(a.ids) & set(new.ids)), None)
            if same is None:
                found.append(new)
            else:
                old = found[same]
                found[same] = _replace(old, aliases=tuple(sorted((set(old.ids) | set(new.ids)) - {old.id})),
                                       fixed_in=tuple(dict.fromkeys(old.fixed_in + new.fixed_in)))
        advisories += found
    return packages, advisories


def read_lock_file(tarball: Path, member: str) -> str:
    """The text of ``member`` inside the artifact's tarball; :class:`CouldNotAudit` if there is none."""
    wanted = member.removeprefix("./")
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            info = next((m for m in tar.getmembers() if m.name.removeprefix("./") == wanted), None)
            if info is None:
                raise CouldNotAudit(f"the artifact has no lock file {member!r} (audit.lock_file)")
            if not info.isfile():
                raise CouldNotAudit(f"{member!r} in the artifact is not a regular file")
            if info.size > MAX_LOCK_FILE_BYTES:
                raise CouldNotAudit(f"{member!r} in the artifact is {info.size} bytes: not a lock file")
            data = tar.extractfile(info).read()  # type: ignore[union-attr] - a regular file
    except (OSError, tarfile.TarError, EOFError) as e:
        raise CouldNotAudit(f"cannot read the artifact {tarball.name}: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CouldNotAudit(f"{member!r} in the artifact is not UTF-8 text") from None


def audit_requirements(text: str, settings: Audit, *, today: date, lock_file: str | None = None,
                       fetch: Fetch = fetch_record) -> AuditReport:
    """Audit a lock file's text with pip-audit against ``settings.osv_url`` and decide.

    Returns the report when nothing blocks; raises :class:`VulnerableDependencies` (the report on
    ``e.report``) when something does, :class:`CouldNotAudit` when the audit could not be done.
    """
    lock_file = lock_file or settings.lock_file
    deadline = time.monotonic() + settings.timeout_s
    with tempfile.TemporaryDirectory(prefix="conveyor-audit-") as tmp:
        work = Path(tmp)
        requirements, report_path = work / "requirements.txt", work / "report.json"
        requirements.write_text(text)
        command = pip_audit_command(requirements, settings.osv_url, report_path, work / "cache", settings.timeout_s)
        result = run_command(command, cwd=work, timeout=settings.timeout_s, env=tool_env(PIP_NO_INPUT="1"))
        if result.timed_out:
            raise CouldNotAudit(f"pip-audit did not finish within {settings.timeout_s:g} s (audit.timeout_s) "
                                f"against {settings.osv_url}")
        report = report_path.read_text() if report_path.exists() else None
        if report is None:  # pip-audit stopped before reporting: say why, in its words
            raise CouldNotAudit(f"pip-audit exited with {result.exit_code} against {settings.osv_url} "
                                f"without a report: {_why(result.output)}")
    packages, found = parse_report(report)
    if result.exit_code not in (0, 1) or (result.exit_code == 1) != bool(found):
        raise CouldNotAudit(f"pip-audit exited with {result.exit_code} and reported {len(found)} vulnerabilities: "
                            f"{_why(result.output)}")
    allow = settings.allow
    # An advisory allowed (and not expired) needs no severity; every other one is looked up.
    looked_up = [_replace(a, severity_from="not looked up: allowed")
                 if any(e.id in a.ids and today <= e.until for e in allow)
                 else read_severity(a, settings.osv_url, deadline, fetch) for a in found]
    judged = AuditReport(lock_file=lock_file, osv_url=settings.osv_url, block_at=settings.block_at,
                         packages=tuple(packages), advisories=tuple(decide(looked_up, settings.block_at, allow, today)))
    if judged.blocking:
        raise VulnerableDependencies(judged.message(), judged)
    return judged


def audit_artifact(tarball: Path, settings: Audit, *, today: date, fetch: Fetch = fetch_record) -> AuditReport:
    """:func:`audit_requirements` of the lock file inside an artifact's tarball."""
    return audit_requirements(read_lock_file(tarball, settings.lock_file), settings, today=today, fetch=fetch)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)(: .*)?$")


def _why(output: str) -> str:
    """The telling lines of pip-audit's output: its errors, else the exceptions of a traceback (the
    HTTP or connection error under pip-audit's own), else the last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:pip_audit._cli:") for line in lines if line.startswith("ERROR:")]
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
    # a traceback's last exception with a message (pip-audit's own ServiceError has none: the
    # HTTP error it wraps says what happened)
    telling = [line for line in exceptions if ": " in line][-1:] or exceptions[-1:]
    picked = errors or telling or lines[-1:] or ["(no output)"]
    return " / ".join(picked)[:1000]


__all__ = [
    "SEVERITIES", "Advisory", "AuditReport", "CouldNotAudit", "DependencyAuditError", "VulnerableDependencies",
    "audit_artifact", "audit_requirements", "cvss3_base_score", "decide", "parse_report", "pip_audit_command",
    "read_lock_file", "read_severity", "severity_for_score", "severity_of", "vulns_url",
]
