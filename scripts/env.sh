# Environment of the local platform; sourced by `make run`, `make stop` and `make status`.
# Everything lives inside the checkout: Airflow in .airflow/, Conveyor's state in .conveyor/.
CONVEYOR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONVEYOR_ROOT
export PATH="$CONVEYOR_ROOT/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$CONVEYOR_ROOT/.airflow}"
export CONVEYOR_HOME="${CONVEYOR_HOME:-$CONVEYOR_ROOT/.conveyor}"
export AIRFLOW__CORE__DAGS_FOLDER="$CONVEYOR_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$CONVEYOR_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,dev:user,qa1:user,qa2:user,qa3:user,mgr1:user,client1:user,ops:user"
export AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP='(airflow|conveyor)\..*'
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://localhost:8080}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True
