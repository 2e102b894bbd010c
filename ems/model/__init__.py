"""Site and scenario files: schemas, loading with located errors, overrides."""

from ems.model.scenario import Period, ResolvedScenario, ScenarioFile
from ems.model.site import Site

__all__ = ["Period", "ResolvedScenario", "ScenarioFile", "Site"]
