"""A really full disk for one directory: a small tmpfs mounted over it (the test process is root in
the sandbox; elsewhere the tests that need it are skipped, saying why).

``full_disk(directory, free=...)`` mounts a tmpfs over ``directory`` holding a copy of what was in it,
fills it with a hidden ``.filler`` file until only ``free`` bytes are left, and unmounts it when the
block ends (the directory's own files reappear as they were). Every process on the machine sees the
mount, so a fleet host's SSH server and the remote script write to the small filesystem and get
the kernel's own ``ENOSPC``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = ".filler"


def _tree_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*")) if path.is_dir() else 0


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@contextmanager
def full_disk(directory: Path, *, free: int = 16 * 1024) -> Iterator[Path]:
    """``directory`` on a small filesystem with ``free`` bytes left (see the module docs)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("filling a disk needs root (mount -t tmpfs)")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="disk-copy-") as tmp:
        copy = Path(tmp) / "copy"
        shutil.copytree(directory, copy, symlinks=True)
        # Room for the copy (tmpfs counts whole pages per file), the free space, and a margin to fill.
        pages = sum(1 for _ in copy.rglob("*")) + 16
        size = _tree_bytes(copy) + pages * 4096 + free + 1024 * 1024
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "conveyor-test-disk",
                                  str(directory)], capture_output=True, text=True, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
        try:
            shutil.copytree(copy, directory, symlinks=True, dirs_exist_ok=True)
            _fill(directory, leave=free)
            yield directory
        finally:
            subprocess.run(["sync"], check=False)
            if subprocess.run(["umount", str(directory)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def _fill(directory: Path, *, leave: int) -> None:
    """Write zeros to ``directory/.filler`` until about ``leave`` bytes are free."""
    with open(directory / FILLER, "wb") as fh:
        while (room := free_bytes(directory) - leave) > 0:
            try:
                fh.write(b"\0" * min(room, 1024 * 1024))
                fh.flush()
            except OSError:
                break
