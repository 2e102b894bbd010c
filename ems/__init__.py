"""ems: an energy and carbon monitoring simulator for manufacturing groups.

Quick start::

    import ems
    scenario = ems.load_scenario("scenarios/demo.yaml")
    result = ems.simulate(scenario)
    result.readings        # tidy frame: ts (UTC) x site, meter, quantity, value
    result.wide("qingdao") # one site, one column per meter.quantity
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ems.model.scenario import ResolvedScenario
    from ems.sim.engine import SimulationResult

__all__ = ["__version__", "load_scenario", "simulate"]


def load_scenario(path: str, *, measures: bool = True, **kwargs: Any) -> ResolvedScenario:
    """Load a scenario file with its sites, overrides and measures.

    Parameters
    ----------
    path : str
        Scenario file.
    measures : bool
        Apply the file's ``measures:`` overlays (:func:`ems.studies.measures.apply_measures`),
        so every command (run, stream, live, report) sees the same changed sites.
    **kwargs
        Passed to :func:`ems.model.loader.load_scenario` (e.g. ``overrides``).
    """
    from ems.model.loader import load_scenario as _load

    scenario: ResolvedScenario = _load(path, **kwargs)
    if measures and scenario.extra.get("measures"):
        from ems.errors import ConfigError
        from ems.model.loader import located_measure_error
        from ems.studies.measures import apply_measures

        try:
            scenario, _ = apply_measures(scenario)
        except ConfigError as exc:  # with the file and line of the measure
            raise located_measure_error(exc, path) from None
    return scenario


def simulate(scenario: ResolvedScenario, **kwargs: Any) -> SimulationResult:
    """Simulate a scenario; see :func:`ems.sim.engine.simulate`."""
    from ems.sim.engine import simulate as _simulate

    return _simulate(scenario, **kwargs)
