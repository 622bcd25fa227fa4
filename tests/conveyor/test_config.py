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
    assert service.people(service.qa.group) == ("qa1", "qa2", "qa3") and service.qa.required_approvals == 2
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


# ------------------------------------------------------------------ bad input refused at parse time (issue 10)


def _load_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demo_shop.yaml"
    path.write_text(text)
    return path


def _refused(path: Path, field: str, *phrases: str) -> str:
    with pytest.raises(ServiceConfigError) as err:
        load_service(path)
    message = str(err.value)
    assert str(path) in message, message
    assert f": {field}" in message, message
    for phrase in phrases:
        assert phrase in message, message
    return message


def _hosts(**host) -> dict:
    return {"hosts": [{"name": "web-1", "address": "10.0.0.5", **host}]}


def _production(inventory):
    return lambda d: d["environments"]["production"].update(inventory=inventory)


PROD_HOST = "environments.production.inventory.hosts[0]"


@pytest.mark.parametrize(
    ("mutate", "field", "phrase"),
    [
        # host:port (or anything with ':' that is not an IPv6 address) is not an address
        (_production(_hosts(address="10.0.0.5:22")), f"{PROD_HOST}.address", "ssh_port"),
        (_production(_hosts(address="web-1.example.com:2222")), f"{PROD_HOST}.address", "ssh_port"),
        (_production(_hosts(address="fe80::1%eth0")), f"{PROD_HOST}.address", "address"),
        (_production(_hosts(address="[::1]")), f"{PROD_HOST}.address", "address"),
        # app_root: no way out of the host layout
        (_production(_hosts(app_root="../../etc")), f"{PROD_HOST}.app_root", ".."),
        (_production(_hosts(app_root="/etc")), f"{PROD_HOST}.app_root", "/srv"),
        (_production(_hosts(app_root="/")), f"{PROD_HOST}.app_root", "/srv"),
        (_production(_hosts(app_root="/srv")), f"{PROD_HOST}.app_root", "/srv"),
        (_production(_hosts(app_root="/usr/local/shop")), f"{PROD_HOST}.app_root", "/srv"),
        (_production(_hosts(app_root="app/~x")), f"{PROD_HOST}.app_root", "~"),
        (_production({"aws": {"tags": {"a": "b"}, "app_root": "../../etc"}}),
         "environments.production.inventory.aws.app_root", ".."),
        # every environment's inventory names its hosts
        (_production({"hosts": []}), "environments.production.inventory.hosts", "no hosts: the environment needs"),
        # a trailing newline matches no pattern
        (_production(_hosts(name="web-1\n")), f"{PROD_HOST}.name", "pattern"),
        (_production(_hosts(address="10.0.0.5\n")), f"{PROD_HOST}.address", "address"),
        (_production(_hosts(app_root="app\n")), f"{PROD_HOST}.app_root", "app_root"),
        (_production(_hosts(health_url="http://x/health\n")), f"{PROD_HOST}.health_url", "pattern"),
        (lambda d: d["repo"].update(release_branch="main\n"), "repo.release_branch", "pattern"),
        (lambda d: d["repo"].update(url="--upload-pack=touch /tmp/x"), "repo.url", "pattern"),
        (lambda d: d["repo"].update(url="/srv/git/shop.git\n"), "repo.url", "pattern"),
        (lambda d: d["tests"][0].update(name="unit\n"), "tests[0].name", "pattern"),
        (lambda d: d["groups"].update({"qa\n": ["qa1"]}), "groups", "pattern"),
        (lambda d: d["groups"].update(qa=["qa1\n", "qa2", "qa3"]), "groups.qa[0]", "pattern"),
        (lambda d: d.update(qa={"group": ["qa1", "qa2\n"], "required_approvals": 1}), "qa.group[1]", "pattern"),
        (lambda d: d.update(tickets={"backend": "github", "github": {"repository": "o/r\n"}}),
         "tickets.github.repository", "pattern"),
        (lambda d: d["deploy"].update(ssh_conn_id="conveyor_fleet\n"), "deploy.ssh_conn_id", "pattern"),
        # NaN and infinity are not numbers a timeout or the judge can use
        (lambda d: d["deploy"]["health"].update(timeout_s=float("nan")), "deploy.health.timeout_s", "finite"),
        (lambda d: d["deploy"]["health"].update(timeout_s=float("inf")), "deploy.health.timeout_s", "finite"),
        (lambda d: d["build"].update(timeout_s=float("inf")), "build.timeout_s", "finite"),
        (lambda d: d["analysis"].update(window_s=float("nan")), "analysis.window_s", "finite"),
        (lambda d: d["analysis"].update(alpha=float("nan")), "analysis.alpha", "finite"),
        (lambda d: d["watch"].update(window_s=float("inf")), "watch.window_s", "finite"),
        (lambda d: d["watch"].update(latency_tolerance=float("inf")), "watch.latency_tolerance", "finite"),
        (lambda d: d.update(schedule={"times": ["10:00"], "max_lateness": float("inf")}), "schedule.max_lateness",
         "finite"),
        (lambda d: d["qa"].update(timeout="99999999999d"), "qa.timeout", "too long"),
        # braces in commands: only the placeholders the command is given
        (lambda d: d["build"].update(command="make OUT={out} HOME=${HOME}"), "build.command", "{{ }}"),
        (lambda d: d["build"].update(command=["awk", "{print $1}", "{out}"]), "build.command", "{{ }}"),
        (lambda d: d["build"].update(command=["make", "{}"]), "build.command", "{{ }}"),
        (lambda d: d["build"].update(command="make {out.real}"), "build.command", "{out}"),
        (lambda d: d["build"].update(command="echo }"), "build.command", "{{ }}"),
        (lambda d: d["tests"][0].update(command="pytest --junitxml={junit} --out={out}"), "tests[0].command",
         "{junit}, {replica_urls}"),
        (lambda d: d["tests"][0].update(env={"HOME_DIR": "${HOME}"}), "tests[0].env.HOME_DIR", "{{ }}"),
        (lambda d: d["populate"].update(command="python3 {release_dir}/p.py --dir ${HOME}"), "populate.command",
         "{release_dir}"),
        (_production({"aws": {"tags": {"a": "b"}, "restart": "kill ${PID}"}}),
         "environments.production.inventory.aws.restart", "{address}"),
    ],
)
def test_bad_input_is_refused_at_parse_time(tmp_path, mutate, field, phrase):
    path = _write(tmp_path, mutate)
    _refused(path, field, phrase)


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (_production(_hosts(address="::1")), lambda s: s.environments.production.inventory.hosts[0].address == "::1"),
        (_production(_hosts(address="2001:db8::5")), lambda s: True),
        (_production(_hosts(app_root="/srv/shop")), lambda s: True),
        (_production(_hosts(app_root="/opt/shop/app")), lambda s: True),
        (_production(_hosts(app_root="~/apps/shop")), lambda s: True),
        (lambda d: d["build"].update(command="awk '{{print $1}}' in > {out}/x; echo ${{HOME}}"), lambda s: True),
        (lambda d: d["tests"][0].update(env={"URLS": "{replica_urls}", "J": "{junit}", "JSON": '{{"a": 1}}'}),
         lambda s: s.tests[0].env["URLS"] == "{replica_urls}"),
        (_production({"aws": {"tags": {"a": "b"}, "health_url": "http://{address}:9000/h"}}), lambda s: True),
    ],
)
def test_what_is_allowed_still_loads(tmp_path, mutate, check):
    service = load_service(_write(tmp_path, mutate))
    assert check(service)


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    text = DEMO.read_text().replace("  required_approvals: 2 ", "  required_approvals: 2\n  required_approvals: 1 ")
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("  required_approvals:")]
    assert len(lines) == 2
    message = _refused(_load_text(tmp_path, text), "qa.required_approvals", "duplicate key 'required_approvals'")
    assert f"on line {lines[1]} (first on line {lines[0]})" in message


