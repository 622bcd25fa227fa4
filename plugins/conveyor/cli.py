"""The ``conveyor`` command: the local fleet, root-cause tickets, soak clocks, incidents, sign-off, the demo repository.

::

    conveyor fleet up [--no-seed] [--seed-version V] [--no-wait]
    conveyor fleet down [--purge]
    conveyor fleet status [--json]
    conveyor fleet connection          # the Airflow connection (JSON) for AIRFLOW_CONN_CONVEYOR_FLEET
    conveyor tickets list [--json] [--service S] [--pending]
    conveyor tickets show ID [--json]
    conveyor soak status [--service ID] [--json]
    conveyor incident add SERVICE RELEASE_ID --reason TEXT [--at ISO] [--json]
    conveyor approve RUN_ID --as USER [--password P] [--comment TEXT] [--dag D] [--api URL]
    conveyor reject RUN_ID --as USER --reason TEXT [--password P] [--dag D] [--api URL]
    conveyor demo commit --red|--green [--message M] [--author NAME]

Exit codes: 0 success, 1 the command failed (fleet not running, ticket not found, ...), 2 usage
error. Each command group registers itself in :func:`build_parser` through an ``add_*`` function, so
new groups (``conveyor approve`` ...) are one function away.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TICKET_ID_RE = re.compile(r"^RCA-[A-Za-z0-9._-]{1,128}$")
NOT_RUNNING = "The local fleet is not running: start it with `make run` or `conveyor fleet up`."


class CommandFailed(ConveyorError):
    """A command could not do what was asked; the message is for the user, the exit code is 1."""


class UsageError(ConveyorError):
    """The arguments are wrong in a way argparse cannot tell; exit code 2."""


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------ fleet


def _fleet():
    from conveyor_lab.fleet import Fleet

    return Fleet()


def cmd_fleet_up(args: argparse.Namespace) -> int:
    _fleet().up(seed_version=None if args.no_seed else args.seed_version, wait=not args.no_wait)
    return EXIT_OK


def cmd_fleet_down(args: argparse.Namespace) -> int:
    _fleet().down(purge=args.purge)
    return EXIT_OK


def _health_text(row: dict[str, Any]) -> str:
    health = row.get("health")
    if health is None:
        return f"down ({row.get('health_error') or 'no answer'})"
    status = health.get("status", "?")
    return f"{status} {health.get('version', '')}".strip()


def cmd_fleet_status(args: argparse.Namespace) -> int:
    fleet = _fleet()
    daemon = fleet.daemon_pid()
    if daemon is None:
        print(NOT_RUNNING, file=sys.stderr)
        return EXIT_FAILED
    rows = fleet.status()
    if args.json:
        _print_json({"running": True, "daemon_pid": daemon, "home": str(fleet.home),
                     "inventory": str(fleet.inventory_path), "hosts": rows})
        return EXIT_OK
    print(f"Local fleet: {fleet.spec.summary()}, daemon pid {daemon}, {fleet.home}")
    print(_table(
        [[r["name"], r["environment"], f"{r['address']}:{r['ssh_port']}", r["version"] or "-",
          f"pid {r['app_pid']}" if r["app_alive"] else "stopped", _health_text(r)] for r in rows],
        ["HOST", "ENVIRONMENT", "SSH", "CURRENT", "APP", "HEALTH"],
    ))
    return EXIT_OK


def cmd_fleet_connection(args: argparse.Namespace) -> int:
    print(_fleet().connection_uri())
    return EXIT_OK


def add_fleet_commands(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="the local fleet of simulated hosts",
                           description="Start, stop and inspect the local fleet ($CONVEYOR_HOME/fleet).")
    cmds = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    up = cmds.add_parser("up", help="start the SSH servers, the apps and the traffic (idempotent)")
    up.add_argument("--no-seed", action="store_true", help="do not install the demo shop on empty hosts")
    up.add_argument("--seed-version", default="v1.0.0", metavar="V",
                    help="the demo shop version installed on empty hosts (default: %(default)s)")
    up.add_argument("--no-wait", action="store_true", help="do not wait for every /health to answer")
    up.set_defaults(func=cmd_fleet_up)

    down = cmds.add_parser("down", help="stop every app, the SSH servers and the traffic")
    down.add_argument("--purge", action="store_true", help="also delete the fleet directory (hosts, keys)")
    down.set_defaults(func=cmd_fleet_down)

    status = cmds.add_parser("status", help="each host's version, app and health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_fleet_status)

    conn = cmds.add_parser("connection", help="print the Airflow SSH connection (JSON) for the fleet")
    conn.set_defaults(func=cmd_fleet_connection)


# ---------------------------------------------------------------------------------- tickets


def _tickets():
    from conveyor.tickets import LocalTicketBackend

    return LocalTicketBackend()


def _delivery(ticket: dict[str, Any]) -> str:
    """Where a ticket went: ``local``, ``jira OPS-12``, ``github #7 (comment)``, ``pending jira (3 tries)``."""
    d = ticket.get("delivery") or {"backend": "local", "status": "local"}
    backend, status = d.get("backend") or "local", d.get("status") or "local"
    if status == "pending":
        tries = d.get("attempts") or 0
        return f"pending {backend}" + (f" ({tries} {'try' if tries == 1 else 'tries'})" if tries else "")
    if status in ("filed", "commented"):
        key = f"#{d.get('key')}" if backend == "github" else str(d.get("key"))
        return f"{backend} {key}" + (" (comment)" if status == "commented" else "")
    return backend


