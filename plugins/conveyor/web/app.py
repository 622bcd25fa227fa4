"""Conveyor's pages on the Airflow API server: DORA metrics, release statistics, releases and changelogs.

A FastAPI app that :mod:`conveyor_plugin` mounts at ``/conveyor`` (``fastapi_apps``) and links from the
Airflow UI's navigation (``external_views``):

* ``GET /conveyor/api/dora?service=<id>&days=<n>[&end=<ISO time>]``: the DORA numbers as JSON
  (:meth:`conveyor.ledger.core.Ledger.dora`); without ``service``, over all services;
* ``GET /conveyor/dora?service=&days=``: the same numbers as a page with per-day charts (inline SVG);
* ``GET /conveyor/api/stats?service=<id>&days=<n>[&end=<ISO time>]``: release statistics as JSON
  (:meth:`conveyor.ledger.core.Ledger.stats`: durations, tests, approvals and their waits, rollbacks, hosts,
  success rate, failed changes caught before full production and where); ``GET /conveyor/stats``: the
  same as a page with charts (stage durations per day, catches per stage) and the period's releases;
* ``POST /conveyor/api/incidents`` (JSON ``{"service", "release_id", "reason"[, "at"]}``): record an incident
  after a release, so that what escaped to production counts in the statistics. Besides the login, the
  user must be allowed to edit the release's DAG (a viewer may read the numbers but not change them);
* ``GET /conveyor/releases[?service=]``: recent releases, and each service's soak clocks (builds soaking on
  the developer cluster: minimum, soaked, remaining, eligible for promotion and why) when it has soaks;
* ``GET /conveyor/api/soak?service=<id>``: the same soak clocks as JSON (newest first; without ``service``,
  every service's);
* ``GET /conveyor/api/regression?service=<id>[&year=<yyyy>]``: the service's regression calendar
  (:func:`regression_calendar`): the year's rotation, each month's areas with their result that month, and
  each area's last result; ``GET /conveyor/regression?service=&year=``: the same as a page;
* ``GET /conveyor/releases/<release id>/changelog`` (and ``/conveyor/api/releases/<id>/changelog``): the
  release page: the commits it shipped since the previous successful release, and its canary analyses
  (per-metric table of canary vs baseline, the Prometheus graph link, the chart);
* ``GET /conveyor/releases/<release id>/charts/<stage>.svg``: an analysis' chart of canary vs baseline
  over its window (``image/svg+xml``), drawn from the ledger's stage detail on request; 404 for a release,
  a stage or an analysis without a recorded timeline that the ledger does not have.

Every route needs the same login as the rest of the UI: Airflow's own ``get_user`` dependency checks
the JWT from an ``Authorization: Bearer`` header or the ``_token`` cookie that the UI login sets, and
the user must be allowed to see the website (``AccessView.WEBSITE``). Without a valid login the API
answers 401 (JSON) and the pages answer 401 with a link to the login page. The API's description,
``/conveyor/api/openapi.json``, needs the same login; there are no docs pages.

Importing this module is cheap and touches neither Airflow's database nor the ledger: the auth
manager and the ledger connection are looked up per request.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field

from conveyor.validation import SERVICE_ID_RE
from conveyor.web import charts

if TYPE_CHECKING:
    from conveyor.ledger import Ledger
    from conveyor.soak import SoakClock

URL_PREFIX = "/conveyor"
# A chart is a document of its own: nothing in it may run or load anything, whatever a ledger row holds.
CHART_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"}
MAX_DAYS = 3650
PERIOD_CHOICES = (7, 14, 30, 90, 180, 365)
LedgerFactory = Callable[[], "Ledger"]

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.filters.update(
    duration=charts.duration, percent=charts.percent, per_day=charts.per_day, data_value=charts.data_value
)


# --------------------------------------------------------------------------------------------- ledger

_ledgers: dict[str, Ledger] = {}
_resolved: tuple[float, str] | None = None
_ledger_lock = threading.Lock()
_RESOLVE_TTL_S = 30.0


def airflow_ledger() -> Ledger:
    """The ledger of the ``conveyor_ledger`` connection (one engine per URL in this process).

    The connection is looked up again every 30 s, so an edited connection is picked up without a
    restart of the API server.
    """
    global _resolved
    from conveyor.ledger import Ledger
    from conveyor.ledger.hook import LedgerHook

    with _ledger_lock:
        if _resolved is None or time.monotonic() - _resolved[0] > _RESOLVE_TTL_S:
            url = LedgerHook().ledger_url()
            _resolved = (time.monotonic(), url.render_as_string(hide_password=False))
        key = _resolved[1]
        if key not in _ledgers:
            _ledgers[key] = Ledger(key)
        return _ledgers[key]


# ----------------------------------------------------------------------------------------------- auth

_bearer = HTTPBearer(auto_error=False)


class LoginRequired(Exception):
    """A page was asked for without a valid login."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


