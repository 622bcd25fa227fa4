"""Service definitions: ``include/services/<id>.yaml``, validated against a JSON schema.

Pure module (no Airflow import). ``load_service`` either returns a fully-defaulted
:class:`ServiceConfig` or raises :class:`~conveyor.exceptions.ServiceConfigError` naming the file and
the field, e.g. ``include/services/shop.yaml: waves[2]: '150%' does not match ...``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conveyor.exceptions import ServiceConfigError
from conveyor.paths import services_dir as default_services_dir
from conveyor.validation import SERVICE_ID_RE

_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_WAVE_PATTERN = r"^(100|[1-9][0-9]?)%$"

_COMMAND = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ]
}
_INVENTORY = {
    "oneOf": [
        {"const": "local", "description": "the local fleet's inventory (conveyor fleet up)"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["hosts"],
            "properties": {
                "hosts": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "address"],
                        "properties": {
                            "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$"},
                            "address": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$"},
                            "ssh_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "app_root": {"type": "string", "pattern": r"^[A-Za-z0-9_./~-]{1,255}$"},
                            "restart": {"type": "string", "minLength": 1},
                            "health_url": {"type": "string", "pattern": "^https?://"},
                            "metrics_url": {"type": "string", "pattern": "^https?://"},
                        },
                    },
                }
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["aws"],
            "properties": {
                "aws": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["tags"],
                    "properties": {
                        "aws_conn_id": {"type": "string"},
                        "region": {"type": "string"},
                        "tags": {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1},
                        "address": {"enum": ["private_ip", "public_ip", "private_dns", "public_dns"]},
                        "ssh_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "app_root": {"type": "string"},
                        "restart": {"type": "string"},
                        "health_url": {"type": "string"},
                        "metrics_url": {"type": "string"},
                    },
                }
            },
        },
    ]
}

# The canary judge's settings (conveyor.analysis.AnalysisSettings; documented in docs/analysis.md),
# accepted in `analysis:` and, as overrides for the post-deploy watch, in `watch:`.
_FRACTION = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_JUDGE_SETTINGS: dict[str, Any] = {
    "min_requests": {"type": "integer", "minimum": 0},
    "min_fail_requests": {"type": "integer", "minimum": 0},
    "alpha": _FRACTION,
    "alpha_spending": {"type": "number", "minimum": 0.25, "maximum": 8},
    "errors_alpha_share": _FRACTION,
    "metrics": {"type": "array", "items": {"enum": ["errors", "latency"]}, "minItems": 1, "uniqueItems": True},
    "error_statuses": {"type": "array", "items": {"type": "string", "pattern": r"^([1-5][0-9][0-9]|[1-5]xx)$"},
                       "minItems": 1},
    "error_tolerance": {"type": "number", "minimum": 0},
    "error_floor": {"type": "number", "minimum": 0, "maximum": 1},
    "latency_tolerance": {"type": "number", "minimum": 0},
    "latency_floor_ms": {"type": "number", "minimum": 0},
    "latency_quantile": _FRACTION,
    "outlier_hosts": {"type": "boolean"},
    "early_pass": {"type": "boolean"},
    "early_pass_margin": {"type": "number", "exclusiveMinimum": 1},
}

SERVICE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "repo", "build", "environments"],
    "properties": {
        "id": {"type": "string", "pattern": SERVICE_ID_RE.pattern},
        "description": {"type": "string"},
        "owner": {"type": "string"},
        "repo": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "minLength": 1},
                "release_branch": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"},
            },
        },
        "build": {
            "type": "object",
            "additionalProperties": False,
            "required": ["command"],
            "properties": {
                "command": _COMMAND,
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "artifact_store": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "pattern": "^(file|s3)://"},
                "conn_id": {"type": ["string", "null"]},
            },
        },
        "populate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["command"],
            "properties": {"command": {"type": "string", "minLength": 1}},
        },
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "command"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z][a-z0-9_-]{0,31}$"},
                    "command": _COMMAND,
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
        "triage": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "test_paths": {"type": "array", "items": {"type": "string", "pattern": r"^(?!/)(?!.*\.\.)[\w./-]+$"}},
            },
        },
        "environments": {
            "type": "object",
            "additionalProperties": False,
            "required": ["replica", "production"],
            "properties": {
                "replica": {"type": "object", "required": ["inventory"], "properties": {"inventory": _INVENTORY}},
                "production": {
                    "type": "object",
                    "required": ["inventory"],
                    "properties": {"inventory": _INVENTORY},
                },
            },
        },
        "deploy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ssh_conn_id": {"type": "string"},
                "max_parallel": {"type": "integer", "minimum": 1, "maximum": 256},
                "health": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                        "interval_s": {"type": "number", "exclusiveMinimum": 0},
                    },
                },
                "keep_releases": {"type": "integer", "minimum": 2},
            },
        },
        "waves": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10,
            "items": {
                "oneOf": [
                    {"type": "integer", "minimum": 1},
                    {"type": "string", "pattern": _WAVE_PATTERN},
                ]
            },
        },
        "analysis": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "window_s": {"type": "number", "exclusiveMinimum": 0},
                "interval_s": {"type": "number", "exclusiveMinimum": 0},
                # who answers "continue or roll back?" when a verdict is inconclusive (empty: anyone), how long
                "deciders": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "decision_timeout": {"type": "string", "pattern": _DURATION_RE.pattern},
                **_JUDGE_SETTINGS,
            },
        },
        "watch": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "window_s": {"type": "number", "minimum": 0},
                "interval_s": {"type": "number", "exclusiveMinimum": 0},
                **_JUDGE_SETTINGS,
            },
        },
        "qa": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "group": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                "required_approvals": {"type": "integer", "minimum": 1, "maximum": 10},
                "emergency_required_approvals": {"type": "integer", "minimum": 1, "maximum": 10},
                "timeout": {"type": "string", "pattern": _DURATION_RE.pattern},
            },
        },
        "notifications": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"slack_webhook_conn_id": {"type": ["string", "null"]}},
        },
        "tickets": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"backend": {"enum": ["local"]}},
        },
        "ci": {
            # Continuous integration of the release branch (conveyor.ci, docs/ci.md).
            "type": "object",
            "additionalProperties": False,
            "properties": {
                # The suite CI runs (a name from ``tests``; null: the first one). It runs without hosts.
                "suite": {"type": ["string", "null"], "pattern": r"^[a-z][a-z0-9_-]{0,31}$"},
                # How often ci_<service> polls the repository; null: webhook-triggered runs only.
                "poll_interval": {"type": ["string", "null"], "pattern": _DURATION_RE.pattern},
                # At most this many new commits are checked per run (the newest ones).
                "max_commits": {"type": "integer", "minimum": 1, "maximum": 100},
            },
        },
        "schedule": {
            # Release windows (conveyor.timetables, docs/schedule.md). Absent or null: manual runs only.
            "type": ["object", "null"],
            "additionalProperties": False,
            "required": ["times"],
            "properties": {
                "times": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$"},
                },
                "days": {
                    "oneOf": [
                        {"type": "string", "minLength": 1},
                        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                    ]
                },
                "timezone": {"type": "string", "minLength": 1},
                "max_lateness": {"type": "string", "pattern": _DURATION_RE.pattern},
                "freezes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["start", "end", "reason"],
                        # YAML reads an unquoted 2026-12-22 as a date, so start/end are not typed
                        # "string": "pattern" constrains strings, the timetable checks the rest.
                        "properties": {
                            bound: {
                                "not": {"type": ["array", "object", "boolean", "null", "number"]},
                                "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}.*)?$",
                            }
                            for bound in ("start", "end")
                        } | {"reason": {"type": "string", "minLength": 1}},
                    },
                },
            },
        },
    },
}

DEFAULTS: dict[str, Any] = {
    "description": "",
    "repo": {"release_branch": "main"},
    "build": {"timeout_s": 600},
    "owner": "release-eng",
    "artifact_store": {"url": None, "conn_id": None},
    "populate": None,
    "tests": [],
    "triage": {"enabled": True, "test_paths": ["tests"]},
    "deploy": {"ssh_conn_id": "conveyor_fleet", "max_parallel": 4, "keep_releases": 5,
               "health": {"timeout_s": 60, "interval_s": 1}},
    "waves": [1, "25%", "50%", "100%"],
    "analysis": {"window_s": 600, "interval_s": 10, "deciders": [], "decision_timeout": "30m"},
    "watch": {"window_s": 300, "interval_s": 10},
    "qa": {"group": [], "required_approvals": 2, "timeout": "24h", "emergency_required_approvals": 1},
    "notifications": {"slack_webhook_conn_id": None},
    "tickets": {"backend": "local"},
    "schedule": None,  # no release windows: manual runs only
    "ci": {"suite": None, "poll_interval": "5m", "max_commits": 10},
}


def parse_duration(text: str) -> timedelta:
    """``"90s" | "15m" | "24h" | "3d"`` to a timedelta."""
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}: use <n>s, <n>m, <n>h or <n>d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def _merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _field(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


@dataclass(frozen=True)
class ServiceConfig:
    """A validated service definition with defaults applied. ``raw`` keeps the merged document."""

    id: str
    path: Path
    raw: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def dag_id(self) -> str:
        return f"release_{self.id}"

    @property
    def qa_timeout(self) -> timedelta:
        return parse_duration(self.raw["qa"]["timeout"])

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


def parse_service(document: Any, path: Path) -> ServiceConfig:
    """Validate an already-loaded YAML document; errors name ``path`` and the offending field."""
    validator = jsonschema.Draft202012Validator(SERVICE_SCHEMA)
    errors = sorted(validator.iter_errors(document), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        # The deepest, most specific error first: oneOf failures report their best sub-error.
        best = jsonschema.exceptions.best_match(errors)
        raise ServiceConfigError(f"{path}: {_field(best)}: {best.message}")
    if document["id"] != path.stem:
        raise ServiceConfigError(f"{path}: id: {document['id']!r} must equal the file name {path.stem!r}")
    raw = _merge(DEFAULTS, document)
    try:
        parse_duration(raw["qa"]["timeout"])
    except ValueError as e:  # pragma: no cover - the schema pattern already guarantees this
        raise ServiceConfigError(f"{path}: qa.timeout: {e}") from None
    group = raw["qa"]["group"]
    if group and raw["qa"]["required_approvals"] > len(set(group)):
        raise ServiceConfigError(
            f"{path}: qa.required_approvals: {raw['qa']['required_approvals']} approvals required "
            f"but the QA group has only {len(set(group))} member(s)"
        )
    names = [t["name"] for t in raw["tests"]]
    if len(names) != len(set(names)):
        raise ServiceConfigError(f"{path}: tests: suite names must be unique, got {names}")
    return ServiceConfig(id=document["id"], path=path, raw=raw)


def load_service(service_id_or_path: str | Path, services_dir: Path | None = None) -> ServiceConfig:
    """Load and validate one service file, by id (``demo_shop``) or by path."""
    if isinstance(service_id_or_path, Path) or str(service_id_or_path).endswith((".yaml", ".yml")):
        path = Path(service_id_or_path)
    else:
        path = (services_dir or default_services_dir()) / f"{service_id_or_path}.yaml"
    try:
        text = path.read_text()
    except OSError as e:
        raise ServiceConfigError(f"{path}: cannot read service file: {e.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ServiceConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(document, dict):
        raise ServiceConfigError(f"{path}: (top level): expected a mapping of fields")
    return parse_service(document, path)


def service_files(services_dir: Path | None = None) -> list[Path]:
    return sorted((services_dir or default_services_dir()).glob("*.yaml"))
