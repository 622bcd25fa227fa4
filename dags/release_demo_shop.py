"""Airflow DAG: the release pipeline of `demo_shop`, built from `include/services/demo_shop.yaml`.

Each service has a three-line file like this one, so that a malformed service file is an import
error of its own DAG file (naming the YAML file and the field) and never hides another service's
DAG. A new service copies this file as `dags/release_<id>.py` (README, "Configuring a service").
"""

from __future__ import annotations

from conveyor.pipeline import release_dag

dag = release_dag("demo_shop")
