from __future__ import annotations

from shop import cart


def test_single_item():
    assert cart.cart_total([(1000, 1)]) == 1000


def test_bulk_discount_is_ten_percent():
    assert cart.cart_total([(1000, 10)]) == 9000


def test_mixed_lines():
    assert cart.cart_total([(250, 2), (1000, 10)]) == 500 + 9000


def test_negative_quantity_is_refused():
    import pytest

    with pytest.raises(ValueError, match="quantity must be >= 0"):
        cart.line_total(100, -1)