def cmd_tickets_list(args: argparse.Namespace) -> int:
    tickets = _tickets().list()
    if args.service:
        tickets = [t for t in tickets if t.get("service") == args.service]
    if args.pending:
        tickets = [t for t in tickets if (t.get("delivery") or {}).get("status") == "pending"]
    if args.json:
        _print_json(tickets)
        return EXIT_OK
    if not tickets:
        print(("No pending tickets" if args.pending else "No tickets")
              + (f" for {args.service}." if args.service else "."))
        return EXIT_OK
    print(_table(
        [[t.get("ticket_id", "?"), str(t.get("created_at") or "")[:19], t.get("service") or "-",
          t.get("version") or "-", t.get("failed_stage") or "-", t.get("rollback_status") or "-", _delivery(t)]
         for t in tickets],
        ["ID", "CREATED", "SERVICE", "VERSION", "FAILED AT", "ROLLBACK", "TICKET SYSTEM"],
    ))
    pending = [t for t in tickets if (t.get("delivery") or {}).get("status") == "pending"]
    for t in pending:
        print(f"{t['ticket_id']}: {(t.get('delivery') or {}).get('error') or 'not delivered yet'}")
    if pending:
        print(f"{len(pending)} pending ticket(s) are kept here and retried by the next ticket task of any release.")
    return EXIT_OK


def cmd_tickets_show(args: argparse.Namespace) -> int:
    if not TICKET_ID_RE.match(args.ticket_id):
        raise UsageError(f"invalid ticket id {args.ticket_id!r}: expected RCA-<letters and digits>")
    backend = _tickets()
    ticket = backend.get(args.ticket_id)
    if ticket is None:
        raise CommandFailed(f"no ticket {args.ticket_id} in {backend.directory} (see `conveyor tickets list`)")
    if args.json:
        _print_json(ticket)
        return EXIT_OK
    print(ticket["body"].rstrip())
    print(f"\n(ticket file: {ticket.get('path') or backend.directory / (args.ticket_id + '.md')}; "
          f"ticket system: {_delivery(ticket)}"
          + (f" {ticket['delivery']['url']}" if (ticket.get("delivery") or {}).get("url") else "") + ")")
    return EXIT_OK


def add_ticket_commands(sub: argparse._SubParsersAction) -> None:
    tickets = sub.add_parser("tickets", help="root-cause tickets filed by failed releases",
                             description="Root-cause tickets as kept locally ($CONVEYOR_HOME/tickets), with where "
                             "each went (jira, github) or whether it is pending for a ticket system that was down.")
    cmds = tickets.add_subparsers(dest="tickets_command", metavar="COMMAND", required=True)

    ls = cmds.add_parser("list", help="tickets, newest first")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--service", metavar="S", help="only tickets of service S")
    ls.add_argument("--pending", action="store_true", help="only tickets not yet delivered to their ticket system")
    ls.set_defaults(func=cmd_tickets_list)

    show = cmds.add_parser("show", help="one ticket's full text")
    show.add_argument("ticket_id", metavar="ID", help="a ticket id, e.g. RCA-3F2A9C01B7")
    show.add_argument("--json", action="store_true", help="the ticket's fields and body as JSON")
    show.set_defaults(func=cmd_tickets_show)


