"""Where Conveyor keeps things on the machine that runs Airflow.

Everything mutable lives under ``CONVEYOR_HOME`` (default ``<checkout>/.conveyor``) so that a test
can point a whole stack (fleet, artifact store, tickets, ledger, demo repository) at a temporary
directory by setting one environment variable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = PROJECT_ROOT / "include"
SERVICES_DIR = INCLUDE_DIR / "services"
REMOTE_DIR = INCLUDE_DIR / "remote"
TEMPLATES_DIR = INCLUDE_DIR / "templates"
DEMO_DIR = INCLUDE_DIR / "demo"


def services_dir() -> Path:
    """Where service files are read: ``$CONVEYOR_SERVICES_DIR`` or ``include/services``."""
    return Path(os.environ.get("CONVEYOR_SERVICES_DIR") or SERVICES_DIR).resolve()


def conveyor_home() -> Path:
    """The state directory: ``$CONVEYOR_HOME`` or ``<checkout>/.conveyor``."""
    return Path(os.environ.get("CONVEYOR_HOME") or PROJECT_ROOT / ".conveyor").resolve()


def fleet_dir() -> Path:
    return conveyor_home() / "fleet"


def artifacts_dir() -> Path:
    return conveyor_home() / "artifacts"


def tickets_dir() -> Path:
    return conveyor_home() / "tickets"


def workspace_dir() -> Path:
    return conveyor_home() / "workspace"


def scratch_dir(service_id: str, kind: str, prefix: str) -> Path:
    """A new empty directory under the service's workspace (``builds``, ``ci``...); the caller removes it."""
    root = workspace_dir() / service_id / kind
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def local_repo_dir(name: str) -> Path:
    """Where the lab keeps the repository a service file names ``local:<name>`` (the demo's: ``demo_shop``)."""
    return conveyor_home() / "repos" / f"{name}.git"
