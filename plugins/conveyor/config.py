"""The service model: ``include/services/<id>.yaml`` as typed, immutable values.

Each section is a pydantic model whose definition is at once its shape, its defaults and its
validation: there is no separate schema or table of defaults to keep in step. ``load_service``
either returns a :class:`ServiceConfig` or raises :class:`~conveyor.exceptions.ServiceConfigError`
naming the file and the field, e.g. ``include/services/shop.yaml: waves[1]: '150%' does not match
...``. Pure module (pydantic, no Airflow import); the release-window parsing it uses lives in
:mod:`conveyor.windows` and the judge's settings in :class:`conveyor.analysis.AnalysisSettings`.
"""

from __future__ import annotations

import re
import reprlib
import string
from collections.abc import Sequence
from datetime import date, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from conveyor.analysis.model import AnalysisSettings
from conveyor.durations import format_duration, parse_duration
from conveyor.exceptions import ServiceConfigError
from conveyor.flags import FLAG_NAME_RE
from conveyor.paths import services_dir as default_services_dir
from conveyor.signoff_check import stage_applies
from conveyor.validation import (
    BRANCH_RE,
    CONN_ID_RE,
    GITHUB_REPOSITORY_RE,
    GROUP_NAME_RE,
    HOST_NAME_RE,
    PERSON_RE,
    REMOTE_PATH_RE,
    SERVICE_ID_RE,
    SUITE_NAME_RE,
    TEST_PATH_RE,
    URL_RE,
    app_root,
    host_address,
    strict,
)
from conveyor.windows import (
    DEFAULT_MAX_LATENESS,
    Freeze,
    parse_days,
    parse_freezes,
    parse_lateness,
    parse_times,
    parse_zone,
)

__all__ = ["ApprovalStage", "ServiceConfig", "load_service", "parse_duration", "parse_service", "read_service_document",
           "service_files"]

T = TypeVar("T")
WAVE_RE = strict(r"(100|[1-9][0-9]?)%")
MAX_FILE_BYTES = 256 * 1024  # a service file is a few KB; a bigger one is a mistake or an attack
MAX_DEPTH = 32  # nesting of mappings and lists (the model itself is at most about 8 deep)
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6
_repr.maxlevel = 3


def _short(value: Any) -> str:
    """``repr`` cut short: an error message never grows with the input."""
    return _repr.repr(value)


# ----------------------------------------------------------------------------- field types


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _duration(value: Any) -> Any:
    try:
        return parse_duration(value) if isinstance(value, str) else value
    except OverflowError:
        raise ValueError(f"{value!r} is too long a duration") from None


