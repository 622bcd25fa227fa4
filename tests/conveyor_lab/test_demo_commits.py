"""Commits pushed to the demo repository by ``conveyor demo commit`` (the CI side is in tests/conveyor/test_ci.py)."""

from __future__ import annotations

import pytest

from conveyor_lab.demo_commits import parse_author


def test_demo_commit_authors():
    assert parse_author("Dev Patel <dev@shop.example>") == ("Dev Patel", "dev@shop.example")
    assert parse_author("Kim Lee") == ("Kim Lee", "kim@shop.example")
    with pytest.raises(ValueError, match="invalid author"):
        parse_author("<x@y>")
