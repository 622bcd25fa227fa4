"""The ``regression`` section (issue 14): areas are command suites, the rotation gives each month's areas
(by month, or N a month round robin), and a rotation that leaves an area uncovered for a year is refused at
parse time, naming the file and the field. And the DAG it gives: ``regression_<service>`` only with one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from conveyor.config import load_service
from conveyor.exceptions import ServiceConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"
PYTEST = ["python", "-m", "pytest", "-q"]
AREAS = {name: {"command": [*PYTEST, f"tests/{name}", "--junitxml={junit}"]} for name in ("cart", "catalog", "search")}


def _write(tmp_path: Path, regression) -> Path:
    doc = yaml.safe_load(DEMO.read_text())
    doc["regression"] = regression
    path = tmp_path / "demo_shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _refused(tmp_path: Path, regression) -> str:
    with pytest.raises(ServiceConfigError) as refusal:
        load_service(_write(tmp_path, regression))
    message = str(refusal.value)
    assert message.startswith(f"{tmp_path / 'demo_shop.yaml'}: "), message
    return message.split(": ", 1)[1]


def test_the_demo_runs_one_area_a_month_round_robin_and_covers_each_four_times_a_year():
    regression = load_service(DEMO).regression
    assert list(regression.areas) == ["cart", "catalog", "api"]
    assert regression.areas["api"].command[-2:] == ("tests/integration", "--junitxml={junit}")
    assert regression.calendar() == {m: (("cart", "catalog", "api")[(m - 1) % 3],) for m in range(1, 13)}


def test_an_area_is_a_suite_named_by_its_key_with_the_suites_defaults(tmp_path):
    service = load_service(_write(tmp_path, {"areas": {**AREAS, "search": {**AREAS["search"], "timeout_s": 60,
                                                                           "env": {"URLS": "{replica_urls}"}}},
                                             "rotation": {"per_month": 1}}))
    search = service.regression.areas["search"]
    assert (search.name, search.kind, search.timeout_s, search.env) == ("search", "command", 60, {"URLS": "{replica_urls}"})
    assert service.regression.areas["cart"].timeout_s == 900
    assert service.regression.dedup_window == timedelta(days=400)


def test_round_robin_takes_the_next_areas_in_declared_order_and_starts_again_in_january(tmp_path):
    regression = load_service(_write(tmp_path, {"areas": AREAS, "rotation": {"per_month": 2}})).regression
    assert [regression.areas_in(m) for m in (1, 2, 3, 4)] == [
        ("cart", "catalog"), ("search", "cart"), ("catalog", "search"), ("cart", "catalog")]
    whole = load_service(_write(tmp_path, {"areas": AREAS, "rotation": {"per_month": 3}})).regression
    assert set(whole.calendar().values()) == {("cart", "catalog", "search")}


def test_months_may_be_names_or_numbers_and_a_month_not_given_runs_nothing(tmp_path):
    regression = load_service(_write(tmp_path, {"areas": AREAS, "rotation": {"months": {
        "jan": ["cart"], 4: ["catalog", "search"], "October": ["search"]}}})).regression
    assert regression.calendar() == {1: ("cart",), 2: (), 3: (), 4: ("catalog", "search"), 5: (), 6: (), 7: (),
                                     8: (), 9: (), 10: ("search",), 11: (), 12: ()}


@pytest.mark.parametrize(("regression", "expected"), [
    ({"areas": AREAS, "rotation": {"months": {"jan": ["cart"], "feb": ["catalog"]}}},
     "regression.rotation: area 'search' is never run: add it to a month"),
    ({"areas": {**AREAS, **{f"a{i}": {"command": f"pytest t{i}"} for i in range(10)}}, "rotation": {"per_month": 1}},
     "regression.rotation: area 'a9' is never run: 12 months of per_month: 1 reach only 12 of the 13 areas; "
     "raise per_month"),
    ({"areas": AREAS, "rotation": {"months": {"jan": ["cart", "catalog", "search", "checkout"]}}},
     "regression.rotation.months.jan: unknown area(s) checkout; the areas are cart, catalog, search"),
    ({"areas": AREAS, "rotation": {"months": {"jan": ["cart", "cart", "catalog", "search"]}}},
     "regression.rotation.months.jan: an area is given twice"),
    ({"areas": AREAS, "rotation": {"months": {"jan": ["cart", "catalog", "search"], 1: ["cart"]}}},
     "regression.rotation.months: 1: month jan is given twice"),
    ({"areas": AREAS, "rotation": {"months": {"smarch": ["cart", "catalog", "search"]}}},
     "regression.rotation.months: 'smarch' is not a month: 1-12 or jan-dec"),
    ({"areas": AREAS, "rotation": {"months": {13: ["cart", "catalog", "search"]}}},
     "regression.rotation.months: 13 is not a month: 1-12 or jan-dec"),
    ({"areas": AREAS, "rotation": {"per_month": 4}},
     "regression.rotation.per_month: 4 areas a month but only 3 area(s) are defined (cart, catalog, search)"),
    ({"areas": AREAS, "rotation": {"per_month": 1, "months": {"jan": ["cart"]}}},
     "regression.rotation: give exactly one of months (areas by month) or per_month"),
    ({"areas": AREAS, "rotation": {}}, "regression.rotation: give exactly one of months"),
    ({"areas": {}, "rotation": {"per_month": 1}}, "regression.areas: Dictionary should have at least 1 item"),
    ({"areas": {"cart": {}}, "rotation": {"per_month": 1}},
     "regression.areas.cart.command: required (or kind: load, with a locustfile)"),
    ({"areas": {"cart": {"command": "pytest --x={nope}"}}, "rotation": {"per_month": 1}},
     "regression.areas.cart.command: 'pytest --x={nope}' uses {nope}, which is not a placeholder"),
    ({"areas": {"cart": {"name": "cart", "command": "pytest"}}, "rotation": {"per_month": 1}},
     "regression.areas.cart.name: an area's suite is named by its key; remove name"),
    ({"areas": {"cart": {"kind": "load", "locustfile": "l.py", "thresholds": {"p95_ms": 100}}},
      "rotation": {"per_month": 1}},
     "regression.areas.cart.kind: an area is a command suite"),
    ({"areas": {"Cart!": AREAS["cart"]}, "rotation": {"per_month": 1}}, "regression.areas.Cart!.[key]"),
])
def test_a_rotation_or_area_that_cannot_work_is_refused_naming_the_field(tmp_path, regression, expected):
    assert expected in _refused(tmp_path, regression)


def test_the_regression_dag_exists_only_with_the_section(tmp_path, monkeypatch):
    from conveyor.pipeline import regression_dag

    doc = yaml.safe_load(DEMO.read_text())
    doc.pop("regression")
    (tmp_path / "demo_shop.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("CONVEYOR_SERVICES_DIR", str(tmp_path))
    assert regression_dag("demo_shop") is None
    monkeypatch.delenv("CONVEYOR_SERVICES_DIR")
    dag = regression_dag("demo_shop")
    assert dag.dag_id == "regression_demo_shop" and dag.max_active_runs == 1 and not dag.catchup
    assert dag.timetable.expression == "0 6 1 * *"
    assert [t.task_id for t in dag.topological_sort()] == [
        "plan", "production_version", "replica.deploy", "replica.populate", "areas", "tickets", "report"]
    assert all(t.execution_timeout and t.execution_timeout.total_seconds() > 0 for t in dag.tasks)
    assert dag.params.get_param("area").schema["enum"] == [None, "cart", "catalog", "api"]
