"""The demo web shop that Conveyor releases: a catalog, a cart and recommendations over HTTP (stdlib only)."""

from __future__ import annotations
