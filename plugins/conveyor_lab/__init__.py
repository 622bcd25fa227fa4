"""Conveyor's lab: the local fleet and the demo repository that ``make run`` and the tests use.

- :mod:`conveyor_lab.fleet`: simulated replica and production hosts, each a real SSH server on
  loopback running the demo shop, with steady traffic (``conveyor fleet ...``).
- :mod:`conveyor_lab.demo`: the demo service's git repository (``repo.url: local:demo_shop``, made
  from ``include/demo``) and its traffic mix.
- :mod:`conveyor_lab.demo_commits`: red or green commits pushed to the demo repository
  (``conveyor demo commit ...``).
- :mod:`conveyor_lab.osv`: a small OSV-compatible advisory server (the demo's advisories) for the
  dependency audit, since the public OSV host is not reachable from the lab.

The lab imports :mod:`conveyor` (the release tool); the release tool never imports the lab, except
``conveyor.cli``, which imports it lazily inside the ``fleet`` and ``demo`` commands. Airflow does not
load it as a plugin (``plugins/.airflowignore``).
"""

from __future__ import annotations
