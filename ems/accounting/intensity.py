"""Hourly grid carbon intensity: the series every hourly figure reads, with its provenance.

A series gives, for each grid region and each hour, the **average** carbon intensity of
the electricity taken from the grid (location-based Scope 2) and, where known, the
**marginal** one (the intensity of the generation that a change of load would move) and
the **residual** one (what is left once tracked instruments are removed; market-based
Scope 2 of unmatched hours). It comes from a file (:mod:`ems.accounting.intensity_files`)
or from a modelled generation mix (:mod:`ems.accounting.gridmix`).

The frame
---------
Columns ``region`` (str), ``hour`` (datetime64[ns, UTC], the **start** of the hour
``[hour, hour + 1 h)``), ``average_kg_per_kwh``, ``marginal_kg_per_kwh`` and
``residual_kg_per_kwh`` (float64 [kgCO2/kWh]; NaN where the source has no value of that
kind). One row per region and hour; hours are whole UTC hours. Files carry gCO2/kWh (the
unit every public export uses); the frame carries kgCO2/kWh, the unit of the factor sets.

Provenance
----------
:class:`IntensitySeries` keeps where the values came from (file, format, the columns
read, the data source the file names), how they were made (measured, derived from a
generation mix, modelled) and what was done to them (hours averaged from a finer
resolution, a calibration factor), so a report can print it beside every figure.

References
----------
GHG Protocol Scope 2 Guidance (2015), ch. 6 (location-based method: grid-average
factors; the most precise in time and place available).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ems.errors import AccountingError

__all__ = [
    "INTENSITY_COLUMNS",
    "IntensitySeries",
    "calibrate",
    "factors_at",
    "validate_intensity",
    "weighted_mean",
]

INTENSITY_COLUMNS = (
    "region",
    "hour",
    "average_kg_per_kwh",
    "marginal_kg_per_kwh",
    "residual_kg_per_kwh",
)
"""Columns of an intensity frame, in order."""

_VALUES = INTENSITY_COLUMNS[2:]


@dataclass(frozen=True)
class IntensitySeries:
    """Hourly carbon intensity of one or more grid regions, with where it came from.

    Attributes
    ----------
    frame : DataFrame
        See the module docs (:data:`INTENSITY_COLUMNS`).
    source : str
        The file read, or the model and its data file.
    method : str
        ``measured`` (a published hourly series), ``derived`` (computed here from a
        published hourly generation mix) or ``modelled`` (a generation mix built from
        seasonal and diurnal shapes, :mod:`ems.accounting.gridmix`).
    data_source : str
        Who made the values (e.g. the ``Data Source`` column of an Electricity Maps
        export, or the statistics a model's shares come from).
    notes : tuple of str
        Everything done to the values on the way (resampling, calibration, gaps).
    """

    frame: pd.DataFrame
    source: str
    method: str
    data_source: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def regions(self) -> list[str]:
        """Regions in the series, sorted."""
        return sorted(self.frame["region"].unique().tolist())

    def region(self, name: str) -> pd.DataFrame:
        """Return one region's values indexed by hour (UTC); do not change it (it is kept).

        Raises
        ------
        AccountingError
            The series has no such region.
        """
        out = self._by_region.get(name)
        if out is None:
            raise AccountingError(
                f"intensity series {self.source!r}: expected region {name!r}; found {self.regions}"
            )
        return out

    @functools.cached_property
    def _by_region(self) -> dict[str, pd.DataFrame]:
        return {str(r): g.set_index("hour")[list(_VALUES)] for r, g in self.frame.groupby("region", sort=True)}

    def with_note(self, note: str) -> IntensitySeries:
        """Return a copy with one more provenance note."""
        return replace(self, notes=(*self.notes, note))

    def summary(self) -> pd.DataFrame:
        """Per region: hours, first and last hour, hours missing in that span, and the mean, minimum
        and maximum of the average intensity and the mean marginal [kgCO2/kWh] (unweighted)."""
        g = self.frame.groupby("region", sort=True)
        first, last = g["hour"].min(), g["hour"].max()
        span = ((last - first) / pd.Timedelta(hours=1)).astype(int) + 1
        out = pd.DataFrame({
            "hours": g.size(), "first_hour": first, "last_hour": last, "missing_hours": span - g.size(),
            "average_mean": g["average_kg_per_kwh"].mean(), "average_min": g["average_kg_per_kwh"].min(),
            "average_max": g["average_kg_per_kwh"].max(), "marginal_mean": g["marginal_kg_per_kwh"].mean(),
        })
        out.index.name = "region"
        return out

    def describe(self) -> str:
        """One line of provenance for reports."""
        tail = f"; {'; '.join(self.notes)}" if self.notes else ""
        by = f" ({self.data_source})" if self.data_source else ""
        return f"{self.method}: {self.source}{by}{tail}"


def validate_intensity(
    frame: pd.DataFrame, where: str, rows: Sequence[int] | np.ndarray | None = None
) -> pd.DataFrame:
    """Check an intensity frame and return it in canonical form.

    Parameters
    ----------
    frame : DataFrame
        Columns ``region``, ``hour`` and ``average_kg_per_kwh`` at least; ``marginal_kg_per_kwh``
        and ``residual_kg_per_kwh`` are added as NaN when absent.
    where : str
        File (or other origin) named in error messages.
    rows : sequence of int, optional
        Line (CSV) or row (Parquet) number of each frame row, for error messages.

    Returns
    -------
    DataFrame
        Sorted by region and hour, columns :data:`INTENSITY_COLUMNS`.

    Raises
    ------
    AccountingError
        Missing columns, naive or unaligned hours, repeated (region, hour), missing or
        negative average values: the message names the file, the line and the field.
    """
    missing = [c for c in INTENSITY_COLUMNS[:3] if c not in frame.columns]
    if missing:
        raise AccountingError(f"{where}: expected columns {list(INTENSITY_COLUMNS[:3])}; missing {missing}")
    f = frame.reset_index(drop=True)
    lines = np.asarray(rows if rows is not None else np.arange(len(f)) + 1)
    hour = f["hour"]
    if not isinstance(hour.dtype, pd.DatetimeTZDtype):
        raise AccountingError(f"{where}: field 'hour': expected tz-aware timestamps (UTC); found {hour.dtype}")
    hour = hour.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    off = hour != hour.dt.floor("h")
    _refuse(off.to_numpy(), lines, where, "hour", "a whole hour (minutes and seconds 0)", hour)
    out = pd.DataFrame({"region": f["region"].astype(str), "hour": hour})
    for col in _VALUES:
        out[col] = pd.to_numeric(f[col], errors="coerce") if col in f else np.nan
        bad = out[col].to_numpy() < 0
        _refuse(bad, lines, where, col, "a value >= 0", out[col])
    _refuse(out["average_kg_per_kwh"].isna().to_numpy(), lines, where, "average_kg_per_kwh",
            "a number", f["average_kg_per_kwh"])
    ns = pd.DatetimeIndex(out["hour"]).as_unit("ns").asi8  # integers: no Timestamp objects
    region_code = pd.factorize(out["region"])[0]
    dup = pd.DataFrame({"r": region_code, "t": ns}).duplicated(keep="first").to_numpy()
    _refuse(dup, lines, where, "hour", "one row per region and hour (repeated)", out["hour"])
    order = np.lexsort((ns, out["region"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _refuse(bad: np.ndarray, lines: np.ndarray, where: str, field_name: str, expected: str, found: pd.Series) -> None:
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
    raise AccountingError(
        f"{where}:{int(lines[i])}: field {field_name!r}: expected {expected}; found {str(found.iloc[i])!r}{more}"
    )


def factors_at(
    series: IntensitySeries,
    region: str,
    hours: pd.DatetimeIndex,
    fallback: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Return the intensity of every given hour.

    Parameters
    ----------
    series : IntensitySeries
    region : str
        Region to read.
    hours : DatetimeIndex
        Hour starts, tz-aware (a start within a UTC hour reads that hour's values).
    fallback : dict, optional
        Values [kgCO2/kWh] by column name (e.g. the annual ``average_kg_per_kwh`` of the factor
        set) for hours the series does not cover. Without it a missing hour is an error.

    Returns
    -------
    DataFrame
        Indexed by ``hours`` (UTC), columns ``average_kg_per_kwh``, ``marginal_kg_per_kwh``,
        ``residual_kg_per_kwh`` [kgCO2/kWh]; attribute ``attrs["filled_hours"]`` counts the hours
        taken from ``fallback``.

    Raises
    ------
    AccountingError
        Hours not covered and no fallback: the message gives their number and the first ones.
    """
    if hours.tz is None:
        raise AccountingError("factors_at: expected tz-aware hours; found naive timestamps")
    want = hours.tz_convert("UTC")
    got = series.region(region).reindex(want.floor("h"))  # a local hour starting at :30 (UTC+5:30) reads its UTC hour
    got.index = want
    holes = got["average_kg_per_kwh"].isna().to_numpy()
    if holes.any() and not fallback:
        first = ", ".join(str(h) for h in want[holes][:3])
        raise AccountingError(
            f"intensity series {series.source!r}, region {region!r}: expected a value for every hour "
            f"{want[0]}..{want[-1]}; {int(holes.sum())} hours missing, first {first}"
        )
    for col, val in (fallback or {}).items():
        got.loc[holes, col] = float(val)
    got.attrs["filled_hours"] = int(holes.sum())
    return got


def weighted_mean(values: np.ndarray | pd.Series, weights: np.ndarray | pd.Series) -> float:
    """Return ``sum(values x weights) / sum(weights)``.

    Parameters
    ----------
    values : array [kgCO2/kWh]
    weights : array [kWh]
        Energy of each hour (the region's load, or a site's import).

    Raises
    ------
    AccountingError
        The weights sum to zero or lengths differ.
    """
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if v.shape != w.shape:
        raise AccountingError(f"weighted_mean: expected values and weights of one length; found {v.shape} and {w.shape}")
    total = float(w.sum())
    if total <= 0:
        raise AccountingError("weighted_mean: expected weights with a positive sum; found 0")
    return float(v @ w) / total


def calibrate(series: IntensitySeries, region: str, annual_kg_per_kwh: float,
              weights: pd.Series, source: str) -> IntensitySeries:
    """Scale a region's hourly values so their weighted mean equals a published annual factor.

    Every value kind (average, marginal, residual) of the region is multiplied by one factor
    ``k = annual / weighted_mean(average, weights)``: the shape over the hours is kept and the
    annual figure is the published one, exactly. ``k`` is recorded in the notes.

    Parameters
    ----------
    series : IntensitySeries
    region : str
    annual_kg_per_kwh : float [kgCO2/kWh]
        The published annual factor.
    weights : Series [kWh]
        Energy per hour (the region's load), indexed by hour (UTC); the hours calibrated.
    source : str
        Where the annual factor comes from (printed in the notes).

    Returns
    -------
    IntensitySeries
    """
    vals = series.region(region).reindex(weights.index.tz_convert("UTC"))
    if vals["average_kg_per_kwh"].isna().any():
        raise AccountingError(
            f"calibrate {region!r}: expected a value for every weighted hour; "
            f"{int(vals['average_kg_per_kwh'].isna().sum())} missing"
        )
    k = annual_kg_per_kwh / weighted_mean(vals["average_kg_per_kwh"].to_numpy(), weights.to_numpy())
    f = series.frame.copy()
    sel = f["region"] == region
    for col in _VALUES:
        f.loc[sel, col] = f.loc[sel, col] * k
    note = f"{region}: scaled by k = {k:.4f} to the annual {annual_kg_per_kwh:g} kgCO2/kWh ({source})"
    return replace(series, frame=f).with_note(note)
