"""What the host and fleet fault scenarios (``tests/faults/test_hosts.py``) share.

- the demo service made quick to fail (``write_fault_service``: 2 s bounds on every remote step, a 4 s
  health wait, 1 s probes) with any other section overridden;
- the release's failure path, driven as the DAG drives it (``failure_path``: the failure callback of
  the failed task, ``release_failed``, ``rollback``, ``ticket``, ``fail_run``), returning what each said;
- hosts looked at without Conveyor's code (``on_disk``: the ``current`` link on the host's disk;
  ``serves``: what its ``/health`` answers, by a plain HTTP GET);
- small servers of the faults themselves: a ``/health`` that trickles its answer
  (:class:`TrickleHealth`), a metrics endpoint answering garbage or NaN (:class:`BadMetrics`);
- artifacts no build would make (``store_artifact``: a tarball of the test's own members, with a
  matching sha256 in its description) and SSH keys the fleet does not know (``new_ssh_key``).
"""

from __future__ import annotations

import io
import json
import socket
import socketserver
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conveyor.hooks.fleet_support import current_link, returns, write_service
from tests.conveyor.operators.operator_support import operator_kwargs

SEED = "v1.0.0"
NEXT = "v1.1.0"
BOUND_S = 2  # connect, command and upload bounds of the fault service (deploy.timeouts)
HEALTH_S = 4  # how long a host may take to answer healthy (deploy.health.timeout_s)
PROBE_S = 1  # one health probe, connect to last byte (deploy.health.probe_timeout_s)
ACT = "a person must act"


# ------------------------------------------------------------------------------------------ service
def write_fault_service(directory: Path, *, deploy: dict[str, Any] | None = None, **sections: Any) -> Path:
    """The demo's service file with small bounds (and ``deploy`` overrides), other top-level sections
    replaced by ``sections``; written as ``<directory>/demo_shop.yaml``."""
    path = write_service(directory, **{
        "timeouts": {"connect_s": BOUND_S, "command_s": BOUND_S, "upload_s": BOUND_S},
        "health": {"timeout_s": HEALTH_S, "interval_s": 0.2, "probe_timeout_s": PROBE_S},
        **(deploy or {}),
    })
    if sections:
        spec = yaml.safe_load(path.read_text())
        spec.update(sections)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# -------------------------------------------------------------------------------- looking at hosts
def serves(fleet, name: str) -> str | None:
    """The version host ``name``'s ``/health`` answers (a plain GET; None when it does not answer 200)."""
    try:
        with urllib.request.urlopen(fleet.spec.host(name).health_url, timeout=2) as resp:
            return json.loads(resp.read().decode()).get("version") if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def on_disk(fleet, name: str) -> str | None:
    """The version host ``name``'s ``app/current`` names, read on its disk."""
    return current_link(fleet, name)


