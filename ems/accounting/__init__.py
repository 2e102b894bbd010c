"""Energy and carbon accounting: KPIs from a ReadingSet alone.

Two stages, both pure functions over frames:

1. :func:`ems.accounting.energy.stage1`: readings to per (site, meter, quantity,
   local day, tariff period) sums (pushable into a store as SQL);
2. :func:`ems.accounting.kpis.rollup`: any grouping and period from those sums.

Entry point: :func:`kpis`. Formulas and sources: ``docs/kpis.md``.
"""

from __future__ import annotations

from ems.accounting.factors import FactorSet, load_factor_set
from ems.accounting.kpis import KpiResult, kpis
from ems.accounting.targets import load_targets, progress

__all__ = ["FactorSet", "KpiResult", "kpis", "load_factor_set", "load_targets", "progress"]
