"""Load suites (``kind: load``): real Locust runs against a tiny HTTP server on a free port, its JSON
report read back (the percentiles as Locust's own printed report gives them), thresholds judged, and
the service file's load settings refused with the file and the field when they are wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conveyor.config import Suite, load_service
from conveyor.exceptions import ServiceConfigError
from conveyor.loadtest import LoadStats, judge, markdown_line, parse_locust_report
from conveyor.suites import SuiteRun, run_suite

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"
SLOW_S = 0.2  # /slow answers after this long: every request to it takes at least 200 ms

LOCUSTFILE = '''
import itertools
import os

from locust import HttpUser, constant, task

PATHS = os.environ["LOAD_PATHS"].split(",")


class Client(HttpUser):
    wait_time = constant(0.01)

    def on_start(self):
        self.paths = itertools.cycle(PATHS)

    @task
    def one(self):
        path = next(self.paths)
        self.client.get(path, name=path)
'''


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(SLOW_S)
        status = 500 if self.path == "/fail" else 200
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real HTTP server on a free loopback port: ``/ok``, ``/fail`` (HTTP 500), ``/slow``; yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def src(tmp_path) -> Path:
    """A checkout holding the locustfile at ``load/locustfile.py``."""
    (tmp_path / "src" / "load").mkdir(parents=True)
    (tmp_path / "src" / "load" / "locustfile.py").write_text(LOCUSTFILE)
    return tmp_path / "src"


def load_suite(paths: str, thresholds: dict, **fields) -> Suite:
    return Suite.model_validate({"name": "load", "kind": "load", "locustfile": "load/locustfile.py", "users": 2,
                                 "spawn_rate": 2, "duration": "2s", "timeout_s": 60,
                                 "env": {"LOAD_PATHS": paths}, "thresholds": thresholds, **fields})


def run(suite: Suite, src: Path, urls: str, tmp_path: Path) -> SuiteRun:
    from conveyor.commands import tool_env

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return run_suite(suite, src, workdir=work, env=tool_env(), replica_urls=urls)


def printed_aggregate(output: str) -> dict[str, int]:
    """The "Aggregated" rows of the tables Locust prints at the end of a headless run: requests,
    failures and the response time percentiles."""
    counts, percentiles = output.split("Response time percentiles", 1)
    requests_row = next(line for line in counts.splitlines() if line.strip().startswith("Aggregated")).split()
    header = next(line for line in percentiles.splitlines() if "95%" in line).split()
    row = next(line for line in percentiles.splitlines() if line.strip().startswith("Aggregated")).split()[1:]
    columns = header[header.index("50%"):]
    return {"requests": int(requests_row[1]), "failures": int(requests_row[2].split("(")[0]),
            **dict(zip(columns, (int(v) for v in row), strict=False))}


def outcomes(run: SuiteRun) -> dict[str, str]:
    return {c["test"]: c["outcome"] for c in run.cases}


# ------------------------------------------------------------------------- real Locust runs
def test_a_run_with_failing_requests_fails_the_error_rate_with_its_numbers(server, src, tmp_path):
    suite = load_suite("/ok,/fail", {"error_rate": 0.01, "p95_ms": 5000, "min_rps": 1})

    result = run(suite, src, server, tmp_path)

    assert result.result.ok, result.result.tail()
    assert outcomes(result) == {"p95_ms": "passed", "error_rate": "failed", "min_rps": "passed"}
    measured = result.load["measured"]
    assert measured["requests"] > 10 and measured["failures"] > 0
    assert list(measured["failures_by_request"]) == ["GET /fail"]  # every /fail request, and only those
    assert 0.4 <= measured["error_rate"] <= 0.6  # each user alternates /ok and /fail
    message = dict((c["test"], c["message"]) for c in result.cases)["error_rate"]
    assert message == f"error rate {measured['error_rate'] * 100:.2f}%, over the threshold 1.00%"
    assert result.failing == {"error_rate": message}
    assert result.summary()["load"]["thresholds"] == {"p95_ms": 5000, "error_rate": 0.01, "min_rps": 1}


def test_the_report_reads_as_locusts_own_statistics(server, src, tmp_path):
    """The Locust command Conveyor runs, with the report on standard output (``--json``) instead of a file,
    so that Locust also prints its own tables: the report, parsed, gives Locust's own numbers."""
    import subprocess
    import sys

    from conveyor.commands import tool_env
    from conveyor.loadtest import locust_command

    command = locust_command(sys.executable, locustfile="load/locustfile.py", host=server, users=3, spawn_rate=3,
                             run_time_s=2, report=str(tmp_path / "report.json"))
    at = command.index("--json-file")
    command[at:at + 2] = ["--json"]
    done = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=60, check=False,
                          env=tool_env(LOAD_PATHS="/ok,/fail,/ok,/slow"))
    assert done.returncode == 0, done.stderr[-2000:]

    stats = parse_locust_report(done.stdout)

    printed = printed_aggregate(done.stderr)
    assert (stats.requests, stats.failures) == (printed["requests"], printed["failures"])
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (printed["50%"], printed["95%"], printed["99%"])
    assert stats.p99_ms >= SLOW_S * 1000 and stats.failures_by_request.keys() == {"GET /fail"}


