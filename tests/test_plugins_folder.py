"""What Airflow loads from ``plugins/``: only ``conveyor_plugin.py`` (``plugins/.airflowignore``).

Airflow imports every ``.py`` file its plugin discovery walks, each under its bare file name, in every
component (scheduler, dag-processor, triggerer, API server, workers). The packages next to the plugin
module (``conveyor``, ``conveyor_lab``) are importable by name instead: the plugins folder is on sys.path.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from airflow._shared.module_loading import find_path_from_directory

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"

# Airflow's own discovery (the one its components run), in a fresh interpreter so that nothing this
# test session imported counts; every file the discovery executes goes through SourceFileLoader.
DISCOVER = r"""
import importlib.abc, importlib.machinery, json, sys  # importlib.abc first: it registers the real loader

executed = []

class Recording(importlib.machinery.SourceFileLoader):
    def exec_module(self, module):
        executed.append(self.path)
        super().exec_module(module)

importlib.machinery.SourceFileLoader = Recording

from airflow import plugins_manager
from airflow.configuration import conf

plugins_manager.ensure_plugins_loaded()
print(json.dumps({
    "syntax": conf.get("core", "dag_ignore_file_syntax"),
    "default_syntax": conf.get_default_value("core", "dag_ignore_file_syntax"),
    "executed": executed,
    "plugins": plugins_manager.get_plugin_info(["source"]),
    "timetables": sorted(plugins_manager.get_timetables_plugins()),
    "import_errors": plugins_manager.get_import_errors(),
    "lab_modules": sorted(m for m in sys.modules if m.split(".")[0] == "conveyor_lab"),
}, default=str))
"""


def _discover() -> dict:
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.pop("AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX", None)  # Airflow's default, as a deployment has it
    proc = subprocess.run([sys.executable, "-c", DISCOVER], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_airflow_imports_only_conveyor_plugin_py_from_the_plugins_folder():
    found = _discover()
    assert found["syntax"] == found["default_syntax"] == "glob"  # what plugins/.airflowignore is written in
    from_plugins = sorted(Path(p).resolve().relative_to(PLUGINS).as_posix() for p in found["executed"]
                          if Path(p).resolve().is_relative_to(PLUGINS))
    assert from_plugins == ["conveyor_plugin.py"]
    [conveyor] = [p for p in found["plugins"] if p["name"] == "conveyor"]
    assert conveyor["source"] == "$PLUGINS_FOLDER/conveyor_plugin.py"
    assert "conveyor.timetables.release_window.ReleaseWindowTimetable" in found["timetables"]
    assert found["import_errors"] == {}
    assert found["lab_modules"] == []  # loading Conveyor into Airflow does not load the lab


def test_the_ignore_file_is_what_keeps_the_packages_out():
    everything = {Path(p).relative_to(PLUGINS).as_posix()
                  for p in find_path_from_directory(PLUGINS, "no-such-ignore-file", "glob") if p.endswith(".py")}
    assert {"conveyor/cli.py", "conveyor_lab/fleet/daemon.py", "conveyor_plugin.py"} <= everything
    walked = [Path(p).relative_to(PLUGINS).as_posix()
              for p in find_path_from_directory(PLUGINS, ".airflowignore", "glob") if p.endswith(".py")]
    assert walked == ["conveyor_plugin.py"]


def _lab_imports(path: Path) -> list[tuple[int, bool]]:
    """``(line, at module level)`` of every import of ``conveyor_lab`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if any(n == "conveyor_lab" or n.startswith("conveyor_lab.") for n in names):
            found.append((node.lineno, id(node) in module_level))
    return found


def test_the_release_tool_never_imports_the_lab():
    """Only ``conveyor fleet`` and ``conveyor demo`` (cli.py) import the lab, inside the commands."""
    core = [*sorted((PLUGINS / "conveyor").rglob("*.py")), PLUGINS / "conveyor_plugin.py",
            *sorted((ROOT / "dags").rglob("*.py"))]
    offenders = {}
    for path in core:
        imports = _lab_imports(path)
        if path == PLUGINS / "conveyor" / "cli.py":
            imports = [(line, top) for line, top in imports if top]  # lazy imports are the exception
        if imports:
            offenders[path.relative_to(ROOT).as_posix()] = [line for line, _ in imports]
    assert offenders == {}
    assert _lab_imports(PLUGINS / "conveyor" / "cli.py"), "cli.py's fleet and demo commands import the lab"
