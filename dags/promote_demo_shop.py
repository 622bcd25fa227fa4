"""Airflow DAG: the promotion of `demo_shop`'s soaked builds to production, when its service file has a
`soak` section (`include/services/demo_shop.yaml`); without one this file defines no DAG.

A service with a soak copies this file as `dags/promote_<id>.py` beside its release DAG's.
"""

from __future__ import annotations

from conveyor.pipeline import promote_dag

dag = promote_dag("demo_shop")
