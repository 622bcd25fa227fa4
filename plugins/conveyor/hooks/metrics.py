"""Metric sources for the canary judge: each host's metrics page, a Prometheus server, or CloudWatch.

Every source answers the same question, "each host's cumulative counters now", as
:class:`conveyor.analysis.Scrape` records, so the judge (pure, in :mod:`conveyor.analysis`) never
knows where they came from and handles counter resets and missing readings the same way for all.
A source is built from the service file's ``analysis.source`` (:class:`conveyor.config.MetricsSource`)
by :func:`metric_source`; the trigger gets that section as JSON (settings, never objects or secrets)
and builds its own source in the triggerer.

Anything that goes wrong (a host or server that does not answer, an HTML error page, NaN, a metric
that does not exist, an AWS error) is NO DATA for that look, with the reason kept in
:attr:`MetricSource.last_error` and logged; never an exception, and never a number the judge could
pass on. Every remote call is bounded by ``timeout_s`` of wall-clock time.

A look is a coroutine (:meth:`MetricSource.look`) run by the trigger on the triggerer's event loop;
tasks (the plan's pre-deploy snapshot) call :meth:`MetricSource.snapshot`, which runs the same
coroutine on a private event loop. Connections are resolved first, by :meth:`MetricSource.connect`
in a task or ``await`` :meth:`MetricSource.aconnect` in the triggerer (Airflow 3.3's
``BaseHook.aget_connection``: a blocking lookup on the event loop would stall every trigger).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseHook

from conveyor.hosts import Host
from conveyor.validation import url_host

if TYPE_CHECKING:
    from conveyor.analysis import Scrape
    from conveyor.config import MetricsSource

#: How far in the past a Prometheus look is evaluated: longer than a scrape takes to be ingested.
QUERY_LAG_S = 2.0
MAX_BODY = 4 << 20  # a metrics page or a query answer; anything bigger is not what we asked for


def _short_error(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, TimeoutError | asyncio.TimeoutError):
        text = "timed out"
    return text[:300]


class MetricSource(BaseHook):
    """What every source implements. Holds no run state but the last error it met.

    :param spec: the service's ``analysis.source`` section.
    :param start_times: host name -> epoch seconds its process started on the version, for sources
        that cannot read it (CloudWatch): the time the deploy switched the host, where known.
    """

    kind: ClassVar[str] = ""

    def __init__(self, spec: MetricsSource, *, start_times: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.timeout_s = spec.timeout_s
        self.start_times = dict(start_times or {})
        self.last_error: str | None = None

    # --- what a source says about itself
    def describe(self) -> str:
        """The source in a message: ``prometheus http://127.0.0.1:9090``."""
        return self.kind

    def target(self, host: Host) -> str:
        """What identifies ``host`` in this source (a URL, a label value, a dimension value)."""
        raise NotImplementedError

    def graph_url(self, canary: Sequence[str], baseline: Sequence[str], *, start: float, end: float) -> str | None:
        """A link to a graph of canary (targets) against baseline over ``start..end``; None: no such thing."""
        return None

    # --- connecting (only sources with a connection do anything)
    def connect(self) -> None:
        """Resolve connections, in a task."""

    async def aconnect(self) -> None:
        """Resolve connections, in the triggerer."""

    # --- looking
    async def look(self, targets: Mapping[str, str], *, since: float) -> dict[str, Scrape | None]:
        """Every host's cumulative readings now (host name -> scrape, None: no data this time).

        :param targets: host name -> :meth:`target`.
        :param since: epoch seconds the analysis began (sources of per-period sums count from there).
        """
        raise NotImplementedError

    def fail(self, message: str) -> None:
        """Record (and log) why a look gave no data."""
        self.last_error = f"{self.describe()}: {message}"
        self.log.warning("no metrics: %s", self.last_error)

    def snapshot(self, hosts: Sequence[Host], *, lookback_s: float) -> dict[str, dict[str, Any] | None]:
        """Each host's readings now, as JSON (the plan's pre-deploy snapshot); never raises.

        Cumulative sources give each process's counters since it started; CloudWatch gives the sums
        over the last ``lookback_s`` seconds, starting at zero then (its ``start_time``).
        """
        result: dict[str, dict[str, Any] | None] = {h.name: None for h in hosts}
        try:
            self.connect()
            targets = {h.name: self.target(h) for h in hosts}
            since = time.time() - lookback_s
            scrapes = _run_coroutine(self.look(targets, since=since), timeout=self.timeout_s * 3 + 5)
        except Exception as e:  # no snapshot is no data, never a failed plan
            self.fail(f"{type(e).__name__}: {_short_error(e)}")
            return result
        for name, scrape in scrapes.items():
            result[name] = scrape.to_dict() if scrape is not None else None
        return result

    def snapshot_targets(self, targets: Mapping[str, str], *, lookback_s: float = 0.0) -> dict[str, dict[str, Any] | None]:
        """:meth:`snapshot` of targets given as they are (a flag variant's :func:`flag_target`); never raises."""
        result: dict[str, dict[str, Any] | None] = dict.fromkeys(targets)
        try:
            self.connect()
            scrapes = _run_coroutine(self.look(targets, since=time.time() - lookback_s), timeout=self.timeout_s * 3 + 5)
        except Exception as e:  # no snapshot is no data (the step judged against it ends inconclusive)
            self.fail(f"{type(e).__name__}: {_short_error(e)}")
            return result
        return {name: scrape.to_dict() if scrape is not None else None for name, scrape in scrapes.items()}

    def test_connection(self) -> tuple[bool, str]:
        return True, f"{self.describe()}: nothing to test before a release (each look reports its own errors)"


