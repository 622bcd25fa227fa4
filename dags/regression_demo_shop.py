"""Airflow DAG: the monthly rotating regression calendar of `demo_shop`, when its service file has a
`regression` section (`include/services/demo_shop.yaml`); without one this file defines no DAG.

Each month it runs that month's areas against a replica of production's version, records each area's
result in the release ledger and files a ticket per failing area (docs/regression.md).
"""

from __future__ import annotations

from conveyor.pipeline import regression_dag

dag = regression_dag("demo_shop")
