"""Studies for energy managers: calibrate a site to its bills, apply measures,
compare scenarios, sweep parameters, and plan a pathway to the group's targets.

Everything here works from :func:`ems.simulate` and :func:`ems.accounting.kpis`:
a study changes the *inputs* of a scenario (sites, via overrides and measures) and
reads the *outputs* only through the readings' KPIs.
"""

from __future__ import annotations

__all__: list[str] = []
