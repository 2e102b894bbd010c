"""The simulation: SimPy-driven factory parks producing the readings real meters send.

Physics lives in pure functions, one module per idea (:mod:`weather`, :mod:`pv`,
:mod:`storage`, :mod:`loads`, :mod:`thermal`; tariff periods come from
:func:`ems.readings.tou_periods`, as the accounting reads them); :mod:`events` and
:mod:`site` hold the SimPy processes that only orchestrate them; :mod:`meters`
turns the internal flows into readings; :mod:`engine` runs a scenario.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ems.sim.engine import SimulationResult

__all__ = ["SimulationResult", "simulate"]


def __getattr__(name: str) -> Any:
    if name in ("simulate", "SimulationResult"):
        from ems.sim import engine

        return getattr(engine, name)
    raise AttributeError(name)
