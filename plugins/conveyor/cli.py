"""The ``conveyor`` command: the local fleet and root-cause tickets.

::

    conveyor fleet up [--no-seed] [--seed-version V] [--no-wait]
    conveyor fleet down [--purge]
    conveyor fleet status [--json]
    conveyor fleet connection          # the Airflow connection (JSON) for AIRFLOW_CONN_CONVEYOR_FLEET
    conveyor tickets list [--json] [--service S]
    conveyor tickets show ID [--json]

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
    from conveyor.fleet import Fleet

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
    print(f"Local fleet: daemon pid {daemon}, {fleet.home}")
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


def cmd_tickets_list(args: argparse.Namespace) -> int:
    tickets = _tickets().list()
    if args.service:
        tickets = [t for t in tickets if t.get("service") == args.service]
    if args.json:
        _print_json(tickets)
        return EXIT_OK
    if not tickets:
        print("No tickets" + (f" for {args.service}." if args.service else "."))
        return EXIT_OK
    print(_table(
        [[t.get("ticket_id", "?"), str(t.get("created_at") or "")[:19], t.get("service") or "-",
          t.get("version") or "-", t.get("failed_stage") or "-", t.get("rollback_status") or "-"] for t in tickets],
        ["ID", "CREATED", "SERVICE", "VERSION", "FAILED AT", "ROLLBACK"],
    ))
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
    print(f"\n(ticket file: {ticket.get('path') or backend.directory / (args.ticket_id + '.md')})")
    return EXIT_OK


def add_ticket_commands(sub: argparse._SubParsersAction) -> None:
    tickets = sub.add_parser("tickets", help="root-cause tickets filed by failed releases",
                             description="Root-cause tickets of the local backend ($CONVEYOR_HOME/tickets).")
    cmds = tickets.add_subparsers(dest="tickets_command", metavar="COMMAND", required=True)

    ls = cmds.add_parser("list", help="tickets, newest first")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--service", metavar="S", help="only tickets of service S")
    ls.set_defaults(func=cmd_tickets_list)

    show = cmds.add_parser("show", help="one ticket's full text")
    show.add_argument("ticket_id", metavar="ID", help="a ticket id, e.g. RCA-3F2A9C01B7")
    show.add_argument("--json", action="store_true", help="the ticket's fields and body as JSON")
    show.set_defaults(func=cmd_tickets_show)


# ------------------------------------------------------------------------------------- main

#: Every command group; a new group is an ``add_*(subparsers)`` function appended here.
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [add_fleet_commands, add_ticket_commands]


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
