"""Tickets of the regression calendar (issue 14): one per failing area, deduplicated by service, area and
failing tests, so the same failure at the area's next turn is added to its ticket (and commented on in a
ticket system) instead of filing another; a rerun of a month changes nothing."""

from __future__ import annotations

import datetime as dt

from conveyor.tickets import (
    LocalTicketBackend,
    RemoteTicket,
    deliver_pending,
    file_regression_ticket,
    regression_signature,
)

T0 = dt.datetime(2026, 3, 1, 6, tzinfo=dt.UTC)
WINDOW = dt.timedelta(days=400)
FAILING = ["tests.integration.test_search.test_search_ignores_case"]


def result(month: str, *, area: str = "search", failing: list[str] = FAILING, version: str = "v1.0.0") -> dict:
    return {"service": "demo_shop", "area": area, "month": month, "version": version, "passed": 3,
            "failed": len(failing), "failing_tests": failing, "release_id": f"demo_shop/scheduled__{month}",
            "run_url": f"http://localhost:8080/dags/regression_demo_shop/runs/scheduled__{month}",
            "signature": regression_signature("demo_shop", area, failing)}


def tickets(backend: LocalTicketBackend) -> list[dict]:
    return [t for t in backend.list() if t.get("kind") == "regression"]


def test_the_signature_is_the_service_the_area_and_the_failing_tests_not_the_version():
    same = regression_signature("demo_shop", "search", FAILING)
    assert same == regression_signature("demo_shop", "search", list(reversed(FAILING)))
    assert len({same, regression_signature("demo_shop", "cart", FAILING),
                regression_signature("other", "search", FAILING),
                regression_signature("demo_shop", "search", [*FAILING, "t2"])}) == 4


def test_a_failing_area_files_a_ticket_with_its_evidence(tmp_path):
    backend = LocalTicketBackend(tmp_path)
    ticket, path = file_regression_ticket(backend, result("2026-03"), window=WINDOW, now=T0)
    [stored] = tickets(backend)
    assert stored["ticket_id"] == ticket.ticket_id and stored["ticket_id"].startswith("RCA-")
    assert (stored["area"], stored["month"], stored["version"], stored["failing_tests"]) == (
        "search", "2026-03", "v1.0.0", FAILING)
    assert stored["title"] == "[demo_shop] regression area search fails on production's v1.0.0"
    body = path.read_text()
    assert f"- {FAILING[0]}" in body and "| results | 3 passed, 1 failed |" in body
    assert stored["delivery"] == {"backend": "local", "status": "local"}


def test_a_rerun_of_the_month_and_the_next_turn_add_to_the_same_ticket(tmp_path):
    backend = LocalTicketBackend(tmp_path)
    first, _ = file_regression_ticket(backend, result("2026-03"), window=WINDOW, now=T0)
    rerun, _ = file_regression_ticket(backend, result("2026-03"), window=WINDOW, now=T0 + dt.timedelta(hours=2))
    later, path = file_regression_ticket(backend, result("2026-07", version="v1.1.0"), window=WINDOW,
                                         now=T0 + dt.timedelta(days=122))
    assert first.ticket_id == rerun.ticket_id == later.ticket_id
    [stored] = tickets(backend)
    assert [(o["month"], o["version"]) for o in stored["occurrences"]] == [("2026-03", "v1.0.0"), ("2026-07", "v1.1.0")]
    assert stored["created_at"] == T0.isoformat() and "- 2026-07: v1.1.0, 1 failing" in path.read_text()


def test_another_failure_or_one_outside_the_window_is_a_new_ticket(tmp_path):
    backend = LocalTicketBackend(tmp_path)
    first, _ = file_regression_ticket(backend, result("2026-03"), window=WINDOW, now=T0)
    other_tests, _ = file_regression_ticket(backend, result("2026-03", failing=["t2"]), window=WINDOW, now=T0)
    other_area, _ = file_regression_ticket(backend, result("2026-03", area="cart"), window=WINDOW, now=T0)
    years_later, _ = file_regression_ticket(backend, result("2028-03"), window=WINDOW, now=T0 + dt.timedelta(days=731))
    assert len({first.ticket_id, other_tests.ticket_id, other_area.ticket_id, years_later.ticket_id}) == 4
    assert len(tickets(backend)) == 4


class Tracker:
    """A ticket system that keeps its tickets in memory (the protocol of conveyor.tickets.TicketTracker)."""

    def __init__(self) -> None:
        self.filed: dict[str, str] = {}  # key -> signature
        self.comments: list[tuple[str, str]] = []

    def find_open(self, signature: str, since: dt.datetime) -> RemoteTicket | None:
        return next((RemoteTicket(key) for key, sig in self.filed.items() if sig == signature), None)

    def file(self, ticket, signature: str) -> RemoteTicket:
        key = str(len(self.filed) + 1)
        self.filed[key] = signature
        return RemoteTicket(key, f"https://tracker/{key}")

    def comment(self, key: str, text: str) -> None:
        self.comments.append((key, text))

    def attach(self, key: str, name: str, content: bytes, content_type: str) -> bool:
        return False


def test_with_a_ticket_system_the_next_turn_comments_on_the_filed_ticket(tmp_path):
    backend, tracker = LocalTicketBackend(tmp_path), Tracker()
    target = {"backend": "github", "conn_id": "github_default", "repository": "acme/shop", "labels": [],
              "dedup_window_s": int(WINDOW.total_seconds())}

    def deliver(now: dt.datetime) -> None:
        deliver_pending(backend, lambda _target: tracker, now=now)

    file_regression_ticket(backend, result("2026-03"), window=WINDOW, now=T0, target=target)
    deliver(T0)
    file_regression_ticket(backend, result("2026-03"), window=WINDOW, now=T0, target=target)  # a rerun
    assert backend.pending() == []
    file_regression_ticket(backend, result("2026-07"), window=WINDOW, now=T0 + dt.timedelta(days=122), target=target)
    deliver(T0 + dt.timedelta(days=122))

    assert list(tracker.filed) == ["1"] and [key for key, _ in tracker.comments] == ["1"]
    assert "release demo_shop/scheduled__2026-07" in tracker.comments[0][1]
    [stored] = tickets(backend)
    assert (stored["delivery"]["status"], stored["delivery"]["key"]) == ("commented", "1")
