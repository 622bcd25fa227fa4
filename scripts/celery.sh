# Airflow on CeleryExecutor, for `make run-celery`: sourced by scripts/run.sh (CONVEYOR_EXECUTOR=celery)
# once the fleet, the lab servers and the users' connection are set up, in place of `airflow standalone`.
#
# The metadata database is its own PostgreSQL database (created if missing), the Celery broker a Redis
# database number, Celery's results go to the metadata database, and the release ledger to a second
# PostgreSQL database (unless AIRFLOW_CONN_CONVEYOR_LEDGER is set already). The api-server, the
# scheduler(s), the dag-processor, the triggerer and one Celery worker run as separate processes, each
# in its own process group with a pid file in $AIRFLOW_HOME/celery/ (scripts/stop.sh stops them).
# Starting again starts only the components that are not running (a killed worker comes back).
#
# Settings (environment; the defaults suit one developer machine):
#   CONVEYOR_PG_URL         PostgreSQL server              postgresql://postgres@127.0.0.1:5432
#   CONVEYOR_CELERY_DB      Airflow's metadata database    conveyor_airflow
#   CONVEYOR_LEDGER_DB      the release ledger's database  conveyor_ledger
#   CONVEYOR_REDIS_URL      the Celery broker              redis://127.0.0.1:6379/5
#   CONVEYOR_SCHEDULERS     how many schedulers (HA)       1
#   CONVEYOR_WORKER_CONCURRENCY  task slots of the worker  8
# and Airflow's own variables, e.g. AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT (8795 here, off Airflow's
# default 8793 that a LocalExecutor scheduler takes), AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT (8796),
# AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT (8975; scheduler N listens on that + N - 1).

celery_dir="$AIRFLOW_HOME/celery"
mkdir -p "$celery_dir"
pg_url="${CONVEYOR_PG_URL:-postgresql://postgres@127.0.0.1:5432}"
pg_url="${pg_url%/}"
metadata_db="${CONVEYOR_CELERY_DB:-conveyor_airflow}"
ledger_db="${CONVEYOR_LEDGER_DB:-conveyor_ledger}"
redis_url="${CONVEYOR_REDIS_URL:-redis://127.0.0.1:6379/5}"
schedulers="${CONVEYOR_SCHEDULERS:-1}"  # checked by run.sh before anything started

# Both databases exist, Redis answers: checked (and the databases created) before anything starts, with
# bounded waits, so a missing service is one clear message instead of five crashing components.
echo "==> Checking PostgreSQL ($pg_url: databases $metadata_db, $ledger_db) and Redis ($redis_url)"
python - "$pg_url" "$redis_url" "$metadata_db" "$ledger_db" <<'PY'
import re, sys

import psycopg2
import redis
from psycopg2 import sql

pg_url, redis_url, *databases = sys.argv[1:]
for name in databases:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        sys.exit(f"database name {name!r}: lower-case letters, digits and _ only")
try:
    conn = psycopg2.connect(f"{pg_url}/postgres", connect_timeout=5)
except psycopg2.Error as exc:
    sys.exit(f"PostgreSQL at {pg_url} does not answer: {exc}".strip())
conn.autocommit = True
with conn.cursor() as cur:
    for name in databases:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"    created database {name}")
conn.close()
try:
    redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5).ping()
except redis.RedisError as exc:
    sys.exit(f"Redis at {redis_url} does not answer: {exc}")
PY

# Secrets every component must share (the API's JWTs, the Fernet key of stored connections): made once,
# kept in $AIRFLOW_HOME/celery/secrets.env (mode 0600), so a restarted component still reads the others.
secrets_file="$celery_dir/secrets.env"
if [[ ! -s "$secrets_file" ]]; then
  python - "$secrets_file" <<'PY'
import base64, os, secrets, sys

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write(f"AIRFLOW__API_AUTH__JWT_SECRET={secrets.token_hex(32)}\n"
            f"AIRFLOW__API__SECRET_KEY={secrets.token_hex(16)}\n"
            f"AIRFLOW__CORE__FERNET_KEY={base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}\n")
PY
fi
set -a; . "$secrets_file"; set +a

