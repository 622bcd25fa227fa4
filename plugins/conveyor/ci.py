"""Continuous integration of a service's release branch, and the gate scheduled releases pass.

Pure logic over git and the ledger (no Airflow import at module level); the ``ci_<service>`` DAG
(:mod:`conveyor.ci_pipeline`) and the release gate (:mod:`conveyor.operators.gate`) call it.

* :func:`new_commits` fetches the service's mirror and lists the release branch's commits that CI has
  not judged yet: walking the branch's first-parent history from its head down to the newest commit
  with a CI result (or the last released commit), at most ``ci.max_commits`` of them.
* :func:`run_ci` checks a commit out, runs the service's build into a temporary directory and the CI
  suite (``ci.suite``, default the first of ``tests``; it runs without hosts), and records the
  commit's ``ci_status`` (``green`` or ``red``) in the ledger's ``commits`` table.
* :func:`release_candidate` decides what a scheduled release does: ``release`` the newest green
  commit, skip because the ``line_stopped`` at a red commit, or skip because of ``no_change`` since
  the last successful release.

Only the release branch's first-parent chain counts: those are the commits that were once the
branch's head (a merge commit is checked as a whole; the commits it merged were never released).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.artifacts import LOG_FORMAT, parse_log
from conveyor.commands import format_command, git, git_succeeds, run_command, tool_env
from conveyor.exceptions import BuildError
from conveyor.suites import run_suite

if TYPE_CHECKING:
    from conveyor.config import ServiceConfig
    from conveyor.ledger import Ledger

log = logging.getLogger(__name__)

GREEN, RED, PENDING = "green", "red", "pending"
#: CI statuses that are a verdict; a ``pending`` commit (found, not yet judged) is checked again.
DECIDED = frozenset({GREEN, RED})
RELEASE, LINE_STOPPED, NO_CHANGE = "release", "line_stopped", "no_change"

_HISTORY_WINDOW = 500  # how far down the branch a walk looks for the last judged commit


# ------------------------------------------------------------------------------------------- git


def branch_head(git_dir: Path, branch: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", "--end-of-options", f"refs/heads/{branch}^{{commit}}",
                   cwd=git_dir)
    except BuildError:
        raise BuildError(f"the release branch {branch!r} does not exist in the service repository") from None


def branch_commits(git_dir: Path, branch: str, since: str | None = None,
                   limit: int = _HISTORY_WINDOW) -> list[dict[str, str]]:
    """First-parent commits of ``branch`` newer than ``since`` (all when None), newest first."""
    head = branch_head(git_dir, branch)
    spec = f"{since}..{head}" if since else head
    return parse_log(git("log", "--first-parent", f"--max-count={limit}", f"--format={LOG_FORMAT}", spec, "--",
                         cwd=git_dir))


def commit_info(git_dir: Path, ref: str) -> dict[str, str]:
    """``{"sha", "author", "email", "date", "subject"}`` of a commit of the mirror (ref or sha prefix)."""
    from conveyor.artifacts import resolve_ref

    sha, _version = resolve_ref(git_dir, ref)  # validates the ref; BuildError when it does not exist
    return parse_log(git("log", "-1", f"--format={LOG_FORMAT}", sha, "--", cwd=git_dir))[0]


def _exists(git_dir: Path, sha: str | None) -> bool:
    return bool(sha) and git_succeeds("cat-file", "-e", f"{sha}^{{commit}}", cwd=git_dir)


def _is_ancestor(git_dir: Path, ancestor: str, descendant: str) -> bool:
    return git_succeeds("merge-base", "--is-ancestor", ancestor, descendant, cwd=git_dir)


# ---------------------------------------------------------------------------------------- ledger


def ci_statuses(ledger: Ledger, service_id: str, shas: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ledger's ``commits`` rows of ``shas`` (those it has), by sha."""
    return ledger.get_commits(service_id, list(shas))


def _record(ledger: Ledger, service_id: str, commit: dict[str, str], status: str, detail: str | None,
            checked_at: dt.datetime | None) -> None:
    fields: dict[str, Any] = {"author": commit.get("author"), "message": commit.get("subject"),
                              "committed_at": commit.get("date"), "ci_status": status, "checked_at": checked_at,
                              "ci_detail": detail}
    ledger.upsert_commit(service_id, commit["sha"], **fields)


def last_released_commit(ledger: Ledger, service_id: str, *, soaked: bool = False) -> dict[str, Any] | None:
    """The last commit a release took: to production; for a service with a soak (``soaked``), to the soak
    cluster (its newest soak, whatever became of it: a build that had an incident is not released again by
    the schedule, a new commit is)."""
    if soaked:
        newest = next((s for s in ledger.list_soaks(service_id, limit=20) if s.get("commit_sha")), None)
        if newest:
            return newest
    release = ledger.last_successful_release(service_id)
    return release if release and release.get("commit_sha") else None


