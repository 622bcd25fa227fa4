"""Reset a (replica) host's shop data: a generated catalog, the same for the same seed.

    python3 populate.py --data-dir data --products 500 --seed 42

Self-contained (stdlib only): it runs on the host from the unpacked release. Writes atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shop import catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not 1 <= args.products <= 100_000:
        parser.error("--products must be between 1 and 100000")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    products = catalog.generate(args.products, args.seed)
    tmp = args.data_dir / "products.json.tmp"
    tmp.write_text(json.dumps(products))
    os.replace(tmp, args.data_dir / "products.json")
    print(f"populated {args.data_dir}: {len(products)} products (seed {args.seed})")


if __name__ == "__main__":
    main()
