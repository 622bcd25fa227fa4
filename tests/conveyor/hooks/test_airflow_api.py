"""``AirflowApiHook`` against a real HTTP server speaking Airflow's API (``airflow_api_stub``): it logs in
as the connection's user, lists the run's Required Actions, and finds the answers of earlier tries."""

from __future__ import annotations

import json
import socket

import pytest

from conveyor.hooks.airflow_api import AirflowApiHook
from conveyor.signoff_client import AuthFailed, SignoffError
from tests.conveyor.hooks.airflow_api_stub import StubAirflowApi

DAG, RUN = "release_demo_shop", "manual__2026-11-23T10:00:00+00:00"
PREFIX = "qa_signoff.approval_"


@pytest.fixture
def api(monkeypatch):
    with StubAirflowApi(DAG, RUN) as stub:
        monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", stub.connection())
        yield stub


def who_answered(details: list[dict]) -> list[tuple[str, int, str | None, list | None]]:
    return sorted((d["task_instance"]["task_id"], d["task_instance"]["try_number"],
                   (d.get("responded_by_user") or {}).get("id"), d.get("chosen_options")) for d in details)


def test_reads_the_approval_tasks_answers_as_the_service_user(api):
    api.answer("qa_signoff.approval_1", "qa1")
    api.answer("qa_signoff.approval_2", "qa2")
    api.answer("wave_1.decide", "qa3", "Continue")

    details = AirflowApiHook().approval_answers(DAG, RUN, PREFIX)

    assert who_answered(details) == [("qa_signoff.approval_1", 1, "qa1", ["Approve"]),
                                     ("qa_signoff.approval_2", 1, "qa2", ["Approve"])]
    assert ("POST", "/auth/token", None) in api.requests
    assert {auth for method, _, auth in api.requests if method == "GET"} == {"Bearer token-for-conveyor"}


def test_an_approval_cleared_after_its_answer_is_found_in_its_earlier_try(api):
    api.answer("qa_signoff.approval_1", "qa1")
    api.answered_earlier("qa_signoff.approval_2", "qa2", try_number=1, current_try=2)

    details = AirflowApiHook().approval_answers(DAG, RUN, PREFIX)

    assert who_answered(details) == [("qa_signoff.approval_1", 1, "qa1", ["Approve"]),
                                     ("qa_signoff.approval_2", 1, "qa2", ["Approve"])]


def test_a_task_marked_success_has_no_answer(api):
    api.answer("qa_signoff.approval_1", None, None, received=False)  # parked, then set to success by hand

    details = AirflowApiHook().approval_answers(DAG, RUN, PREFIX)

    assert who_answered(details) == [("qa_signoff.approval_1", 1, None, None)]
    assert details[0]["response_received"] is False


def test_an_undefined_connection_is_reported_not_raised(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", raising=False)
    assert AirflowApiHook().defined() is False


def test_errors_are_signoff_errors(api, monkeypatch):
    hook = AirflowApiHook()
    assert hook.defined()
    api.fail_reads = True
    with pytest.raises(SignoffError, match="HTTP 500"):
        hook.approval_answers(DAG, RUN, PREFIX)

    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", api.connection(password="wrong"))
    with pytest.raises(AuthFailed, match="login as 'conveyor' refused"):
        AirflowApiHook().approval_answers(DAG, RUN, PREFIX)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{port}", "login": "conveyor", "password": "x"}))
    with pytest.raises(SignoffError, match="cannot reach Airflow"):
        AirflowApiHook(timeout=5).approval_answers(DAG, RUN, PREFIX)


def test_connection_fields(api, monkeypatch):
    assert AirflowApiHook().test_connection() == (True, f"logged in to Airflow 3.3.2 at {api.url} as conveyor")
    port = api.url.rsplit(":", 1)[1]
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", f"http://conveyor:gate-secret@127.0.0.1:{port}")
    assert AirflowApiHook().base_url() == api.url  # a URI connection: scheme, host and port
    assert AirflowApiHook().test_connection()[0] is True
    monkeypatch.setenv("AIRFLOW_CONN_CONVEYOR_AIRFLOW_API", json.dumps({"conn_type": "http", "host": api.url}))
    ok, message = AirflowApiHook().test_connection()
    assert not ok and "login (the service user) is empty" in message
