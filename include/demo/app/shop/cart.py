"""Cart pricing."""

from __future__ import annotations

from shop import release

BULK_QUANTITY = 10  # 10 or more items of one product: 10% off that line


def line_total(price_cents: int, quantity: int) -> int:
    if quantity < 0:
        raise ValueError("quantity must be >= 0")
    total = price_cents * quantity
    if quantity >= BULK_QUANTITY:
        total = total * 9 // 10
        if release.CART_DISCOUNT_BUG:
            total = total * 9 // 10
    return total


def cart_total(lines: list[tuple[int, int]]) -> int:
    """Total in cents of ``(price_cents, quantity)`` lines."""
    return sum(line_total(p, q) for p, q in lines)
