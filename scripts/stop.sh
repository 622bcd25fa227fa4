#!/usr/bin/env bash
# `make stop`: stop Airflow standalone and the local fleet, leaving no process behind.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$CONVEYOR_ROOT"
pidfile="$AIRFLOW_HOME/standalone.pid"
if [[ -f "$pidfile" ]]; then
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "==> Stopping Airflow (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
fi
osv_pidfile="$CONVEYOR_HOME/osv.pid"
if [[ -f "$osv_pidfile" ]]; then
  pid="$(cat "$osv_pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "==> Stopping the lab OSV server (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$osv_pidfile"
fi
if [[ -x .venv/bin/conveyor ]]; then
  echo "==> Stopping the local fleet"
  # Stops every app, then the SSH servers and the traffic generator, and checks nothing is left;
  # the hosts' files stay, so the next `make run` restarts each host on its current version.
  if ! .venv/bin/conveyor fleet down; then
    echo "The local fleet did not stop cleanly; see $CONVEYOR_HOME/fleet/daemon.log" >&2
    exit 1
  fi
fi