# ----------------------------------------------------------------------------------- what is new


def new_commits(service: ServiceConfig, since: str | None = None, *, ledger: Ledger,
                limit: int | None = None) -> list[dict[str, str]]:
    """Commits of the release branch CI has not judged yet, oldest first.

    Fetches the mirror, then walks the branch from its head down to the first commit with a CI
    verdict, stopping at ``since`` (default: the last successfully released commit). At most
    ``limit`` (default ``ci.max_commits``) of the newest are returned; each is recorded in the ledger
    as ``pending`` so the changelog shows it, and is checked again until it has a verdict.
    """
    from conveyor.artifacts import mirror

    git_dir = mirror(service)
    limit = limit or service.ci.max_commits
    if since is None:
        last = last_released_commit(ledger, service.id, soaked=service.soak is not None)
        since = last["commit_sha"] if last else None
    if since and not _exists(git_dir, since):
        log.warning("commit %s is not in the repository any more; looking at the whole branch", since[:12])
        since = None
    commits = branch_commits(git_dir, service.repo.release_branch, since)
    statuses = ci_statuses(ledger, service.id, [c["sha"] for c in commits])
    fresh: list[dict[str, str]] = []
    for commit in commits:
        if (statuses.get(commit["sha"]) or {}).get("ci_status") in DECIDED:
            break
        fresh.append(commit)
    fresh = fresh[:limit]
    for commit in fresh:
        if (statuses.get(commit["sha"]) or {}).get("ci_status") is None:
            _record(ledger, service.id, commit, PENDING, None, None)
    return fresh[::-1]


# -------------------------------------------------------------------------------------------- CI