pg_hostpart="${pg_url#postgresql://}"
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://$pg_hostpart/$metadata_db"
export AIRFLOW__CELERY__BROKER_URL="$redis_url"
export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://$pg_hostpart/$metadata_db"
export AIRFLOW__CELERY__WORKER_CONCURRENCY="${CONVEYOR_WORKER_CONCURRENCY:-${AIRFLOW__CELERY__WORKER_CONCURRENCY:-8}}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$AIRFLOW__API__PORT/execution/}"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT:-8795}"
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT:-8796}"
health_port="${AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT:-8975}"
if [[ -z "${AIRFLOW_CONN_CONVEYOR_LEDGER:-}" ]]; then
  AIRFLOW_CONN_CONVEYOR_LEDGER="$(python - "$pg_url" "$ledger_db" <<'PY'
import json, sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
print(json.dumps({"conn_type": "postgres", "host": url.hostname, "port": url.port or 5432,
                  "login": url.username or "", "password": url.password or "", "schema": sys.argv[2]}))
PY
)"
  export AIRFLOW_CONN_CONVEYOR_LEDGER
fi

echo "==> Migrating Airflow's metadata database (log: $celery_dir/db-migrate.log)"
if ! timeout 600 airflow db migrate >"$celery_dir/db-migrate.log" 2>&1; then
  echo "airflow db migrate failed:"; tail -n 30 "$celery_dir/db-migrate.log"; exit 1
fi

# start_component NAME COMMAND...: in its own process group, unless its pid file names a live process.
start_component() {
  local name="$1"; shift
  local pidfile="$celery_dir/$name.pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "    $name is already running (pid $(cat "$pidfile"))"
    return
  fi
  [[ -f "$celery_dir/$name.log" ]] && mv -f "$celery_dir/$name.log" "$celery_dir/$name.log.1"  # the last run's
  setsid nohup "$@" >"$celery_dir/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  echo "    $name: pid $! (log: $celery_dir/$name.log)"
}

# fail_if_exited: one line naming a component that died, and the end of its log.
fail_if_exited() {
  local pidfile name
  for pidfile in "$celery_dir"/*.pid; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      name="$(basename "$pidfile" .pid)"
      echo; echo "Airflow's $name exited; the end of its log:"; tail -n 40 "$celery_dir/$name.log"; exit 1
    fi
  done
}

# The API server first: the workers' task processes report to its execution API from their first second.
echo "==> Starting Airflow on CeleryExecutor: api-server, dag-processor, $schedulers scheduler(s), triggerer, worker"
start_component api-server airflow api-server
start_component dag-processor airflow dag-processor
echo -n "==> Waiting for the API server "
deadline=$((SECONDS + 600))
until curl -fsS --max-time 5 "http://127.0.0.1:$AIRFLOW__API__PORT/api/v2/monitor/health" >/dev/null 2>&1; do
  fail_if_exited
  if (( SECONDS > deadline )); then
    echo; echo "The API server did not answer in 600 s; see $celery_dir/api-server.log"; exit 1
  fi
  echo -n "."; sleep 2
done
echo " up"
for i in $(seq 1 "$schedulers"); do
  start_component "scheduler-$i" env AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=$((health_port + i - 1)) \
    airflow scheduler
done
start_component triggerer airflow triggerer
start_component worker airflow celery worker

echo -n "==> Waiting for the scheduler(s), the dag-processor, the triggerer and the worker "
up=""
deadline=$((SECONDS + 600))  # a busy 2-core machine needs minutes; an idle one about 45 s
while (( SECONDS < deadline )); do
  fail_if_exited
  health="$(curl -fsS --max-time 5 "http://127.0.0.1:$AIRFLOW__API__PORT/api/v2/monitor/health" 2>/dev/null || true)"
  if [[ -n "$health" ]] && python - "$health" "$celery_dir/worker.log" <<'PY'
import json, re, sys

health = json.loads(sys.argv[1])
components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
ok = all((health.get(c) or {}).get("status") == "healthy" for c in components)
with open(sys.argv[2], errors="replace") as f:  # Celery prints "celery@<host> ready." once it consumes
    worker_ready = any(re.search(r"celery@\S+ ready\.", line) for line in f)
sys.exit(0 if ok and worker_ready else 1)
PY
  then
    echo " up"; up=1; break
  fi
  echo -n "."; sleep 2
done
if [[ -z "$up" ]]; then
  echo; echo "Airflow did not become healthy in 600 s; see the logs in $celery_dir"; exit 1
fi
