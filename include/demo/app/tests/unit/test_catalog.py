from __future__ import annotations

from shop import catalog


def test_generate_is_deterministic():
    assert catalog.generate(20, seed=7) == catalog.generate(20, seed=7)
    assert catalog.generate(20, seed=7) != catalog.generate(20, seed=8)


def test_generate_ids_are_sequential():
    assert [p["id"] for p in catalog.generate(5, seed=1)] == [1, 2, 3, 4, 5]


def test_search_finds_exact_words():
    products = [{"id": 1, "name": "Oak Lamp 1"}, {"id": 2, "name": "Red Mug 2"}]
    assert [p["id"] for p in catalog.search(products, "Lamp")] == [1]
