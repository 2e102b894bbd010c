"""The report of a source: KPIs for a grouping and period, the group's progress against its
targets, and the files they are written to. What ``ems report`` prints and writes."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ems.accounting.hourly import SIDE_BY_SIDE, HourlyResult, hourly_of, side_by_side
from ems.accounting.intensity_files import read_intensity
from ems.accounting.kpis import KpiResult, kpis, rollup
from ems.accounting.targets import load_targets, progress
from ems.errors import ConfigError, StoreError
from ems.readings import ReadingSet
from ems.store.base import StoredReadings

__all__ = ["Report", "make_report", "write_report"]


@dataclass
class Report:
    """A report (see module docs).

    Attributes
    ----------
    result : KpiResult
        KPIs by the grouping and period asked for.
    progress : DataFrame
        The group's progress against its targets, from the group's yearly KPIs.
    readings : ReadingSet
        What it was computed from (a store's readings are read only if a chart needs them).
    hourly : HourlyResult, optional
        Hourly matching and hourly Scope 2 (:mod:`ems.accounting.hourly`), if asked for.
    """

    result: KpiResult
    progress: pd.DataFrame
    readings: ReadingSet
    hourly: HourlyResult | None = None

    def side_by_side(self) -> pd.DataFrame:
        """Annual and hourly green share and Scope 2 of electricity, by the report's grouping and
        period (empty without hourly matching)."""
        if self.hourly is None:
            return pd.DataFrame(columns=list(SIDE_BY_SIDE))
        span = self.result.period
        period: str | tuple[str, str] = tuple(span.split("..", 1)) if ".." in span else span  # type: ignore[assignment]
        return side_by_side(self.result.kpis, self.hourly.rollup(self.result.by, period))

    def hourly_frames(self) -> dict[str, pd.DataFrame]:
        """The hourly figures for the machine files: side by side, and where the hourly factors and
        the instruments' hours come from."""
        if self.hourly is None:
            return {}
        return {"hourly": self.side_by_side(), "hourly_intensity": self.hourly.intensity,
                "hourly_instruments": self.hourly.instruments}


def make_report(
    source: str | os.PathLike[str] | ReadingSet,
    *,
    by: str = "site",
    period: str = "month",
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    factors: Mapping[str, Any] | None = None,
    targets: str = "group",
    store: bool = False,
    hourly: bool = True,
    intensity: Sequence[str | os.PathLike[str]] = (),
    **options: Any,
) -> Report:
    """KPIs of a source (:func:`ems.open_readings`: a store, a readings folder, a scenario) and
    the group's progress against ``targets``.

    Parameters
    ----------
    source : str, path or ReadingSet
    by : str
        ``site``, ``company``, ``park`` or ``group``.
    period : str
        ``day``, ``month`` or ``year``; replaced by ``start``..``end`` (inclusive local
        dates) when both are given.
    factors : dict, optional
        Factor overrides (:mod:`ems.accounting.factors`).
    targets : str
        Targets name or YAML path (:func:`ems.accounting.load_targets`).
    store : bool
        ``source`` is a store (``ems report --store``).
    hourly : bool
        Also match supply to use hour by hour, with hourly Scope 2 (``docs/hourly-matching.md``).
    intensity : sequence of paths
        Hourly carbon-intensity files (:func:`ems.accounting.intensity_files.read_intensity`).
    **options
        ``tce_method``, ``onsite_renewables``, ``framework``, ``currency``: as for
        :func:`ems.accounting.kpis`.

    Raises
    ------
    ConfigError
        Only one of ``start`` and ``end``.
    StoreError
        A store without readings.
    """
    if (start is None) != (end is None):
        raise ConfigError(f"--start and --end go together; found start={start!r}, end={end!r}")
    rs = _readings(source, store)
    chosen: str | tuple[Any, Any] = (start, end) if start is not None and end is not None else period
    res = kpis(rs, by=by, period=chosen, factors=factors or None, **options)
    yearly = rollup(res.daily, by="group", period="year", tce_method=options.get("tce_method", "calorific"),
                    onsite_renewables=options.get("onsite_renewables", "excluded"))
    hourly_result = hourly_of(res, rs, [read_intensity(Path(p)) for p in intensity]) if hourly else None
    return Report(result=res, progress=progress(yearly, load_targets(targets)), readings=rs, hourly=hourly_result)


def _readings(source: str | os.PathLike[str] | ReadingSet, store: bool) -> ReadingSet:
    """The readings of a source; a store is opened read-only (a report never creates one)."""
    if isinstance(source, ReadingSet):
        return source
    import ems

    rs = ems.open_readings(source, store=store)
    if isinstance(rs, StoredReadings) and rs.store.count() == 0:
        rs.close()
        raise StoreError(f"store {source} is empty: no readings yet; write some first, e.g. "
                         f"ems run scenarios/demo.yaml --store {source}")
    return rs


def dump_report(rep: Report, fmt: str) -> str:
    """The report's tables as one JSON document, or its KPI table as CSV, for standard output."""
    from ems.accounting.report import dump_tables

    return dump_tables(rep.result, fmt, rep.progress, rep.hourly_frames())


def write_report(rep: Report, out_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write the report's tables (the targets among them) in ``formats``, and ``report.html``; return the paths."""
    from ems.accounting.report import FORMATS, write_html, write_tables

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"--format: expected some of {list(FORMATS)}; found {bad}")
    paths = write_tables(rep.result, out_dir, formats, rep.progress, rep.hourly_frames())
    if "html" in formats:
        paths.append(write_html(rep.result, out_dir / "report.html", rep.readings, rep.progress,
                                hourly=rep.hourly, side=rep.side_by_side()))
    return paths
