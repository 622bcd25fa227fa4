"""include/remote/conveyor-remote.sh, run with bash in a temporary login directory."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "include" / "remote" / "conveyor-remote.sh"


def make_tarball(path: Path, files: dict[str, str]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remote(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=home, env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def artifacts(home) -> dict[str, tuple[str, str]]:
    """Three versions: name -> (tarball path relative to home, sha256)."""
    out = {}
    for v in ("v1.0.0", "v1.1.0", "v1.2.0"):
        path = home / f"shop-{v}.tar.gz"
        out[v] = (path.name, make_tarball(path, {"shop/__main__.py": f"print({v!r})\n", "VERSION": v}))
    return out


def stage(home, artifacts, version):
    tarball, sha = artifacts[version]
    return remote(home, "stage", "app", version, sha, tarball)


def test_stage_unpacks_marks_and_is_idempotent(home, artifacts):
    result = stage(home, artifacts, "v1.0.0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "staged v1.0.0"
    release = home / "app" / "releases" / "v1.0.0"
    assert (release / "VERSION").read_text() == "v1.0.0"
    assert (release / ".conveyor-sha256").read_text().strip() == artifacts["v1.0.0"][1]
    again = stage(home, artifacts, "v1.0.0")
    assert again.returncode == 0 and again.stdout.strip() == "already staged v1.0.0"
    assert sorted(p.name for p in (home / "app" / "releases").iterdir()) == ["v1.0.0"]


def test_stage_accepts_absolute_and_home_relative_paths(home, artifacts):
    tarball, sha = artifacts["v1.0.0"]
    result = remote(home, "stage", str(home / "app"), "v1.0.0", sha, str(home / tarball))
    assert result.returncode == 0, result.stderr
    result = remote(home, "stage", "~/app", "v1.0.0", sha, f"~/{tarball}")
    assert result.stdout.strip() == "already staged v1.0.0"


def test_checksum_mismatch_exits_3_and_leaves_nothing(home, artifacts):
    tarball, _ = artifacts["v1.0.0"]
    result = remote(home, "stage", "app", "v1.0.0", "0" * 64, tarball)
    assert result.returncode == 3
    assert "checksum mismatch" in result.stderr
    assert not (home / "app").exists()


def test_corrupted_tarball_with_matching_checksum_exits_3_and_leaves_nothing(home):
    bad = home / "bad.tar.gz"
    bad.write_bytes(b"this is not gzip")
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    result = remote(home, "stage", "app", "v9", sha, "bad.tar.gz")
    assert result.returncode == 3, result.stderr
    assert "corrupted artifact" in result.stderr
    releases = home / "app" / "releases"
    assert not releases.exists() or list(releases.iterdir()) == []  # refused before anything was made


@pytest.mark.parametrize(("member", "kind", "why"), [
    ("../../evil.txt", "file", "leaves the release directory"),
    ("/tmp/evil.txt", "file", "absolute path"),
    ("escape", "symlink", "links are not allowed"),
    ("hard", "hardlink", "links are not allowed"),
])
def test_an_unsafe_member_is_refused_before_anything_is_unpacked(home, tmp_path, member, kind, why):
    """Tar slip: an artifact whose members could write outside its release directory, even with a
    matching checksum (a tampered store with its checksums rewritten), is refused as a whole."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = tarfile.TarInfo("shop/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(member)
        if kind == "file":
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        else:
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = str(tmp_path) if kind == "symlink" else "shop/ok.txt"
            tar.addfile(info)
    (home / "slip.tar.gz").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    result = remote(home, "stage", "app", "v9", sha, "slip.tar.gz")
    assert result.returncode == 3, result.stderr
    assert "unsafe artifact" in result.stderr and why in result.stderr
    releases = home / "app" / "releases"
    assert not releases.exists() or list(releases.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not list(home.parent.glob("evil.txt"))


def test_restaging_a_version_with_other_bytes_is_refused(home, artifacts):
    stage(home, artifacts, "v1.0.0")
    tarball, sha = artifacts["v1.1.0"]
    result = remote(home, "stage", "app", "v1.0.0", sha, tarball)
    assert result.returncode == 3
    assert "immutable" in result.stderr


def test_activate_switches_atomically_and_records_previous(home, artifacts):
    for v in ("v1.0.0", "v1.1.0"):
        stage(home, artifacts, v)
    assert remote(home, "current", "app").stdout.strip() == "none"
    first = remote(home, "activate", "app", "v1.0.0")
    assert first.returncode == 0 and first.stdout.strip() == "switched none -> v1.0.0"
    second = remote(home, "activate", "app", "v1.1.0")
    assert second.stdout.strip() == "switched v1.0.0 -> v1.1.0"
    current = home / "app" / "current"
    assert current.is_symlink() and os.readlink(current) == "releases/v1.1.0"
    assert (current / "VERSION").read_text() == "v1.1.0"
    assert (home / "app" / "previous").read_text().strip() == "v1.0.0"
    assert remote(home, "current", "app").stdout.strip() == "v1.1.0"
    same = remote(home, "activate", "app", "v1.1.0")
    assert same.returncode == 0 and same.stdout.strip() == "unchanged v1.1.0"
    assert (home / "app" / "previous").read_text().strip() == "v1.0.0"
    assert sorted(p.name for p in (home / "app").iterdir()) == ["current", "previous", "releases"]


def test_activate_unknown_version_exits_4(home, artifacts):
    stage(home, artifacts, "v1.0.0")
    result = remote(home, "activate", "app", "v7.7.7")
    assert result.returncode == 4
    assert "unknown version" in result.stderr
    assert remote(home, "current", "app").stdout.strip() == "none"


def test_prune_keeps_newest_plus_current_and_previous(home, artifacts):
    for i, v in enumerate(("v1.0.0", "v1.1.0", "v1.2.0")):
        stage(home, artifacts, v)
        marker = home / "app" / "releases" / v / ".conveyor-sha256"
        os.utime(marker, (1_000_000 + i * 10, 1_000_000 + i * 10))
    remote(home, "activate", "app", "v1.0.0")
    remote(home, "activate", "app", "v1.1.0")  # previous = v1.0.0
    (home / "extra").mkdir()
    extra_tar = home / "extra" / "x.tar.gz"
    sha = make_tarball(extra_tar, {"VERSION": "v0.9"})
    remote(home, "stage", "app", "v0.9", sha, "extra/x.tar.gz")
    os.utime(home / "app" / "releases" / "v0.9" / ".conveyor-sha256", (900_000, 900_000))
    result = remote(home, "prune", "app", "1")
    assert result.returncode == 0, result.stderr
    assert "pruned v0.9" in result.stdout
    assert sorted(p.name for p in (home / "app" / "releases").iterdir()) == ["v1.0.0", "v1.1.0", "v1.2.0"]
    result = remote(home, "prune", "app", "0")
    assert sorted(p.name for p in (home / "app" / "releases").iterdir()) == ["v1.0.0", "v1.1.0"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["explode"],
        ["stage", "app", "v1"],
        ["current"],
        ["activate", "app"],
        ["activate", "app", "v1", "extra"],
        ["activate", "app", "-v1"],
        ["activate", "app", "v1;rm -rf /"],
        ["activate", "app", "a" * 65],
        ["activate", "../app", "v1"],
        ["activate", "app/../../etc", "v1"],
        ["activate", "app$(id)", "v1"],
        ["activate", "-app", "v1"],
        ["activate", "app dir", "v1"],
        ["current", "a~b"],
        ["stage", "app", "v1", "ABC", "x.tar.gz"],
        ["stage", "app", "v1", "0" * 63, "x.tar.gz"],
        ["stage", "app", "v1", "0" * 64, "x`id`.tar.gz"],
        ["stage", "app", "v1", "0" * 64, "missing.tar.gz"],
        ["prune", "app", "two"],
        ["prune", "app", "-1"],
    ],
)
def test_bad_input_exits_2_and_changes_nothing(home, args):
    result = remote(home, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr
    assert list(home.iterdir()) == []


# ------------------------------------------------------------------------------ full disks, leftovers
def big_tarball(home: Path, version: str, size: int) -> tuple[str, str]:
    """An artifact whose unpacked size is ``size`` bytes (random bytes: gzip cannot shrink them)."""
    path = home / f"shop-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = os.urandom(size)
        info = tarfile.TarInfo("shop/blob.bin")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("VERSION")
        info.size, info.mode = len(version), 0o644
        tar.addfile(info, io.BytesIO(version.encode()))
    return path.name, hashlib.sha256(path.read_bytes()).hexdigest()


def visible(directory: Path) -> list[str]:
    """What a directory holds, apart from the filler that makes its disk full."""
    from tests.include.remote.disk_support import FILLER

    return sorted(p.name for p in directory.iterdir() if p.name != FILLER)


def test_stage_on_a_full_disk_exits_5_not_3_and_leaves_nothing(home):
    from tests.include.remote.disk_support import free_bytes, full_disk

    tarball, sha = big_tarball(home, "v2.0.0", 512 * 1024)  # the tarball itself is on a roomy disk
    releases = home / "app" / "releases"
    with full_disk(releases, free=64 * 1024):
        before = free_bytes(releases)
        result = remote(home, "stage", "app", "v2.0.0", sha, tarball)
        assert result.returncode == 5, (result.returncode, result.stderr)
        assert "no space left on device" in result.stderr
        assert "corrupted" not in result.stderr and "checksum" not in result.stderr
        assert visible(releases) == []  # no staging directory, no error file
        assert free_bytes(releases) == before  # everything it wrote is gone
    assert (home / tarball).is_file()  # the input is the caller's to remove


def test_activate_on_a_full_disk_exits_5_and_keeps_current(home, artifacts):
    from tests.include.remote.disk_support import full_disk

    for v in ("v1.0.0", "v1.1.0"):
        assert stage(home, artifacts, v).returncode == 0
    assert remote(home, "activate", "app", "v1.0.0").returncode == 0
    app = home / "app"
    with full_disk(app, free=0):
        result = remote(home, "activate", "app", "v1.1.0")
        assert result.returncode == 5, (result.returncode, result.stderr)
        assert "no space left on device" in result.stderr
        assert os.readlink(app / "current") == "releases/v1.0.0"
        assert visible(app) == ["current", "previous", "releases"]  # no half-written temporary files


def age(path: Path, hours: float) -> None:
    """Make ``path`` look ``hours`` old (its mtime)."""
    import time

    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)


