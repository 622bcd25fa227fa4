"""Push a new commit to the demo repository's ``main``, red or green, to watch ``ci_demo_shop`` react.

``conveyor demo commit --red`` breaks a unit test (it moves the cart's bulk-discount threshold,
``BULK_QUANTITY`` in ``shop/cart.py``, away from 10, so ``tests/unit/test_cart.py`` fails);
``conveyor demo commit --green`` fixes it when it is broken, or else makes a harmless change (a line
in the shop's README). The commit is made in a throwaway clone of the demo's bare repository and
pushed back to ``main``, as a developer would push.

Re-creating the demo repository (it happens when ``include/demo`` changes) drops these commits.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from pathlib import Path

from conveyor.commands import git
from conveyor_lab.demo import create_demo_repo

BRANCH = "main"
GOOD_BULK_QUANTITY = 10
_BULK_RE = re.compile(r"^BULK_QUANTITY = (\d+)", re.MULTILINE)
_AUTHOR_RE = re.compile(r"^\s*(?P<name>[^<>]+?)\s*(?:<(?P<email>[^<>\s]+@[^<>\s]+)>)?\s*$")
DEFAULT_RED_AUTHOR = "Dev Patel <dev@shop.example>"
DEFAULT_GREEN_AUTHOR = "Ana Garcia <ana@shop.example>"


def parse_author(author: str) -> tuple[str, str]:
    """``"Name <email>"`` or ``"Name"`` (email made up as ``<first name>@shop.example``)."""
    m = _AUTHOR_RE.fullmatch(author or "")
    if not m or not m["name"].strip():
        raise ValueError(f"invalid author {author!r}: use 'Name' or 'Name <email>'")
    name = m["name"].strip()
    email = m["email"] or f"{re.sub(r'[^a-z0-9]+', '.', name.split()[0].lower()).strip('.') or 'dev'}@shop.example"
    return name, email


def _change(work: Path, red: bool) -> str:
    """Edit the work tree; return the default commit message."""
    cart = work / "shop" / "cart.py"
    text = cart.read_text()
    m = _BULK_RE.search(text)
    if not m:
        raise RuntimeError("shop/cart.py has no BULK_QUANTITY line")
    current = int(m[1])
    if red:
        new = current + 1 if current != GOOD_BULK_QUANTITY else GOOD_BULK_QUANTITY + 2
        cart.write_text(_BULK_RE.sub(f"BULK_QUANTITY = {new}", text, count=1))
        return f"Cart: bulk discount from {new} items"
    if current != GOOD_BULK_QUANTITY:
        cart.write_text(_BULK_RE.sub(f"BULK_QUANTITY = {GOOD_BULK_QUANTITY}", text, count=1))
        return f"Cart: back to the bulk discount from {GOOD_BULK_QUANTITY} items"
    readme = work / "README.md"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    with open(readme, "a") as fh:
        fh.write(f"\n<!-- demo commit {stamp} -->\n")
    return "Docs: touch up the README"


def push_demo_commit(red: bool, message: str | None = None, author: str | None = None,
                     repo: Path | None = None) -> str:
    """Commit a red (a unit test fails) or green change on the demo repository's ``main``; return its sha."""
    name, email = parse_author(author or (DEFAULT_RED_AUTHOR if red else DEFAULT_GREEN_AUTHOR))
    bare = Path(repo) if repo else create_demo_repo()
    with tempfile.TemporaryDirectory(prefix="demo-commit-") as tmp:
        work = Path(tmp) / "work"
        git("clone", "--quiet", "--branch", BRANCH, str(bare), str(work), cwd=Path(tmp))
        default_message = _change(work, red)
        git("add", "--all", cwd=work)
        env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
               "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        git("-c", "commit.gpgsign=false", "commit", "--quiet", "-m", message or default_message, cwd=work, env=env)
        sha = git("rev-parse", "HEAD", cwd=work)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}", cwd=work)
    return sha


__all__ = ["push_demo_commit"]
