"""The demo service's repository and traffic: a small shop with a scripted release history.

:func:`create_demo_repo` turns ``include/demo/app`` into a bare git repository whose tags are the
demo's releases. The history is fixed (authors, dates, messages), so the commits, and therefore the
artifacts, are the same on every machine. Each candidate branches off ``v1.1.0`` and carries one
behaviour (set in ``shop/release.py``) that a release process should catch:

========  =======================================================================  ===================
tag       change                                                                   caught by
========  =======================================================================  ===================
v1.0.0    the shop as the fleet starts with                                        -
v1.1.0    a good release                                                           -
v1.2.0    recommendations fail 25% of the time (about 5% of all traffic)          canary analysis
v1.3.0    needs a setting only the replica has: does not start in soak/production canary health check
v1.4.0    a synchronous audit call adds 150 ms to every request                    load test (p95)
v1.5.0    the bulk discount is applied twice                                       unit tests
v1.6.0    a new test for a bug production already has (case-sensitive search)      pre-existing failure
v1.7.0    its lock file pins jinja2 3.1.4, which a (lab) advisory rates high       dependency audit
========  =======================================================================  ===================

Every version ships its lock file, ``requirements.txt`` (pinned packages the audit stage checks);
v1.7.0's comes from ``include/demo/history/requirements-v1.7.0.txt``, and its advisory from
``include/demo/advisories.json``, which the lab's OSV server (:mod:`conveyor_lab.osv`) serves.
"""

from __future__ import annotations

import fcntl
import hashlib
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.commands import git
from conveyor.paths import DEMO_DIR, local_repo_dir

DEMO_REPO = "demo_shop"  # the demo service's ``repo.url: local:demo_shop``
APP_DIR = DEMO_DIR / "app"
HISTORY_DIR = DEMO_DIR / "history"
FINGERPRINT_FILE = "conveyor-demo-fingerprint"


@dataclass(frozen=True)
class Step:
    tag: str
    parent: str | None
    author: tuple[str, str]
    date: str
    message: str
    release: dict[str, object] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # repo path -> file under include/demo/history


ANA = ("Ana Garcia", "ana@shop.example")
BEN = ("Ben Okafor", "ben@shop.example")
CHLOE = ("Chloe Martin", "chloe@shop.example")

HISTORY: tuple[Step, ...] = (
    Step("v1.0.0", None, ANA, "2026-11-02T09:00:00+00:00", "Shop 1.0: catalog, cart and recommendations"),
    Step("v1.1.0", "v1.0.0", BEN, "2026-11-03T09:30:00+00:00", "Catalog: paginate the products API"),
    Step("v1.2.0", "v1.1.0", CHLOE, "2026-11-04T10:00:00+00:00", "Recommendations: switch to the new model",
         release={"RECOMMENDATIONS_FAILURE_RATE": 0.25}),
    Step("v1.3.0", "v1.1.0", BEN, "2026-11-05T10:00:00+00:00", "Payments: read the gateway from SHOP_PAYMENT_GATEWAY",
         release={"REQUIRED_SETTINGS": ("SHOP_PAYMENT_GATEWAY",)}),
    Step("v1.4.0", "v1.1.0", CHLOE, "2026-11-06T10:00:00+00:00", "Compliance: audit every request synchronously",
         release={"EXTRA_LATENCY_S": 0.15}),
    Step("v1.5.0", "v1.1.0", ANA, "2026-11-09T10:00:00+00:00", "Cart: apply the bulk discount per line",
         release={"CART_DISCOUNT_BUG": True}),
    Step("v1.6.0", "v1.1.0", CHLOE, "2026-11-10T10:00:00+00:00", "Search: test lowercase queries",
         files={"tests/integration/test_search.py": "test_search.py"}),
    Step("v1.7.0", "v1.1.0", BEN, "2026-11-11T10:00:00+00:00", "Reports: render order summaries with Jinja2",
         files={"requirements.txt": "requirements-v1.7.0.txt"}),
)


