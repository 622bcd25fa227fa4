"""Airflow DAG: feature-flag rollouts of `demo_shop` (its `flags:` in `include/services/demo_shop.yaml`),
triggered by hand with the flag, the steps and whether to test on the replica first (docs/flags.md).
Without declared flags this file defines no DAG."""

from __future__ import annotations

from conveyor.pipeline import flag_dag

dag = flag_dag("demo_shop")