def test_a_slow_server_fails_the_latency_and_rate_thresholds(server, src, tmp_path):
    suite = load_suite("/slow", {"p95_ms": 100, "p99_ms": 100, "error_rate": 0.01, "min_rps": 1000})

    result = run(suite, src, server, tmp_path)

    assert outcomes(result) == {"p95_ms": "failed", "p99_ms": "failed", "error_rate": "passed", "min_rps": "failed"}
    measured = result.load["measured"]
    assert measured["failures"] == 0 and measured["p95_ms"] >= SLOW_S * 1000  # every request waited 200 ms
    verdicts = {v["threshold"]: v for v in result.load["verdicts"]}
    assert verdicts["p95_ms"]["message"] == f"p95 {measured['p95_ms']:g} ms, over the threshold 100 ms"
    assert verdicts["min_rps"]["message"] == f"rate {measured['rps']:g} req/s, under the threshold 1000 req/s"
    line = markdown_line(result.load)
    assert f"p95 {measured['p95_ms']:g} ms (threshold 100 ms: FAIL)" in line
    assert "error rate 0.00% (threshold 1.00%: ok)" in line


def test_a_broken_locustfile_fails_the_suite_with_locusts_own_words(server, src, tmp_path):
    (src / "load" / "locustfile.py").write_text("import no_such_module_here\n")

    result = run(load_suite("/ok", {"error_rate": 0.01}), src, server, tmp_path)

    assert not result.result.ok and result.load is None and result.cases == []
    [(name, output)] = result.failing.items()
    assert name.startswith("(suite exited") and "No module named 'no_such_module_here'" in output


def test_a_missing_locustfile_or_replica_is_a_failure_naming_the_field(server, src, tmp_path):
    suite = load_suite("/ok", {"error_rate": 0.01}, locustfile="load/missing.py")
    assert run(suite, src, server, tmp_path).failing == {
        "locustfile": "tests.load.locustfile: 'load/missing.py' is not a file in the candidate's checkout"}
    assert list(run(load_suite("/ok", {"error_rate": 0.01}), src, "", tmp_path).failing) == ["replica"]


# ------------------------------------------------------------------------- the report and the judge
def test_the_report_merges_entries_and_reads_percentiles_as_locust_does():
    report = """[
      {"name": "/a", "method": "GET", "num_requests": 90, "num_failures": 0, "start_time": 100.0,
       "last_request_timestamp": 110.0, "response_times": {"10": 80, "20": 10}},
      {"name": "/b", "method": "POST", "num_requests": 10, "num_failures": 3, "start_time": 101.0,
       "last_request_timestamp": 109.0, "response_times": {"300": 9, "1000": 1}}
    ]"""
    stats = parse_locust_report(report)
    # Locust's reading: p99 is the slowest response once fewer than 1% of requests are left above it
    assert stats == LoadStats(requests=100, failures=3, p50_ms=10, p95_ms=300, p99_ms=1000, max_ms=1000,
                              rps=10.0, duration_s=10.0, failures_by_request={"POST /b": 3})
    assert stats.error_rate == 0.03


