"""Airflow DAG: the promotion of `demo_shop`'s soaked builds to production, when its service file has a
`soak` section (`include/services/demo_shop.yaml`); without one this file defines no DAG.

`conveyor services add <id>` writes it with the release DAG's file.
"""

from __future__ import annotations

from conveyor.pipeline import promote_dag

dag = promote_dag("demo_shop")