def test_duplicate_top_level_keys_are_refused(tmp_path):
    text = DEMO.read_text() + "\nwaves: [1, '100%']\n"
    _refused(_load_text(tmp_path, text), "waves", "duplicate key 'waves'")


def test_aliases_are_refused(tmp_path):
    text = DEMO.read_text().replace("  qa: [qa1, qa2, qa3]", "  qa: &qa [qa1, qa2, qa3]").replace(
        '  group: ["@qa"]', "  group: *qa")
    assert "group: *qa" in text and "&qa" in text
    line = text.splitlines().index("  qa: &qa [qa1, qa2, qa3]") + 1
    _refused(_load_text(tmp_path, text), "groups.qa", f"line {line}: YAML anchors and aliases are not allowed")


BOMB_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: the bomb needed 2.8 GB and more
from pathlib import Path
from conveyor.config import load_service
from conveyor.exceptions import ServiceConfigError
try:
    load_service(Path(sys.argv[1]))
except ServiceConfigError as e:
    print(e)
"""


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    """600 bytes that expand to 9**9 strings: refused before anything expands it."""
    levels = "abcdefghi"
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip(levels, levels[1:], strict=False)]
    bomb = "x_bomb: {" + ", ".join(lines) + "}\n"
    assert len(bomb) < 700
    text = bomb + DEMO.read_text().replace('waves: [1, "25%", "50%", "100%"]', "waves: *i")
    path = _load_text(tmp_path, text)
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", BOMB_PROBE, str(path)], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(path) in probe.stdout
    assert "anchors and aliases are not allowed" in probe.stdout


def test_an_oversized_or_too_deep_file_is_refused(tmp_path):
    big = DEMO.read_text() + "# padding\n" * 30_000
    _refused(_load_text(tmp_path, big), "(file)", "larger than")
    deep = DEMO.read_text().replace("description: The demo", "x_deep: " + "[" * 5000 + "]" * 5000
                                    + "\ndescription: The demo")
    _refused(_load_text(tmp_path, deep), "(file)", "nested")
    huge_int = DEMO.read_text().replace("max_parallel: 4", "max_parallel: " + "9" * 5000)
    with pytest.raises(ServiceConfigError, match="deploy.max_parallel|not valid YAML"):
        load_service(_load_text(tmp_path, huge_int))


def test_the_readme_service_file_example_is_valid(tmp_path):
    """The example in README.md ("Configuring a service") is a service file the model accepts."""
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Configuring a service", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "shop.yaml"
    path.write_text(example)
    service = load_service(path)
    assert service.id == "shop"
    assert service.people(service.qa.group) == ("qa1", "qa2", "qa3")
    assert service.people(service.release.emergency) == ("ops1", "ops2")
