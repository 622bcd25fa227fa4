"""A small OSV-compatible advisory server for the lab: the part of https://api.osv.dev that pip-audit
and Conveyor's dependency audit use, serving advisories from a JSON file.

- ``POST /v1/query`` with ``{"package": {"name", "ecosystem": "PyPI"}, "version"}`` answers
  ``{"vulns": [<OSV record>, ...]}``: every advisory whose ``affected`` entry names the package
  (PEP 503 names) and covers the version, by its ``versions`` list or by an ``ECOSYSTEM`` range
  (``introduced`` / ``fixed`` / ``last_affected`` events, PEP 440 ordering). No match: ``{}``, as OSV.
- ``GET /v1/vulns/<id>`` answers the record (404 ``{"code": 5, "message": "Bug not found."}`` otherwise).

The advisories file is a JSON list of OSV records (https://ossf.github.io/osv-schema/), re-read on
every request, so a test (or a person running the demo) can change it while the server runs.
``include/demo/advisories.json`` is the demo's; ``make run`` serves it on ``127.0.0.1:8470``, where the
demo service's ``audit.osv_url`` points (the public OSV host is not reachable from the lab machine).

Run it with ``python -m conveyor_lab.osv --advisories FILE [--host 127.0.0.1] [--port 8470]``, or in a
test with :class:`OsvServer` (port 0: a free one). ``fail_with`` makes a running server answer every
query with that HTTP status (a broken advisory service, for the "could not audit" tests), and
``fail_lookups_with`` every record lookup.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from conveyor.paths import DEMO_DIR

DEMO_ADVISORIES = DEMO_DIR / "advisories.json"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8470  # the demo service's audit.osv_url
_MAX_BODY = 1 << 16


def canonical_name(name: str) -> str:
    """PEP 503: ``Jinja2`` and ``jinja_2`` are the same project as ``jinja2``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_advisories(path: Path) -> list[dict[str, Any]]:
    """The OSV records of an advisories file (a JSON list); ``ValueError`` says what is wrong with it."""
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                                for r in records):
        raise ValueError(f"{path}: expected a JSON list of OSV records, each with an 'id'")
    return records


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _in_range(version: Version, events: list[dict[str, str]]) -> bool:
    """Whether ``version`` is affected by an OSV ``ECOSYSTEM`` range (events in any order)."""
    points = []
    for event in events:
        for kind in ("introduced", "fixed", "last_affected"):
            if kind in event:
                at = Version("0") if event[kind] == "0" else _version(event[kind])
                if at is not None:
                    points.append((at, kind))
    affected = False
    # Walk the events in version order: introduced opens, fixed closes (exclusive), last_affected
    # closes (inclusive); ties: the closing event of a version applies after an opening one.
    for at, kind in sorted(points, key=lambda p: (p[0], p[1] != "introduced")):
        if kind == "introduced" and version >= at:
            affected = True
        elif kind == "fixed" and version >= at:
            affected = False
        elif kind == "last_affected" and version > at:
            affected = False
    return affected


def affects(record: dict[str, Any], name: str, version: str) -> bool:
    """Whether the OSV ``record`` affects PyPI package ``name`` at ``version``."""
    wanted = _version(version)
    for affected in record.get("affected") or []:
        package = affected.get("package") or {}
        if package.get("ecosystem") != "PyPI" or canonical_name(package.get("name", "")) != canonical_name(name):
            continue
        if version in (affected.get("versions") or []):
            return True
        if wanted is None:
            continue
        for rng in affected.get("ranges") or []:
            if rng.get("type") == "ECOSYSTEM" and _in_range(wanted, rng.get("events") or []):
                return True
    return False


