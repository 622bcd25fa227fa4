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

# The lab's OSV advisory server: the demo service's audit.osv_url points at it (the public
# api.osv.dev is not reachable from here); it serves include/demo/advisories.json.
osv_pidfile="$CONVEYOR_HOME/osv.pid"
osv_url="http://127.0.0.1:8470"
if [[ -f "$osv_pidfile" ]] && kill -0 "$(cat "$osv_pidfile")" 2>/dev/null; then
  echo "==> The lab OSV server is already running (pid $(cat "$osv_pidfile"))"
else
  echo "==> Starting the lab OSV server on $osv_url (log: $CONVEYOR_HOME/osv.log)"
  setsid nohup python -m conveyor_lab.osv --advisories include/demo/advisories.json --host 127.0.0.1 \
    --port 8470 >"$CONVEYOR_HOME/osv.log" 2>&1 < /dev/null &
  echo $! >"$osv_pidfile"
  for _ in $(seq 1 50); do
    curl -fsS "$osv_url/v1/vulns/DEMO-2026-0001" >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$osv_pidfile")" 2>/dev/null; then
      echo "The lab OSV server exited (is port 8470 taken?):"; cat "$CONVEYOR_HOME/osv.log"; rm -f "$osv_pidfile"; exit 1
    fi
    sleep 0.2
  done
fi

# The production gate cross-checks every QA approval with Airflow's own Required Actions records
# through the REST API, as the read-only service user `conveyor` (role viewer), over the connection
# conveyor_airflow_api. Its password is seeded into Airflow's generated password file before Airflow
# starts (Airflow keeps an entry it finds there), so the connection can carry it from the start.
case ",$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS," in
  *,conveyor:*) ;;
  *) export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS,conveyor:viewer" ;;
esac
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
AIRFLOW_CONN_CONVEYOR_AIRFLOW_API="$(python - "$passwords" "$AIRFLOW__API__BASE_URL" <<'PY'
import json, os, secrets, sys

path, base_url = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        passwords = json.load(f)
except FileNotFoundError:
    passwords = {}
if not passwords.get("conveyor"):
    passwords["conveyor"] = secrets.token_urlsafe(12)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(passwords, f)
    os.replace(path + ".tmp", path)
print(json.dumps({"conn_type": "http", "host": base_url, "login": "conveyor", "password": passwords["conveyor"]}))
PY
)"
export AIRFLOW_CONN_CONVEYOR_AIRFLOW_API

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
cat <<MSG

Conveyor is running.
  Airflow UI:  $AIRFLOW__API__BASE_URL   (DAG: release_demo_shop)
  Users:       admin, dev (triggers releases), qa1, qa2, qa3 (the demo QA group: two must approve), ops
               (releases, declares emergencies), conveyor (read-only: the production gate's service user)
  Passwords:   $passwords
               $(cat "$passwords" 2>/dev/null || echo "(written by Airflow on first start)")
  Fleet:       conveyor fleet status      Tickets: conveyor tickets list
  Advisories:  $osv_url/v1/query (lab OSV server; include/demo/advisories.json)
  Stop:        make stop
MSG
