"""Live monitoring: the built-in dashboard and ``ems live``.

* :mod:`ems.dashboard.views`: pure functions from readings to what a screen shows
  (latest power flows, downsampled series, energy by carrier, events).
* :mod:`ems.dashboard.monitor`: :class:`~ems.dashboard.monitor.Monitor`, which polls
  a store, keeps the latest values and caches the KPIs per site (recomputed only for
  new data).
* :mod:`ems.dashboard.server`: a read-only HTTP server (stdlib) with the static page
  and a JSON API.
* :mod:`ems.dashboard.live`: broker, publisher, ingestor, store and dashboard in one
  process (``ems live``).

``docs/monitoring.md`` describes the dashboard, ``ems live`` and the Grafana stack.
"""

from __future__ import annotations

__all__: list[str] = []
