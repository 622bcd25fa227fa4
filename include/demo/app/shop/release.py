"""What this build of the shop is. Each demo version changes this file (see plugins/conveyor_lab/demo.py)."""
from __future__ import annotations

VERSION = "v1.0.0"

# Behaviours the demo versions switch on, each standing for a real-world bug:
RECOMMENDATIONS_FAILURE_RATE = 0.0  # share of /recommendations requests that fail with HTTP 500
EXTRA_LATENCY_S = 0.0               # added to every API request (a slow new dependency)
REQUIRED_SETTINGS = ()              # environment variables the app refuses to start without
CART_DISCOUNT_BUG = False           # the 10% bulk discount is applied twice
SEARCH_CASE_SENSITIVE = True        # a bug production has had since 1.0.0 (search misses "Lamp" for "lamp")
