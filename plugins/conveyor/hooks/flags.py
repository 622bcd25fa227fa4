"""Feature flags in Unleash (its admin API), and the factory that builds a service's flag store.

The connection (``unleash_default`` by default) gives the server's base URL in ``host`` (with or
without the scheme; ``port`` and ``schema`` complete it) and an admin API token in ``password``.
:class:`UnleashHook` makes the raw calls and returns what the server said; :class:`UnleashFlagStore`
says what that means, as :class:`~conveyor.flags.FlagStore`::

    store = flag_store(service)                     # local fleet file, or Unleash, per flag_store:
    store.set("new_checkout", True, 25, environment="production")

A flag Conveyor rolls out carries exactly one strategy per environment: ``flexibleRollout`` with
``stickiness: userId`` and ``groupId`` the flag's name, so a user keeps their bucket as the share grows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from conveyor.flags import FlagState, FlagStoreError, LocalFlagStore, flag_name, rollout_share

if TYPE_CHECKING:
    from conveyor.config import ServiceConfig
    from conveyor.flags import FlagStore

log = logging.getLogger(__name__)

ROLLOUT_STRATEGY = "flexibleRollout"
DEFAULT_TIMEOUT_S = 10.0


class UnleashHook(BaseHook):
    """Raw calls to an Unleash server's admin API.

    :param unleash_conn_id: the connection: base URL in ``host`` (``port``, ``schema`` optional), admin
        API token in ``password``.
    :param timeout_s: seconds each request may take.
    """

    conn_name_attr = "unleash_conn_id"
    default_conn_name = "unleash_default"
    conn_type = "http"
    hook_name = "Conveyor feature flags (Unleash)"

    def __init__(self, unleash_conn_id: str = default_conn_name, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__()
        self.unleash_conn_id = unleash_conn_id
        self.timeout_s = timeout_s

    @cached_property
    def base_url(self) -> str:
        conn = self.get_connection(self.unleash_conn_id)
        host = (conn.host or "").rstrip("/")
        if not host:
            raise FlagStoreError(f"connection {self.unleash_conn_id}: host (the Unleash server's URL) is empty")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}"
            if conn.port:
                host += f":{conn.port}"
        return host

    @cached_property
    def client(self) -> Any:
        import httpx

        conn = self.get_connection(self.unleash_conn_id)
        if not conn.password:
            raise FlagStoreError(f"connection {self.unleash_conn_id}: password (an Unleash admin API token) is empty")
        return httpx.Client(base_url=self.base_url, timeout=self.timeout_s,
                            headers={"Authorization": conn.password, "Accept": "application/json"})

    def get_conn(self) -> Any:
        return self.client

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; returns ``(status, JSON body or None)``. Raises :class:`FlagStoreError` when the
        server cannot be reached."""
        import httpx

        try:
            resp = self.client.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise FlagStoreError(f"unleash {self.base_url}: {method} {path}: {type(e).__name__}: {e}") from e
        try:
            payload = resp.json() if resp.content else None
        except ValueError:
            payload = resp.text[:500]
        return resp.status_code, payload

    def test_connection(self) -> tuple[bool, str]:
        try:
            status, body = self.call("GET", "/health")
            if status == 200 and isinstance(body, dict) and body.get("health") == "GOOD":
                status, _ = self.call("GET", "/api/admin/projects")
                if status == 200:
                    return True, "Unleash answers and accepts the token"
                return False, f"Unleash answers but refuses the token (HTTP {status})"
            return False, f"Unleash health: HTTP {status}: {body}"
        except Exception as e:
            return False, str(e)


def _expect(status: int, body: Any, what: str, *ok: int) -> Any:
    if status not in ok:
        detail = body.get("message") if isinstance(body, dict) else body
        raise FlagStoreError(f"unleash: {what}: HTTP {status}: {detail}")
    return body