def _release_py(step: Step) -> str:
    """``shop/release.py`` for ``step``: the base file with the step's version and behaviours."""
    text = (APP_DIR / "shop" / "release.py").read_text()
    for name, value in {"VERSION": step.tag, **step.release}.items():
        pattern = re.compile(rf"^{name} = [^#\n]*?(\s*#.*)?$", re.MULTILINE)
        if not pattern.search(text):
            raise ValueError(f"shop/release.py has no {name}")
        text = pattern.sub(lambda m, n=name, v=value: f"{n} = {v!r}{m[1] or ''}", text, count=1)
    return text


def _lineage(step: Step) -> list[Step]:
    by_tag = {s.tag: s for s in HISTORY}
    chain = [step]
    while chain[-1].parent:
        chain.append(by_tag[chain[-1].parent])
    return chain[::-1]


def fingerprint() -> str:
    """A digest of everything the demo repository is made from."""
    h = hashlib.sha256()
    for base in (APP_DIR, HISTORY_DIR):
        for path in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(DEMO_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr(HISTORY).encode())
    return h.hexdigest()


def _build(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="demo-repo-") as tmp:
        work = Path(tmp) / "work"
        git("init", "--quiet", "--initial-branch=main", str(work), cwd=Path(tmp))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for step in HISTORY:
            if step.parent:
                git("checkout", "--quiet", "--detach", step.parent, cwd=work)
            for child in work.iterdir():
                if child.name != ".git":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            shutil.copytree(APP_DIR, work, ignore=ignore, dirs_exist_ok=True)
            (work / "shop" / "release.py").write_text(_release_py(step))
            for ancestor in _lineage(step):
                for repo_path, source in ancestor.files.items():
                    (work / repo_path).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(HISTORY_DIR / source, work / repo_path)
            git("add", "--all", cwd=work)
            name, email = step.author
            env = {
                "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": step.date,
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": step.date,
            }
            git("-c", "commit.gpgsign=false", "commit", "--quiet", "--allow-empty", "-m", step.message,
                cwd=work, env=env)
            git("-c", "tag.gpgsign=false", "tag", "-a", step.tag, "-m", f"Release {step.tag}", cwd=work, env=env)
            if step.tag == "v1.1.0":
                git("branch", "--force", "main", "HEAD", cwd=work)
        git("checkout", "--quiet", "main", cwd=work)
        staging = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        git("clone", "--quiet", "--bare", str(work), str(staging), cwd=Path(tmp))
        (staging / FINGERPRINT_FILE).write_text(fingerprint() + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)


def create_demo_repo(dest: Path | None = None) -> Path:
    """The demo's bare repository (created, or re-created when ``include/demo`` changed); returns its path.

    By default it is where the demo service's ``repo.url: local:demo_shop`` points:
    ``local_repo_dir("demo_shop")`` (``$CONVEYOR_HOME/repos/demo_shop.git``). Conveyor itself never
    creates it: ``Fleet.up`` (so ``make run``) does, and so must a test that builds the demo without a fleet.
    Raises :class:`~conveyor.exceptions.BuildError` when git fails.
    """
    dest = Path(dest or local_repo_dir(DEMO_REPO))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = dest / FINGERPRINT_FILE
        if not (marker.exists() and marker.read_text().strip() == fingerprint()):
            _build(dest)
    return dest


# ------------------------------------------------------------------------------------ traffic
def traffic_request(rng: random.Random, products: int = 50) -> tuple[str, str, bytes | None]:
    """One request of the demo's steady traffic: ``(method, path, body)``.

    The mix: 40% catalog pages, 25% product pages, 20% recommendations, 15% cart updates.
    ``products`` bounds the ids asked for (production and soak hosts hold the 50-product default catalog).
    """
    r = rng.random()
    pid = rng.randint(1, products)
    if r < 0.40:
        return "GET", f"/products?page={rng.randint(1, 3)}", None
    if r < 0.65:
        return "GET", f"/products/{pid}", None
    if r < 0.85:
        return "GET", f"/recommendations/{pid}", None
    body = f'{{"items": [{{"id": {pid}, "quantity": {rng.randint(1, 12)}}}]}}'.encode()
    return "POST", "/cart", body