# -------------------------------------------------------------------------------------- soak


def _ledger():
    """The release ledger of the ``conveyor_ledger`` connection, as tasks see it, or :class:`CommandFailed`.

    Without the connection the hook falls back to the local SQLite ledger; here that file must exist
    already, so a status query never creates an empty ledger and reports "no soaks" for a wrong setup.
    """
    import contextlib

    from conveyor.ledger import Ledger
    from conveyor.ledger.hook import LedgerHook

    try:
        with contextlib.redirect_stdout(sys.stderr):  # the hook logs; keep stdout for the output (--json)
            url = LedgerHook().ledger_url()
        ledger = Ledger(url)
    except (ValueError, ConveyorError) as e:  # a connection of the wrong type, a malformed URL
        raise CommandFailed(f"the release ledger (connection conveyor_ledger) is misconfigured: {e}") from None
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise CommandFailed(
            f"no release ledger at {url.database}: no release has been recorded there yet, or the ledger is "
            "elsewhere; set the conveyor_ledger connection (e.g. AIRFLOW_CONN_CONVEYOR_LEDGER)")
    return ledger


def _soak_rows(clocks: list[Any]) -> list[list[str]]:
    return [[c.service, c.version, c.status, c.started_at.strftime("%Y-%m-%d %H:%M"), c.minimum, c.soaked,
             c.remaining, "yes" if c.eligible else "no", c.why] for c in clocks]


def cmd_soak_status(args: argparse.Namespace) -> int:
    import datetime as dt

    import sqlalchemy as sa

    from conveyor.paths import services_dir
    from conveyor.soak import soak_clocks
    from conveyor.validation import SERVICE_ID_RE

    if args.service is not None and not SERVICE_ID_RE.match(args.service):
        raise UsageError(f"invalid --service {args.service!r}: a service id is a lowercase letter, then "
                         "lowercase letters, digits or _")
    ledger = _ledger()
    now = dt.datetime.now(dt.UTC)
    clocks = []
    try:
        known = ledger.services()
        service_file = services_dir() / f"{args.service}.yaml"
        if (args.service is not None and args.service not in known and not service_file.exists()
                and not ledger.list_soaks(args.service, limit=1)):
            raise UsageError(f"unknown service {args.service!r}: no service file {service_file} and no release "
                             f"in the ledger; known: {', '.join(known) or 'none'}")
        for service in [args.service] if args.service else known:
            rows = ledger.list_soaks(service)
            if rows:
                last = ledger.last_successful_release(service)
                clocks += soak_clocks(rows, production_version=last["version"] if last else None, now=now)
    except sa.exc.SQLAlchemyError as e:
        raise CommandFailed(f"cannot read the release ledger {ledger!r}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0]}") from None
    finally:
        ledger.dispose()
    if args.json:
        _print_json([c.to_dict() for c in clocks])
        return EXIT_OK
    if not clocks:
        print(f"No soaks are recorded{f' for {args.service}' if args.service else ''}.")
        return EXIT_OK
    print(_table(_soak_rows(clocks), ["SERVICE", "VERSION", "STATUS", "STARTED (UTC)", "MINIMUM", "SOAKED",
                                      "REMAINING", "ELIGIBLE", "WHY"]))
    return EXIT_OK


def add_soak_commands(sub: argparse._SubParsersAction) -> None:
    soak = sub.add_parser("soak", help="builds soaking on the developer cluster before production",
                          description="Soak clocks from the release ledger: how long each build has soaked, what "
                          "is left of its minimum, and whether it may be promoted to production (and why).")
    cmds = soak.add_subparsers(dest="soak_command", metavar="COMMAND", required=True)
    status = cmds.add_parser("status", help="each build's soak clock, newest first")
    status.add_argument("--service", metavar="ID", help="only this service (default: every service with soaks)")
    status.add_argument("--json", action="store_true", help="machine-readable output (a list of clocks)")
    status.set_defaults(func=cmd_soak_status)


