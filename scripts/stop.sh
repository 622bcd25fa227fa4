#!/usr/bin/env bash
# `make stop`: stop Airflow (standalone, or make run-celery's components) and the local fleet, leaving no
# process behind.
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
# make run-celery's components (scripts/celery.sh): the API server first, the worker last. Each one's
# process tree is listed before the signal (a task process the worker started may have left its group).
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
for name in api-server scheduler-{1..9} dag-processor triggerer worker; do
  pidfile="$AIRFLOW_HOME/celery/$name.pid"
  [[ -f "$pidfile" ]] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "==> Stopping Airflow's $name (process group $pid)"
    tree=("$pid" $(descendants "$pid"))
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "${tree[@]}" 2>/dev/null || true
  fi
  rm -f "$pidfile"
done
prom_pidfile="$CONVEYOR_HOME/prometheus.pid"
if [[ -f "$prom_pidfile" ]]; then
  pid="$(cat "$prom_pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "==> Stopping Prometheus (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$prom_pidfile"
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
