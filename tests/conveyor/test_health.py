"""``conveyor.health``: one probe is bounded from connect to last byte; ``wait_healthy`` by its own timeout.

The hosts here are small HTTP servers of the test's own on loopback: a healthy one, one that answers
503, one that accepts and never answers, and two that trickle (the status line and headers, or the
body) one byte at a time, for ever. A probe that did not return at all is reported by the hang guard
(``returns``), not by a timing assertion.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conveyor.exceptions import HealthCheckError
from conveyor.health import probe_health, wait_healthy
from conveyor.hosts import Host
from tests.conveyor.hooks.fleet_support import returns

TRICKLE_S = 0.05  # between two bytes: far less than any probe bound below, so no per-read timeout fires


def _answer(conn: socket.socket, stop: threading.Event, kind: str) -> None:
    conn.settimeout(5)
    try:
        conn.recv(65536)  # the request
        if kind == "healthy":
            body = b'{"status": "ok", "version": "v1.0.0"}'
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
        elif kind == "unavailable":
            conn.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        elif kind == "silent":
            stop.wait()
        else:  # trickle: one byte at a time, for ever
            head = b"HTTP/1.0 200 OK\r\n"
            if kind == "trickle-body":
                conn.sendall(head + b"Content-Type: application/json\r\n\r\n")
                stream = iter(lambda: b" ", None)  # whitespace: never a complete JSON document
            else:  # trickle-headers: the status line, then a header that never ends
                conn.sendall(head)
                stream = iter(lambda: b"X", None)
            for byte in stream:
                if stop.wait(TRICKLE_S):
                    break
                conn.sendall(byte)
    except OSError:
        pass  # the client gave up: that is what the bound is for
    finally:
        conn.close()


@contextmanager
def http_host(kind: str) -> Iterator[Host]:
    """A host whose /health is served by a loopback server that behaves as ``kind`` says."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=_answer, args=(conn, stop, kind), daemon=True)
            worker.start()
            workers.append(worker)

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    port = server.getsockname()[1]
    try:
        yield Host(name=f"{kind}-1", environment="production", address="127.0.0.1",
                   health_url=f"http://127.0.0.1:{port}/health")
    finally:
        stop.set()
        acceptor.join(5)
        server.close()
        for worker in workers:
            worker.join(5)


def test_a_healthy_host_answers_its_version():
    with http_host("healthy") as host:
        assert probe_health(host, timeout=5) == {"ok": True, "version": "v1.0.0", "error": None}


def test_another_status_is_not_healthy():
    with http_host("unavailable") as host:
        assert probe_health(host, timeout=5) == {"ok": False, "version": None, "error": "HTTP 503"}


def test_a_host_that_refuses_the_connection_is_not_healthy():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    host = Host(name="gone-1", environment="production", address="127.0.0.1",
                health_url=f"http://127.0.0.1:{port}/health")
    health = probe_health(host, timeout=5)
    assert health["ok"] is False and health["version"] is None
    assert "refused" in health["error"].lower()


@pytest.mark.parametrize("kind", ["silent", "trickle-headers", "trickle-body"])
def test_one_probe_is_cut_off_at_its_bound_however_the_answer_stalls(kind):
    with http_host(kind) as host:
        health = returns(lambda: probe_health(host, timeout=0.5))
    assert health == {"ok": False, "version": None, "error": "no complete answer within 0.5 s"}


def test_wait_healthy_keeps_its_own_timeout_when_every_probe_trickles():
    with http_host("trickle-body") as host:
        with pytest.raises(HealthCheckError) as failed:
            returns(lambda: wait_healthy(host, "v1.0.0", timeout_s=1, interval_s=0.1, probe_timeout_s=0.3))
    assert str(failed.value) == "trickle-body-1 not healthy on v1.0.0 after 1 s: no complete answer within 0.3 s"


def test_wait_healthy_returns_as_soon_as_the_host_answers():
    with http_host("healthy") as host:
        result = wait_healthy(host, "v1.0.0", timeout_s=5, interval_s=0.1, probe_timeout_s=2)
    assert result == {"host": "healthy-1", "ok": True, "version": "v1.0.0", "error": None}