# ---------------------------------------------------------------------------------- incidents


def cmd_incident_add(args: argparse.Namespace) -> int:
    import datetime as dt
    import getpass

    import sqlalchemy as sa

    from conveyor.validation import SERVICE_ID_RE

    if not SERVICE_ID_RE.match(args.service):
        raise UsageError(f"invalid service {args.service!r}: a service id is a lowercase letter, then lowercase "
                         "letters, digits or _")
    reason = args.reason.strip()
    if not reason:
        raise UsageError("--reason must say what went wrong in production; it is empty")
    at = None
    if args.at is not None:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise UsageError(f"invalid --at {args.at!r}: give an ISO 8601 time such as 2026-11-20T14:30:00Z "
                             "(naive is UTC)") from None
    ledger = _ledger()
    try:
        release = ledger.get_release(args.release_id)
        if release is None:
            raise CommandFailed(f"release {args.release_id!r} is not in the ledger {ledger!r}; a release id is "
                                "<service>/<run id> (see the Releases page)")
        if release["service"] != args.service:
            raise CommandFailed(f"release {args.release_id!r} is a release of {release['service']!r}, "
                                f"not of {args.service!r}")
        row = ledger.add_incident(args.release_id, reason=reason, at=at, recorded_by=getpass.getuser())
    except sa.exc.SQLAlchemyError as e:
        raise CommandFailed(f"cannot write to the release ledger {ledger!r}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0]}") from None
    finally:
        ledger.dispose()
    if args.json:
        _print_json({k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()})
    else:
        print(f"Recorded an incident of {row['release_id']} at {row['at']:%Y-%m-%d %H:%M} UTC: {row['reason']}")
    return EXIT_OK


def add_incident_commands(sub: argparse._SubParsersAction) -> None:
    incident = sub.add_parser("incident", help="incidents in production after a release",
                              description="Record an incident after a release, so that what escaped to production "
                              "counts in the release statistics (the Statistics page, /conveyor/api/stats).")
    cmds = incident.add_subparsers(dest="incident_command", metavar="COMMAND", required=True)
    add = cmds.add_parser("add", help="record an incident of a release")
    add.add_argument("service", help="the service id")
    add.add_argument("release_id", help="the release id (<service>/<run id>)")
    add.add_argument("--reason", required=True, help="what went wrong in production")
    add.add_argument("--at", metavar="ISO", help="when the incident began (ISO 8601, naive is UTC; default now)")
    add.add_argument("--json", action="store_true", help="print the recorded incident as JSON")
    add.set_defaults(func=cmd_incident_add)


# ---------------------------------------------------------------------------------- sign-off


