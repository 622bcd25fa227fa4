"""Strict patterns for everything that may reach a shell or a path on a host.

Pure functions, no Airflow import. A value either matches its pattern exactly or is refused with
an error that says which value and why; nothing is ever "cleaned up" into a valid one.
"""

from __future__ import annotations

import re

from conveyor.exceptions import InvalidInputError

# A git ref as users type it: tags like v1.2.0, branches like release/2026-11, or a commit SHA.
# No shell metacharacters, no whitespace, no "..", no leading "-" (option injection), no "@{".
GIT_REF_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9][A-Za-z0-9._/+-]{0,127}(?<![./])$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
SERVICE_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SUITE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# Host names (inventory names, DNS names) and addresses (names, IPv4, or IPv6 with colons).
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
HOST_ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
REMOTE_PATH_RE = re.compile(r"^(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_./~-]{1,255}$")
# A path inside the service's repository: relative, no "..".
TEST_PATH_RE = re.compile(r"^(?!/)(?!.*\.\.)[\w./-]+$")

# The same pattern as JSON schema (Params) can use: it must refuse at trigger time.
GIT_REF_PATTERN = GIT_REF_RE.pattern


def _check(value: object, regex: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not regex.fullmatch(value):
        raise InvalidInputError(f"invalid {what} {value!r}: must match {regex.pattern}")
    return value


def git_ref(value: object) -> str:
    return _check(value, GIT_REF_RE, "git ref")


def version(value: object) -> str:
    return _check(value, VERSION_RE, "version")


def sha256(value: object) -> str:
    return _check(value, SHA256_RE, "sha256")


def host_name(value: object) -> str:
    return _check(value, HOST_NAME_RE, "host name")


def host_address(value: object) -> str:
    return _check(value, HOST_ADDRESS_RE, "host address")


def remote_path(value: object) -> str:
    return _check(value, REMOTE_PATH_RE, "remote path")