def _command(value: Any) -> Any:
    """A command line (run by a shell) or an argument list (run as is)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"expected a command line (a string) or a non-empty list of arguments, got {_short(value)}")


def _wave(value: Any) -> Any:
    """A cumulative host count (``1``) or a share of production (``"25%"``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and WAVE_RE.fullmatch(value):
        return value
    raise ValueError(f"{_short(value)} does not match {WAVE_RE.pattern}: a host count (1, 2, ...) or a share "
                     "such as '25%'")


def _pattern(regex: re.Pattern[str]) -> Any:
    return Annotated[str, StringConstraints(pattern=regex.pattern)]


def _placeholders(*allowed: str) -> AfterValidator:
    """A command (or value) that Conveyor fills with ``str.format``: only ``{name}`` of ``allowed``.

    Checked here, at parse time, so that ``${HOME}`` or ``awk '{print $1}'`` is refused with the field
    instead of failing with ``KeyError`` in the middle of a release.
    """
    names = ", ".join(f"{{{a}}}" for a in allowed)

    def check_one(text: str, where: str) -> None:
        hint = (f"the placeholders here are {names}; write a literal brace doubled: {{{{ }}}} "
                "(awk '{{print $1}}', ${{HOME}})")
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
        except ValueError as e:  # a single '{' or '}'
            raise ValueError(f"{where}{_short(text)}: {e}; {hint}") from None
        for field, spec, conversion in fields:
            if field not in allowed or spec or conversion:
                shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(f"{where}{_short(text)} uses {shown}, which is not a placeholder; {hint}")

    def check(value: Any) -> Any:
        if isinstance(value, str):
            check_one(value, "")
        elif isinstance(value, tuple):
            for i, part in enumerate(value):
                check_one(part, f"argument {i}: ")
        return value

    return AfterValidator(check)


Items = Annotated[tuple[T, ...], BeforeValidator(_as_tuple)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Command = Annotated[str | tuple[str, ...], BeforeValidator(_command)]
Wave = Annotated[int | str, BeforeValidator(_wave)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]
Text = Annotated[str, StringConstraints(min_length=1)]
Url = _pattern(URL_RE)
HostName = _pattern(HOST_NAME_RE)
HostAddress = Annotated[str, AfterValidator(host_address)]  # DNS name, IPv4 or bare IPv6; never host:port
RemotePath = _pattern(REMOTE_PATH_RE)
AppRoot = Annotated[str, AfterValidator(app_root)]  # relative, ~/..., or below /srv, /opt, ... (validation)
SuiteName = _pattern(SUITE_NAME_RE)
Person = _pattern(PERSON_RE)  # an Airflow user name or "@group"
ConnId = _pattern(CONN_ID_RE)


class Section(BaseModel):
    """A part of a service file: immutable, unknown fields refused, values never coerced."""

    # Python's re: the shared patterns of conveyor.validation use look-arounds. No NaN or infinity: a
    # NaN timeout never expires (every comparison with it is false).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, regex_engine="python-re",
                              allow_inf_nan=False)


# -------------------------------------------------------------------------------- sections


class Repo(Section):
    # a git URL or path (one word, not starting with "-": git would read it as an option);
    # ``local:demo_shop`` is the lab's generated demo repository
    url: _pattern(strict(r"(?!-)[^\s\x00-\x1f\x7f]{1,2048}"))
    release_branch: _pattern(BRANCH_RE) = "main"


class Build(Section):
    command: Annotated[Command, _placeholders("out")]  # run in a checkout of the ref; ``{out}``: the artifact's contents
    timeout_s: Seconds = 600


class ArtifactStore(Section):
    url: _pattern(strict(r"(file|s3)://[^\s\x00-\x1f\x7f]*")) | None = None  # None: ``$CONVEYOR_HOME/artifacts``
    conn_id: ConnId | None = None


class Populate(Section):
    command: Annotated[Text, _placeholders("release_dir")]  # over SSH on every replica host; ``{release_dir}``:
    # the candidate's directory


class LoadThresholds(Section):
    """What a load suite's run must keep, each optional but at least one (:mod:`conveyor.loadtest`)."""

    p95_ms: Annotated[float, Field(gt=0)] | None = None  # 95th percentile response time, at most
    p99_ms: Annotated[float, Field(gt=0)] | None = None  # 99th percentile response time, at most
    error_rate: Annotated[float, Field(ge=0, le=1)] | None = None  # failed / all requests, at most (0.01: 1%)
    min_rps: Annotated[float, Field(gt=0)] | None = None  # requests per second over the run, at least

    @model_validator(mode="after")
    def _at_least_one(self) -> LoadThresholds:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(f"give at least one of {', '.join(type(self).model_fields)}")
        return self


#: Locust's start and report on top of a load suite's ``duration``: ``timeout_s`` must leave this much.
LOAD_OVERHEAD_S = 30
_LOAD_FIELDS = ("locustfile", "users", "spawn_rate", "duration", "thresholds")


class Suite(Section):
    """``kind: command`` (the default) runs ``command``, which writes JUnit XML; ``kind: load`` runs Locust
    headless with ``locustfile`` against the replica for ``duration`` and judges ``thresholds``."""

    name: SuiteName
    kind: Literal["command", "load"] = "command"
    command: Annotated[Command, _placeholders("junit", "replica_urls")] | None = None  # ``{junit}``: where to
    # write JUnit XML; ``{replica_urls}``: the replica's URLs. The same placeholders in ``env`` values.
    timeout_s: Seconds = 900  # the suite's wall-clock bound, whatever its kind
    env: dict[str, Annotated[str, _placeholders("junit", "replica_urls")]] = {}
    locustfile: _pattern(TEST_PATH_RE) | None = None  # kind: load; in the candidate's checkout
    users: Annotated[int, Field(ge=1, le=1000)] = 10  # concurrent simulated users
    spawn_rate: Annotated[float, Field(gt=0, le=1000)] = 10  # users started per second
    duration: Duration = timedelta(seconds=20)  # how long the load runs
    thresholds: LoadThresholds | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Suite:
        if self.kind == "command":
            if self.command is None:
                raise ValueError("command: required (or kind: load, with a locustfile)")
            stray = [f for f in _LOAD_FIELDS if f in self.model_fields_set]
            if stray:
                raise ValueError(f"{stray[0]}: only for kind: load")
            return self
        if self.command is not None:
            raise ValueError("command: not for kind: load (Conveyor runs Locust with the locustfile)")
        if self.locustfile is None:
            raise ValueError("locustfile: required for kind: load (a path in the service's repository)")
        if self.thresholds is None:
            raise ValueError("thresholds: required for kind: load (p95_ms, p99_ms, error_rate, min_rps)")
        seconds = self.duration.total_seconds()
        if seconds < 1:
            raise ValueError(f"duration: {format_duration(self.duration)} is too short; at least 1s")
        if seconds + LOAD_OVERHEAD_S > self.timeout_s:
            raise ValueError(f"timeout_s: {self.timeout_s:g} s does not leave the {format_duration(self.duration)} "
                             f"load run its {LOAD_OVERHEAD_S} s to start and report")
        return self


class Triage(Section):
    enabled: bool = True
    test_paths: Items[_pattern(TEST_PATH_RE)] = ("tests",)


class StaticHost(Section):
    name: HostName
    address: HostAddress
    ssh_port: Port | None = None
    app_root: AppRoot | None = None
    restart: Text | None = None
    health_url: Url | None = None
    metrics_url: Url | None = None


class AwsInventory(Section):
    """Running EC2 instances carrying every tag; URL fields may use ``{address}``."""

    aws_conn_id: ConnId = "aws_default"
    region: _pattern(strict(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")) | None = None
    tags: Annotated[dict[str, str], Field(min_length=1)]
    address: Literal["private_ip", "public_ip", "private_dns", "public_dns"] = "private_ip"
    ssh_port: Port | None = None
    app_root: AppRoot | None = None
    restart: Annotated[Text, _placeholders("address")] | None = None
    health_url: Annotated[Url, _placeholders("address")] | None = None
    metrics_url: Annotated[Url, _placeholders("address")] | None = None


class Inventory(Section):
    """Where an environment's hosts come from: ``local`` (the lab fleet), ``hosts: [...]`` or ``aws: {...}``."""

    local: bool = False
    hosts: Annotated[Items[StaticHost], Field(min_length=1)] | None = None
    aws: AwsInventory | None = None

    @model_validator(mode="before")
    @classmethod
    def _spelled(cls, value: Any) -> Any:
        if value == "local":
            return {"local": True}
        if not isinstance(value, dict):
            raise ValueError(f"expected 'local', {{hosts: [...]}} or {{aws: {{...}}}}, got {value!r}")
        return value

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts_given(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and not value:
            raise ValueError("no hosts: the environment needs at least one host (hosts: [...]), or use local or aws")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Inventory:
        if sum((self.local, self.hosts is not None, self.aws is not None)) != 1:
            raise ValueError("give exactly one of 'local', hosts or aws")
        return self


class Environment(Section):
    inventory: Inventory


class Environments(Section):
    replica: Environment
    production: Environment


class Health(Section):
    timeout_s: Seconds = 60  # the longest a host may take to answer healthy on the version
    interval_s: Seconds = 1
    probe_timeout_s: Seconds = 5  # one probe, connect to last byte (a trickling /health is cut off)


class RemoteTimeouts(Section):
    """Wall-clock bounds of every remote step; a host that passes one is a failed host."""

    connect_s: Seconds = 10  # establishing the SSH connection
    command_s: Seconds = 120  # one remote command (stage, activate, restart, populate...), start to exit
    upload_s: Seconds = 600  # one SFTP upload (the artifact)


class Deploy(Section):
    ssh_conn_id: ConnId = "conveyor_fleet"
    max_parallel: Annotated[int, Field(ge=1, le=256)] = 4  # hosts deployed at once within a wave
    health: Health = Health()
    timeouts: RemoteTimeouts = RemoteTimeouts()
    keep_releases: Annotated[int, Field(ge=2)] = 5  # release directories kept per host (plus current, previous)


METRIC_NAME_RE = strict(r"[A-Za-z_:][A-Za-z0-9_:]{0,199}")
LABEL_NAME_RE = strict(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
# Label matchers appended to every metric name: ``{job="shop",env=~"prod.*"}`` (one pair of braces).
SELECTOR_RE = strict(r"\{[^{}\x00-\x1f\x7f]{0,1000}\}")
MetricName = _pattern(METRIC_NAME_RE)
LabelName = _pattern(LABEL_NAME_RE)
PROMQL_PLACEHOLDERS = ("host_label", "status_label", "selector")


def _needs_host_label(value: Any) -> Any:
    """A query that does not keep the host label cannot say which host a number belongs to."""
    if isinstance(value, str) and "{host_label}" not in value:
        raise ValueError(f"{_short(value)} has no {{host_label}} placeholder: the query must keep the host label, "
                         "e.g. sum by ({host_label}, ...) (...)")
    return value


PromQL = Annotated[Text, _placeholders(*PROMQL_PLACEHOLDERS), AfterValidator(_needs_host_label)]


class MetricNames(Section):
    """The service's metrics as Prometheus names (sources ``scrape`` and ``prometheus``)."""

    requests: MetricName = "shop_http_requests_total"  # a counter of requests, by ``status_label``
    status_label: LabelName = "status"  # the HTTP status code's label on ``requests``
    latency: MetricName | None = "shop_http_request_duration_seconds"  # a histogram's base name (None: none)
    process_start: MetricName | None = "process_start_time_seconds"  # epoch seconds (None: restarts are seen
    # only as counters going down)


class PromQueries(Section):
    """Full PromQL templates instead of names; each answers cumulative values (no ``rate()``), keeps
    ``{host_label}`` and may use ``{status_label}`` and ``{selector}``. A literal brace is doubled."""

    requests: PromQL  # by {host_label} and {status_label}
    latency_buckets: PromQL | None = None  # by {host_label} and le
    latency_sum: PromQL | None = None  # by {host_label}
    process_start: PromQL | None = None  # by {host_label}


class PrometheusSettings(Section):
    """A Prometheus server's HTTP API (``/api/v1/query``), through an Airflow ``http`` connection."""

    conn_id: ConnId  # host/port/schema; login/password (basic auth) or extra ``{"token": ...}`` (bearer)
    selector: _pattern(SELECTOR_RE) | None = None  # label matchers added to every metric name
    host_label: LabelName = "instance"  # the label that names the host in Prometheus
    # How a host_label value maps to an inventory host: its ``name``, its ``address``, or
    # ``address_port``: address:port of the host's metrics_url (Prometheus' default ``instance``).
    host_match: Literal["name", "address", "address_port"] = "address_port"
    queries: PromQueries | None = None  # None: built from ``metrics`` and ``selector``


CloudWatchStatistic = Literal["Sum", "SampleCount", "Average", "Minimum", "Maximum"]


class CloudWatchMetric(Section):
    """One CloudWatch metric, per host: the host's dimension (``InstanceId``) is added to ``dimensions``."""

    namespace: Text
    metric_name: Text
    dimensions: dict[Text, Text] = {}
    statistic: CloudWatchStatistic = "Sum"


class CloudWatchLatency(Section):
    """Latency in seconds as a histogram: per bound ``b``, the trimmed count ``TC(:b)`` of every period
    (real CloudWatch only: moto cannot compute it), plus ``Sum`` and ``SampleCount``."""

    namespace: Text
    metric_name: Text
    dimensions: dict[Text, Text] = {}
    bounds: Annotated[tuple[Annotated[float, Field(gt=0)], ...], BeforeValidator(_as_tuple), Field(min_length=1,
                                                                                                   max_length=30)]
    unit: Literal["seconds", "milliseconds"] = "seconds"

    @field_validator("bounds")
    @classmethod
    def _ascending(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if list(value) != sorted(set(value)):
            raise ValueError(f"bounds must be strictly ascending, got {list(value)}")
        return value


class CloudWatchSettings(Section):
    """CloudWatch ``GetMetricData`` through the amazon provider; per-period sums made cumulative."""

    aws_conn_id: ConnId = "aws_default"
    region: _pattern(strict(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")) | None = None
    dimension: Text = "InstanceId"  # its value is the host's name (EC2 inventories name hosts by instance id)
    period_s: Annotated[int, Field(ge=1, le=86400)] = 60
    requests: CloudWatchMetric  # every request
    errors: CloudWatchMetric  # the failed ones (counted under the status ``error_status``)
    error_status: _pattern(strict(r"[1-5]([0-9][0-9]|xx)")) = "5xx"
    latency: CloudWatchLatency | None = None  # None: judge with ``metrics: [errors]``


class MetricsSource(Section):
    """Where the judge's numbers come from: ``scrape`` (each host's metrics_url), ``prometheus`` or
    ``cloudwatch``. Every kind gives the judge the same cumulative per-host readings."""

    kind: Literal["scrape", "prometheus", "cloudwatch"] = "scrape"
    metrics: MetricNames = MetricNames()  # scrape and prometheus
    timeout_s: Seconds = 3  # one look: one host's scrape, one Prometheus query, one AWS call
    prometheus: PrometheusSettings | None = None
    cloudwatch: CloudWatchSettings | None = None

    @model_validator(mode="after")
    def _kind_configured(self) -> MetricsSource:
        for kind in ("prometheus", "cloudwatch"):
            given = getattr(self, kind) is not None
            if self.kind == kind and not given:
                raise ValueError(f"{kind}: required when kind is {kind!r}")
            if self.kind != kind and given:
                raise ValueError(f"{kind}: given but kind is {self.kind!r}; set kind: {kind} or remove it")
        return self


class Analysis(AnalysisSettings):
    """The canary judge of every wave: its settings, how often it scrapes, and who decides when it cannot."""

    model_config = ConfigDict(regex_engine="python-re")  # Person's look-ahead; the rest from AnalysisSettings

    window_s: float = Field(600.0, gt=0)
    interval_s: Seconds = 10
    deciders: Items[Person] = ()  # who answers "continue or roll back?" on an inconclusive verdict (empty: anyone)
    decision_timeout: Duration = timedelta(minutes=30)
    source: MetricsSource = MetricsSource()  # also the watch's

    def judge(self) -> AnalysisSettings:
        return AnalysisSettings.from_dict(self.to_dict())


class Watch(AnalysisSettings):
    """The post-deploy watch: the judge of ``analysis`` with the fields given here overriding it."""

    window_s: float = Field(300.0, ge=0)  # 0: no watch
    interval_s: Seconds = 10

    def judge(self, analysis: Analysis) -> AnalysisSettings:
        given = self.model_dump(include=(self.model_fields_set | {"window_s"}) & set(AnalysisSettings.__pydantic_fields__))
        return AnalysisSettings.from_dict({**analysis.to_dict(), **given})


class QA(Section):
    group: Items[Person] = ()  # who may sign off; the run's author never counts
    required_approvals: Annotated[int, Field(ge=1, le=10)] = 2
    emergency_required_approvals: Annotated[int, Field(ge=1, le=10)] = 1
    timeout: Duration = timedelta(hours=24)

    @property
    def emergency_approvals(self) -> int:
        return min(self.required_approvals, self.emergency_required_approvals)


#: A stage's name: its task group is ``<name>_signoff`` and the ledger records it with each decision.
STAGE_NAME_RE = strict(r"[a-z][a-z0-9_]{0,39}")


class ApprovalStage(Section):
    """One approval stage (``approvals[i]``): ``required`` distinct people of ``group`` approve, never
    the run's author, in the stage's own task group of Required Actions; stages run in order.

    ``when: major`` asks the stage only of a major change (the run's ``change`` param). A person
    counts once per release across every stage unless ``distinct_from_earlier`` is false (then only
    once within this stage). ``emergency_required`` approvals suffice for an emergency (0: the stage
    is skipped for one).
    """

    name: str
    group: Items[Person]
    required: Annotated[int, Field(ge=1, le=10)] = 1
    emergency_required: Annotated[int, Field(ge=0, le=10)] = 1
    timeout: Duration = timedelta(hours=24)
    when: Literal["always", "major"] = "always"
    distinct_from_earlier: bool = True

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not STAGE_NAME_RE.fullmatch(value):
            raise ValueError(f"{_short(value)} is not a stage name: a lowercase letter, then lowercase letters, "
                             "digits or _ (at most 40); it names the task group <name>_signoff")
        return value

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and not value:
            raise ValueError("no approvers: a stage needs the users or @groups who may approve it, got []")
        return value

    @property
    def emergency_approvals(self) -> int:
        return min(self.required, self.emergency_required)

    @property
    def title(self) -> str:
        """How messages name the stage: ``QA`` for ``qa``, else the name capitalized (``Manager``)."""
        return "QA" if self.name == "qa" else self.name.replace("_", " ").capitalize()

    @property
    def task_group(self) -> str:
        return f"{self.name}_signoff"

    def applies(self, change: str | None) -> bool:
        """Whether a release of ``change`` (``minor`` | ``major``) needs this stage."""
        return stage_applies(self.when, change)


#: The soak cluster's environment name: its hosts' ``environment``, its ledger rows' and its waves'.
SOAK = "soak"
#: The promotion's approval stage (``soak.approval``): task group ``promotion_signoff`` of ``promote_<service>``.
PROMOTION_STAGE = "promotion"


class SoakIncidents(Section):
    """What stops a build's soak for good (an incident): the watch's judge and the health checks."""

    judge: bool = True  # the canary judge (the ``watch`` settings) against the pre-deploy snapshot, window by window
    health: bool = True  # every host answers healthy on the build's version
    unhealthy_for: Duration = timedelta(minutes=2)  # a host failing its health check this long (or on another
    # version at all) is an incident; shorter blips are logged


class Soak(Section):
    """A developer cluster every build runs on before production (``soak:``; docs/soak.md).

    With it, the release DAG deploys a signed-off build to the soak cluster (waves, judge, rollback as
    for production), watches it for ``min`` (``major_min`` for a major change) and ends there;
    ``promote_<service>`` releases the newest build whose soak reached its minimum with no incident.
    """

    inventory: Inventory
    min: Duration = timedelta(days=7)
    major_min: Duration = timedelta(days=14)
    check_interval: Duration = timedelta(minutes=1)  # how often the watch checks health and reads metrics
    window: Duration = timedelta(hours=1)  # the judge's window; the soak is judged window after window
    incidents: SoakIncidents = SoakIncidents()
    # One more approval before production (``promotion_signoff``); None: the release's sign-off suffices.
    approval: ApprovalStage | None = None

    @field_validator("approval", mode="before")
    @classmethod
    def _promotion_stage(cls, value: Any) -> Any:
        return {"name": PROMOTION_STAGE, **value} if isinstance(value, dict) else value

    @field_validator("min", "major_min", "check_interval", "window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Soak:
        if self.major_min < self.min:
            raise ValueError(f"major_min ({format_duration(self.major_min)}) is shorter than min "
                             f"({format_duration(self.min)}): a major change soaks at least as long as a minor one")
        if self.approval is not None and self.approval.when != "always":
            raise ValueError("approval.when: a promotion's approval applies to every promotion; remove when")
        return self

    def minimum(self, change: str | None) -> timedelta:
        """How long a build of ``change`` (``minor`` | ``major``) must soak."""
        return self.major_min if change == "major" else self.min


class Notifications(Section):
    slack_webhook_conn_id: ConnId | None = None


class Release(Section):
    """Who may start a release. Users or ``@group`` names (``groups:``); Airflow's roles still apply first."""

    allowed: Items[Person] = ()  # who may trigger a release (empty: anyone Airflow lets trigger the DAG)
    emergency: Items[Person] = ()  # who may declare an emergency (empty: nobody; emergencies are refused)


class JiraTickets(Section):
    conn_id: ConnId = "jira_default"  # apache-airflow-providers-atlassian-jira connection
    project: Text
    issue_type: Text = "Bug"
    labels: Items[Text] = ("conveyor", "release-failure")


class GithubTickets(Section):
    conn_id: ConnId = "github_default"  # apache-airflow-providers-github connection
    repository: _pattern(GITHUB_REPOSITORY_RE)  # owner/name
    labels: Items[Text] = ("conveyor", "release-failure")


class Tickets(Section):
    backend: Literal["local", "jira", "github"] = "local"
    jira: JiraTickets | None = None
    github: GithubTickets | None = None
    dedup_window: Duration = timedelta(days=7)  # the same failure again within it: a comment, not a new ticket

    @model_validator(mode="after")
    def _backend_configured(self) -> Tickets:
        if self.backend != "local" and getattr(self, self.backend) is None:
            raise ValueError(f"{self.backend}: required when backend is {self.backend!r}")
        return self


class Flag(Section):
    """A feature flag the service declares (``flags:``); ``flag_<service>`` rolls out only these."""

    name: _pattern(FLAG_NAME_RE)
    description: Text


UNLEASH_NAME_RE = strict(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class UnleashFlags(Section):
    conn_id: ConnId = "unleash_default"  # base URL in host, admin API token in password (docs/flags.md)
    project: _pattern(UNLEASH_NAME_RE) = "default"
    # Conveyor's environments -> Unleash's (Unleash starts with ``development`` and ``production``)
    environments: dict[Literal["replica", "production", "soak"], _pattern(UNLEASH_NAME_RE)] = {
        "replica": "development", "production": "production"}


class FlagStoreSettings(Section):
    """Where the service's flags live: files on the fleet's hosts (``local``) or an Unleash server."""

    backend: Literal["local", "unleash"] = "local"
    unleash: UnleashFlags | None = None

    @model_validator(mode="after")
    def _backend_configured(self) -> FlagStoreSettings:
        if self.backend == "unleash" and self.unleash is None:
            raise ValueError("unleash: required when backend is 'unleash' (conn_id, project, environments)")
        if self.backend == "local" and self.unleash is not None:
            raise ValueError("unleash: given but backend is 'local'; set backend: unleash or remove it")
        return self


class FlagRollout(Section):
    """How ``flag_<service>`` rolls a flag out (docs/flags.md): its default steps (percent of users), and
    the metric families that count requests by flag and variant, so the canary judge can compare flag-on
    with flag-off traffic on the same hosts."""

    steps: Annotated[Items[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1, max_length=10)] = (
        1, 10, 50, 100)
    requests_metric: MetricName = "shop_flag_requests_total"
    latency_metric: MetricName = "shop_flag_request_duration_seconds"
    flag_label: _pattern(LABEL_NAME_RE) = "flag"
    variant_label: _pattern(LABEL_NAME_RE) = "variant"

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"steps must increase, got {list(value)}")
        return value


class AllowedAdvisory(Section):
    id: Text  # the advisory (GHSA-..., PYSEC-..., CVE-...)
    until: date  # the exception expires: after this day the advisory blocks again
    reason: Text


class Audit(Section):
    """The dependency audit of the artifact (pip-audit against an OSV endpoint), before the replica."""

    lock_file: RemotePath = "requirements.txt"  # inside the artifact
    osv_url: Url = "https://api.osv.dev/v1/query"
    block_at: Literal["low", "moderate", "high", "critical"] = "high"  # this severity and above block
    allow: Items[AllowedAdvisory] = ()
    timeout_s: Seconds = 300


class CI(Section):
    suite: SuiteName | None = None  # a name from ``tests`` (None: the first one); it runs without hosts
    poll_interval: Duration | None = timedelta(minutes=5)  # None: webhook-triggered runs only
    max_commits: Annotated[int, Field(ge=1, le=100)] = 10  # the newest ones, per run


class Schedule(Section):
    """Release windows (:class:`~conveyor.timetables.ReleaseWindowTimetable`, docs/schedule.md)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    times: Annotated[tuple[time, ...], BeforeValidator(parse_times)]
    days: Annotated[tuple[int, ...], BeforeValidator(parse_days)] = (0, 1, 2, 3, 4)
    timezone: Annotated[ZoneInfo, BeforeValidator(parse_zone)] = ZoneInfo("UTC")
    freezes: tuple[Freeze, ...] = ()
    max_lateness: Annotated[timedelta, BeforeValidator(parse_lateness)] = DEFAULT_MAX_LATENESS

    @field_validator("freezes", mode="before")
    @classmethod
    def _freezes(cls, value: Any, info: ValidationInfo) -> tuple[Freeze, ...]:
        # Freeze dates are local days in the schedule's zone (an invalid zone is reported on its own).
        return parse_freezes(value, info.data.get("timezone") or ZoneInfo("UTC"))


#: How messages name a month of a rotation (its keys may also be 1-12 or full names).
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
               "november", "december")  # not the locale's (calendar.month_name): a service file reads the same anywhere


def _month_number(key: Any) -> int:
    """A rotation's month key: ``1``-``12``, ``jan``-``dec`` or the full name (any case)."""
    if isinstance(key, int) and not isinstance(key, bool) and 1 <= key <= 12:
        return key
    word = key.strip().lower() if isinstance(key, str) else ""
    if word.isdigit() and 1 <= int(word) <= 12:
        return int(word)
    for number, name in enumerate(MONTH_NAMES, start=1):
        if word in (name, name[:3]):
            return number
    raise ValueError(f"{_short(key)} is not a month: 1-12 or jan-dec")


class Rotation(Section):
    """Which areas run in which month: ``months: {jan: [cart], feb: [...], ...}`` (or ``1: [...]``), or
    ``per_month: N``: N areas a month, round robin in the areas' declared order, starting again every January."""

    months: dict[int, Items[SuiteName]] | None = None  # month number -> areas; a month not given runs none
    per_month: Annotated[int, Field(ge=1, le=100)] | None = None

    @field_validator("months", mode="before")
    @classmethod
    def _month_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        months: dict[int, Any] = {}
        for key, areas in value.items():
            number = _month_number(key)
            if number in months:
                raise ValueError(f"{_short(key)}: month {MONTHS[number - 1]} is given twice")
            months[number] = areas
        return months

    @model_validator(mode="after")
    def _one_kind(self) -> Rotation:
        if (self.months is None) == (self.per_month is None):
            raise ValueError("give exactly one of months (areas by month) or per_month (N areas a month, "
                             "round robin)")
        return self


class Regression(Section):
    """The rotating regression calendar (``regression:``; docs/regression.md): each area is a suite run
    against the replica on production's version, in the months its ``rotation`` gives, every area at least
    once a year. ``regression_<service>`` runs a month's areas; a failing area files one ticket, and the
    same failure at the area's next turn comments on it while it is within ``dedup_window``."""

    areas: Annotated[dict[SuiteName, Suite], Field(min_length=1)]  # name -> a suite (kind: command), as in tests:
    rotation: Rotation
    # An area runs again months later: a recurrence within this comments on the open ticket
    # (tickets.dedup_window is for releases, days apart).
    dedup_window: Duration = timedelta(days=400)

    @field_validator("areas", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        """An area's suite is named by its key (``name`` is not given again)."""
        if not isinstance(value, dict):
            return value
        named = {}
        for name, spec in value.items():
            if isinstance(spec, dict) and "name" in spec:
                raise ValueError(f"{name}.name: an area's suite is named by its key; remove name")
            named[name] = {"name": name, **spec} if isinstance(spec, dict) else spec
        return named

    @field_validator("areas", mode="after")
    @classmethod
    def _commands(cls, value: dict[str, Suite]) -> dict[str, Suite]:
        for name, suite in value.items():
            if suite.kind != "command":
                raise ValueError(f"{name}.kind: an area is a command suite (it writes JUnit XML); load suites "
                                 "belong under tests:")
        return value

    @model_validator(mode="after")
    def _covered(self) -> Regression:
        names, per_month = list(self.areas), self.rotation.per_month
        if per_month is not None and per_month > len(names):
            raise ValueError(f"rotation.per_month: {per_month} areas a month but only {len(names)} area(s) "
                             f"are defined ({', '.join(names)})")
        for month, areas in sorted((self.rotation.months or {}).items()):
            unknown = [a for a in areas if a not in self.areas]
            if unknown:
                raise ValueError(f"rotation.months.{MONTHS[month - 1]}: unknown area(s) {', '.join(unknown)}; "
                                 f"the areas are {', '.join(names)}")
            if len(set(areas)) != len(areas):
                raise ValueError(f"rotation.months.{MONTHS[month - 1]}: an area is given twice: {list(areas)}")
        covered = {a for month in range(1, 13) for a in self.areas_in(month)}
        for name in names:
            if name not in covered:
                how = ("add it to a month" if self.rotation.months is not None else
                       f"12 months of per_month: {per_month} reach only {12 * (per_month or 0)} of the "
                       f"{len(names)} areas; raise per_month")
                raise ValueError(f"rotation: area {name!r} is never run: {how}")
        return self

    def areas_in(self, month: int) -> tuple[str, ...]:
        """The areas that run in ``month`` (1-12), in declared order for a round robin."""
        if not 1 <= month <= 12:
            raise ValueError(f"month must be 1-12, got {month!r}")
        if self.rotation.months is not None:
            return tuple(self.rotation.months.get(month, ()))
        names, n = list(self.areas), self.rotation.per_month or 0
        start = (month - 1) * n
        return tuple(dict.fromkeys(names[(start + i) % len(names)] for i in range(n)))

    def calendar(self) -> dict[int, tuple[str, ...]]:
        """The year's rotation: month number -> its areas."""
        return {month: self.areas_in(month) for month in range(1, 13)}


# ---------------------------------------------------------------------------------- service


class ServiceConfig(Section):
    """A validated service definition; every section present, with its defaults."""

    id: _pattern(SERVICE_ID_RE)
    description: str = ""
    owner: str = "release-eng"
    repo: Repo
    build: Build
    artifact_store: ArtifactStore = ArtifactStore()
    populate: Populate | None = None
    tests: Items[Suite] = ()
    triage: Triage = Triage()
    environments: Environments
    deploy: Deploy = Deploy()
    waves: Annotated[Items[Wave], Field(min_length=1, max_length=10)] = (1, "25%", "50%", "100%")
    analysis: Analysis = Analysis()
    watch: Watch = Watch()
    groups: dict[_pattern(GROUP_NAME_RE), Items[Person]] = {}
    release: Release = Release()
    qa: QA = QA()
    # Approval stages in order; with ``qa`` given too, they follow its QA stage (see ``stages``).
    approvals: Annotated[Items[ApprovalStage], Field(min_length=1, max_length=10)] | None = None
    notifications: Notifications = Notifications()
    tickets: Tickets = Tickets()
    audit: Audit | None = None  # None: no dependency audit
    ci: CI = CI()
    schedule: Schedule | None = None  # None: manual runs only
    soak: Soak | None = None  # None: releases go from sign-off to production
    regression: Regression | None = None  # None: no regression calendar (no ``regression_<service>`` DAG)
    flags: Items[Flag] = ()  # the feature flags ``flag_<service>`` may roll out (docs/flags.md)
    flag_store: FlagStoreSettings = FlagStoreSettings()
    flag_rollout: FlagRollout = FlagRollout()

    _path: Path = PrivateAttr(default=Path("(no file)"))

    def model_post_init(self, context: Any) -> None:
        if isinstance(context, dict) and context.get("path"):
            self._path = Path(context["path"])

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        names = [t.name for t in self.tests]
        if len(names) != len(set(names)):
            raise ValueError(f"tests: suite names must be unique, got {names}")
        if self.ci.suite and self.ci.suite not in names:
            raise ValueError(f"ci.suite: {self.ci.suite!r} is not one of the service's tests "
                             f"({', '.join(names) or 'none defined'})")
        if self.ci.suite and next(t for t in self.tests if t.name == self.ci.suite).kind == "load":
            raise ValueError(f"ci.suite: {self.ci.suite!r} is a load suite: it needs the replica, and CI runs "
                             "without hosts")
        for where, people in (("release.allowed", self.release.allowed), ("release.emergency", self.release.emergency),
                              ("qa.group", self.qa.group), ("analysis.deciders", self.analysis.deciders)):
            unknown = [p for p in people if p.startswith("@") and p[1:] not in self.groups]
            if unknown:
                raise ValueError(f"{where}: unknown group(s) {', '.join(unknown)}; define them under groups:")
        source = self.analysis.source
        if source.kind == "cloudwatch" and source.cloudwatch.latency is None:
            for where, settings in (("analysis", self.judge()), ("watch", self.judge(watch=True))):
                if "latency" in settings.metrics:
                    raise ValueError(f"{where}.metrics: judges latency but analysis.source.cloudwatch has no latency "
                                     "buckets: set metrics: [errors], or give analysis.source.cloudwatch.latency")
        members = len(self.people(self.qa.group))
        if self.qa.group and self.qa.required_approvals > members:
            raise ValueError(f"qa.required_approvals: {self.qa.required_approvals} approvals required but the QA "
                             f"group has only {members} member(s)")
        flags = [f.name for f in self.flags]
        if len(flags) != len(set(flags)):
            raise ValueError(f"flags: flag names must be unique, got {flags}")
        self._check_stages()
        self._check_soak()
        return self

    def _check_soak(self) -> None:
        if self.soak is None or self.soak.approval is None:
            return
        stage = self.soak.approval
        unknown = [p for p in stage.group if p.startswith("@") and p[1:] not in self.groups]
        if unknown:
            raise ValueError(f"soak.approval.group: unknown group(s) {', '.join(unknown)}; define them under groups:")
        members = self.people(stage.group)
        if stage.required > len(members):
            raise ValueError(f"soak.approval.required: {stage.required} approvals required but the group has only "
                             f"{len(members)} member(s) ({', '.join(members)})")

    def _check_stages(self) -> None:
        if self.approvals is None:
            return
        seen: dict[str, int] = {}
        for i, stage in enumerate(self.approvals):
            if stage.name == "qa" and "qa" in self.model_fields_set:
                raise ValueError(f"approvals[{i}].name: 'qa' is the QA stage that the qa: section already gives "
                                 "(qa: comes first, approvals: after it); describe it in one place only")
            if stage.name in seen:
                raise ValueError(f"approvals[{i}].name: duplicate stage name {stage.name!r} (also approvals"
                                 f"[{seen[stage.name]}]); each stage is its own task group")
            seen[stage.name] = i
            unknown = [p for p in stage.group if p.startswith("@") and p[1:] not in self.groups]
            if unknown:
                raise ValueError(f"approvals[{i}].group: unknown group(s) {', '.join(unknown)}; define them under "
                                 "groups:")
            members = self.people(stage.group)
            if stage.required > len(members):
                raise ValueError(f"approvals[{i}].required: {stage.required} approvals required but stage "
                                 f"{stage.name!r} has only {len(members)} member(s) ({', '.join(members)})")

    @property
    def stages(self) -> tuple[ApprovalStage, ...]:
        """The approval stages, in order: the QA stage of ``qa`` (when given, or when there is no
        ``approvals``), then ``approvals``."""
        if self.approvals is not None and "qa" not in self.model_fields_set:
            return self.approvals
        qa = self.qa
        # Built without validation: the shorthand keeps its own rules (an empty group lets anyone approve).
        return (ApprovalStage.model_construct(name="qa", group=qa.group, required=qa.required_approvals,
                                              emergency_required=qa.emergency_approvals, timeout=qa.timeout),
                *(self.approvals or ()))

    def people(self, names: Sequence[str]) -> tuple[str, ...]:
        """User ids from users and ``@group`` names, in order, each once."""
        users: list[str] = []
        for name in names:
            users += self.groups.get(name[1:], ()) if name.startswith("@") else [name]
        return tuple(dict.fromkeys(users))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dag_id(self) -> str:
        return f"release_{self.id}"

    def environment(self, name: str) -> Environment:
        """``replica``, ``production``, or ``soak`` (the ``soak`` section's cluster)."""
        if name == SOAK:
            if self.soak is None:
                raise ServiceConfigError(f"{self.path}: soak: not defined (the service has no soak cluster)")
            return Environment(inventory=self.soak.inventory)
        if name not in Environments.model_fields:
            raise ServiceConfigError(f"{self.path}: environments.{name}: not defined")
        return getattr(self.environments, name)

    @property
    def ci_suite(self) -> Suite | None:
        """The suite CI runs: ``ci.suite``, else the first of ``tests`` that is not a load suite (None: build
        only)."""
        by_name = {t.name: t for t in self.tests}
        return by_name[self.ci.suite] if self.ci.suite else next((t for t in self.tests if t.kind != "load"), None)

    def judge(self, *, watch: bool = False) -> AnalysisSettings:
        """The canary judge's settings for a wave, or for the post-deploy watch."""
        return self.watch.judge(self.analysis) if watch else self.analysis.judge()


# ---------------------------------------------------------------------------------- loading


def _where(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_LEADING_FIELD = re.compile(r"^([A-Za-z_]\w*)(?=[\[.:])")


def _describe(error: dict[str, Any]) -> str:
    """One validation error as ``field: message``, the field written as in the file (``waves[1]``)."""
    loc, message = tuple(error["loc"]), str(error["msg"])
    if error["type"] == "extra_forbidden":
        return f"{_where(loc[:-1]) or '(top level)'}: unknown field {loc[-1]!r}"
    message = message.removeprefix("Value error, ")
    named = _LEADING_FIELD.match(message)
    if named:  # a validator's message that starts with a field continues the path: "times[0]: ..."
        parent = loc[:-1] if loc and named.group(1) == loc[-1] else loc
        where = _where(parent)
        return f"{where}.{message}" if where else message
    if error["type"] not in ("missing", "value_error") and not isinstance(error.get("input"), dict | list):
        message += f", got {error.get('input')!r}"
    return f"{_where(loc) or '(top level)'}: {message}"


def parse_service(document: Any, path: Path) -> ServiceConfig:
    """Validate an already-loaded YAML document; errors name ``path`` and the offending field."""
    if not isinstance(document, dict):
        raise ServiceConfigError(f"{path}: (top level): expected a mapping of fields")
    try:
        service = ServiceConfig.model_validate(document, context={"path": path})
    except ValidationError as e:
        raise ServiceConfigError("\n".join(f"{path}: {_describe(err)}" for err in e.errors())) from None
    if service.id != path.stem:
        raise ServiceConfigError(f"{path}: id: {service.id!r} must equal the file name {path.stem!r}")
    return service


class _ServiceLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors or aliases, and nesting at most :data:`MAX_DEPTH` deep.

    Aliases are refused where the composer meets them, before anything is expanded: a 600-byte alias
    bomb (nine lists of nine references, nine levels deep) is refused at its first anchor instead of
    taking minutes and gigabytes. The composer recurses, hence the depth bound.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.path: list[Any] = []

    def where(self) -> str:
        return _where(tuple(p for p in self.path if p is not None)) or "(top level)"

    def compose_node(self, parent: Any, index: Any) -> Any:
        # index: the key node of a mapping's value, the position of a list's item, None for a key
        self.path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ServiceConfigError(
                    f"{self.where()}: line {event.start_mark.line + 1}: YAML anchors and aliases are not allowed "
                    "in service files (write the value out)")
            if len(self.path) > MAX_DEPTH:
                raise ServiceConfigError(f"(file): line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} "
                                         "levels deep")
            return super().compose_node(parent, index)
        finally:
            self.path.pop()


def _check_keys(loader: _ServiceLoader, root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping (YAML keeps the later one silently) and merge keys."""
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise ServiceConfigError(f"{_where(loc) or '(top level)'}: line {line}: YAML merge keys (<<) "
                                             "are not allowed in service files")
                key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in lines:
                    raise ServiceConfigError(
                        f"{_where((*loc, key))}: duplicate key {key!r} on line {line} (first on line {lines[key]}); "
                        "YAML would silently keep the later one: remove one of them")
                if key is not None:
                    lines[key] = line
                stack.append((value_node, (*loc, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, i)) for i, item in enumerate(node.value))


def read_service_document(path: Path) -> Any:
    """The YAML document of a service file, read safely: at most :data:`MAX_FILE_BYTES` of UTF-8, no
    anchors or aliases, no duplicate keys, nesting bounded. Errors name the file (and the field)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ServiceConfigError(f"{path}: cannot read service file: {e.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ServiceConfigError(f"{path}: (file): larger than {MAX_FILE_BYTES // 1024} KiB; a service file is a "
                                 "few KB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ServiceConfigError(f"{path}: (file): not UTF-8 text ({e.reason} at byte {e.start})") from None
    loader = _ServiceLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_keys(loader, root)
        return loader.construct_document(root)
    except ServiceConfigError as e:
        raise ServiceConfigError(f"{path}: {e}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: e.g. an int of 5000 digits
        raise ServiceConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def load_service(service_id_or_path: str | Path, services_dir: Path | None = None) -> ServiceConfig:
    """Load and validate one service file, by id (``demo_shop``) or by path."""
    if isinstance(service_id_or_path, Path) or str(service_id_or_path).endswith((".yaml", ".yml")):
        path = Path(service_id_or_path)
    else:
        path = (services_dir or default_services_dir()) / f"{service_id_or_path}.yaml"
    return parse_service(read_service_document(path), path)


def service_files(services_dir: Path | None = None) -> list[Path]:
    return sorted((services_dir or default_services_dir()).glob("*.yaml"))