def _run_coroutine(coro: Any, *, timeout: float) -> Any:
    """Run ``coro`` to its end on a private event loop in a helper thread (a task may already run one)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(asyncio.wait_for(coro, timeout))
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=run, name="metric-source", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if thread.is_alive():
        raise TimeoutError(f"metric source did not answer within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _bounded_get(client: Any, url: str, timeout: float, **kwargs: Any) -> Any:
    """One HTTP GET bounded in wall-clock time (httpx's own timeouts bound each phase, not the whole)."""
    return asyncio.wait_for(client.get(url, timeout=timeout, **kwargs), timeout)


# ----------------------------------------------------------------------------------- scrape


class ScrapeSource(MetricSource):
    """Each host's Prometheus text page (its ``metrics_url``), with the metric names of ``metrics``."""

    kind = "scrape"
    conn_name_attr = "metrics_conn_id"
    default_conn_name = "conveyor_metrics"
    conn_type = "http"
    hook_name = "Conveyor host metrics (Prometheus text)"

    def target(self, host: Host) -> str:
        return host.metrics_url

    async def _one(self, client: Any, url: str) -> Scrape | None:
        from conveyor.analysis import parse_prometheus

        names = self.spec.metrics
        # ``<metrics_url>#flag=x&variant=on``: only the samples with these labels (a flag's variant), see
        # :func:`flag_target`; the fragment never goes over the wire.
        url, _, fragment = url.partition("#")
        match = dict(urllib.parse.parse_qsl(fragment)) if fragment else None
        try:
            resp = await _bounded_get(client, url, self.timeout_s)
        except Exception as e:  # a host that does not answer is missing data, not an error
            self.fail(f"{url}: {type(e).__name__}: {_short_error(e)}")
            return None
        if resp.status_code != 200:
            self.fail(f"{url}: HTTP {resp.status_code}")
            return None
        scrape = parse_prometheus(resp.text[:MAX_BODY], time.time(), requests_metric=names.requests,
                                  latency_metric=names.latency or "", status_label=names.status_label,
                                  start_metric=names.process_start, match=match)
        if not scrape.usable:  # garbage, another exporter, NaN counters, or a name that is not there
            self.fail(f"{url}: no usable {names.requests} counters on the page")
            return None
        return scrape

    async def look(self, targets: Mapping[str, str], *, since: float) -> dict[str, Scrape | None]:
        import httpx

        async with httpx.AsyncClient() as client:
            names = list(targets)
            results = await asyncio.gather(*(self._one(client, targets[n]) for n in names))
        return dict(zip(names, results, strict=True))


def flag_target(metrics_url: str, labels: Mapping[str, str]) -> str:
    """A scrape target reading only the samples with ``labels`` (a feature flag's variant) on a host's page."""
    return f"{metrics_url.partition('#')[0]}#{urllib.parse.urlencode(sorted(labels.items()))}"


# ------------------------------------------------------------------------------- prometheus


def prometheus_key(host: Host, host_match: str) -> str:
    """The value of the Prometheus host label that stands for ``host``.

    ``name``: the inventory name (an EC2 host's instance id); ``address``: its address (the label
    holds no port); ``address_port``: ``address:port`` of its metrics URL (Prometheus' ``instance``
    for a target scraped at that URL; IPv6 in brackets).
    """
    if host_match == "name":
        return host.name
    if host_match == "address":
        return host.address
    port = urllib.parse.urlsplit(host.metrics_url).port if host.metrics_url else None
    if port is None:
        scheme = urllib.parse.urlsplit(host.metrics_url).scheme if host.metrics_url else "http"
        port = 443 if scheme == "https" else 80
    return f"{url_host(host.address)}:{port}"


class PrometheusError(Exception):
    """A Prometheus answer that is no data (down, an error, garbage, nothing for the query)."""


class PrometheusSource(MetricSource):
    """Instant queries of the cumulative counters on a Prometheus server's ``/api/v1/query``.

    The counters are summed by the host label (and status, and ``le``), never ``rate()``d: the judge
    gets the same readings as from the hosts themselves and handles counter resets itself. Every query
    of one look is evaluated at the same instant, ``QUERY_LAG_S`` in the past: a scrape that Prometheus
    is still ingesting when the first query runs would otherwise be seen by the later ones only (the
    requests of one scrape next to the latency buckets of the one before, which reads as a slowdown).
    Connection (type ``http``): ``host`` (a name, or a URL with scheme and path), ``port``,
    ``schema`` (``http``/``https``); ``login``/``password`` for basic auth, or extra ``token`` for a
    bearer token.
    """

    kind = "prometheus"
    conn_name_attr = "conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus (canary metrics)"
    _ALLOWED_EXTRAS = ("token",)

    def __init__(self, spec: MetricsSource, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.settings = spec.prometheus
        self.base_url: str | None = None
        self._headers: dict[str, str] = {}

    def describe(self) -> str:
        return f"prometheus {self.base_url or self.settings.conn_id}"

    def target(self, host: Host) -> str:
        return prometheus_key(host, self.settings.host_match)

    # --- connection
    def _use(self, conn: Any) -> None:
        host = (conn.host or "").strip()
        if not host:
            raise ValueError(f"connection {self.settings.conn_id!r} has no host")
        base = host if "://" in host else f"{conn.schema or 'http'}://{host}"
        if conn.port:
            base += f":{conn.port}"
        self.base_url = base.rstrip("/")
        extra = conn.extra_dejson if conn.extra else {}
        token = extra.get(self._ALLOWED_EXTRAS[0])
        if token:
            self._headers = {"Authorization": f"Bearer {token}"}
        elif conn.login:
            pair = f"{conn.login}:{conn.password or ''}".encode()
            self._headers = {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    def connect(self) -> None:
        self._use(self.get_connection(self.settings.conn_id))

    async def aconnect(self) -> None:
        self._use(await self.aget_connection(self.settings.conn_id))

    # --- queries
    def queries(self) -> dict[str, str]:
        """Which PromQL to ask: ``requests``, and where known ``latency_buckets``, ``latency_sum``, ``process_start``."""
        names, s = self.spec.metrics, self.settings
        fill = {"host_label": s.host_label, "status_label": names.status_label, "selector": s.selector or ""}
        if s.queries is not None:
            given = s.queries.model_dump(exclude_none=True)
            return {k: v.format(**fill) for k, v in given.items()}
        sel, by = s.selector or "", s.host_label
        out = {"requests": f"sum by ({by}, {names.status_label}) ({names.requests}{sel})"}
        if names.latency:
            out["latency_buckets"] = f"sum by ({by}, le) ({names.latency}_bucket{sel})"
            out["latency_sum"] = f"sum by ({by}) ({names.latency}_sum{sel})"
        if names.process_start:
            out["process_start"] = f"max by ({by}) ({names.process_start}{sel})"
        return out

    async def _query(self, client: Any, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        """One instant query's vector as (labels, value); raises :class:`PrometheusError` saying why not."""
        url = f"{self.base_url}/api/v1/query"
        try:
            resp = await _bounded_get(client, url, self.timeout_s, params={"query": query, "time": f"{at:.3f}"},
                                      headers=self._headers)
        except Exception as e:
            raise PrometheusError(f"{type(e).__name__}: {_short_error(e)}") from None
        try:
            body = json.loads(resp.content[:MAX_BODY])
        except ValueError:
            kind = "HTML" if resp.text.lstrip()[:1] == "<" else "not JSON"
            raise PrometheusError(f"HTTP {resp.status_code}, answered {kind}: {resp.text[:80]!r}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(f"HTTP {resp.status_code}, query failed: {error or str(body)[:120]} ({query})")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise PrometheusError(f"answer is not an instant vector ({query})")
        out = []
        for item in data["result"]:
            try:
                labels, value = item["metric"], float(item["value"][1])  # "NaN" and "+Inf" parse
            except (KeyError, TypeError, ValueError, IndexError):
                raise PrometheusError(f"malformed sample {str(item)[:120]} ({query})") from None
            if not isinstance(labels, dict):
                raise PrometheusError(f"malformed labels {str(labels)[:120]} ({query})")
            out.append(({str(k): str(v) for k, v in labels.items()}, value))
        return out

    async def look(self, targets: Mapping[str, str], *, since: float) -> dict[str, Scrape | None]:
        import httpx

        from conveyor.analysis import Scrape

        empty: dict[str, Scrape | None] = {n: None for n in targets}
        if self.base_url is None:
            self.fail("not connected")
            return empty
        at = time.time() - QUERY_LAG_S  # every query reads the same scrapes (see the class docs)
        queries = self.queries()
        async with httpx.AsyncClient() as client:
            answers = await asyncio.gather(*(self._query(client, q, at) for q in queries.values()),
                                           return_exceptions=True)
        results = dict(zip(queries, answers, strict=True))
        if isinstance(results["requests"], BaseException):
            self.fail(str(results["requests"]))
            return empty
        for key, value in results.items():  # the optional parts: missing is less data, not none
            if isinstance(value, BaseException):
                self.fail(f"{key}: {value}")
                results[key] = []
        label, status_label = self.settings.host_label, self.spec.metrics.status_label
        by_key = {v: n for n, v in targets.items()}
        if not results["requests"]:
            self.fail(f"no series for {queries['requests']} (is the metric name or selector right?)")
            return empty
        requests: dict[str, dict[str, float]] = {}
        buckets: dict[str, dict[float, float]] = {}
        sums: dict[str, float] = {}
        starts: dict[str, float] = {}
        for labels, value in results["requests"]:
            if labels.get(label) in by_key:
                per = requests.setdefault(by_key[labels[label]], {})
                status = labels.get(status_label, "")
                per[status] = per.get(status, 0.0) + value
        for labels, value in results.get("latency_buckets", []):
            le = labels.get("le", "")
            try:
                bound = float(le)
            except ValueError:
                continue
            if labels.get(label) in by_key and not math.isnan(bound):
                per_b = buckets.setdefault(by_key[labels[label]], {})
                per_b[bound] = per_b.get(bound, 0.0) + value
        for key, into in (("latency_sum", sums), ("process_start", starts)):
            for labels, value in results.get(key, []):
                if labels.get(label) in by_key:
                    into[by_key[labels[label]]] = value
        if not requests:
            seen = sorted({lb.get(label, "") for lb, _ in results["requests"]})[:5]
            self.fail(f"no series for the hosts' {label} values (expected e.g. {next(iter(by_key), '')!r}, "
                      f"found {seen})")
        out = dict(empty)
        for name, per in requests.items():
            b = dict(sorted(buckets.get(name, {}).items()))
            start = starts.get(name)
            scrape = Scrape(t=at, requests=per, latency_buckets=b, latency_sum=sums.get(name, 0.0),
                            latency_count=b.get(math.inf, 0.0),
                            start_time=start if start is not None and math.isfinite(start) else None)
            if scrape.usable:
                out[name] = scrape
            else:
                self.fail(f"{name}: NaN or infinite readings (no data)")
        return out

    def graph_url(self, canary: Sequence[str], baseline: Sequence[str], *, start: float, end: float) -> str | None:
        """Prometheus' graph page: each host's error share (``rate`` over 1m) or its request counter, canary
        and baseline hosts, over the window (``g0.range_input`` ending at ``g0.end_input``)."""
        if self.base_url is None:
            return None
        s, names = self.settings, self.spec.metrics
        hosts = "|".join(_regex_escape(v) for v in [*canary, *baseline])
        if s.queries is not None:
            expr = self.queries()["requests"]
        else:
            matchers = [f'{s.host_label}=~"{hosts}"'] + ([s.selector[1:-1]] if s.selector and s.selector[1:-1] else [])
            sel = "{" + ",".join(matchers) + "}"
            err_sel = "{" + ",".join([*matchers, f'{names.status_label}=~"5.."']) + "}"
            expr = (f"sum by ({s.host_label}) (rate({names.requests}{err_sel}[1m])) / "
                    f"sum by ({s.host_label}) (rate({names.requests}{sel}[1m]))")
        seconds = max(60, int(math.ceil(end - start)))
        end_text = dt.datetime.fromtimestamp(end, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        query = urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "0", "g0.range_input": f"{seconds}s",
                                        "g0.end_input": end_text})
        return f"{self.base_url}/graph?{query}"


def _regex_escape(value: str) -> str:
    """A label value as a PromQL regex (RE2) literal inside double quotes."""
    special = set(r"\.^$|?*+()[]{}")
    escaped = "".join("\\" + c if c in special else c for c in value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


# ------------------------------------------------------------------------------- cloudwatch


class CloudWatchSource(MetricSource):
    """CloudWatch ``GetMetricData`` per host (dimension ``InstanceId`` = the host's name), summed
    from the analysis' start: per-period sums made into the cumulative readings the judge expects.

    Latency comes as a histogram of trimmed counts ``TC(:bound)`` per bound (real CloudWatch; moto
    cannot compute them). CloudWatch knows no process start: ``start_times`` (the deploy's switch
    time) stands for it where known.
    """

    kind = "cloudwatch"
    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "CloudWatch (canary metrics)"

    def __init__(self, spec: MetricsSource, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.settings = spec.cloudwatch
        self._client: Any = None

    def describe(self) -> str:
        return f"cloudwatch ({self.settings.aws_conn_id})"

    def target(self, host: Host) -> str:
        return host.name

    def _make_client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from botocore.config import Config

        bound = max(1, int(math.ceil(self.timeout_s)))
        config = Config(connect_timeout=bound, read_timeout=bound, retries={"max_attempts": 1, "mode": "standard"})
        hook = AwsBaseHook(aws_conn_id=self.settings.aws_conn_id, client_type="cloudwatch",
                           region_name=self.settings.region, config=config)
        return hook.conn

    def connect(self) -> None:
        self._client = self._make_client()

    async def aconnect(self) -> None:
        # boto3 and the connection lookup block: a worker thread, never the triggerer's event loop
        self._client = await asyncio.wait_for(asyncio.to_thread(self._make_client), self.timeout_s + 5)

    def _queries(self, targets: Mapping[str, str]) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str, Any]]]:
        """The ``MetricDataQueries`` of one look and, per query id, (host, part, bound)."""
        s = self.settings
        queries: list[dict[str, Any]] = []
        parts: dict[str, tuple[str, str, Any]] = {}

        def add(qid: str, host: str, part: str, metric: Any, stat: str, bound: Any = None) -> None:
            dims = [{"Name": k, "Value": v} for k, v in sorted(metric.dimensions.items())]
            dims.append({"Name": s.dimension, "Value": targets[host]})
            queries.append({"Id": qid, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": metric.namespace, "MetricName": metric.metric_name, "Dimensions": dims},
                "Period": s.period_s, "Stat": stat}})
            parts[qid] = (host, part, bound)

        for i, host in enumerate(targets):
            add(f"r{i}", host, "requests", s.requests, s.requests.statistic)
            add(f"e{i}", host, "errors", s.errors, s.errors.statistic)
            if s.latency is not None:
                scale = 1000.0 if s.latency.unit == "milliseconds" else 1.0
                add(f"c{i}", host, "count", s.latency, "SampleCount")
                add(f"s{i}", host, "sum", s.latency, "Sum", scale)
                for k, b in enumerate(s.latency.bounds):
                    add(f"b{i}_{k}", host, "bucket", s.latency, f"TC(:{b * scale:g})", b)
        return queries, parts

    def _fetch(self, queries: list[dict[str, Any]], start: float, end: float) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {}
        for offset in range(0, len(queries), 500):  # GetMetricData takes at most 500 queries
            token = None
            while True:
                kwargs: dict[str, Any] = {
                    "MetricDataQueries": queries[offset:offset + 500],
                    "StartTime": dt.datetime.fromtimestamp(start, dt.UTC),
                    "EndTime": dt.datetime.fromtimestamp(end, dt.UTC), "ScanBy": "TimestampAscending"}
                if token:
                    kwargs["NextToken"] = token
                page = self._client.get_metric_data(**kwargs)
                for result in page.get("MetricDataResults", []):
                    values.setdefault(result["Id"], []).extend(float(v) for v in result.get("Values", []))
                token = page.get("NextToken")
                if not token:
                    break
        return values

    async def look(self, targets: Mapping[str, str], *, since: float) -> dict[str, Scrape | None]:
        from conveyor.analysis import Scrape

        out: dict[str, Scrape | None] = {n: None for n in targets}
        if self._client is None:
            self.fail("not connected")
            return out
        if not targets:
            return out
        now = time.time()
        queries, parts = self._queries(targets)
        try:
            # EndTime one period on: the current, partial period counts (CloudWatch rounds the times)
            values = await asyncio.wait_for(asyncio.to_thread(self._fetch, queries, since, now + self.settings.period_s),
                                            self.timeout_s * 2)
        except Exception as e:  # AWS errors, timeouts, throttling: no data this look
            self.fail(f"{type(e).__name__}: {_short_error(e)}")
            return out
        totals: dict[str, dict[str, Any]] = {n: {"requests": None, "errors": 0.0, "count": 0.0, "sum": 0.0,
                                                 "buckets": {}} for n in targets}
        for qid, (host, part, bound) in parts.items():
            got = values.get(qid, [])
            if part == "requests":
                totals[host]["requests"] = sum(got) if got else None
            elif part == "bucket":
                totals[host]["buckets"][bound] = sum(got)
            elif part == "sum":
                totals[host]["sum"] = sum(got) / bound
            else:
                totals[host][part] = sum(got)
        missing = []
        for name, t in totals.items():
            if t["requests"] is None:  # no datapoint at all: a wrong name, dimension, or no traffic reported
                missing.append(name)
                continue
            requests = {"2xx": max(0.0, t["requests"] - t["errors"]), self.settings.error_status: t["errors"]}
            buckets = dict(sorted(t["buckets"].items()))
            if buckets:
                buckets[math.inf] = t["count"]
            scrape = Scrape(t=now, requests=requests, latency_buckets=buckets, latency_sum=t["sum"],
                            latency_count=t["count"], start_time=self.start_times.get(name))
            if scrape.usable:
                out[name] = scrape
            else:
                self.fail(f"{name}: NaN or infinite readings (no data)")
        if missing:
            r = self.settings.requests
            self.fail(f"no datapoints of {r.namespace}/{r.metric_name} for {', '.join(missing[:5])}"
                      f"{' ...' if len(missing) > 5 else ''} since the analysis began")
        return out


# ----------------------------------------------------------------------------------- factory

SOURCES: dict[str, type[MetricSource]] = {c.kind: c for c in (ScrapeSource, PrometheusSource, CloudWatchSource)}


def metric_source(spec: MetricsSource | Mapping[str, Any] | None = None, *,
                  start_times: Mapping[str, float] | None = None) -> MetricSource:
    """The source for a service's ``analysis.source`` (the section, or its JSON form in a trigger)."""
    from conveyor.config import MetricsSource

    if spec is None:
        spec = MetricsSource()
    elif not isinstance(spec, MetricsSource):
        spec = MetricsSource.model_validate(dict(spec))
    return SOURCES[spec.kind](spec, start_times=start_times)