def versions(fleet, names: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """``{host: (current on disk, version /health serves)}``."""
    return {n: (on_disk(fleet, n), serves(fleet, n)) for n in names}


def assert_on(fleet, names: list[str], version: str) -> None:
    """Every host of ``names`` on ``version``: its ``current`` link and what its /health serves (the app
    may take a moment to answer after a restart: a few seconds' grace, then the state as it is)."""
    want = dict.fromkeys(names, (version, version))
    deadline = time.monotonic() + 10
    while (now := versions(fleet, names)) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now == want, f"hosts not all on {version} (current, serves): {now}"


# -------------------------------------------------------------------------------- the failure path
@dataclass
class FailurePath:
    """What the failure path's tasks said: the rollback's XCom (or its error), the ticket task's XCom and
    the ticket as kept locally, and ``fail_run``'s error message."""

    rollback: dict[str, Any] | None
    rollback_error: Exception | None
    ticket: dict[str, Any]
    stored: dict[str, Any]
    message: str


def failure_path(make_context: Callable[..., dict], failed_task: Any, error: BaseException, *,
                 plan: dict[str, Any] | None) -> FailurePath:
    """After ``failed_task`` raised ``error``: what the DAG does next, in order. Airflow's failure callback
    records the failed stage; ``release_failed`` marks the release; ``rollback`` runs (its failure is
    recorded by the callback too, and leaves no XCom); ``ticket`` and ``fail_run`` run whatever the
    rollback did. Every call is hang-guarded."""
    from conveyor.exceptions import ReleaseFailed
    from conveyor.operators.base import record_failure
    from conveyor.operators.deploy import RollbackOperator
    from conveyor.operators.release import ReleaseFailedOperator, ReleaseOutcomeOperator
    from conveyor.operators.ticket import TicketOperator
    from conveyor.tickets import LocalTicketBackend

    context = make_context({"plan": plan})
    record_failure({**context, "task": failed_task, "exception": error})
    returns(lambda: ReleaseFailedOperator(**operator_kwargs("release_failed")).execute(context))
    rollback = RollbackOperator(plan_task_id="plan", **operator_kwargs("rollback"))
    result, rollback_error = None, None
    try:
        result = returns(lambda: rollback.execute(context))
    except Exception as exc:  # the task failed: its callback records it, and it leaves no XCom
        rollback_error = exc
        record_failure({**context, "task": rollback, "exception": exc})
    xcoms = {"plan": plan, "rollback": result}
    ticket = returns(lambda: TicketOperator(rollback_task_id="rollback", plan_task_id="plan",
                                            **operator_kwargs("ticket")).execute(make_context(xcoms)))
    outcome = ReleaseOutcomeOperator(rollback_task_id="rollback", ticket_task_id="ticket",
                                     **operator_kwargs("fail_run"))
    with pytest.raises(ReleaseFailed) as failed:
        returns(lambda: outcome.execute(make_context({**xcoms, "ticket": ticket})))
    return FailurePath(rollback=result, rollback_error=rollback_error, ticket=ticket,
                       stored=LocalTicketBackend().get(ticket["ticket_id"]), message=str(failed.value))


def host_rows(ledger: Any, release_id: str) -> dict[str, tuple]:
    """The release's host rows: ``{host: (environment, wave, from, to, status)}`` (one row per host by
    the table's key, so a list of rows longer than this dict would be a duplicate)."""
    rows = (ledger.get_release(release_id) or {}).get("hosts", [])
    by_host = {r["host"]: (r["environment"], r["wave"], r["from_version"], r["to_version"], r["status"]) for r in rows}
    assert len(by_host) == len(rows), f"duplicated host rows: {rows}"
    return by_host


def rollback_rows(ledger: Any, release_id: str) -> dict[str, tuple]:
    """The release's rollback rows: ``{host: (from, to, status)}``."""
    rows = (ledger.get_release(release_id) or {}).get("rollbacks", [])
    by_host = {r["host"]: (r["from_version"], r["to_version"], r["status"]) for r in rows}
    assert len(by_host) == len(rows), f"duplicated rollback rows: {rows}"
    return by_host


def stages(ledger: Any, release_id: str) -> dict[str, str]:
    """The release's stage rows: ``{stage: status}``."""
    rows = (ledger.get_release(release_id) or {}).get("stages", [])
    by_stage = {r["stage"]: r["status"] for r in rows}
    assert len(by_stage) == len(rows), f"duplicated stage rows: {rows}"
    return by_stage


# ---------------------------------------------------------------------------------- watching a host
@contextmanager
def when(condition: Callable[[], bool], action: Callable[[], None], *, poll_s: float = 0.005,
         within: float = 30.0) -> Iterator[dict[str, Any]]:
    """Run ``action`` once, in a thread, as soon as ``condition()`` holds (looked at every ``poll_s``);
    yields ``{"done": bool, "error": ...}``. The watch ends with the block."""
    state: dict[str, Any] = {"done": False, "error": None}
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + within
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if condition():
                    action()
                    state["done"] = True
                    return
            except Exception as exc:  # reported to the test
                state["error"] = exc
                return
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="fault-watch", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(5)


# ------------------------------------------------------------------------------ a trickling /health
class TrickleHealth:
    """A ``/health`` URL of the test: ``trickle`` answers 200 and then one byte of its body every 0.1 s,
    never finishing (until the client leaves); ``proxy`` passes the real host's answer through."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "trickle"
        self.requests = 0
        self._stop = threading.Event()
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                owner.requests += 1
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # the request line and headers
                if owner.mode == "proxy":
                    try:
                        with urllib.request.urlopen(owner.upstream, timeout=2) as resp:
                            status, body = resp.status, resp.read()
                    except urllib.error.HTTPError as e:
                        status, body = e.code, b""
                    except OSError:
                        return
                    self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                    return
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                try:
                    while not owner._stop.is_set():
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    return  # the client gave up

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def __enter__(self) -> TrickleHealth:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------ bad metrics
def exposition(count: int) -> str:
    """A healthy host's metrics page after ``count`` requests (1% errors, a fixed latency histogram)."""
    errors = count // 100
    lines = [f'shop_http_requests_total{{status="200"}} {count - errors}',
             f'shop_http_requests_total{{status="500"}} {errors}']
    for bound, share in ((0.025, 0.1), (0.05, 0.6), (0.1, 0.9), (0.25, 1.0)):
        lines.append(f'shop_http_request_duration_seconds_bucket{{le="{bound}"}} {round(count * share)}')
    lines += [f'shop_http_request_duration_seconds_bucket{{le="+Inf"}} {count}',
              f"shop_http_request_duration_seconds_sum {count * 0.05}",
              f"shop_http_request_duration_seconds_count {count}", "process_start_time_seconds 1700000000"]
    return "\n".join(lines) + "\n"


GARBAGE = "<html><body><h1>502 Bad Gateway</h1>\x00\xff\ufffd{not: metrics}</body></html>\n"


def nan_exposition(count: int) -> str:
    """A metrics page whose every counter reads NaN (a broken exporter)."""
    return "".join(line.rsplit(" ", 1)[0] + " NaN\n" for line in exposition(count).splitlines()
                   if not line.startswith("process_start"))


class BadMetrics:
    """Metrics of the test at ``/<host>/metrics``: each host serves ``pages[host](count)`` where ``count``
    grows by 200 requests per GET (``exposition``, ``nan_exposition`` or a constant like ``GARBAGE``)."""

    def __init__(self, pages: dict[str, Callable[[int], str]]) -> None:
        self.counts = dict.fromkeys(pages, 0)
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.path.strip("/").split("/")[0]
                if host not in pages:
                    self.send_error(404)
                    return
                with lock:
                    owner.counts[host] += 200
                    body = pages[host](owner.counts[host]).encode("utf-8", "surrogateescape")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, host: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{host}/metrics"

    def __enter__(self) -> BadMetrics:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------ artifacts
def store_artifact(store: Path, version: str, members: list[tuple[tarfile.TarInfo, bytes | None]], *,
                   base: Path | None = None) -> dict[str, Any]:
    """A tarball of ``base``'s members (a built artifact's) and ``members``, stored as the demo's
    ``version`` in the file store ``store`` with its own sha256 in the description (manifest); returns
    the artifact's description as the build task's XCom carries it."""
    from conveyor.artifacts import ArtifactStore, sha256_file

    raw = store / f"build-{version}.tar.gz"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(raw, "w:gz") as out:
        if base is not None:
            with tarfile.open(base, "r:gz") as src:
                for info in src.getmembers():
                    out.addfile(info, src.extractfile(info) if info.isfile() else None)
        for info, data in members:
            if data is not None:
                info.size = len(data)
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    sha = sha256_file(raw)
    key = ArtifactStore.key("demo_shop", version)
    manifest = {"service": "demo_shop", "version": version, "commit": "0" * 40, "ref": version, "key": key,
                "sha256": sha, "size": raw.stat().st_size}
    target = ArtifactStore(f"file://{store}")
    target.put(raw, key, sha, manifest)
    raw.unlink()
    return target.info(manifest).to_dict()


def member(name: str, *, data: bytes | None = b"pwned\n", symlink_to: str | None = None) -> tuple[tarfile.TarInfo,
                                                                                                  bytes | None]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if symlink_to is not None:
        info.type, info.linkname, data = tarfile.SYMTYPE, symlink_to, None
    return info, data


# ------------------------------------------------------------------------------------------- keys
def new_ssh_key(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair the fleet has never seen: the private key's file and the public key line."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="not-the-fleet")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "id_ed25519"
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return path, key.export_public_key("openssh").decode().strip()


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
