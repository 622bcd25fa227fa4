"""Approval stages in the service file (issue 13): ``approvals`` after (or instead of) ``qa``; bad stages are
refused at parse time, naming the file and the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from conveyor.config import load_service
from conveyor.exceptions import ServiceConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "services" / "demo_shop.yaml"
MANAGER = {"name": "manager", "group": ["@managers"], "required": 1, "when": "major"}


def _load(tmp_path: Path, mutate) -> object:
    doc = yaml.safe_load(DEMO.read_text())
    mutate(doc)
    path = tmp_path / "demo_shop.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_service(path)


def _refused(tmp_path: Path, mutate) -> str:
    with pytest.raises(ServiceConfigError) as refusal:
        _load(tmp_path, mutate)
    message = str(refusal.value)
    assert message.startswith(f"{tmp_path / 'demo_shop.yaml'}: "), message
    return message.split(": ", 1)[1]


def test_the_demo_asks_qa_then_a_manager_for_major_changes_then_the_client():
    service = load_service("demo_shop")
    stages = [(s.name, s.title, service.people(s.group), s.required, s.emergency_approvals, s.when, s.task_group)
              for s in service.stages]
    assert stages == [("qa", "QA", ("qa1", "qa2", "qa3"), 2, 1, "always", "qa_signoff"),
                      ("manager", "Manager", ("mgr1",), 1, 1, "major", "manager_signoff"),
                      ("client", "Client", ("client1",), 1, 1, "always", "client_signoff")]
    manager, client = service.stages[1:]
    assert (manager.applies("minor"), manager.applies("major"), client.applies("minor")) == (False, True, True)
    assert client.timeout == timedelta(hours=48) and client.distinct_from_earlier


def test_qa_alone_is_the_single_qa_stage_and_approvals_alone_are_every_stage(tmp_path):
    only_qa = _load(tmp_path, lambda d: d.pop("approvals"))
    [qa] = only_qa.stages
    assert (qa.name, qa.group, qa.required, qa.emergency_approvals, qa.timeout) == (
        "qa", ("@qa",), 2, 1, timedelta(hours=24))

    def stages_only(d):
        d.pop("qa")
        d["approvals"] = [{"name": "client", "group": ["client1"]},
                          {"name": "qa", "group": ["@qa"], "required": 2, "distinct_from_earlier": False}]
    service = _load(tmp_path, stages_only)
    assert [(s.name, s.required, s.distinct_from_earlier) for s in service.stages] == [
        ("client", 1, True), ("qa", 2, False)]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["approvals"][1].update(group=[]),
     "approvals[1].group: no approvers: a stage needs the users or @groups who may approve it, got []"),
    (lambda d: d["approvals"][1].update(required=2),
     "approvals[1].required: 2 approvals required but stage 'client' has only 1 member(s) (client1)"),
    (lambda d: d["approvals"][0].update(when="minor"),
     "approvals[0].when: Input should be 'always' or 'major', got 'minor'"),
    (lambda d: d["approvals"].append(dict(MANAGER)),
     "approvals[2].name: duplicate stage name 'manager' (also approvals[0]); each stage is its own task group"),
    (lambda d: d["approvals"][1].update(name="Client acceptance"),
     "approvals[1].name: 'Client acceptance' is not a stage name: a lowercase letter, then lowercase letters, "
     "digits or _ (at most 40); it names the task group <name>_signoff"),
    (lambda d: d["approvals"][1].update(name="client.accept"), "approvals[1].name: 'client.accept' is not a stage"),
    (lambda d: d["approvals"][0].update(group=["@board"]),
     "approvals[0].group: unknown group(s) @board; define them under groups:"),
    (lambda d: d["approvals"][1].update(approvers=1), "approvals[1]: unknown field 'approvers'"),
    (lambda d: d["approvals"][1].update(timeout="soon"), "approvals[1].timeout: "),
    (lambda d: d.update(approvals=[]), "approvals: "),
    (lambda d: d["approvals"].append({"name": "qa", "group": ["@qa"]}),
     "approvals[2].name: 'qa' is the QA stage that the qa: section already gives"),
])
def test_a_bad_stage_is_refused_at_parse_time_naming_the_field(tmp_path, mutate, expected):
    assert _refused(tmp_path, mutate).startswith(expected)
