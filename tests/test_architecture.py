"""The package's layers, as docs/architecture.md draws them: what may import what.

Read from the source (every ``import`` statement, also those inside functions), so a lazy import
that crosses a layer is caught as well as a module-level one. That the release tool never imports
the lab (``conveyor_lab``) is checked in tests/test_plugins_folder.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "conveyor"

# Lowest first. A module may import its own layer and the ones below it, never one above.
LAYERS: dict[str, tuple[str, ...]] = {
    "pure": (
        "conveyor", "conveyor.exceptions", "conveyor.paths", "conveyor.validation", "conveyor.durations",
        "conveyor.windows", "conveyor.config", "conveyor.analysis", "conveyor.waves", "conveyor.hosts",
        "conveyor.evidence", "conveyor.tickets", "conveyor.junit", "conveyor.commands", "conveyor.suites",
        "conveyor.health", "conveyor.parallel", "conveyor.signoff_client", "conveyor.web.charts", "conveyor.audit",
        "conveyor.signoff_check", "conveyor.timeouts", "conveyor.soak",
        "conveyor.ledger.core", "conveyor.ledger.schema", "conveyor.ledger.migrations", "conveyor.ledger.dora",
        "conveyor.ledger",
    ),
    "hooks": (
        "conveyor.hooks", "conveyor.ledger.hook", "conveyor.notifiers", "conveyor.artifacts", "conveyor.inventory",
        "conveyor.ci",
    ),
    "tasks": ("conveyor.operators", "conveyor.triggers", "conveyor.timetables"),
    "pipelines": ("conveyor.pipeline", "conveyor.ci_pipeline"),
    "entry points": ("conveyor.cli", "conveyor.web.app"),
}
ORDER = list(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer of a module: the longest listed prefix that contains it."""
    best = max((p for ps in LAYERS.values() for p in ps if module == p or module.startswith(p + ".")),
               key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return next(layer for layer, prefixes in LAYERS.items() if best in prefixes)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """Every import of a module: (module, names imported from it, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_higher_layer(path):
    here = layer_of(module_name(path))
    for target, _, line in imports(path):
        if target.split(".")[0] != "conveyor":
            continue
        there = layer_of(target)
        assert ORDER.index(there) <= ORDER.index(here), (
            f"{path.relative_to(ROOT)}:{line}: {here} module imports {target} ({there} layer)")


@pytest.mark.parametrize("path", [p for p in MODULES if layer_of(module_name(p)) == "pure"],
                         ids=lambda p: module_name(p))
def test_pure_modules_import_no_airflow(path):
    for target, _, line in imports(path):
        assert target.split(".")[0] != "airflow", f"{path.relative_to(ROOT)}:{line}: imports {target}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_name_is_imported_across_modules(path):
    for target, names, line in imports(path):
        if target.split(".")[0] in ("conveyor", "conveyor_lab"):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(ROOT)}:{line}: imports {private} from {target}"