async def airflow_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The logged-in Airflow user, authenticated exactly as the UI's own API routes do.

    Delegates to ``airflow.api_fastapi.core_api.security.get_user`` (bearer token first, then the
    ``_token`` cookie, honouring the user already resolved by Airflow's JWT refresh middleware), then
    asks the auth manager whether the user may see the website. Raises 401/403 like Airflow does.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request=request, _oauth_token=None, bearer_credentials=credentials)
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status_code=403, detail="Forbidden")
    return user


async def page_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """:func:`airflow_user` for HTML pages: a failed login becomes a page with a link to the login."""
    try:
        return await airflow_user(request, credentials)
    except HTTPException as exc:
        raise LoginRequired(exc.status_code, str(exc.detail)) from exc


def _login_url(request: Request) -> str | None:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=str(request.url))
    except Exception:
        return None


# ---------------------------------------------------------------------------------------- validation


def _check_service(service: str | None) -> str | None:
    if service in (None, "", "all"):
        return None
    if not SERVICE_ID_RE.match(service):
        raise HTTPException(
            status_code=422,
            detail=f"service must be a service id (a lowercase letter, then lowercase letters, digits or _), "
            f"got {service!r}",
        )
    return service


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path")]
        parts.append(f"{'.'.join(loc) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


ServiceQuery = Annotated[
    str | None, Query(max_length=63, description="a service id; omitted or 'all' for every service")
]
DaysQuery = Annotated[int, Query(ge=1, le=MAX_DAYS, description="length of the period in days")]
EndQuery = Annotated[
    dt.datetime | None, Query(description="end of the period (ISO 8601, naive is UTC); default now")
]
YearQuery = Annotated[int | None, Query(ge=1970, le=9999, description="a calendar year; default this year")]


def _check_period(end: dt.datetime | None, days: int) -> None:
    """A 422 for a period the calendar cannot hold (it starts before 0001-01-01 or ends after 9999-12-31)."""
    if end is None:
        return
    try:
        utc = end.replace(tzinfo=dt.UTC) if end.tzinfo is None else end.astimezone(dt.UTC)
        utc.date() - dt.timedelta(days=days - 1)
    except OverflowError:
        raise _outside_calendar(end, days) from None


def _outside_calendar(end: dt.datetime | None, days: int) -> HTTPException:
    shown = end.isoformat() if end is not None else "now"
    return HTTPException(status_code=422, detail=f"end={shown} with days={days} reaches outside the calendar: "
                                                 "the period must lie between 0001-01-01 and 9999-12-31 (UTC)")


def soak_clocks_of(ledger: Ledger, services: list[str], now: dt.datetime) -> dict[str, list[SoakClock]]:
    """Each of ``services``' soak clocks, newest first; services without soaks are left out.

    Production's version is the one of the service's last successful release: the pages cannot ask the
    hosts, and the ledger says what was released there.
    """
    from conveyor.soak import soak_clocks

    out = {}
    for service in services:
        rows = ledger.list_soaks(service)
        if rows:
            last = ledger.last_successful_release(service)
            out[service] = soak_clocks(rows, production_version=last["version"] if last else None, now=now)
    return out


class IncidentIn(BaseModel):
    """An incident after a release: the body of ``POST /conveyor/api/incidents``."""

    service: str = Field(max_length=63, description="the service id the release belongs to")
    release_id: str = Field(min_length=1, max_length=400, description="the release id (<service>/<run id>)")
    reason: str = Field(max_length=4000, description="what went wrong in production")
    at: dt.datetime | None = Field(None, description="when the incident began (ISO 8601); default now")


def may_edit_dag(user: Any, dag_id: str | None) -> bool:
    """Whether Airflow's auth manager lets ``user`` change the DAG ``dag_id`` (any DAG when ``None``)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return get_auth_manager().is_authorized_dag(method="PUT", user=user, details=DagDetails(id=dag_id))


def regression_services() -> list[str]:
    """Ids of the service files that have a ``regression`` section (a broken file is left out)."""
    from conveyor.config import load_service, service_files
    from conveyor.exceptions import ServiceConfigError

    found = []
    for path in service_files():
        try:
            if load_service(path).regression is not None:
                found.append(path.stem)
        except ServiceConfigError:
            continue
    return found


def regression_calendar(service_id: str, ledger: Ledger, year: int) -> dict[str, Any]:
    """A service's regression calendar for ``year``: its rotation from the service file, each month's areas
    with their result that month (None: not run), and each area's last result of any month, from the ledger.

    404 when the service has no file or no ``regression`` section; 500 naming the field when its file is broken.
    """
    from conveyor.config import MONTHS, load_service
    from conveyor.exceptions import ServiceConfigError
    from conveyor.paths import services_dir

    if not (services_dir() / f"{service_id}.yaml").is_file():
        raise HTTPException(status_code=404, detail=f"no service file for {service_id!r}")
    try:
        regression = load_service(service_id).regression
    except ServiceConfigError as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from None
    if regression is None:
        raise HTTPException(status_code=404, detail=f"service {service_id!r} has no regression: section")
    fields = ("month", "outcome", "passed", "failed", "failing_tests", "version", "ticket_id", "release_id", "at")
    last: dict[str, dict[str, Any] | None] = dict.fromkeys(regression.areas)
    of_year: dict[tuple[str, str], dict[str, Any]] = {}
    for row in ledger.list_regression_results(service_id):  # oldest month first: the last one stays
        result = {k: row[k] for k in fields}
        last[row["area"]] = result
        if row["month"].startswith(f"{year:04d}-"):
            of_year[(row["month"], row["area"])] = result
    months = []
    for number, areas in regression.calendar().items():
        month = f"{year:04d}-{number:02d}"
        months.append({"month": month, "name": MONTHS[number - 1], "areas": [
            {"area": area, "result": of_year.get((month, area))} for area in areas]})
    rotation = regression.rotation
    return {"service": service_id, "year": year, "areas": list(regression.areas),
            "rotation": {"per_month": rotation.per_month} if rotation.per_month else {
                "months": {MONTHS[m - 1]: list(areas) for m, areas in sorted((rotation.months or {}).items())}},
            "months": months, "last": last}


def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger_factory()


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
LedgerDep = Annotated[Any, Depends(get_ledger)]
UserDep = Annotated[Any, Depends(airflow_user)]


# ------------------------------------------------------------------------------------------------ app


def create_app(ledger_factory: LedgerFactory | None = None) -> FastAPI:
    """The Conveyor web app; ``ledger_factory`` (default: the ``conveyor_ledger`` connection) gives the ledger."""
    app = FastAPI(
        title="Conveyor",
        description="Release ledger views: DORA metrics, releases, changelogs.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the same login as every other route
    )
    app.state.ledger_factory = ledger_factory or airflow_ledger

    ApiUser = Depends(airflow_user)
    PageUser = Depends(page_user)

    def base_path(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = _TEMPLATES.get_template(template).render(base=base_path(request), quote=quote, **context)
        return HTMLResponse(html, status_code=status_code)

    def _wants_html(request: Request) -> bool:
        return not request.url.path.removeprefix(base_path(request)).startswith("/api/")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message = _validation_message(exc)
        if _wants_html(request):
            return render(request, "error.html", 422, title="Invalid request", message=message)
        return JSONResponse(status_code=422, content={"detail": message, "errors": jsonable_encoder(exc.errors())})

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired):
        return render(request, "error.html", exc.status_code, title="Login required" if exc.status_code == 401
                      else "Forbidden", message=exc.detail, login_url=_login_url(request))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if _wants_html(request):
            return render(request, "error.html", exc.status_code, title=f"Error {exc.status_code}",
                          message=str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail},
                            headers=getattr(exc, "headers", None))

    def _period(compute: Callable[..., dict[str, Any]], ledger: Ledger, service: str | None, days: int,
                end: dt.datetime | None) -> dict[str, Any]:
        """``compute`` (the ledger's ``dora`` or ``stats``) over a checked service and period."""
        service = _check_service(service)
        _check_period(end, days)
        known = ledger.services()
        if service is not None and service not in known:
            raise HTTPException(
                status_code=404,
                detail=f"no releases are recorded for service {service!r}; known: {', '.join(known) or 'none'}",
            )
        try:
            return compute(service, days=days, now=end)
        except OverflowError:  # a day of the period past 9999-12-31 that _check_period did not foresee
            raise _outside_calendar(end, days) from None

    def _dora(ledger: Ledger, service: str | None, days: int, end: dt.datetime | None) -> dict[str, Any]:
        return _period(ledger.dora, ledger, service, days, end)

    def _stats(ledger: Ledger, service: str | None, days: int, end: dt.datetime | None) -> dict[str, Any]:
        return _period(ledger.stats, ledger, service, days, end)

    # -- JSON --------------------------------------------------------------------------------------

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[ApiUser])
    def api_description() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/dora", dependencies=[ApiUser])
    def api_dora(ledger: LedgerDep, service: ServiceQuery = None, days: DaysQuery = 30,
                 end: EndQuery = None) -> dict[str, Any]:
        """DORA metrics of a service (or all) over ``days`` days ending at ``end``."""
        return _dora(ledger, service, days, end)

    @app.get("/api/stats", dependencies=[ApiUser])
    def api_stats(ledger: LedgerDep, service: ServiceQuery = None, days: DaysQuery = 30,
                  end: EndQuery = None) -> dict[str, Any]:
        """Release statistics of a service (or all) over ``days`` days ending at ``end``."""
        return _stats(ledger, service, days, end)

    @app.post("/api/incidents", status_code=201)
    def api_add_incident(body: IncidentIn, ledger: LedgerDep, user: UserDep) -> dict[str, Any]:
        """Record an incident after a release (the user must be allowed to edit the release's DAG)."""
        service = _check_service(body.service)
        if service is None:
            raise HTTPException(status_code=422, detail="service: a service id is required")
        release = ledger.get_release(body.release_id)
        if release is None:
            raise HTTPException(status_code=404, detail=f"release {body.release_id!r} is not in the ledger")
        if release["service"] != service:
            raise HTTPException(status_code=422, detail=f"release {body.release_id!r} is a release of "
                                                        f"{release['service']!r}, not of {service!r}")
        if not may_edit_dag(user, release.get("dag_id")):
            raise HTTPException(status_code=403, detail="recording an incident needs permission to edit the "
                                                        f"release's DAG ({release.get('dag_id') or 'any DAG'})")
        try:
            row = ledger.add_incident(body.release_id, reason=body.reason, at=body.at,
                                      recorded_by=getattr(user, "get_name", lambda: None)())
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=f"reason: {exc}") from None
        return jsonable_encoder(row)

    @app.get("/api/regression", dependencies=[ApiUser])
    def api_regression(ledger: LedgerDep, service: Annotated[str, Query(max_length=63)],
                       year: YearQuery = None) -> dict[str, Any]:
        """A service's regression calendar of ``year`` (default: this year)."""
        service = _check_service(service)
        if service is None:
            raise HTTPException(status_code=422, detail="service: a service id is required")
        return jsonable_encoder(regression_calendar(service, ledger, year or dt.datetime.now(dt.UTC).year))

    @app.get("/api/releases/{release_id:path}/changelog", dependencies=[ApiUser])
    def api_changelog(release_id: str, ledger: LedgerDep) -> dict[str, Any]:
        changelog = ledger.changelog(release_id)
        if changelog is None:
            raise HTTPException(status_code=404, detail=f"release {release_id!r} is not in the ledger")
        return jsonable_encoder(changelog)

    @app.get("/api/soak", dependencies=[ApiUser])
    def api_soak(ledger: LedgerDep, service: ServiceQuery = None) -> list[dict[str, Any]]:
        """Soak clocks of a service (or all), newest first: minimum, soaked, remaining, eligible and why."""
        service = _check_service(service)
        known = ledger.services()
        if service is not None and service not in known and not ledger.list_soaks(service, limit=1):
            raise HTTPException(
                status_code=404,
                detail=f"no releases are recorded for service {service!r}; known: {', '.join(known) or 'none'}",
            )
        clocks = soak_clocks_of(ledger, [service] if service else known, dt.datetime.now(dt.UTC))
        return jsonable_encoder([clock.to_dict() for per_service in clocks.values() for clock in per_service])

    # -- pages -------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{base_path(request)}/dora")

    @app.get("/dora", response_class=HTMLResponse, dependencies=[PageUser])
    def dora_page(request: Request, ledger: LedgerDep, service: ServiceQuery = None, days: DaysQuery = 30,
                  end: EndQuery = None) -> HTMLResponse:
        numbers = _dora(ledger, service, days, end)
        services = ledger.services()
        per_service = []
        if numbers["service"] is None:
            per_service = [ledger.dora(s, days=days, now=end) for s in services]
        series = numbers["series"]
        chart_list = [
            charts.bar_chart(series, [("deployments", "deployments", "#2f855a"),
                                      ("failed_changes", "failed changes", "#c53030")],
                             title="Deployments and failed changes per day", chart_id="chart-deployments"),
            charts.bar_chart(series, [("lead_time_median_seconds", "lead time (median)", "#2b6cb0")],
                             title="Lead time for changes (median of commits deployed that day)",
                             formatter=charts.duration, chart_id="chart-lead-time"),
            charts.bar_chart(series, [("change_failure_rate", "change failure rate", "#c05621")],
                             title="Change failure rate per day", formatter=charts.percent,
                             chart_id="chart-change-failure-rate"),
            charts.bar_chart(series, [("time_to_restore_median_seconds", "time to restore (median)", "#6b46c1")],
                             title="Time to restore service (incidents closed that day)",
                             formatter=charts.duration, chart_id="chart-time-to-restore"),
        ]
        query = {"days": days, **({"service": numbers["service"]} if numbers["service"] else {})}
        if end is not None:
            query["end"] = end.isoformat()
        return render(request, "dora.html", numbers=numbers, services=services, per_service=per_service,
                      charts=chart_list, days=days, end=end, period_choices=PERIOD_CHOICES,
                      json_url=f"{base_path(request)}/api/dora?{urlencode(query)}")

    @app.get("/stats", response_class=HTMLResponse, dependencies=[PageUser])
    def stats_page(request: Request, ledger: LedgerDep, service: ServiceQuery = None, days: DaysQuery = 30,
                   end: EndQuery = None) -> HTMLResponse:
        from conveyor.ledger.stats import PHASES

        numbers = _stats(ledger, service, days, end)
        catches = [{"stage": stage, "caught": count, "escaped": 0}
                   for stage, count in numbers["failed_changes"]["caught_by_stage"].items()]
        catches += [{"stage": stage, "caught": 0, "escaped": count}
                    for stage, count in numbers["failed_changes"]["escaped_by_stage"].items()]
        colours = dict(zip(PHASES, ("#2b6cb0", "#2f855a", "#6b46c1", "#c05621", "#718096", "#b7791f", "#c53030"),
                           strict=True))
        # soak (days long) and recovery would dwarf the others; their medians are in the cards
        charted = [p for p in PHASES if p not in ("soak", "recovery")]
        chart_list = [
            charts.bar_chart(numbers["series"], [("succeeded", "succeeded", "#2f855a"),
                                                 ("failed", "failed", "#c53030")],
                             title="Releases per day (by start)", chart_id="chart-releases"),
            charts.bar_chart(numbers["series"], [(f"{p}_median_seconds", p, colours[p]) for p in charted],
                             title="Stage durations per day (median per phase)", formatter=charts.duration,
                             chart_id="chart-stage-durations"),
            charts.bar_chart(catches, [("caught", "caught before full production", "#2f855a"),
                                       ("escaped", "escaped to production", "#c53030")],
                             title="Failed changes by the stage that stopped them", chart_id="chart-catches",
                             label_key="stage"),
        ]
        query = {"days": days, **({"service": numbers["service"]} if numbers["service"] else {})}
        if end is not None:
            query["end"] = end.isoformat()
        return render(request, "stats.html", numbers=numbers, services=ledger.services(), charts=chart_list,
                      catches=catches, phases=PHASES, days=days, end=end, period_choices=PERIOD_CHOICES,
                      json_url=f"{base_path(request)}/api/stats?{urlencode(query)}")

    @app.get("/releases", response_class=HTMLResponse, dependencies=[PageUser])
    def releases_page(request: Request, ledger: LedgerDep, service: ServiceQuery = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> HTMLResponse:
        service = _check_service(service)
        releases = ledger.list_releases(service, limit=limit)
        services = ledger.services()
        soaks = soak_clocks_of(ledger, [service] if service else services, dt.datetime.now(dt.UTC))
        return render(request, "releases.html", releases=releases, service=service, services=services,
                      limit=limit, soaks=soaks)

    @app.get("/regression", response_class=HTMLResponse, dependencies=[PageUser])
    def regression_page(request: Request, ledger: LedgerDep, service: ServiceQuery = None,
                        year: YearQuery = None) -> HTMLResponse:
        service = _check_service(service)
        services = regression_services()
        year = year or dt.datetime.now(dt.UTC).year
        service = service or (services[0] if services else None)
        calendar = regression_calendar(service, ledger, year) if service else None
        return render(request, "regression.html", calendar=calendar, services=services, service=service, year=year,
                      json_url=f"{base_path(request)}/api/regression?{urlencode({'service': service or '', 'year': year})}")

    @app.get("/releases/{release_id:path}/changelog", response_class=HTMLResponse, dependencies=[PageUser])
    def changelog_page(request: Request, release_id: str, ledger: LedgerDep) -> HTMLResponse:
        from conveyor.analysis.evidence_view import analyses

        changelog = ledger.changelog(release_id)
        if changelog is None:
            raise HTTPException(status_code=404, detail=f"release {release_id!r} is not in the ledger")
        release = changelog["release"]
        found = analyses(release)
        for analysis in found:
            analysis["chart_url"] = (chart_href(base_path(request), release["release_id"], analysis["stage"])
                                     if analysis["has_chart"] else None)
        return render(request, "changelog.html", log=changelog, release=release, analyses=found)

    @app.get("/releases/{release_id:path}/charts/{stage}.svg", dependencies=[PageUser],
             response_class=Response, responses={200: {"content": {"image/svg+xml": {}}}})
    def analysis_chart(release_id: str, stage: str, ledger: LedgerDep) -> Response:
        """An analysis' chart of canary vs baseline, drawn from its ledger stage detail."""
        from conveyor.analysis.evidence_view import chart_svg, stage_detail

        release = ledger.get_release(release_id)
        if release is None:
            raise HTTPException(status_code=404, detail=f"release {release_id!r} is not in the ledger")
        detail = stage_detail(release, stage)
        if detail is None:
            raise HTTPException(status_code=404, detail=f"release {release_id!r} has no analysis {stage!r}")
        name = " ".join(str(p) for p in (release.get("service"), release.get("version"), detail.get("label") or stage)
                        if p)
        svg = chart_svg(detail, title=f"{name}: {detail.get('decision')}, canary vs baseline")
        if svg is None:
            raise HTTPException(status_code=404, detail=f"analysis {stage!r} of release {release_id!r} recorded no "
                                                        "per-interval data to draw")
        return Response(svg, media_type="image/svg+xml", headers=CHART_HEADERS)

    return app


def release_path(release_id: str) -> str:
    """The URL path segment of a release id (ids contain ``/``, ``:`` and ``+``)."""
    return quote(release_id, safe="/:")


def chart_href(base: str, release_id: str, stage: str) -> str:
    """The chart route of a release's analysis stage, below the app's mount point ``base``."""
    return f"{base}/releases/{release_path(release_id)}/charts/{quote(stage, safe='')}.svg"


_TEMPLATES.globals["release_path"] = release_path
