#!/usr/bin/env bash
# `make stop`: stop Airflow (standalone, or make run-celery's components) and the local fleet, leaving no
# process behind.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$CONVEYOR_ROOT"

descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}

# stop_pidfile WHAT PIDFILE SECONDS: TERM the process group in PIDFILE, wait up to SECONDS, then KILL
# it and every process of its tree (listed before the signal: a task process the Celery worker
# started may have left the group).
stop_pidfile() {
  local what="$1" pidfile="$2" seconds="$3" pid tree
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "==> Stopping $what (process group $pid)"
    tree=("$pid" $(descendants "$pid"))
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 $((seconds * 4))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "${tree[@]}" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_pidfile "Airflow" "$AIRFLOW_HOME/standalone.pid" 30
# make run-celery's components (scripts/celery.sh): the API server first, the worker last.
for name in api-server scheduler-{1..9} dag-processor triggerer worker; do
  stop_pidfile "Airflow's $name" "$AIRFLOW_HOME/celery/$name.pid" 30
done
stop_pidfile "Prometheus" "$CONVEYOR_HOME/prometheus.pid" 10
stop_pidfile "the lab OSV server" "$CONVEYOR_HOME/osv.pid" 5
if [[ -x .venv/bin/conveyor ]]; then
  echo "==> Stopping the local fleet"
  # Stops every app, then the SSH servers and the traffic generator, and checks nothing is left;
  # the hosts' files stay, so the next `make run` restarts each host on its current version.
  if ! .venv/bin/conveyor fleet down; then
    echo "The local fleet did not stop cleanly; see $CONVEYOR_HOME/fleet/daemon.log" >&2
    exit 1
  fi
fi
