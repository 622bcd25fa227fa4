"""Build a versioned artifact from a git ref and keep it in the artifact store.

An artifact is three objects under ``<store>/<service>/<version>/``: the tarball
``<service>-<version>.tar.gz``, its ``.sha256`` and ``manifest.json`` (written last, so a manifest
means a complete artifact). The tarball is written deterministically (sorted entries, fixed
mtimes and owners, gzip without a timestamp): building the same commit twice gives the same
bytes, so the same ref always maps to the same key and checksum.

The store is an :class:`airflow.sdk.ObjectStoragePath` (``file://`` by default, ``s3://`` with an
AWS connection), so any fsspec backend Airflow supports works.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor import validation
from conveyor.commands import format_command, git, run_command, tool_env
from conveyor.config import ServiceConfig
from conveyor.exceptions import ArtifactError, BuildError
from conveyor.paths import artifacts_dir, local_repo_dir, scratch_dir, workspace_dir

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class ArtifactInfo:
    """What the rest of the pipeline knows about a built artifact (JSON-serialisable via ``to_dict``)."""

    service: str
    version: str
    commit: str
    ref: str
    key: str
    url: str
    sha256: str
    size: int
    manifest: dict[str, Any] = field(default_factory=dict)
    tarball: Path | None = None  # a local copy, when there is one

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tarball"] = str(self.tarball) if self.tarball else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactInfo:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}  # XCom may carry more keys
        known["tarball"] = Path(known["tarball"]) if known.get("tarball") else None
        return cls(**known)


# --------------------------------------------------------------------------------------- git


def repo_url(service: ServiceConfig) -> str:
    """The service repository's location. ``local:<name>`` is a repository of the local lab
    (``$CONVEYOR_HOME/repos/<name>.git``; ``make run`` creates the demo's): it must exist."""
    url = service.repo.url
    if not url.startswith("local:"):
        return url
    path = local_repo_dir(url.removeprefix("local:"))
    if not (path / "HEAD").exists():
        raise BuildError(f"the local repository {url!r} does not exist at {path}: `make run` (or "
                         "`conveyor fleet up`) creates the demo's")
    return str(path)


def mirror(service: ServiceConfig) -> Path:
    """A local mirror of the service repository, fetched fresh (refs pruned, tags forced)."""
    path = workspace_dir() / service.id / "mirror.git"
    url = repo_url(service)
    if not (path / "HEAD").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="mirror-", dir=path.parent))
        git("clone", "--quiet", "--mirror", url, str(tmp / "m.git"))
        try:
            (tmp / "m.git").rename(path)
        except OSError:  # another build won the race; use theirs
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        git("remote", "set-url", "origin", url, cwd=path)
        git("fetch", "--quiet", "--prune", "--force", "--tags", "origin", "+refs/*:refs/*", cwd=path)
    return path


def resolve_ref(git_dir: Path, ref: str) -> tuple[str, str]:
    """Return ``(commit, version)`` for a ref.

    A tag is its own version; any ref at a tagged commit gets that tag; other commits get
    ``git describe`` (``v1.2.0-3-g<sha>``), so a given commit always maps to the same version.
    """
    validation.git_ref(ref)
    try:
        commit = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", cwd=git_dir)
    except BuildError:
        raise BuildError(f"ref {ref!r} does not exist in the service repository") from None
    tags = git("tag", "--points-at", commit, cwd=git_dir).split()
    if ref in tags:
        version = ref
    elif tags:  # a branch or SHA at a tagged commit is that tag's version (and artifact)
        version = sorted(tags)[-1]
    else:
        described = git("describe", "--tags", "--long", "--always", "--abbrev=12", commit, cwd=git_dir)
        version = described.replace("/", "-")
    return commit, validation.version(version)


#: ``git log --format`` for :func:`parse_log`: sha, author, email, ISO date, subject.
LOG_FORMAT = "%H%x1f%an%x1f%ae%x1f%aI%x1f%s"


def parse_log(out: str) -> list[dict[str, str]]:
    """``git log --format=LOG_FORMAT`` output as ``{"sha", "author", "email", "date", "subject"}`` dicts."""
    commits = []
    for line in filter(None, out.splitlines()):
        sha, author, email, date, subject = line.split("\x1f", 4)
        commits.append({"sha": sha, "author": author, "email": email, "date": date, "subject": subject})
    return commits


