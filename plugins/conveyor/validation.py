r"""Strict patterns for everything that may reach a shell or a path on a host.

Pure functions, no Airflow import. A value either matches its pattern exactly or is refused with
an error that says which value and why; nothing is ever "cleaned up" into a valid one.

Every pattern ends in ``(?!\n)$``, not a bare ``$``: in Python, ``$`` also matches just before a
final newline, and jsonschema (Airflow's ``Param``) and pydantic's ``pattern`` use ``re.search``, so
``^...$`` alone lets ``"v1.1.0\n"`` through. The look-ahead refuses it there and is a no-op in the
browser's JavaScript (whose ``$`` never matches before a newline); ``\Z`` is not JavaScript.
"""

from __future__ import annotations

import ipaddress
import re

from conveyor.exceptions import InvalidInputError

END = r"(?!\n)$"  # the end of the string, and nothing after it: not even one newline


def strict(body: str) -> re.Pattern[str]:
    """``^body`` up to the very end of the string, in Python's ``re`` and in JavaScript alike."""
    return re.compile(f"^{body}{END}")

# A git ref as users type it: tags like v1.2.0, branches like release/2026-11, or a commit SHA.
# No shell metacharacters, no whitespace, no "..", no leading "-" (option injection), no "@{".
GIT_REF_RE = strict(r"(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9][A-Za-z0-9._/+-]{0,127}(?<![./])")
VERSION_RE = strict(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
SHA256_RE = strict(r"[0-9a-f]{64}")
COMMIT_RE = strict(r"[0-9a-f]{7,40}")
SERVICE_ID_RE = strict(r"[a-z][a-z0-9_]{0,62}")
SUITE_NAME_RE = strict(r"[a-z][a-z0-9_-]{0,31}")
BRANCH_RE = strict(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
GROUP_NAME_RE = strict(r"[a-z][a-z0-9_-]{0,62}")
# A user (Airflow user name) or "@group": one line, no control characters, no surrounding blanks.
PERSON_RE = strict(r"[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,254}[^\s\x00-\x1f\x7f])?")
# An Airflow connection id (Airflow's own allowed characters, airflow.models.connection).
CONN_ID_RE = strict(r"[\w#!()\-.:/\\]{1,250}")
# An http(s) URL: no whitespace or control characters anywhere.
URL_RE = strict(r"https?://[^\s\x00-\x1f\x7f]+")
GITHUB_REPOSITORY_RE = strict(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
# Host names (inventory names, DNS names) and addresses (DNS names, IPv4; IPv6 see host_address).
HOST_NAME_RE = strict(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
HOST_ADDRESS_RE = HOST_NAME_RE
REMOTE_PATH_RE = strict(r"(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_./~-]{1,255}")
# A path inside the service's repository: relative, no "..".
TEST_PATH_RE = strict(r"(?!/)(?!.*\.\.)[\w./-]+")
# Absolute app roots: below one of these directories, at least one level deep (/srv/shop). Anything
# else absolute (/, /etc, /usr/..., /root, /tmp) is refused: the deploy writes releases/, current and
# previous there, and prunes old releases.
APP_ROOT_PARENTS = ("/srv/", "/opt/", "/home/", "/var/www/", "/var/lib/", "/data/", "/app/")

# The same pattern as JSON schema (Params) can use: it must refuse at trigger time.
GIT_REF_PATTERN = GIT_REF_RE.pattern
VERSION_PATTERN = VERSION_RE.pattern


def _check(value: object, regex: re.Pattern[str], what: str) -> str:
    # search, as jsonschema and pydantic do: the patterns themselves refuse a trailing newline.
    if not isinstance(value, str) or not regex.search(value):
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
    """A DNS name, an IPv4 address, or a bare IPv6 address (``2001:db8::5``; no brackets, no ``%zone``).

    ``host:port`` is refused: the SSH port is the host's ``ssh_port``.
    """
    if isinstance(value, str) and ":" in value:
        if _is_ipv6(value):
            return value
        raise InvalidInputError(
            f"invalid host address {value!r}: a DNS name, an IPv4 address or a bare IPv6 address; "
            "'host:port' is not an address (give the port as ssh_port)"
        )
    if not isinstance(value, str) or not HOST_ADDRESS_RE.search(value):
        raise InvalidInputError(f"invalid host address {value!r}: a DNS name, an IPv4 address or a bare IPv6 "
                                f"address (must match {HOST_ADDRESS_RE.pattern} or parse as IPv6)")
    return value


def _is_ipv6(value: str) -> bool:
    if not re.fullmatch(r"[0-9A-Fa-f:.]{2,45}", value):  # no zone id ("%eth0"), brackets or newline
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def url_host(address: str) -> str:
    """``address`` as the host part of a URL: IPv6 in brackets (``http://[::1]:8000``)."""
    return f"[{address}]" if ":" in address else address


def remote_path(value: object) -> str:
    return _check(value, REMOTE_PATH_RE, "remote path")


def app_root(value: object) -> str:
    """Where a host keeps its releases: relative (to the SSH login's home), ``~/...``, or absolute under
    one of :data:`APP_ROOT_PARENTS` and at least one level below it."""
    if isinstance(value, str) and ".." in value.split("/"):
        raise InvalidInputError(f"invalid app_root {value!r}: '..' is not allowed (no way out of the host layout)")
    if not isinstance(value, str) or not REMOTE_PATH_RE.search(value):
        raise InvalidInputError(f"invalid app_root {value!r}: only letters, digits and _ . / ~ - on one line "
                                f"(must match {REMOTE_PATH_RE.pattern})")
    path = value
    if "~" in path[1:] or (path.startswith("~") and path != "~" and not path.startswith("~/")):
        raise InvalidInputError(f"invalid app_root {path!r}: '~' is only allowed as the first component (~/app)")
    if path.startswith("/"):
        parent = next((p for p in APP_ROOT_PARENTS if path.startswith(p)), None)
        if parent is None or not path[len(parent):].strip("/"):
            raise InvalidInputError(
                f"invalid app_root {path!r}: an absolute app_root must be a directory below "
                f"{', '.join(p.rstrip('/') for p in APP_ROOT_PARENTS)} (e.g. /srv/shop); or use a path "
                "relative to the SSH login's home (app, ~/apps/shop)"
            )
    return path