def run_ci(service: ServiceConfig, commit: str | dict[str, str], *, ledger: Ledger,
           log_fn: Callable[..., None] | None = None) -> dict[str, Any]:
    """Build ``commit`` and run the CI suite on it; record and return its verdict.

    Returns ``{"sha", "author", "email", "date", "subject", "status", "suite", "passed", "failed",
    "failures", "detail"}``; ``status`` is ``green`` when the build and the suite pass, else ``red``
    (``detail`` says why: the build's or the suite's output tail, or the failing tests). A checkout
    that fails is an error (:class:`BuildError`), not a verdict: the commit stays unjudged.
    """
    from conveyor.artifacts import checkout, mirror, resolve_ref
    from conveyor.paths import scratch_dir

    say = log_fn or log.info
    git_dir = mirror(service)
    info = commit_info(git_dir, commit if isinstance(commit, str) else commit["sha"])
    sha = info["sha"]
    _sha, version = resolve_ref(git_dir, sha)
    src = checkout(service, sha)
    env = tool_env(CONVEYOR_VERSION=version, CONVEYOR_COMMIT=sha, PYTHONHASHSEED="0")
    result: dict[str, Any] = {**info, "version": version, "suite": None, "passed": 0, "failed": 0,
                              "failures": [], "detail": ""}
    work = scratch_dir(service.id, "ci", prefix=f"{sha[:12]}-")
    try:
        out = work / "out"
        out.mkdir()
        build = format_command(service.build.command, out=str(out))
        say("CI of %s %s (%s, %s): build %s", service.id, sha[:12], info["author"], info["subject"], build)
        ran = run_command(build, cwd=src, env=env, timeout=service.build.timeout_s)
        if not ran.ok:
            result.update(status=RED, detail=f"build failed with exit code {ran.exit_code}:\n{ran.tail()}")
        elif service.ci_suite is None:
            result.update(status=GREEN, detail="build passed (no test suite configured)")
        else:
            suite = service.ci_suite
            say("CI of %s %s: suite %s: %s", service.id, sha[:12], suite.name, suite.command)
            run = run_suite(suite, src, workdir=work, env=env)
            ran = run.result
            failures = [{"test": t, "message": m} for t, m in run.failed_cases.items()]
            result.update(suite=suite.name, passed=run.count("passed"), failed=len(failures), failures=failures[:50])
            if ran.ok and not failures:
                result.update(status=GREEN, detail=f"{suite.name}: {result['passed']} passed")
            elif failures:
                names = "; ".join(f"{f['test']}: {(f['message'] or '').splitlines()[0][:200] if f['message'] else ''}"
                                  for f in failures[:10])
                result.update(status=RED, detail=f"{suite.name}: {len(failures)} failed, {result['passed']} "
                                                 f"passed: {names}")
            else:
                result.update(status=RED, detail=f"{suite.name} exited {ran.exit_code} without failing test "
                                                 f"cases:\n{ran.tail()}")
        for line in ran.tail(15).splitlines():
            say("  %s", line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _record(ledger, service.id, info, result["status"], result["detail"][:4000], dt.datetime.now(dt.UTC))
    say("CI of %s %s is %s: %s", service.id, sha[:12], result["status"].upper(), result["detail"].splitlines()[0])
    return result


def red_message(service: ServiceConfig, result: dict[str, Any]) -> str:
    """The notification for a red commit: names the commit, its author and why."""
    why = (result.get("detail") or "").splitlines()[0] if result.get("detail") else "CI failed"
    return (f"CI is RED on {service.id} {service.repo.release_branch}: commit {result['sha'][:12]} by "
            f"{result['author']} ({result['subject']}): {why}")


def notify_red(service: ServiceConfig, result: dict[str, Any], context: Any = None) -> None:
    """Send the red-commit notification at once (notification log, and Slack when configured)."""
    from conveyor.notifiers import ReleaseNotifier

    ReleaseNotifier(event="ci_red", text=red_message(service, result),
                    slack_webhook_conn_id=service.notifications.slack_webhook_conn_id).notify(context or {})


def check_commit(service: ServiceConfig, commit: str | dict[str, str], *, ledger: Ledger, context: Any = None,
                 log_fn: Callable[..., None] | None = None) -> dict[str, Any]:
    """:func:`run_ci` and, for a red commit, :func:`notify_red`: what ``ci_<service>`` does per commit."""
    result = run_ci(service, commit, ledger=ledger, log_fn=log_fn)
    if result["status"] == RED:
        notify_red(service, result, context)
    return result


# ------------------------------------------------------------------------------------------- gate


def release_candidate(service: ServiceConfig, ledger: Ledger) -> tuple[str, dict[str, Any] | None, str]:
    """What a scheduled release of ``service`` should do: ``(decision, commit, message)``.

    * ``no_change``: the branch head is the last successfully released commit (or an ancestor of
      it), or nothing after it has a CI verdict yet; ``commit`` is None.
    * ``line_stopped``: the newest judged commit since the last release is red; ``commit`` is it and
      ``message`` is ``line stopped at <sha12> (<author>: <subject>)``.
    * ``release``: the newest judged commit since the last release is green; ``commit`` is it.

    Commits CI has not judged yet (newer than the newest verdict) are passed over: the release takes
    the newest green commit, unless a red one came after it.
    """
    from conveyor.artifacts import mirror

    git_dir = mirror(service)
    branch = service.repo.release_branch
    head = branch_head(git_dir, branch)
    last = last_released_commit(ledger, service.id, soaked=service.soak is not None)
    since = last["commit_sha"] if last and _exists(git_dir, last["commit_sha"]) else None
    where = f"{last.get('version') or last['commit_sha'][:12]} ({last['commit_sha'][:12]})" if since else None
    if since and (head == since or _is_ancestor(git_dir, head, since)):
        return NO_CHANGE, None, f"nothing new on {branch} since the last release, {where}"
    commits = branch_commits(git_dir, branch, since)
    statuses = ci_statuses(ledger, service.id, [c["sha"] for c in commits])
    for n, commit in enumerate(commits):
        status = (statuses.get(commit["sha"]) or {}).get("ci_status")
        if status == RED:
            return LINE_STOPPED, commit, (f"line stopped at {commit['sha'][:12]} "
                                          f"({commit['author']}: {commit['subject']})")
        if status == GREEN:
            waiting = f"; {n} newer commit(s) still wait for CI" if n else ""
            return RELEASE, commit, (f"releasing {commit['sha'][:12]} ({commit['author']}: {commit['subject']}), "
                                     f"the newest green commit of {branch}{waiting}")
    return NO_CHANGE, None, (f"{len(commits)} new commit(s) on {branch} since "
                             f"{where or 'the beginning'}, none judged by CI yet")


def scheduled_release_gate(service: ServiceConfig, ledger: Ledger) -> tuple[str, str | None, str]:
    """:func:`release_candidate` as ``(decision, sha or None, message)``."""
    decision, commit, message = release_candidate(service, ledger)
    return decision, (commit or {}).get("sha"), message


__all__ = [
    "DECIDED", "GREEN", "LINE_STOPPED", "NO_CHANGE", "PENDING", "RED", "RELEASE", "check_commit",
    "ci_statuses", "new_commits", "notify_red", "red_message", "release_candidate", "run_ci",
    "scheduled_release_gate",
]
