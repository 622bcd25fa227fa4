#!/usr/bin/env bash
# `make run`: the local fleet (SSH servers + demo shop + traffic) and Airflow standalone on SQLite.
# `make run-celery` (CONVEYOR_EXECUTOR=celery): the same, with Airflow on CeleryExecutor, PostgreSQL and
# Redis as separate processes (scripts/celery.sh) instead of standalone.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$CONVEYOR_ROOT"
# One Airflow per AIRFLOW_HOME: standalone (make run) or the Celery components (make run-celery).
executor="${CONVEYOR_EXECUTOR:-standalone}"
running_celery=()
for f in "$AIRFLOW_HOME"/celery/*.pid; do
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && running_celery+=("$(basename "$f" .pid)")
done
case "$executor" in
  standalone) if (( ${#running_celery[@]} )); then
                echo "Airflow on CeleryExecutor (make run-celery) is running in $AIRFLOW_HOME: 'make stop' first." >&2
                exit 1
              fi ;;
  celery) if [[ -f "$AIRFLOW_HOME/standalone.pid" ]] && kill -0 "$(cat "$AIRFLOW_HOME/standalone.pid")" 2>/dev/null; then
            echo "Airflow standalone (make run) is running in $AIRFLOW_HOME: 'make stop' first." >&2; exit 1
          fi
          if ! [[ "${CONVEYOR_SCHEDULERS:-1}" =~ ^[1-9]$ ]]; then
            echo "CONVEYOR_SCHEDULERS must be a number from 1 to 9, not '${CONVEYOR_SCHEDULERS}'" >&2; exit 2
          fi ;;
  *) echo "CONVEYOR_EXECUTOR must be standalone or celery, not '$executor'" >&2; exit 2 ;;
esac
mkdir -p "$AIRFLOW_HOME" "$CONVEYOR_HOME"

echo "==> Starting the local fleet (2 replica + 6 production + 2 dev (soak) hosts on 127.0.0.x)"
# Also creates the demo repository the demo_shop DAGs build from ($CONVEYOR_HOME/repos/demo_shop.git):
# the lab's job (conveyor_lab), not Conveyor's.
conveyor fleet up
AIRFLOW_CONN_CONVEYOR_FLEET="$(conveyor fleet connection)"
export AIRFLOW_CONN_CONVEYOR_FLEET

# The lab's OSV advisory server: the demo service's audit.osv_url points at it (the public
# api.osv.dev is not reachable from here); it serves include/demo/advisories.json.
osv_pidfile="$CONVEYOR_HOME/osv.pid"
osv_port="${CONVEYOR_OSV_PORT:-8470}"
osv_url="http://127.0.0.1:$osv_port"
if [[ -f "$osv_pidfile" ]] && kill -0 "$(cat "$osv_pidfile")" 2>/dev/null; then
  echo "==> The lab OSV server is already running (pid $(cat "$osv_pidfile"))"
else
  echo "==> Starting the lab OSV server on $osv_url (log: $CONVEYOR_HOME/osv.log)"
  setsid nohup python -m conveyor_lab.osv --advisories include/demo/advisories.json --host 127.0.0.1 \
    --port "$osv_port" >"$CONVEYOR_HOME/osv.log" 2>&1 < /dev/null &
  echo $! >"$osv_pidfile"
  for _ in $(seq 1 50); do
    curl -fsS "$osv_url/v1/vulns/DEMO-2026-0001" >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$osv_pidfile")" 2>/dev/null; then
      echo "The lab OSV server exited (is port $osv_port taken? set CONVEYOR_OSV_PORT):"; cat "$CONVEYOR_HOME/osv.log"; rm -f "$osv_pidfile"; exit 1
    fi
    sleep 0.2
  done
fi

# A Prometheus scraping the fleet's hosts every second, when Debian's prometheus binary is there: the
# judge's source in include/services/examples/demo_shop.yaml (connection prometheus_local). Its config
# is generated from the fleet's inventory; its data lives in $CONVEYOR_HOME/prometheus.
prom_pidfile="$CONVEYOR_HOME/prometheus.pid"
prom_port="${CONVEYOR_PROMETHEUS_PORT:-9090}"
prom_url=""
if command -v prometheus >/dev/null 2>&1; then
  prom_url="http://127.0.0.1:$prom_port"
  AIRFLOW_CONN_PROMETHEUS_LOCAL="{\"conn_type\": \"http\", \"host\": \"127.0.0.1\", \"port\": $prom_port}"
  export AIRFLOW_CONN_PROMETHEUS_LOCAL
  if [[ -f "$prom_pidfile" ]] && kill -0 "$(cat "$prom_pidfile")" 2>/dev/null; then
    echo "==> Prometheus is already running (pid $(cat "$prom_pidfile"))"
  else
    mkdir -p "$CONVEYOR_HOME/prometheus"
    python - "$CONVEYOR_HOME/fleet/inventory.json" "$CONVEYOR_HOME/prometheus/prometheus.yml" <<'PY'
import json, sys, urllib.parse

inventory, out = sys.argv[1], sys.argv[2]
hosts = json.load(open(inventory))["hosts"]
targets = sorted({urllib.parse.urlsplit(h["metrics_url"]).netloc for h in hosts if h.get("metrics_url")})
config = {"global": {"scrape_interval": "1s", "scrape_timeout": "800ms"},
          "scrape_configs": [{"job_name": "conveyor_fleet", "static_configs": [{"targets": targets}]}]}
open(out, "w").write(json.dumps(config, indent=2))  # JSON is YAML
PY
    echo "==> Starting Prometheus on $prom_url (log: $CONVEYOR_HOME/prometheus.log)"
    setsid nohup prometheus --config.file="$CONVEYOR_HOME/prometheus/prometheus.yml" \
      --storage.tsdb.path="$CONVEYOR_HOME/prometheus/data" --web.listen-address="127.0.0.1:$prom_port" \
      >"$CONVEYOR_HOME/prometheus.log" 2>&1 < /dev/null &
    echo $! >"$prom_pidfile"
    for _ in $(seq 1 50); do
      curl -fsS "$prom_url/-/ready" >/dev/null 2>&1 && break
      if ! kill -0 "$(cat "$prom_pidfile")" 2>/dev/null; then
        echo "Prometheus exited (is port $prom_port taken? set CONVEYOR_PROMETHEUS_PORT):"
        tail -n 20 "$CONVEYOR_HOME/prometheus.log"; rm -f "$prom_pidfile"; prom_url=""; break
      fi
      sleep 0.2
    done
  fi
else
  echo "==> No prometheus binary (apt-get install prometheus): the demo is judged from the hosts' pages only"
fi

# The production gate cross-checks every approval (each stage) with Airflow's own Required Actions records
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

if [[ "$executor" == celery ]]; then
  . "$CONVEYOR_ROOT/scripts/celery.sh"
else
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
fi

conveyor fleet status
cat <<MSG

Conveyor is running.
  Airflow UI:  $AIRFLOW__API__BASE_URL   (DAG: release_demo_shop; executor: $executor)
  Users:       admin, dev (triggers releases), qa1, qa2, qa3 (the demo QA group: two must approve),
               mgr1 (the manager's stage: major changes only), client1 (the client's acceptance: every
               release), ops (releases, declares emergencies), conveyor (read-only: the production gate's
               service user)
  Passwords:   $passwords
               $(cat "$passwords" 2>/dev/null || echo "(written by Airflow on first start)")
  Fleet:       conveyor fleet status      Tickets: conveyor tickets list
  Advisories:  $osv_url/v1/query (lab OSV server; include/demo/advisories.json)
  Prometheus:  ${prom_url:-not running (no prometheus binary)} (scrapes the fleet; connection prometheus_local)
  Stop:        make stop
MSG