@pytest.mark.parametrize("text", ["not json", "{}", '[{"name": "/a"}]'])
def test_a_report_that_is_not_locusts_is_refused(text):
    from conveyor.loadtest import LoadReportError

    with pytest.raises(LoadReportError, match="Locust's report"):
        parse_locust_report(text)


def test_rate_is_a_minimum_and_the_rest_are_maximums():
    stats = LoadStats(requests=100, failures=1, p50_ms=10, p95_ms=120, p99_ms=200, max_ms=250, rps=50.0,
                      duration_s=2.0, failures_by_request={})
    verdicts = {v.threshold: v.ok for v in judge(stats, {"p95_ms": 120, "p99_ms": 199, "error_rate": 0.01,
                                                         "min_rps": 50})}
    assert verdicts == {"p95_ms": True, "p99_ms": False, "error_rate": True, "min_rps": True}
    with pytest.raises(ValueError, match="unknown threshold"):
        judge(stats, {"p90_ms": 100})


# ------------------------------------------------------------------------- the service file
def write_demo(tmp_path: Path, **load) -> Path:
    """The demo's service file with its load suite changed by ``load`` (a None value removes the field)."""
    doc = yaml.safe_load(DEMO.read_text())
    suite = next(s for s in doc["tests"] if s.get("kind") == "load")
    for key, value in load.items():
        if value is None:
            suite.pop(key, None)
        else:
            suite[key] = value
    path = tmp_path / "demo_shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_demo_load_suite_is_a_locust_run_with_thresholds():
    suite = next(s for s in load_service("demo_shop").tests if s.name == "load")
    assert (suite.kind, suite.locustfile, suite.users) == ("load", "tests/load/locustfile.py", 10)
    assert suite.thresholds.model_dump() == {"p95_ms": 150, "p99_ms": 1500, "error_rate": 0.01, "min_rps": 20}
    assert (ROOT / "include" / "demo" / "app" / suite.locustfile).is_file()
    assert load_service("demo_shop").ci_suite.name == "unit"  # CI never runs a load suite (no hosts)


@pytest.mark.parametrize(("load", "field", "phrase"), [
    ({"thresholds": {"p90_ms": 100}}, "tests[2].thresholds", "unknown field 'p90_ms'"),
    ({"thresholds": {"p95_ms": -5}}, "tests[2].thresholds.p95_ms", "greater than 0"),
    ({"thresholds": {"error_rate": 1.5}}, "tests[2].thresholds.error_rate", "less than or equal to 1"),
    ({"thresholds": {"min_rps": 0}}, "tests[2].thresholds.min_rps", "greater than 0"),
    ({"thresholds": {}}, "tests[2].thresholds", "at least one of p95_ms, p99_ms, error_rate, min_rps"),
    ({"thresholds": None}, "tests[2].thresholds", "required for kind: load"),
    ({"locustfile": None}, "tests[2].locustfile", "required for kind: load"),
    ({"locustfile": "../outside.py"}, "tests[2].locustfile", "should match pattern"),
    ({"users": -1}, "tests[2].users", "greater than or equal to 1"),
    ({"spawn_rate": 0}, "tests[2].spawn_rate", "greater than 0"),
    ({"duration": "soon"}, "tests[2].duration", "invalid duration"),
    ({"duration": "0s"}, "tests[2].duration", "at least 1s"),
    ({"duration": "10m", "timeout_s": 120}, "tests[2].timeout_s", "does not leave the 10m load run"),
    ({"command": "pytest"}, "tests[2].command", "not for kind: load"),
    ({"kind": "soak"}, "tests[2].kind", "'command' or 'load'"),
    ({"kind": None, "command": "pytest"}, "tests[2].locustfile", "only for kind: load"),
])
def test_bad_load_settings_are_refused_naming_the_file_and_field(tmp_path, load, field, phrase):
    path = write_demo(tmp_path, **load)
    with pytest.raises(ServiceConfigError) as err:
        load_service(path)
    message = str(err.value)
    assert str(path) in message and f"{field}:" in message and phrase in message, message


def test_ci_cannot_be_pointed_at_a_load_suite(tmp_path):
    path = write_demo(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["ci"] = {"suite": "load"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ServiceConfigError, match="ci.suite: 'load' is a load suite"):
        load_service(path)
