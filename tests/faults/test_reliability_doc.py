"""docs/reliability.md and the fault-injection suite stay in step: every scenario of ``make faults`` (a test
marked ``@pytest.mark.fault(name=...)`` in ``tests/faults/test_*.py``) has a row in the doc whose first cell is
its name, and every test the doc names exists and is that scenario's.

A normal test (not marked ``faults``): it reads files only, so ``make test`` runs it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
SUITE = ROOT / "tests" / "faults"
TEST_REF = re.compile(r"`(tests/faults/test_\w+\.py)::(test_\w+)`")


def scenarios() -> dict[tuple[str, str], str]:
    """``(file, test function) -> scenario name`` for every ``@pytest.mark.fault`` of the suite."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted(SUITE.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for decorator in node.decorator_list:
                if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                        and decorator.func.attr == "fault"):
                    continue
                keywords = {k.arg: k.value for k in decorator.keywords}
                value = keywords.get("name", decorator.args[0] if decorator.args else None)
                assert value is not None, f"{path.name}::{node.name}: @pytest.mark.fault without a name"
                found[(str(path.relative_to(ROOT)), node.name)] = ast.literal_eval(value)
    return found


def doc_rows() -> list[list[str]]:
    """The cells of every table row of the doc (header and separator rows left out)."""
    table = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Scenario", "") or set(cells[0]) <= set("-: "):
            continue
        table.append(cells)
    return table


def test_the_suite_has_scenarios_and_their_names_are_distinct():
    names = list(scenarios().values())
    assert names, "no @pytest.mark.fault scenario found under tests/faults"
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"scenario names used twice (the suite's table keys rows by name): {twice}"


def test_every_scenario_has_a_row_in_the_reliability_doc():
    listed = {cells[0] for cells in doc_rows()}
    missing = [f"{name!r} ({file}::{test})" for (file, test), name in scenarios().items() if name not in listed]
    assert not missing, f"scenarios of `make faults` missing from docs/reliability.md: {missing}"


def test_every_row_names_its_scenarios_test():
    by_test = scenarios()
    wrong = []
    for cells in doc_rows():
        refs = TEST_REF.findall(" ".join(cells[1:]))
        if not refs:
            wrong.append(f"{cells[0]!r}: no test named (`tests/faults/test_<x>.py::test_<name>`)")
        for ref in refs:
            if by_test.get(ref) != cells[0]:
                wrong.append(f"{cells[0]!r}: {'::'.join(ref)} is " + (
                    f"the scenario {by_test[ref]!r}" if ref in by_test else "not a fault scenario of the suite"))
    assert not wrong, "docs/reliability.md: " + "; ".join(wrong)
