#!/usr/bin/env bash
# `make run`: the local fleet (SSH servers + demo shop + traffic) and Airflow standalone on SQLite.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$CONVEYOR_ROOT"
mkdir -p "$AIRFLOW_HOME" "$CONVEYOR_HOME"

echo "==> Starting the local fleet (2 replica + 6 production hosts on 127.0.0.x)"
# Also creates the demo repository the demo_shop DAGs build from ($CONVEYOR_HOME/repos/demo_shop.git):
# the lab's job (conveyor_lab), not Conveyor's.
conveyor fleet up
AIRFLOW_CONN_CONVEYOR_FLEET="$(conveyor fleet connection)"
export AIRFLOW_CONN_CONVEYOR_FLEET

pidfile="$AIRFLOW_HOME/standalone.pid"
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "==> Airflow is already running (pid $(cat "$pidfile"))"
else
  echo "==> Starting Airflow standalone (log: $AIRFLOW_HOME/standalone.log)"
  setsid nohup airflow standalone >"$AIRFLOW_HOME/standalone.log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
fi

echo -n "==> Waiting for http://localhost:$AIRFLOW__API__PORT "
for _ in $(seq 1 180); do
  if curl -fsS "http://localhost:$AIRFLOW__API__PORT/api/v2/monitor/health" >/dev/null 2>&1; then
    echo " up"
    break
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo; echo "Airflow exited; the end of its log:"; tail -n 40 "$AIRFLOW_HOME/standalone.log"; exit 1
  fi
  echo -n "."; sleep 2
done

conveyor fleet status
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG

Conveyor is running.
  Airflow UI:  $AIRFLOW__API__BASE_URL   (DAG: release_demo_shop)
  Users:       admin, dev (triggers releases), qa1, qa2, qa3 (the demo QA group: two must approve), ops
  Passwords:   $passwords
               $(cat "$passwords" 2>/dev/null || echo "(written by Airflow on first start)")
  Fleet:       conveyor fleet status      Tickets: conveyor tickets list
  Stop:        make stop
MSG
