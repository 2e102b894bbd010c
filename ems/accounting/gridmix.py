"""A grid region's hourly generation mix modelled from seasonal and diurnal shapes.

Where no hourly intensity series is at hand (China publishes annual factors only), the
hourly average and marginal intensity of a region come from a model of its generation mix,
hour by hour, over a local calendar year. Its inputs are data with sources in
``ems/data/gridmix/<region>.yaml`` (annual shares by technology, monthly and diurnal shapes,
the dispatch order) and ``ems/data/gridmix/technologies.yaml`` (direct emission factors).

Model (``docs/grid-intensity.md`` explains it with the sources)
--------------------------------------------------------------
1. **Load** of each hour: monthly shape x diurnal shape of the local hour (x a weekend
   factor on Saturdays and Sundays), normalised to 1 over the year.
2. **Profiled technologies** (nuclear, hydro, wind, imports, biomass, ...): each month gets
   ``share x monthly shape`` of the year's supply, spread over the month's hours by the
   diurnal shape. Solar follows the cosine of the sun's zenith at the region's reference point
   (:func:`ems.sun.sun_shape`, NREL SPA: no output at night, longer and higher days in summer)
   times the month's clearness relative to clear sky (its ``monthly`` row), scaled to its
   annual share.
3. **Residual load** = load - profiled output. Where it falls below ``min_dispatch_fraction``
   of its mean (dispatchable plants at minimum stable output), wind and solar (and hydro
   where the file lists it as ``curtailable``: spilled water) are curtailed to keep it there.
4. **Dispatchable technologies** fill the residual in ``dispatch`` order, base to peak: the
   first takes the bottom slice of every hour up to a level chosen so its annual energy is its
   share, the next the slice above, the last the rest.
5. **Average intensity** of an hour = sum(output x direct factor) / load. **Marginal
   intensity** = the direct factor of the highest dispatchable technology running in that
   hour (the one a change of load moves); 0 in hours at the curtailment floor, where more load
   would take curtailed wind or solar.
6. **Calibration**: all factors are scaled by one number ``k`` so that the load-weighted
   annual mean of the average intensity equals the region's published annual factor exactly
   (:func:`ems.accounting.intensity.calibrate`); ``k`` is reported.

The model gives a plausible shape, not a dispatch simulation: it knows no ramp limits,
outages, storage or prices. Where a measured series exists, load it instead
(:mod:`ems.accounting.intensity_files`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems import __version__, sun
from ems.accounting import intensity as intensity_module
from ems.accounting.intensity import IntensitySeries, calibrate, validate_intensity
from ems.cache import digest, load_arrays, save_arrays
from ems.datafiles import data_path
from ems.errors import ConfigError
from ems.yamldoc import load_document

__all__ = [
    "MixModel", "MixResult", "load_mix", "load_technologies", "mix_regions", "model_mix", "modelled_intensity",
    "regional_intensity", "year_hours",
]

_CURTAILABLE = ("wind", "solar")


def _data_dir() -> Path:
    return data_path("gridmix")


@functools.cache
def load_technologies() -> dict[str, Any]:
    """Return ``ems/data/gridmix/technologies.yaml`` (direct factors, ENTSO-E type map)."""
    return load_document(_data_dir() / "technologies.yaml").data


def mix_regions() -> list[str]:
    """Regions with a built-in mix model."""
    return list(_mix_regions())


@functools.cache
def _mix_regions() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in _data_dir().glob("*.yaml") if p.stem != "technologies"))


@dataclass(frozen=True)
class MixModel:
    """A region's mix model as read from its data file (see the module docs).

    Attributes
    ----------
    region, name, tz : str
        Region code (as in ``SiteInfo.grid_region``), its name, its IANA zone.
    lat, lon : float [deg]
        Reference point of the solar shape.
    shares : dict [-]
        Share of the region's supply by technology (sums to 1).
    factors : dict [kgCO2/kWh]
        Direct factor of each technology (imports: the region file's own value).
    monthly : dict of 12 floats
        Relative monthly output (any scale) of ``load`` and profiled technologies.
    diurnal : dict of 24 floats
        Relative output by local hour of ``load`` and profiled technologies (absent: flat).
    weekend_load_factor : float [-]
    dispatch : tuple of str
        Dispatchable technologies, base to peak.
    min_dispatch_fraction : float [-]
    curtailable : tuple of str
        Profiled technologies curtailed (in proportion) to keep the dispatchable ones at their
        minimum (default wind and solar; add hydro where water is spilled).
    source : str
        The data file.
    sources : dict
        Source of each input, as the file states it.
    """

    region: str
    name: str
    tz: str
    lat: float
    lon: float
    shares: dict[str, float]
    factors: dict[str, float]
    monthly: dict[str, tuple[float, ...]]
    diurnal: dict[str, tuple[float, ...]]
    weekend_load_factor: float
    dispatch: tuple[str, ...]
    min_dispatch_fraction: float
    source: str
    sources: dict[str, str]
    curtailable: tuple[str, ...] = _CURTAILABLE


def load_mix(region_or_path: str) -> MixModel:
    """Load a region's mix model (built in by region code, or a YAML path) and check it.

    Raises
    ------
    ConfigError
        Unknown region, shares not summing to 1, shapes of the wrong length, a dispatchable
        technology without a share, a technology without a factor: file and field named.
    """
    p = Path(region_or_path)
    name = str(p)
    if p.suffix not in (".yaml", ".yml"):
        p = _data_dir() / f"{region_or_path}.yaml"
        name = f"ems/data/gridmix/{region_or_path}.yaml"  # built in: named as in the repository
        if not p.exists():
            raise ConfigError(f"no mix model for region {region_or_path!r}; expected one of {mix_regions()} or a YAML path")
    d = load_document(p).data
    techs = load_technologies()["technologies"]
    shares = {k: float(v["value"] if isinstance(v, dict) else v) for k, v in d["shares"].items()}
    factors = {k: float(techs[k]["kg_per_kwh"]) for k in shares if k in techs}
    if "imports" in shares:
        factors["imports"] = float(d["imports_kg_per_kwh"]["value"])
    model = MixModel(
        region=str(d["region"]), name=str(d.get("name", d["region"])), tz=str(d["tz"]),
        lat=float(d["solar_reference"]["lat"]), lon=float(d["solar_reference"]["lon"]),
        shares=shares, factors=factors,
        monthly={k: tuple(float(x) for x in v) for k, v in d["monthly"].items()},
        diurnal={k: tuple(float(x) for x in v) for k, v in (d.get("diurnal") or {}).items()},
        weekend_load_factor=float(d.get("weekend_load_factor", 1.0)),
        dispatch=tuple(d["dispatch"]), min_dispatch_fraction=float(d.get("min_dispatch_fraction", 0.0)),
        source=name, sources={k: str(v) for k, v in (d.get("sources") or {}).items()},
        curtailable=tuple(d.get("curtailable", _CURTAILABLE)),
    )
    _check(model, p)
    return model


def _check(m: MixModel, p: Path) -> None:
    if abs(sum(m.shares.values()) - 1.0) > 1e-6:
        raise ConfigError(f"{p}: shares: expected a sum of 1; found {sum(m.shares.values()):.6f}")
    if missing := sorted(set(m.shares) - set(m.factors)):
        raise ConfigError(f"{p}: shares: no direct factor for {missing} in technologies.yaml (imports: imports_kg_per_kwh)")
    if bad := [t for t in m.dispatch if t not in m.shares]:
        raise ConfigError(f"{p}: dispatch: expected technologies with a share; found {bad}")
    for key, n, table in (("monthly", 12, m.monthly), ("diurnal", 24, m.diurnal)):
        for name, vals in table.items():
            if len(vals) != n or min(vals) < 0 or sum(vals) <= 0:
                raise ConfigError(f"{p}: {key}.{name}: expected {n} values >= 0, not all 0; found {len(vals)} values")
    if "load" not in m.monthly:
        raise ConfigError(f"{p}: monthly.load: expected 12 values; found none")


@dataclass(frozen=True)
class MixResult:
    """Hourly output of :func:`model_mix` (shares of the year's supply; sum of load = 1).

    Attributes
    ----------
    load : Series
        Load of each hour [-], indexed by hour start (UTC).
    generation : DataFrame
        Output by technology [-] (after curtailment), same index.
    curtailed : Series
        Wind and solar curtailed [-].
    average, marginal : Series [kgCO2/kWh]
        Uncalibrated intensities.
    """

    load: pd.Series
    generation: pd.DataFrame
    curtailed: pd.Series
    average: pd.Series
    marginal: pd.Series

    def shares(self) -> pd.Series:
        """Modelled annual share of each technology (compare with the inputs)."""
        out: pd.Series = self.generation.sum() / self.load.sum()
        return out


def year_hours(year: int, tz: str) -> pd.DatetimeIndex:
    """Hour starts (UTC) of a local calendar year."""
    start = pd.Timestamp(year=year, month=1, day=1).tz_localize(tz)
    end = pd.Timestamp(year=year + 1, month=1, day=1).tz_localize(tz)
    return pd.date_range(start.tz_convert("UTC"), end.tz_convert("UTC"), freq="h", inclusive="left")


def _spread(monthly: tuple[float, ...], within: np.ndarray, month: np.ndarray) -> np.ndarray:
    """Output of each hour: month m gets monthly[m] / sum, spread over its hours by ``within``."""
    mw = np.asarray(monthly) / np.sum(monthly)
    tot = np.bincount(month, weights=within, minlength=12)
    safe = np.where(tot > 0, tot, 1.0)
    out: np.ndarray = within * (mw / safe)[month]
    return out


def _profiles(m: MixModel, hours: pd.DatetimeIndex) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    local = hours.tz_convert(m.tz)
    month = local.month.to_numpy() - 1
    hod = local.hour.to_numpy()
    flat = np.ones(24)

    def diurnal(name: str) -> np.ndarray:
        d: np.ndarray = np.asarray(m.diurnal.get(name, flat))[hod]
        return d

    weekend = np.where(local.day_of_week.to_numpy() >= 5, m.weekend_load_factor, 1.0)
    load = _spread(m.monthly["load"], diurnal("load") * weekend, month)
    out = {}
    for tech, share in m.shares.items():
        if tech in m.dispatch:
            continue
        if tech == "solar":  # the sun's path x the month's clearness relative to clear sky
            w = sun.sun_shape(hours, m.lat, m.lon) * np.asarray(m.monthly.get(tech, flat[:12]))[month]
            out[tech] = share * w / w.sum()
        else:
            out[tech] = share * _spread(m.monthly.get(tech, tuple(flat[:12])), diurnal(tech), month)
    return load / load.sum(), out


def _levels(residual: np.ndarray, energies: list[float]) -> list[float]:
    """Upper level of each dispatch slice (base to peak) so each slice holds its energy."""
    levels, lo = [], 0.0
    for e in energies[:-1]:
        a, b = lo, float(residual.max())
        for _ in range(60):  # bisection on the level: energy in (lo, q] grows with q
            q = 0.5 * (a + b)
            if np.clip(residual - lo, 0.0, q - lo).sum() < e:
                a = q
            else:
                b = q
        levels.append(b)
        lo = b
    return [*levels, float("inf")]


def model_mix(m: MixModel, year: int) -> MixResult:
    """Model the region's hourly mix over a local calendar year (see the module docs)."""
    hours = year_hours(year, m.tz)
    load, prof = _profiles(m, hours)
    residual = load - sum(prof.values())
    floor = m.min_dispatch_fraction * residual.mean()
    short = np.clip(floor - residual, 0.0, None)
    variable = sum((prof[t] for t in m.curtailable if t in prof), np.zeros(len(hours)))
    cut = np.minimum(short, variable)
    for t in m.curtailable:
        if t in prof:
            prof[t] = prof[t] - cut * np.divide(prof[t], variable, out=np.zeros(len(hours)), where=variable > 0)
    residual = residual + cut
    gen = dict(prof)
    levels = _levels(residual, [m.shares[t] for t in m.dispatch])
    lo = 0.0
    marginal = np.zeros(len(hours))
    for tech, hi in zip(m.dispatch, levels, strict=True):
        gen[tech] = np.clip(residual - lo, 0.0, hi - lo)
        marginal = np.where(residual > lo, m.factors[tech], marginal)
        lo = hi
    marginal = np.where(cut > 0, 0.0, marginal)
    frame = pd.DataFrame(gen, index=hours)
    emis = sum(frame[t].to_numpy() * m.factors[t] for t in frame.columns)
    return MixResult(
        load=pd.Series(load, index=hours, name="load"), generation=frame,
        curtailed=pd.Series(cut, index=hours, name="curtailed"),
        average=pd.Series(emis / load, index=hours, name="average"),
        marginal=pd.Series(marginal, index=hours, name="marginal"),
    )


def _raw(m: MixModel, year: int) -> tuple[IntensitySeries, pd.Series]:
    """The uncalibrated hourly intensity of a mix model, and the load weighting its hours."""
    r = model_mix(m, year)
    frame = validate_intensity(pd.DataFrame({
        "region": m.region, "hour": r.load.index, "average_kg_per_kwh": r.average.to_numpy(),
        "marginal_kg_per_kwh": r.marginal.to_numpy(),
    }), m.source)
    shares = ", ".join(f"{t} {v:.1%}" for t, v in r.shares().items())
    raw = IntensitySeries(frame, f"mix model {m.source}", "modelled",
                          "; ".join(f"{k}: {v}" for k, v in m.sources.items()),
                          (f"{m.region} {year}: modelled shares {shares}; curtailed {r.curtailed.sum():.2%} of load",))
    return raw, r.load


@functools.lru_cache(maxsize=32)
def _raw_region(region: str, year: int) -> tuple[IntensitySeries, pd.Series]:
    """:func:`_raw` of a built-in region, kept for the process and in the user's cache (:mod:`ems.cache`),
    keyed by the region's data files and the code that models it (:func:`_cache_key`): a new process
    reads it instead of modelling."""
    src = _data_dir() / f"{region}.yaml"
    key = _cache_key(region, year)
    hit = load_arrays("gridmix", key) if src.exists() else None
    if hit is not None:
        return _from_arrays(*hit)
    raw, load = _raw(load_mix(region), year)
    if src.exists():
        save_arrays("gridmix", key, *_to_arrays(raw, load))
    return raw, load


def _cache_key(region: str, year: int) -> str:
    """Name of a built-in region's model in the user's cache: region, year and a digest of what
    makes it (ems's version, the data files, this module, the calibration, :mod:`ems.sun` and the
    SPA's terms). Any change to them gives a new name, so a stale entry is never read."""
    files = (_data_dir() / f"{region}.yaml", _data_dir() / "technologies.yaml", Path(__file__),
             Path(intensity_module.__file__), Path(sun.__file__), sun.TERMS_FILE)
    return f"{region}-{year}-" + digest(__version__, region, str(year), files=files)


def _to_arrays(raw: IntensitySeries, load: pd.Series) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    f = raw.frame
    arrays = {"hour": pd.DatetimeIndex(f["hour"]).as_unit("ns").asi8, "load": load.to_numpy(dtype=float),
              **{c: f[c].to_numpy(dtype=float) for c in ("average_kg_per_kwh", "marginal_kg_per_kwh", "residual_kg_per_kwh")}}
    meta = {"region": str(f["region"].iloc[0]), "source": raw.source, "method": raw.method,
            "data_source": raw.data_source, "notes": list(raw.notes), "load_unit": str(load.index.unit)}
    return arrays, meta


def _from_arrays(a: dict[str, np.ndarray], meta: dict[str, Any]) -> tuple[IntensitySeries, pd.Series]:
    """The series :func:`_to_arrays` kept: the frame :func:`validate_intensity` made (one region, by hour)."""
    hours = pd.DatetimeIndex(a["hour"].astype("datetime64[ns]"), tz="UTC")
    frame = pd.DataFrame({"region": pd.Series(meta["region"], index=range(len(hours))).astype(str),
                          "hour": pd.Series(hours), **{c: a[c] for c in ("average_kg_per_kwh", "marginal_kg_per_kwh",
                                                                             "residual_kg_per_kwh")}})
    raw = IntensitySeries(frame, meta["source"], meta["method"], meta["data_source"], tuple(meta["notes"]))
    return raw, pd.Series(a["load"], index=pd.DatetimeIndex(hours.as_unit(meta["load_unit"]), freq="h"), name="load")


def modelled_intensity(m: MixModel, year: int, annual_kg_per_kwh: float, annual_source: str) -> IntensitySeries:
    """Hourly average and marginal intensity of a region, calibrated to its published annual factor.

    Parameters
    ----------
    m : MixModel
    year : int
        Local calendar year to model.
    annual_kg_per_kwh : float [kgCO2/kWh]
        The published annual (location-based) factor the load-weighted mean must equal.
    annual_source : str
        Where that factor comes from.

    Returns
    -------
    IntensitySeries
        ``method == "modelled"``; notes give ``k``, the modelled shares and the curtailment.
    """
    raw, load = _raw(m, year)
    return calibrate(raw, m.region, annual_kg_per_kwh, load, annual_source)


@functools.lru_cache(maxsize=64)
def regional_intensity(region: str, year: int, annual_kg_per_kwh: float, annual_source: str) -> IntensitySeries:
    """:func:`modelled_intensity` of a built-in region, kept for the process (the same inputs give
    the same series; do not change its frame). The model of a region and year is made once."""
    raw, load = _raw_region(region, year)
    return calibrate(raw, region, annual_kg_per_kwh, load, annual_source)
