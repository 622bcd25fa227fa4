"""Judge a wave (or the post-deploy watch) by comparing hosts on the new version with a baseline.

Canary: every production host already on the new version (this wave and the earlier ones).
Baseline: the production hosts still on the old version, scraped over the same window. When no
host is left on the old version (the last wave, the watch), the baseline is the pre-deploy
snapshot the plan took: each old process's counters over its lifetime.

The wait happens in the triggerer (:class:`~conveyor.triggers.analysis.CanaryAnalysisTrigger`), so
a bake window holds no worker slot. The judge (:func:`conveyor.analysis.judge`) is asked after
every scrape and may stop early; the window bounds the wait. ``fail`` raises
:class:`AnalysisFailed` (the release rolls back); ``inconclusive`` returns, and the
:class:`InconclusiveDecisionOperator` after it asks a human in Required Actions.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

from conveyor.evidence import responder_id
from conveyor.exceptions import AnalysisFailed, AnalysisInconclusive, ConveyorError
from conveyor.operators.base import ConveyorOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class CanaryAnalysisOperator(ConveyorOperator):
    """Compare canary hosts against baseline hosts until the judge decides or the window ends.

    :param plan: the wave plan (templated, ``plan.output``).
    :param wave: index of the wave just deployed, or ``None`` for the post-deploy watch.
    """

    template_fields = ("plan",)

    def __init__(self, *, plan: Any, wave: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.wave = wave

    def _scope(self) -> tuple[str, list[str], list[str]]:
        """This analysis' label, its canary hosts (every wave so far) and the live baseline (the rest)."""
        waves = self.plan["waves"]
        if self.wave is None:
            label, canary = "watch", [n for w in waves for n in w]
        else:
            label, canary = f"wave-{self.wave + 1}", [n for w in waves[: self.wave + 1] for n in w]
        return label, canary, [h["name"] for h in self.plan["hosts"] if h["name"] not in canary]

    def _source(self, context: Context | None = None):
        """The service's metric source; for CloudWatch with the hosts' switch times from the ledger."""
        from conveyor.hooks.metrics import metric_source

        spec = self.service.analysis.source
        start_times: dict[str, float] = {}
        if spec.kind == "cloudwatch" and context is not None:
            start_times = self._switch_times(context)
        return metric_source(spec, start_times=start_times)

    def _switch_times(self, context: Context) -> dict[str, float]:
        """When the deploy put each production host on the new version (its ``host_deployments`` row)."""
        try:
            release = self.ledger.get_release(self.release_id(context)) or {}
        except Exception as exc:  # no switch times: CloudWatch readings without a process start
            self.log.warning("Could not read the hosts' switch times: %s: %s", type(exc).__name__, exc)
            return {}
        out = {}
        for row in release.get("hosts", []):
            at = row.get("at")
            if row.get("environment") != "replica" and row.get("status") == "deployed" and at:
                stamp = at.timestamp() if hasattr(at, "timestamp") else _epoch(at)
                if stamp is not None:
                    out[row["host"]] = stamp
        return out

    def _memory(self, context: Context):
        """What this service's earlier releases' analyses measured about its fleet (ledger), for the judge."""
        from conveyor.analysis import FleetMemory

        try:
            rows = self.ledger.analysis_measurements(self.service_id, exclude_release=self.release_id(context))
        except Exception as exc:  # the judge then assumes a typical fleet, as on a first release
            self.log.warning("Could not read earlier analyses from the ledger: %s: %s", type(exc).__name__, exc)
            return None
        memory = FleetMemory.from_samples(rows)
        self.log.info("Fleet memory from %d earlier analyses: %s", memory.releases, memory.describe())
        return memory

    def execute(self, context: Context) -> Any:
        from conveyor.analysis.model import synthetic_baseline
        from conveyor.hosts import Host
        from conveyor.triggers.analysis import CanaryAnalysisTrigger

        hosts = {h["name"]: Host.from_dict(h) for h in self.plan["hosts"]}
        label, canary, live = self._scope()
        settings = self.service.judge(watch=self.wave is None)
        interval = (self.service.watch if self.wave is None else self.service.analysis).interval_s
        with self.ledger_stage(context) as stage:
            if self.wave is not None and not self.plan["waves"][self.wave]:
                stage.detail = {"label": label, "decision": "skipped", "reason": "empty wave"}
                return stage.detail
            if settings.window_s <= 0:
                stage.detail = {"label": label, "decision": "skipped", "reason": "analysis disabled (window 0)"}
                return stage.detail
            source = self._source(context)
            pre = self.plan.get("pre_scrapes") or {}  # a plan recorded without snapshots: no history
            fixed = {} if live else {n: synthetic_baseline(pre[n]) for n in canary if pre.get(n)}
            # each host's old process before the deploy: the canary host's own difference from the pool
            history = {n: synthetic_baseline(pre[n]) for n in [*canary, *live] if live and pre.get(n)}
            memory = self._memory(context) if live and settings.overdispersion else None
            self.log.info("%s: canary %s vs baseline %s (window %gs, %s every %gs)", label, canary,
                          live or f"pre-deploy snapshot of {sorted(fixed)}", settings.window_s, source.describe(),
                          interval)
            trigger = CanaryAnalysisTrigger(
                label=label, canary={n: source.target(hosts[n]) for n in canary},
                baseline={n: source.target(hosts[n]) for n in live}, fixed_baseline=fixed,
                settings=settings.to_dict(), interval_s=interval, started_at=time.time(),
                source=self.service.analysis.source.model_dump(mode="json"),
                start_times={n: t for n, t in source.start_times.items() if n in canary or n in live},
                history=history, memory=memory.to_dict() if memory is not None else None,
            )
            self.defer(trigger=trigger, method_name="execute_complete",
                       timeout=timedelta(seconds=settings.window_s + 5 * interval + 120))

    def _graph_url(self, canary: list[str], live: list[str], elapsed_s: float | None) -> str | None:
        """Prometheus' graph of canary vs baseline over the window; None for other sources or when unknown."""
        from conveyor.hosts import Host

        if self.service.analysis.source.kind != "prometheus":
            return None
        try:
            source = self._source()
            source.connect()
            hosts = {h["name"]: Host.from_dict(h) for h in self.plan["hosts"]}
            end = time.time()
            return source.graph_url([source.target(hosts[n]) for n in canary], [source.target(hosts[n]) for n in live],
                                    start=end - float(elapsed_s or 0), end=end)
        except Exception as exc:  # a link is a convenience, never a reason to fail the analysis
            self.log.warning("No Prometheus graph link: %s: %s", type(exc).__name__, exc)
            return None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        label, canary, live = self._scope()
        with self.ledger_stage(context, resumed=True) as stage:
            if event.get("status") != "done":
                raise ConveyorError(f"{label}: analysis could not run: {event.get('message')}")
            verdict = dict(event["verdict"])
            source_error = event.get("source_error")
            if verdict["decision"] == "inconclusive" and source_error:  # say why data was missing
                verdict["reason"] = f"{verdict['reason']} (last metrics error: {source_error})"
            stage.detail = {"label": label, "canary": canary, "baseline": live or "pre-deploy snapshot",
                            "elapsed_s": event.get("elapsed_s"),
                            "source": event.get("source") or self.service.analysis.source.kind,
                            "source_error": source_error, **verdict}
            graph = self._graph_url(canary, live, event.get("elapsed_s"))
            if graph:
                stage.detail["graph_url"] = graph
            self.log.info("%s: %s after %ss: %s", label, verdict["decision"], event.get("elapsed_s"),
                          verdict["reason"])
            if verdict["decision"] == "fail":
                raise AnalysisFailed(f"{label}: {verdict['reason']}")
            if verdict["decision"] == "inconclusive":  # the decision task after this one asks a human
                self.log.warning("%s: inconclusive; asking a human to continue or roll back", label)
                stage.status = "inconclusive"
        return stage.detail


