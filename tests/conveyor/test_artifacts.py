"""Artifacts: deterministic, keyed by ref, reused when complete, refused when corrupted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conveyor.artifacts import ArtifactStore, build_artifact, sha256_file, tar_listing
from conveyor.config import parse_service
from conveyor.exceptions import ArtifactError, BuildError, InvalidInputError

GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com", "GIT_COMMITTER_NAME": "Ada",
           "GIT_COMMITTER_EMAIL": "ada@example.com", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}

BUILD = """
import pathlib, shutil, sys
out = pathlib.Path(sys.argv[1])
if pathlib.Path("FAIL").exists():
    print("compiling...\\nerror: the build is broken on purpose")
    sys.exit(3)
shutil.copytree("app", out / "app")
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "build.py").write_text(BUILD)
    (repo / "app" / "main.py").write_text("print('v1')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "tag", "v1.0.0")
    (repo / "app" / "main.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "second: print v2")
    git(repo, "tag", "v2.0.0")
    (repo / "FAIL").write_text("")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "break the build")
    git(repo, "tag", "v3.0.0")
    return repo


@pytest.fixture
def service(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    doc = {"id": "toy", "repo": {"url": str(repo)}, "build": {"command": ["python", "build.py", "{out}"]},
           "environments": {"replica": {"inventory": "local"}, "production": {"inventory": "local"}}}
    return parse_service(doc, Path("toy.yaml"))


def test_same_ref_same_key_and_bytes_and_no_rebuild(service, repo, tmp_path, monkeypatch):
    first = build_artifact(service, "v2.0.0")
    assert first.version == "v2.0.0"
    assert first.key == "toy/v2.0.0/toy-v2.0.0.tar.gz"
    assert tar_listing(first.tarball) == ["app", "app/main.py"]
    assert sha256_file(first.tarball) == first.sha256
    mtime = first.tarball.stat().st_mtime_ns
    again = build_artifact(service, "v2.0.0")
    assert (again.key, again.sha256) == (first.key, first.sha256)
    assert again.tarball.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # a fresh store on another "machine" builds the very same bytes
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "elsewhere"))
    assert build_artifact(service, "v2.0.0").sha256 == first.sha256


def test_manifest_has_commit_range_since_production(service, repo):
    v1 = build_artifact(service, "v1.0.0")
    v2 = build_artifact(service, "v2.0.0", since_commit=v1.commit)
    commits = v2.manifest["commit_range"]["commits"]
    assert [c["subject"] for c in commits] == ["second: print v2"]
    assert commits[0]["author"] == "Ada"
    assert v2.manifest["commit_range"]["from"] == v1.commit
    stored = ArtifactStore().manifest("toy", "v2.0.0")
    assert stored["commit"] == v2.commit and stored["sha256"] == v2.sha256


def test_branch_and_commit_refs_get_described_versions(service, repo):
    head = git(repo, "rev-parse", "HEAD~1")
    info = build_artifact(service, head[:12])
    assert info.version == "v2.0.0"  # the commit is tagged
    git(repo, "checkout", "-q", "-b", "feature", "v2.0.0")
    (repo / "app" / "extra.py").write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "feature work")
    info = build_artifact(service, "feature")
    assert info.version.startswith("v2.0.0-1-g")


def test_build_failure_reports_the_log_tail(service):
    with pytest.raises(BuildError) as err:
        build_artifact(service, "v3.0.0")
    assert "exit code 3" in str(err.value)
    assert "the build is broken on purpose" in str(err.value)
    assert ArtifactStore().manifest("toy", "v3.0.0") is None  # nothing stored


def test_bad_and_unknown_refs(service):
    with pytest.raises(InvalidInputError):
        build_artifact(service, "v1.0.0; rm -rf /")
    with pytest.raises(BuildError, match="does not exist"):
        build_artifact(service, "v9.9.9")


def test_moved_tag_is_refused(service, repo):
    build_artifact(service, "v1.0.0")
    git(repo, "tag", "-f", "v1.0.0", "v2.0.0")
    with pytest.raises(BuildError, match="tags must not move"):
        build_artifact(service, "v1.0.0")


def test_corrupted_artifact_is_refused(service):
    info = build_artifact(service, "v1.0.0")
    with open(info.tarball, "r+b") as fh:
        fh.seek(20)
        fh.write(b"\x00corrupt\x00")
    with pytest.raises(ArtifactError, match="corrupted"):
        build_artifact(service, "v1.0.0")
