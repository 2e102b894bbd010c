"""Schema of a scenario file, and the resolved scenario the simulator runs.

A scenario names its sites, the period, the resolution, a random seed, and
overrides of any site field, so one site file serves many scenarios::

    name: demo-2024
    sites: [../sites/qingdao.yaml, ../sites/shunde.yaml]   # relative to this file
    period: {year: 2024}              # or {start: 2024-03-01, end: 2024-03-08}
    resolution: 15min                 # 1min .. 1h
    seed: 42
    overrides:
      qingdao:
        pv.0.kwp: 20000              # dotted path into the site file
        batteries: [{id: bess2, energy_kwh: 10000, power_kw: 5000}]
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ems.model.site import Site

__all__ = ["Boundary", "Period", "ResolvedScenario", "ScenarioFile", "apply_boundary"]

MIN_RESOLUTION_S = 60
MAX_RESOLUTION_S = 3600


class Period(BaseModel):
    """Simulated period in each site's local calendar: a year, or ``[start, end)`` dates."""

    model_config = ConfigDict(extra="forbid")

    year: int | None = Field(None, ge=2000, le=2100)
    start: dt.date | None = None
    end: dt.date | None = Field(None, description="exclusive")

    @model_validator(mode="after")
    def _one_form(self) -> Period:
        if self.year is not None and (self.start or self.end):
            raise ValueError(
                "expected either 'year' or 'start' and 'end', found both "
                f"(year={self.year}, start={self.start}, end={self.end})"
            )
        if self.year is None:
            if self.start is None or self.end is None:
                given = [k for k in ("start", "end") if getattr(self, k) is not None]
                raise ValueError(
                    "expected 'year', or both 'start' and 'end' (end exclusive), "
                    f"found {' and '.join(given) or 'none of them'}"
                )
            if self.end <= self.start:
                raise ValueError(f"end must be after start; found start={self.start}, end={self.end}")
        return self

    def bounds(self) -> tuple[dt.date, dt.date]:
        """Return local ``[start, end)`` dates."""
        if self.year is not None:
            return dt.date(self.year, 1, 1), dt.date(self.year + 1, 1, 1)
        assert self.start is not None and self.end is not None
        return self.start, self.end


class Boundary(BaseModel):
    """The reporting boundary of group totals (GHG Protocol Corporate Standard, chapter 3).

    A site is inside when the group holds the control the approach asks for (the site's
    ``reporting`` section) and the scenario does not exclude it.
    """

    model_config = ConfigDict(extra="forbid")

    approach: Literal["operational_control", "financial_control", "equity_share"] = "operational_control"
    exclude: list[str] = Field(default_factory=list, description="site ids outside the boundary")
    reason: str = Field("", description="why the boundary is drawn so (printed with the report)")


def apply_boundary(boundary: Boundary | None, sites: list[Site]) -> list[Site]:
    """Set each site's ``reporting.approach``, ``included`` and ``reason`` from the scenario's boundary."""
    b = boundary or Boundary()
    for s in sites:
        r = s.reporting
        held = {"operational_control": r.operational_control, "financial_control": r.financial_control,
                "equity_share": r.equity_pct > 0}[b.approach]
        r.approach = b.approach
        r.included = held and s.id not in b.exclude
        if not held:
            r.reason = f"no {b.approach.replace('_', ' ')} by the group"
        elif s.id in b.exclude:
            r.reason = b.reason or "excluded by the scenario's boundary"
        elif b.reason and not r.reason:
            r.reason = b.reason
    return sites


class ScenarioFile(BaseModel):
    """What a scenario file holds."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    sites: list[str] = Field(min_length=1, description="site files, relative to the scenario file")
    period: Period
    resolution: str = Field("15min", description="pandas offset alias, 1min .. 1h, dividing an hour")
    seed: int = 0
    factor_set: str | None = Field(None, description="override every site's factor set")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="site id -> {dotted.path: value}"
    )
    measures: list[dict[str, Any]] = Field(default_factory=list, description="measure overlays (studies)")
    boundary: Boundary | None = Field(None, description="reporting boundary of group totals; default operational control, all sites")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: str) -> str:
        try:
            td = pd.Timedelta(pd.tseries.frequencies.to_offset(v))
        except (ValueError, TypeError):
            raise ValueError(f"expected a resolution such as '15min' or '1h', found {v!r}") from None
        s = int(td.total_seconds())
        if not MIN_RESOLUTION_S <= s <= MAX_RESOLUTION_S or 3600 % s:
            raise ValueError(
                f"expected a resolution from 1min to 1h that divides an hour, found {v!r} ({s} s)"
            )
        return v


@dataclass
class ResolvedScenario:
    """A scenario with its sites loaded and overrides applied: what the simulator runs.

    Attributes
    ----------
    name : str
    sites : list of Site
    start, end : date
        Local calendar dates ``[start, end)``, applied in each site's zone.
    resolution_s : int [s]
    seed : int
    source : str or None
        Path of the scenario file, if any.
    """

    name: str
    sites: list[Site]
    start: dt.date
    end: dt.date
    resolution_s: int
    seed: int = 0
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> pd.Timedelta:
        """Step length."""
        return pd.Timedelta(seconds=self.resolution_s)