def _epoch(value: Any) -> float | None:
    """An ISO timestamp (the ledger's text form) as epoch seconds; None when it is not one."""
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class InconclusiveDecisionOperator(HITLOperator):
    """Ask a human what to do when the analysis could not decide: continue, or roll back.

    Does nothing (and asks nobody) when the analysis before it passed. When it was inconclusive
    (too little traffic, too noisy), it waits in **Required Actions** with the evidence (the body, written
    when the task starts: the reason, the hosts compared, the per-metric table of canary vs baseline, the
    metrics source's graph link and the chart on the release page); "Roll back" (or no answer within the
    timeout) fails the task, which rolls the release back.

    The run's author never decides: when the task starts it is assigned to ``assigned`` minus the
    author (so Airflow's API answers 403 to the author), and it rolls back at once, saying why, when
    nobody is left. An answer by the author (possible only when nobody is assigned, or written around
    the API) or by someone outside ``assigned`` does not count: the release rolls back.

    :param analysis_task_id: the analysis task whose verdict this follows.
    :param assigned: user ids who may decide (the pipeline passes ``analysis.deciders``, by default the
        QA group); empty: anyone allowed to act on the DAG but the author.
    :param timeout: how long to wait before rolling back.
    """

    template_fields = ("subject", "body")
    ui_color = "#fff3c4"
    CONTINUE = "Continue"
    ROLL_BACK = "Roll back"
    ASK = ("**Continue** deploys on; **Roll back** (the default when nobody answers) returns every touched host "
           "to its previous version.")

    def __init__(self, *, analysis_task_id: str, service_id: str, assigned: list[str], timeout: timedelta,
                 **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not this form
        super().__init__(
            options=[self.CONTINUE, self.ROLL_BACK], defaults=[self.ROLL_BACK], multiple=False,
            response_timeout=timeout, assigned_users=[{"id": u, "name": u} for u in assigned] or None,
            subject=f"Canary analysis inconclusive: continue or roll back? ({service_id})",
            body=self.ASK,  # replaced by the evidence when the task asks (see decision_body)
            **kwargs,
        )
        self.analysis_task_id = analysis_task_id
        self.service_id = service_id
        self.deciders = list(dict.fromkeys(assigned))

    def execute(self, context: Context):
        verdict = context["ti"].xcom_pull(task_ids=self.analysis_task_id) or {}
        if verdict.get("decision") != "inconclusive":
            self.log.info("Analysis %s: %s; no decision needed", verdict.get("label"), verdict.get("decision"))
            return {"decision": verdict.get("decision"), "asked": False}
        author = getattr(context["dag_run"], "triggering_user_name", None)
        self.body = self.decision_body(verdict, context["dag_run"].run_id)
        if self.deciders:
            eligible = [u for u in self.deciders if u != author]
            if not eligible:
                raise AnalysisInconclusive(
                    f"analysis {verdict.get('label')} inconclusive and nobody may decide: the deciders "
                    f"({', '.join(self.deciders)}) minus the run's author {author!r} leave nobody; rolling back"
                )
            self.assigned_users = [{"id": u, "name": u} for u in eligible]
            self.log.info("Asking %s to continue or roll back (author %s excluded)", ", ".join(eligible),
                          author or "none")
        else:
            self.log.warning("No deciders configured: anyone allowed to act on the DAG may answer, but an "
                             "answer by the author (%s) rolls back", author or "none")
        return super().execute(context)

    def decision_body(self, verdict: dict[str, Any], run_id: str) -> str:
        """The Required Action's Markdown: why the analysis could not decide, and its evidence."""
        from conveyor.analysis.evidence_view import analysis_markdown
        from conveyor.evidence import release_id_for
        from conveyor.operators.ticket import chart_url

        hosts = f"Canary: `{verdict.get('canary')}`; baseline: `{verdict.get('baseline')}`."
        chart = chart_url(release_id_for(self.service_id, run_id), self.analysis_task_id)
        evidence = analysis_markdown(verdict, chart_url=chart)
        return "\n\n".join((f"The analysis could not decide. {hosts}", evidence, self.ASK))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:
            if event.get("error_type") == "timeout":
                raise AnalysisInconclusive("analysis inconclusive and nobody decided in time: rolling back")
            raise ConveyorError(f"decision failed: {event.get('error')}")
        result = super().execute_complete(context=context, event=event)
        who = responder_id(event.get("responded_by_user"))
        author = getattr(context["dag_run"], "triggering_user_name", None)
        if who:
            # Only reachable when Airflow's assignment check did not apply (nobody assigned, or an
            # answer written around the API): such an answer does not count, and the release rolls back.
            if author and who == author:
                raise AnalysisInconclusive(f"analysis inconclusive; the decision by {who} does not count: the "
                                           "run's author cannot decide; rolling back")
            if self.deciders and who not in self.deciders:
                raise AnalysisInconclusive(f"analysis inconclusive; the decision by {who} does not count: not "
                                           f"one of the deciders ({', '.join(self.deciders)}); rolling back")
        if result["chosen_options"] == [self.ROLL_BACK]:
            raise AnalysisInconclusive(f"analysis inconclusive; {who or 'a human'} chose to roll back")
        self.log.info("Analysis inconclusive; %s chose to continue", who)
        return {"decision": "continue", "asked": True, "by": who}