def test_prune_removes_leftovers_older_than_an_hour(home, artifacts):
    for v in ("v1.0.0", "v1.1.0"):
        stage(home, artifacts, v)
    remote(home, "activate", "app", "v1.1.0")
    incoming = home / ".conveyor" / "incoming"
    incoming.mkdir(parents=True)
    app, releases = home / "app", home / "app" / "releases"
    old = {
        incoming / "shop-v0.9.tar.gz": "file", incoming / "shop-v1.2.tar.gz.part": "file",
        releases / ".staging-v1.2.0.AbC123": "dir", releases / ".staging-v1.2.0.AbC123.err": "file",
        app / ".current.4242": "link", app / ".previous.4242": "file",
    }
    fresh = {incoming / "shop-v1.3.tar.gz.part": "file", releases / ".staging-v1.3.0.XyZ789": "dir"}
    for path, kind in {**old, **fresh}.items():
        if kind == "dir":
            path.mkdir()
            (path / "half-unpacked.py").write_text("x = 1\n")
        elif kind == "link":
            path.symlink_to("releases/v1.0.0")
        else:
            path.write_bytes(b"\0" * 1000)
    for path in old:
        if path.is_dir() and not path.is_symlink():
            age(path / "half-unpacked.py", 2)
        age(path, 2)

    result = remote(home, "prune", "app", "5", ".conveyor/incoming")

    assert result.returncode == 0, result.stderr
    assert [p for p in old if p.exists() or p.is_symlink()] == []
    assert all(p.exists() for p in fresh)  # maybe a stage or an upload in progress: left alone
    assert sorted(p.name for p in releases.iterdir() if not p.name.startswith(".")) == ["v1.0.0", "v1.1.0"]
    assert os.readlink(app / "current") == "releases/v1.1.0"
    assert result.stdout.strip().splitlines()[-1].endswith("pruned 0, removed 6 leftover(s)")


def test_prune_without_leftovers_says_what_it_kept(home, artifacts):
    stage(home, artifacts, "v1.0.0")
    remote(home, "activate", "app", "v1.0.0")
    result = remote(home, "prune", "app", "5", ".conveyor/incoming")  # no incoming directory at all
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "kept 0 (+ current v1.0.0, previous none), pruned 0"


@pytest.mark.parametrize("incoming", ["../elsewhere", "-rf", "in coming", "/tmp/$(id)"])
def test_prune_refuses_a_bad_incoming_directory(home, artifacts, incoming):
    stage(home, artifacts, "v1.0.0")
    result = remote(home, "prune", "app", "1", incoming)
    assert result.returncode == 2, result.stderr
    assert "invalid incoming" in result.stderr
