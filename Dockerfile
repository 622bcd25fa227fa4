# Conveyor's Airflow image: the official Airflow image plus Conveyor's pinned dependencies, the project
# itself and git. docker-compose.yaml builds it (`build:`) for every Airflow service, so nothing is
# installed when a container starts (no _PIP_ADDITIONAL_REQUIREMENTS).
#
#   docker compose build            # or: docker build -t conveyor-airflow .
#
# The base is the Airflow and Python of requirements.lock and pyproject.toml (a test keeps them equal).
FROM apache/airflow:3.3.2-python3.11

# Builds clone the service's repository (`git`) on the worker; the base image has no git.
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
USER airflow

# Every pinned dependency first (its own layer: it changes less often than the code). apache-airflow is
# named again, as Airflow's image docs advise, so that nothing in the lock can move Airflow itself.
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.lock

# The project, laid out as in the checkout: conveyor.paths finds include/ (service files, the remote
# script, templates) beside plugins/, so both go under /opt/airflow, Airflow's own plugins and dags
# folders. The install is editable on purpose: it puts /opt/airflow/plugins on sys.path, so
# `import conveyor` and the `conveyor` command use the code there, which docker-compose.yaml mounts
# from the checkout. (A regular install would put a second copy in site-packages, whose paths point
# nowhere.) --no-deps: the lock above already holds every dependency.
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 include /opt/airflow/include
COPY --chown=airflow:0 dags /opt/airflow/dags
RUN pip install --no-cache-dir --no-deps -e /opt/airflow
