"""Build the shop's release artifact: ``python build.py --out DIR``.

Checks the sources compile, then copies what a host needs (``shop/``, ``populate.py``, ``tests/``)
and the lock file (``requirements.txt``, which Conveyor's audit stage checks) into DIR, with
``shop/BUILD_INFO.json`` (version and commit from ``CONVEYOR_VERSION`` and ``CONVEYOR_COMMIT``, set
by Conveyor's build stage).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not compileall.compile_dir(ROOT / "shop", quiet=1, legacy=False, force=True, workers=1):
        sys.exit("build failed: shop/ does not compile")
    sys.path.insert(0, str(ROOT))
    from shop import release

    version = os.environ.get("CONVEYOR_VERSION") or release.VERSION
    args.out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("shop", "tests"):
        shutil.copytree(ROOT / name, args.out / name, ignore=ignore, dirs_exist_ok=True)
    for name in ("populate.py", "requirements.txt"):
        shutil.copy2(ROOT / name, args.out / name)
    info = {"version": version, "commit": os.environ.get("CONVEYOR_COMMIT", "unknown")}
    (args.out / "shop" / "BUILD_INFO.json").write_text(json.dumps(info, sort_keys=True) + "\n")
    print(f"built shop {version} into {args.out}")


if __name__ == "__main__":
    main()
