"""JUnit XML, the format every suite writes its results in. Pure, no Airflow."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """Every test case in a JUnit XML file as ``{"test", "outcome", "message"}``.

    Outcome is ``passed``, ``failed`` (failure or error element) or ``skipped``.
    """
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        name = ".".join(p for p in (case.get("classname"), case.get("name")) if p)
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or child.text or "").strip()[:2000]
                break
            if child.tag == "skipped":
                outcome = "skipped"
        cases.append({"test": name, "outcome": outcome, "message": message})
    return cases
