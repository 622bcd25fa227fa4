"""Airflow DAG: continuous integration of `demo_shop`, built from `include/services/demo_shop.yaml`.

Every new commit of the release branch is built and unit-tested and its CI status recorded in the
release ledger; scheduled releases of `release_demo_shop` take the newest green commit.
"""

from __future__ import annotations

from conveyor.ci_pipeline import ci_dag

dag = ci_dag("demo_shop")
