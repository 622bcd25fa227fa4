"""Service definitions: the demo file is valid; malformed files name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conveyor.config import load_service, parse_duration, service_files
from conveyor.exceptions import ServiceConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"


def test_every_shipped_service_file_is_valid():
    assert service_files(), "no service files shipped"
    for path in service_files():
        service = load_service(path)
        assert service.id == path.stem
        assert service.dag_id == f"release_{path.stem}"


def test_demo_service_defaults_are_applied():
    service = load_service("demo_shop")
    assert service.qa.group == ("qa1", "qa2", "qa3") and service.qa.required_approvals == 2
    assert service.deploy.keep_releases == 5  # from the defaults
    assert service.waves == (1, "25%", "50%", "100%")
    assert service.qa.timeout.total_seconds() == 24 * 3600


def _write(tmp_path: Path, mutate) -> Path:
    doc = yaml.safe_load(DEMO.read_text())
    mutate(doc)
    path = tmp_path / f"{doc.get('id', 'demo_shop')}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(waves=[1, "150%"]), "waves[1]"),
        (lambda d: d["build"].pop("command"), "build"),
        (lambda d: d.update(colour="blue"), "(top level)"),
        (lambda d: d["qa"].update(timeout="tomorrow"), "qa.timeout"),
        (lambda d: d["qa"].update(required_approvals=4), "qa.required_approvals"),
        (lambda d: d["deploy"].update(max_parallel=0), "deploy.max_parallel"),
        (lambda d: d["environments"]["production"].update(inventory={"hosts": [{"name": "a;b", "address": "x"}]}),
         "environments.production.inventory"),
        (lambda d: d["tests"].append({"name": "unit", "command": "true"}), "tests"),
    ],
)
def test_malformed_service_names_file_and_field(tmp_path, mutate, field):
    path = _write(tmp_path, mutate)
    with pytest.raises(ServiceConfigError) as err:
        load_service(path)
    message = str(err.value)
    assert str(path) in message
    assert f": {field}" in message


def test_id_must_match_file_name(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(DEMO.read_text())
    with pytest.raises(ServiceConfigError, match="must equal the file name"):
        load_service(path)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "demo_shop.yaml"
    bad.write_text("id: [unclosed\n")
    with pytest.raises(ServiceConfigError, match="not valid YAML"):
        load_service(bad)
    with pytest.raises(ServiceConfigError, match="cannot read"):
        load_service(tmp_path / "nope.yaml")


def test_durations():
    assert parse_duration("90s").total_seconds() == 90
    assert parse_duration("3d").days == 3
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("1w")
