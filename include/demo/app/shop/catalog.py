"""The product catalog, stored as ``products.json`` in the data directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

from shop import release

ADJECTIVES = ["Red", "Blue", "Oak", "Steel", "Linen", "Cosy", "Tiny", "Grand", "Smart", "Retro"]
NOUNS = ["Lamp", "Chair", "Mug", "Desk", "Shelf", "Rug", "Clock", "Vase", "Stool", "Kettle"]


def generate(count: int, seed: int) -> list[dict]:
    """``count`` products, the same for the same seed."""
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "name": f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i}",
            "price_cents": rng.randrange(199, 49999),
            "stock": rng.randrange(0, 100),
        }
        for i in range(1, count + 1)
    ]


def load(data_dir: Path) -> list[dict]:
    """The catalog in ``data_dir``; a fresh host with no data gets a small default catalog."""
    path = Path(data_dir) / "products.json"
    if not path.exists():
        return generate(50, seed=1)
    return json.loads(path.read_text())


def search(products: list[dict], query: str) -> list[dict]:
    if release.SEARCH_CASE_SENSITIVE:
        return [p for p in products if query in p["name"]]
    q = query.lower()
    return [p for p in products if q in p["name"].lower()]
