"""Strict patterns for refs, versions and hosts: nothing with a shell metacharacter gets through."""

from __future__ import annotations

import pytest

from conveyor import validation
from conveyor.exceptions import InvalidInputError

EVIL = ["v1.1.0; rm -rf /", "$(id)", "`id`", "a b", "x|y", "x&y", "x>y", "'q'", '"q"', "-rf", "a..b", "a\nb",
        "~user", "a\\b", "a@{1}", "", "v1.1.0\n", "main\n", "0123abcd\n", "\nmain"]


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


# One valid value per pattern: with a newline after it, no pattern may match, under re.search (what
# jsonschema and pydantic use), re.match or re.fullmatch.
VALID = {
    "GIT_REF_RE": "v1.1.0", "VERSION_RE": "v1.1.0", "SHA256_RE": "a" * 64, "COMMIT_RE": "0123abcd",
    "SERVICE_ID_RE": "demo_shop", "SUITE_NAME_RE": "unit", "BRANCH_RE": "main", "GROUP_NAME_RE": "qa",
    "PERSON_RE": "qa1", "CONN_ID_RE": "aws_default", "URL_RE": "http://x/health", "GITHUB_REPOSITORY_RE": "o/r",
    "HOST_NAME_RE": "web-1", "HOST_ADDRESS_RE": "10.0.0.5", "REMOTE_PATH_RE": "app", "TEST_PATH_RE": "tests",
}


def test_every_pattern_is_covered():
    patterns = {name for name, value in vars(validation).items() if name.endswith("_RE")}
    assert patterns == set(VALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_no_pattern_matches_a_trailing_newline(name):
    regex = getattr(validation, name)
    value = VALID[name]
    assert regex.search(value)
    for bad in (value + "\n", value + "\n\n", "\n" + value, value + "\r\n"):
        assert not regex.search(bad) and not regex.match(bad) and not regex.fullmatch(bad), (name, bad)
    assert "\\Z" not in regex.pattern  # not JavaScript


def test_git_ref_pattern_is_the_params_pattern():
    assert validation.GIT_REF_PATTERN == validation.GIT_REF_RE.pattern
    for bad in ("v1.1.0\n", "main\n", "0123456789abcdef0123456789abcdef01234567\n"):
        with pytest.raises(InvalidInputError):
            validation.git_ref(bad)


@pytest.mark.parametrize("value", ["10.0.0.5", "web-1.example.com", "::1", "2001:db8::5", "::ffff:10.0.0.5"])
def test_host_address_accepts(value):
    assert validation.host_address(value) == value


@pytest.mark.parametrize("value", ["10.0.0.5:22", "web:2222", "[::1]", "[::1]:22", "fe80::1%eth0", "::1\n",
                                   "10.0.0.5\n", "a b", "", ":::", "1:2:3:4:5:6:7:8:9"])
def test_host_address_refuses(value):
    with pytest.raises(InvalidInputError):
        validation.host_address(value)


@pytest.mark.parametrize("value", ["app", "~", "~/app", "apps/shop", "/srv/shop", "/opt/shop/current-app",
                                   "/home/deploy/app", "/var/www/shop", "/var/lib/shop", "/data/shop", "/app/shop"])
def test_app_root_accepts(value):
    assert validation.app_root(value) == value


@pytest.mark.parametrize("value", ["../../etc", "app/../../etc", "..", "/", "/etc", "/etc/shop", "/srv", "/srv/",
                                   "/usr/local/shop", "/root/app", "/tmp/app", "/var/log/app", "app\n", "~user/app",
                                   "app/~", "a b", "$HOME/app", "/srvx/app"])
def test_app_root_refuses(value):
    with pytest.raises(InvalidInputError):
        validation.app_root(value)
