"""Strict patterns for refs, versions and hosts: nothing with a shell metacharacter gets through."""

from __future__ import annotations

import pytest

from conveyor import validation
from conveyor.exceptions import InvalidInputError

EVIL = ["v1.1.0; rm -rf /", "$(id)", "`id`", "a b", "x|y", "x&y", "x>y", "'q'", '"q"', "-rf", "a..b", "a\nb",
        "~user", "a\\b", "a@{1}", ""]


@pytest.mark.parametrize("value", EVIL)
def test_git_ref_refuses(value):
    with pytest.raises(InvalidInputError):
        validation.git_ref(value)


@pytest.mark.parametrize("value", ["v1.1.0", "main", "feature/x-1", "0123456789abcdef", "v2.0.0-rc.1+b5"])
def test_git_ref_accepts(value):
    assert validation.git_ref(value) == value


@pytest.mark.parametrize("value", [*(e for e in EVIL if e != "a..b"), "v1/2", "../x", ".."])
def test_version_refuses(value):
    with pytest.raises(InvalidInputError):
        validation.version(value)


def test_sha256_host_and_path():
    assert validation.sha256("a" * 64)
    for bad in ("A" * 64, "a" * 63, "g" * 64):
        with pytest.raises(InvalidInputError):
            validation.sha256(bad)
    assert validation.host_name("prod-1.example.com")
    with pytest.raises(InvalidInputError):
        validation.host_name("prod-1;reboot")
    assert validation.remote_path("app") and validation.remote_path("/srv/shop/app")
    for bad in ("../etc", "app/../../etc", "a b", "$HOME"):
        with pytest.raises(InvalidInputError):
            validation.remote_path(bad)