def _password(args: argparse.Namespace) -> str:
    import getpass
    import os

    if args.password is not None:
        return args.password
    if os.environ.get("CONVEYOR_PASSWORD"):
        return os.environ["CONVEYOR_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"Airflow password for {args.user}: ")
    raise UsageError("no password: pass --password or set CONVEYOR_PASSWORD")


def _sign_off(args: argparse.Namespace, decision: str, reason: str | None) -> int:
    from conveyor.signoff_client import SignoffError, sign_off

    try:
        result = sign_off(api=args.api, user=args.user, password=_password(args), run_id=args.run_id,
                          decision=decision, reason=reason, dag_id=args.dag, task_id=args.task,
                          timeout=args.timeout)
    except SignoffError as e:  # Airflow's answer (403, 409, no approval awaiting ...) or no connection
        raise CommandFailed(str(e)) from None
    verb = "Approved" if decision == "Approve" else "Rejected"
    print(f"{verb} {result.task_id} of run {result.run_id} ({result.dag_id}) as {result.user}"
          + (f" at {result.responded_at}" if result.responded_at else "") + ".")
    if result.subject:
        print(f"  {result.subject}")
    if result.reason:
        print(f"  {'Reason' if decision == 'Reject' else 'Comment'}: {result.reason}")
    if decision == "Reject":
        print("  The release stops: it is marked failed and a root-cause ticket is filed.")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    return _sign_off(args, "Approve", args.comment)


def cmd_reject(args: argparse.Namespace) -> int:
    if not (args.reason or "").strip():
        raise UsageError("--reason must not be empty: say why the release is rejected")
    return _sign_off(args, "Reject", args.reason)


def add_signoff_commands(sub: argparse._SubParsersAction) -> None:
    from conveyor.signoff_client import DEFAULT_API, DEFAULT_DAG

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_id", metavar="RUN_ID", help="the release run (its Airflow run id)")
        p.add_argument("--as", dest="user", required=True, metavar="USER", help="your Airflow user name")
        p.add_argument("--password", metavar="P",
                       help="your Airflow password (default: $CONVEYOR_PASSWORD, else prompted)")
        p.add_argument("--dag", default=DEFAULT_DAG, metavar="DAG_ID", help="the release DAG (default: %(default)s)")
        p.add_argument("--api", default=DEFAULT_API, metavar="URL",
                       help="Airflow's API server (default: %(default)s)")
        p.add_argument("--task", metavar="TASK_ID",
                       help="the approval task (default: the run's approval awaiting input)")
        p.add_argument("--timeout", type=float, default=30.0, metavar="S", help=argparse.SUPPRESS)

    approve = sub.add_parser(
        "approve", help="approve a release's awaiting sign-off (QA, or a later stage: manager, client, ...)",
        description="Approve the sign-off a release run is waiting for (whichever approval stage asks now), "
                    "through Airflow's REST API (the same check as Required Actions: only an assigned member of "
                    "that stage's group may answer).",
    )
    common(approve)
    approve.add_argument("--comment", metavar="TEXT",
                         help="what you checked, recorded with the approval (the Required Actions form asks for "
                              "it; here it is optional: without it the approval counts, with no comment)")
    approve.set_defaults(func=cmd_approve)

    reject = sub.add_parser(
        "reject", help="reject a release at its awaiting sign-off, any stage (the release fails)",
        description="Reject the sign-off a release run is waiting for (any stage); the release fails, nothing more "
                    "is deployed, and the reason is recorded in the ledger and the root-cause ticket.",
    )
    common(reject)
    reject.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded in the ledger and ticket)")
    reject.set_defaults(func=cmd_reject)


def cmd_demo_commit(args: argparse.Namespace) -> int:
    from conveyor_lab.demo_commits import push_demo_commit

    try:
        sha = push_demo_commit(red=args.red, message=args.message, author=args.author)
    except ValueError as e:  # a malformed --author
        raise UsageError(str(e)) from None
    except (ConveyorError, RuntimeError) as e:  # git failed (BuildError), or shop/cart.py is not as expected
        raise CommandFailed(str(e)) from None
    print(f"{sha}  pushed to main of the demo repository "
          f"({'red: a unit test fails' if args.red else 'green'}); ci_demo_shop checks it on its next run")
    return EXIT_OK


def add_demo_commands(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the demo service's repository",
                          description="Push commits to the demo repository to watch ci_demo_shop react.")
    cmds = demo.add_subparsers(dest="demo_command", metavar="COMMAND", required=True)
    commit = cmds.add_parser("commit", help="push a red (a unit test fails) or green commit to main")
    kind = commit.add_mutually_exclusive_group(required=True)
    kind.add_argument("--red", action="store_true", help="break a unit test (the cart's bulk discount)")
    kind.add_argument("--green", action="store_true", help="fix the break, or make a harmless change")
    commit.add_argument("--message", "-m", metavar="M", help="the commit message (default: describes the change)")
    commit.add_argument("--author", metavar="NAME", help="'Name' or 'Name <email>' (default: a demo developer)")
    commit.set_defaults(func=cmd_demo_commit)


# ------------------------------------------------------------------------------------- main

#: Every command group; a new group is an ``add_*(subparsers)`` function appended here.
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_fleet_commands, add_ticket_commands, add_soak_commands, add_incident_commands, add_signoff_commands,
    add_demo_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor", description="Conveyor: release orchestration on Apache Airflow.",
        epilog="State lives under $CONVEYOR_HOME (default: <checkout>/.conveyor).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        return args.func(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"conveyor: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConveyorError as e:
        print(f"conveyor: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("conveyor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
