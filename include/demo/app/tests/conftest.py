"""Shared fixtures: the shop's sources on sys.path, and the replica URLs the suites run against."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shop package
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shophttp


@pytest.fixture(scope="session")
def urls() -> list[str]:
    """Base URLs of the hosts under test (``CONVEYOR_REPLICA_URLS``, set by Conveyor's test stage)."""
    raw = os.environ.get("CONVEYOR_REPLICA_URLS") or os.environ.get("SHOP_URLS", "")
    found = [u.rstrip("/") for u in raw.split(",") if u.strip()]
    if not found:
        pytest.skip("no CONVEYOR_REPLICA_URLS: these tests run against deployed hosts")
    return found