class UnleashFlagStore:
    """:class:`~conveyor.flags.FlagStore` on Unleash (see the module docs).

    :param hook: the server.
    :param project: the Unleash project the flags live in.
    :param environments: Conveyor environment (``replica``, ``production``...) -> Unleash environment.
    """

    def __init__(self, hook: UnleashHook, *, project: str, environments: Mapping[str, str]) -> None:
        self.hook = hook
        self.project = project
        self.environments = dict(environments)

    def _env(self, environment: str) -> str:
        try:
            return self.environments[environment]
        except KeyError:
            raise FlagStoreError(f"unleash: no Unleash environment for {environment!r} (flag_store.unleash."
                                 f"environments has {', '.join(self.environments) or 'none'})") from None

    def _feature(self, flag: str) -> str:
        return f"/api/admin/projects/{quote(self.project, safe='')}/features/{flag}"

    def get(self, flag: str, *, environment: str) -> FlagState:
        flag_name(flag)
        env = self._env(environment)
        status, body = self.hook.call("GET", self._feature(flag))
        if status == 404:
            return FlagState(flag)
        feature = _expect(status, body, f"reading {flag}", 200)
        found = next((e for e in feature.get("environments", []) if e.get("name") == env), None)
        if found is None:
            raise FlagStoreError(f"unleash: project {self.project} has no environment {env!r} for flag {flag}")
        strategies = [s for s in found.get("strategies", []) if not s.get("disabled")]
        if not strategies:
            return FlagState(flag, bool(found.get("enabled")), 100 if found.get("enabled") else 0)
        ours = [s for s in strategies if s.get("name") == ROLLOUT_STRATEGY]
        if len(ours) != 1 or len(strategies) != 1:
            names = ", ".join(s.get("name", "?") for s in strategies)
            raise FlagStoreError(f"unleash: flag {flag} in {env} has strategies {names}: not one gradual rollout "
                                 "that Conveyor can read; set it with Conveyor to replace them")
        try:
            rollout = rollout_share(int(ours[0].get("parameters", {}).get("rollout", 0)))
        except (TypeError, ValueError) as e:
            raise FlagStoreError(f"unleash: flag {flag} in {env}: unreadable rollout: {e}") from None
        return FlagState(flag, bool(found.get("enabled")), rollout)

    def _ensure_flag(self, flag: str) -> None:
        status, body = self.hook.call("GET", self._feature(flag))
        if status == 200:
            return
        _expect(status, body, f"reading {flag}", 404)
        status, body = self.hook.call("POST", f"/api/admin/projects/{quote(self.project, safe='')}/features",
                                      {"name": flag, "type": "release", "description": "Rolled out by Conveyor"})
        _expect(status, body, f"creating {flag}", 200, 201, 409)  # 409: created meanwhile
        log.info("unleash: created flag %s in project %s", flag, self.project)

    def _set_strategy(self, flag: str, env: str, rollout: int) -> None:
        path = f"{self._feature(flag)}/environments/{quote(env, safe='')}/strategies"
        status, body = self.hook.call("GET", path)
        strategies = _expect(status, body, f"reading {flag}'s strategies in {env}", 200) or []
        want = {"name": ROLLOUT_STRATEGY, "constraints": [],
                "parameters": {"rollout": str(rollout), "stickiness": "userId", "groupId": flag}}
        ours = next((s for s in strategies if s.get("name") == ROLLOUT_STRATEGY), None)
        for other in strategies:
            if other is not ours:
                log.warning("unleash: removing strategy %s of %s in %s (Conveyor keeps one gradual rollout)",
                            other.get("name"), flag, env)
                status, body = self.hook.call("DELETE", f"{path}/{other['id']}")
                _expect(status, body, f"removing strategy {other.get('name')} of {flag}", 200, 202, 204, 404)
        if ours is None:
            status, body = self.hook.call("POST", path, want)
            _expect(status, body, f"adding the rollout strategy to {flag} in {env}", 200, 201)
        elif ours.get("parameters") != want["parameters"] or ours.get("disabled"):
            status, body = self.hook.call("PUT", f"{path}/{ours['id']}", {**want, "disabled": False})
            _expect(status, body, f"updating the rollout of {flag} in {env}", 200)

    def set(self, flag: str, enabled: bool, rollout: int, *, environment: str) -> FlagState:
        want = FlagState(flag_name(flag), enabled, rollout_share(rollout))
        env = self._env(environment)
        self._ensure_flag(flag)
        self._set_strategy(flag, env, want.rollout)
        switch = "on" if enabled else "off"
        status, body = self.hook.call("POST", f"{self._feature(flag)}/environments/{quote(env, safe='')}/{switch}")
        _expect(status, body, f"switching {flag} {switch} in {env}", 200, 202, 204)
        got = self.get(flag, environment=environment)
        if got != want:
            raise FlagStoreError(f"unleash: flag {flag} in {env} reads back as enabled={got.enabled} "
                                 f"rollout={got.rollout}, not enabled={want.enabled} rollout={want.rollout}")
        return got


def flag_store(service: ServiceConfig) -> FlagStore:
    """The flag store ``service``'s ``flag_store:`` section names (the local fleet's files by default)."""
    settings = service.flag_store
    if settings.backend == "unleash":
        unleash = settings.unleash
        return UnleashFlagStore(UnleashHook(unleash.conn_id), project=unleash.project,
                                environments=unleash.environments)
    from conveyor.hooks.fleet import FleetHook
    from conveyor.inventory import resolve_hosts

    timeouts = service.deploy.timeouts
    fleet = FleetHook(service.deploy.ssh_conn_id, connect_s=timeouts.connect_s, command_s=timeouts.command_s)
    return LocalFlagStore(lambda environment: resolve_hosts(service, environment), fleet.session)