class _Handler(BaseHTTPRequestHandler):
    server: OsvHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, _MAX_BODY))
        if self.path.rstrip("/") != "/v1/query":
            return self._answer(404, {"code": 5, "message": "Not found."})
        self.server.queries += 1
        if self.server.fail_with:
            return self._answer(self.server.fail_with, {"code": 13, "message": "lab server told to fail"})
        try:
            query = json.loads(raw)
            package, version = query["package"], query["version"]
            name, ecosystem = package["name"], package.get("ecosystem")
        except (ValueError, KeyError, TypeError):
            return self._answer(400, {"code": 3, "message": "Invalid query."})
        if ecosystem != "PyPI" or not isinstance(version, str):
            return self._answer(200, {})
        try:
            vulns = [r for r in self.server.advisories() if affects(r, name, version)]
        except (OSError, ValueError) as e:  # the file was broken while the server ran
            return self._answer(500, {"code": 13, "message": f"advisories unreadable: {e}"})
        return self._answer(200, {"vulns": vulns} if vulns else {})

    def do_GET(self) -> None:
        match = re.fullmatch(r"/v1/vulns/([A-Za-z0-9._:-]{1,100})", self.path)
        if not match:
            return self._answer(404, {"code": 5, "message": "Not found."})
        self.server.lookups += 1
        if self.server.fail_lookups_with:
            return self._answer(self.server.fail_lookups_with, {"code": 13, "message": "lab server told to fail"})
        try:
            record = next((r for r in self.server.advisories() if r["id"] == match[1]), None)
        except (OSError, ValueError) as e:
            return self._answer(500, {"code": 13, "message": f"advisories unreadable: {e}"})
        if record is None:
            return self._answer(404, {"code": 5, "message": "Bug not found."})
        return self._answer(200, record)


class OsvHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], advisories_file: Path, verbose: bool = False) -> None:
        self.advisories_file = Path(advisories_file)
        self.verbose = verbose
        self.fail_with: int | None = None
        self.fail_lookups_with: int | None = None
        self.queries = 0
        self.lookups = 0
        load_advisories(self.advisories_file)  # a broken file is refused before the server listens
        super().__init__(address, _Handler)

    def advisories(self) -> list[dict[str, Any]]:
        return load_advisories(self.advisories_file)


class OsvServer:
    """The lab OSV server in a thread (``with OsvServer(path) as osv: ... osv.query_url``)."""

    def __init__(self, advisories_file: Path, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.httpd = OsvHTTPServer((host, port), advisories_file)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="lab-osv", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def query_url(self) -> str:
        """What a service file's ``audit.osv_url`` (and ``pip-audit --osv-url``) takes."""
        return f"{self.base_url}/v1/query"

    @property
    def fail_with(self) -> int | None:
        return self.httpd.fail_with

    @fail_with.setter
    def fail_with(self, status: int | None) -> None:
        self.httpd.fail_with = status

    @property
    def fail_lookups_with(self) -> int | None:
        return self.httpd.fail_lookups_with

    @fail_lookups_with.setter
    def fail_lookups_with(self, status: int | None) -> None:
        self.httpd.fail_lookups_with = status

    @property
    def advisories_file(self) -> Path:
        return self.httpd.advisories_file

    @property
    def queries(self) -> int:
        """``POST /v1/query`` requests answered so far."""
        return self.httpd.queries

    @property
    def lookups(self) -> int:
        """``GET /v1/vulns/<id>`` requests answered so far."""
        return self.httpd.lookups

    def start(self) -> OsvServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OsvServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conveyor_lab.osv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--advisories", type=Path, default=DEMO_ADVISORIES, help="a JSON list of OSV records")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        httpd = OsvHTTPServer((args.host, args.port), args.advisories, verbose=args.verbose)
    except OSError as e:
        sys.exit(f"lab OSV server: cannot serve on {args.host}:{args.port} from {args.advisories}: {e}")
    except ValueError as e:
        sys.exit(f"lab OSV server: {e}")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    host, port = httpd.server_address[:2]
    print(f"lab OSV server on http://{host}:{port}/v1/query ({args.advisories}, "
          f"{len(httpd.advisories())} advisories)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()


__all__ = ["DEMO_ADVISORIES", "OsvServer", "affects", "canonical_name", "load_advisories", "main"]