def commit_range(git_dir: Path, since: str | None, until: str) -> list[dict[str, str]]:
    """Commits in ``since..until`` (all ancestors of ``until`` when ``since`` is None), newest first."""
    spec = f"{since}..{until}" if since else until
    return parse_log(git("log", "--no-merges", "--max-count=500", f"--format={LOG_FORMAT}", spec, cwd=git_dir))


# ---------------------------------------------------------------------------------- tarballs


def deterministic_tarball(src: Path, dest: Path) -> str:
    """Write ``src``'s contents to ``dest`` as a reproducible .tar.gz; return its sha256."""
    entries = sorted(src.rglob("*"))
    with open(dest, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in entries:
                    rel = path.relative_to(src).as_posix()
                    info = tar.gettarinfo(str(path), arcname=rel)
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mode = 0o755 if (path.is_dir() or os.access(path, os.X_OK)) else 0o644
                    if path.is_symlink():
                        raise BuildError(f"build output contains a symlink: {rel}")
                    if info.isfile():
                        with open(path, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
    return sha256_file(dest)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ store


class ArtifactStore:
    """The artifact store behind an ObjectStoragePath (``file://`` default, ``s3://`` with a conn_id)."""

    def __init__(self, url: str | None = None, conn_id: str | None = None):
        self.url = (url or f"file://{artifacts_dir()}").rstrip("/")
        self.conn_id = conn_id

    @classmethod
    def for_service(cls, service: ServiceConfig) -> ArtifactStore:
        return cls(service.artifact_store.url, service.artifact_store.conn_id)

    def root(self):
        from airflow.sdk import ObjectStoragePath

        if self.url.startswith("file://"):
            Path(self.url[len("file://"):]).mkdir(parents=True, exist_ok=True)
        return ObjectStoragePath(self.url, conn_id=self.conn_id) if self.conn_id else ObjectStoragePath(self.url)

    @staticmethod
    def key(service: str, version: str) -> str:
        return f"{service}/{version}/{service}-{version}.tar.gz"

    def path(self, key: str):
        return self.root() / key

    @contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        """The store's own failures (unreachable endpoint, refused credentials, a missing driver) as an
        :class:`ArtifactError` naming the store and what was being done."""
        try:
            yield
        except ArtifactError:
            raise
        except Exception as e:
            raise ArtifactError(f"artifact store {self.url} could not {what}: {type(e).__name__}: {e}") from e

    def manifest(self, service: str, version: str) -> dict[str, Any] | None:
        with self._reaching(f"read the manifest of {service} {version}"):
            path = self.root() / service / version / "manifest.json"
            if not path.exists():
                return None
            return json.loads(path.read_text())

    def put(self, local_tarball: Path, key: str, sha256: str, manifest: dict[str, Any]) -> str:
        with self._reaching(f"store {key}"):
            target = self.path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(local_tarball, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            (target.parent / (target.name + ".sha256")).write_text(f"{sha256}  {target.name}\n")
            (target.parent / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            return str(target)

    def info(self, manifest: dict[str, Any], ref: str | None = None) -> ArtifactInfo:
        """The stored artifact a manifest describes (``ref``: the ref it was asked for, if not the manifest's)."""
        return ArtifactInfo(
            service=manifest["service"], version=manifest["version"], commit=manifest["commit"],
            ref=ref or manifest.get("ref") or manifest["version"], key=manifest["key"],
            url=str(self.path(manifest["key"])), sha256=manifest["sha256"], size=manifest["size"], manifest=manifest,
        )

    def fetch(self, info: ArtifactInfo, dest_dir: Path | None = None) -> Path:
        """A verified local copy of the tarball (for file:// stores, the stored file itself).

        Other stores copy it into ``dest_dir`` (default: the service's downloads in the workspace).
        """
        dest_dir = dest_dir or workspace_dir() / info.service / "downloads"
        with self._reaching(f"fetch {info.key}"):
            src = self.path(info.key)
            if not src.exists():
                raise ArtifactError(f"artifact {info.key} is missing from {self.url}")
            if self.url.startswith("file://"):
                local = Path(self.url[len("file://"):]) / info.key
            else:
                dest_dir.mkdir(parents=True, exist_ok=True)
                local = dest_dir / Path(info.key).name
                with src.open("rb") as s, open(local, "wb") as d:
                    shutil.copyfileobj(s, d, 1 << 20)
        actual = sha256_file(local)
        if actual != info.sha256:
            raise ArtifactError(
                f"artifact {info.key} is corrupted: sha256 {actual} does not match the recorded {info.sha256}"
            )
        return local


# ------------------------------------------------------------------------------------ build


def build_artifact(
    service: ServiceConfig,
    ref: str,
    *,
    since_commit: str | None = None,
    store: ArtifactStore | None = None,
    log_fn=None,
) -> ArtifactInfo:
    """Check out ``ref``, run the service's build, and store the artifact; reuse a complete one.

    ``since_commit`` (the commit of the release currently in production, if known) bounds the
    manifest's commit range. Raises :class:`BuildError` with the tail of the build log.
    """
    say = log_fn or log.info
    validation.git_ref(ref)
    store = store or ArtifactStore.for_service(service)
    git_dir = mirror(service)
    commit, version = resolve_ref(git_dir, ref)
    key = ArtifactStore.key(service.id, version)
    if since_commit:
        try:
            git("cat-file", "-e", f"{since_commit}^{{commit}}", cwd=git_dir)
        except BuildError:
            since_commit = None

    existing = store.manifest(service.id, version)
    if existing is not None:
        if existing.get("commit") != commit:
            raise BuildError(
                f"version {version} is already stored for commit {existing.get('commit')}, but {ref!r} "
                f"now points to {commit}: tags must not move"
            )
        info = store.info(existing, ref=ref)
        local = store.fetch(info)  # verifies the checksum
        say("artifact %s already built from %s (sha256 %s); reusing it", key, commit[:12], info.sha256[:12])
        return ArtifactInfo(**{**info.__dict__, "tarball": local})

    work = scratch_dir(service.id, "builds", prefix=f"{version}-")
    try:
        src, out = work / "src", work / "out"
        git("clone", "--quiet", "--no-checkout", str(git_dir), str(src))
        git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit, cwd=src)
        out.mkdir()
        command = format_command(service.build.command, out=str(out))
        say("building %s %s (%s): %s", service.id, version, commit[:12], command)
        result = run_command(command, cwd=src, timeout=service.build.timeout_s, env=tool_env(
            CONVEYOR_VERSION=version, CONVEYOR_COMMIT=commit, PYTHONHASHSEED="0", SOURCE_DATE_EPOCH="0"))
        (work / "build.log").write_text(result.output)
        if not result.ok:
            raise BuildError(f"build of {service.id} {version} ({commit[:12]}) failed with exit code "
                             f"{result.exit_code}:\n{result.tail(_LOG_TAIL_LINES)}")
        if not any(out.iterdir()):
            raise BuildError(f"build of {service.id} {version} produced no output in {{out}}")
        tarball = work / Path(key).name
        sha = deterministic_tarball(out, tarball)
        commits = commit_range(git_dir, since_commit, commit)
        manifest = {
            "service": service.id, "version": version, "commit": commit, "ref": ref, "key": key,
            "sha256": sha, "size": tarball.stat().st_size,
            "commit_range": {"from": since_commit, "to": commit, "commits": commits},
        }
        url = store.put(tarball, key, sha, manifest)
        say("stored %s (%d bytes, sha256 %s, %d commits since %s)", key, manifest["size"], sha[:12],
            len(commits), since_commit[:12] if since_commit else "the beginning")
        info = ArtifactInfo(service=service.id, version=version, commit=commit, ref=ref, key=key, url=url,
                            sha256=sha, size=manifest["size"], manifest=manifest)
        local = store.fetch(info)
        return ArtifactInfo(**{**info.__dict__, "tarball": local})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tar_listing(tarball: Path) -> list[str]:
    """Names inside a tarball (used by tests and by `conveyor` diagnostics)."""
    with tarfile.open(tarball, "r:gz") as tar:
        return sorted(tar.getnames())


__all__ = [
    "ArtifactInfo", "ArtifactStore", "build_artifact", "commit_range", "deterministic_tarball", "mirror",
    "resolve_ref", "sha256_file", "tar_listing",
]


def checkout(service: ServiceConfig, commit: str) -> Path:
    """A source checkout of ``commit`` (for running the service's suites); reused when present."""
    if not validation.COMMIT_RE.fullmatch(commit):
        raise BuildError(f"invalid commit {commit!r}")
    path = workspace_dir() / service.id / "src" / commit
    if (path / ".git").exists() and git("rev-parse", "HEAD", cwd=path) == commit:
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="co-", dir=path.parent))
    git("clone", "--quiet", "--no-checkout", str(mirror(service)), str(tmp))
    git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit, cwd=tmp)
    tmp.rename(path)
    return path
