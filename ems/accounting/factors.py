"""Factor sets: conversion coefficients, emission factors, grid factors by place and prices, as data.

A factor set is a YAML file in ``ems/data/factors/`` (or any path). Every value
carries its unit, year, place and source; code never holds a factor literal.
A site names its set in :attr:`ems.readings.SiteInfo.factor_set`; a caller may
override single values. GWPs are in the gas table (:mod:`ems.gases`); the set
only names the IPCC edition.

A set may ``extends`` another: its sections replace the parent's entries key by key
(``si-2024`` keeps ``cn-2023``'s GB/T 2589 coefficients, the group's energy convention, and
replaces the fuel CO2 factors by its country's). Energy coefficients (``coefficients``) and
emission factors (``emission``) are separate keys; neither is derived from the other.

Override keys
-------------
* a coefficient, emission factor or price of the set's home currency (its ``currency``) by name:
  ``{"natural_gas_kgce_per_m3": 1.2143}``; a price in another currency:
  ``{"prices:EUR:natural_gas_per_m3": 0.55}``;
* a grid factor: ``{"grid:average:CN-East:2022": 0.58}`` (place, then year);
* the coal-equivalent electricity coefficient of a year: ``{"coal_equivalent:2024": 0.30}``;
* the GWP edition: ``{"gwp_edition": "AR6"}``.

Grid factor choice (location-based and residual mix)
----------------------------------------------------
A site names its places, most local first: province (ISO 3166-2, e.g. ``CN-SD``),
grid region (e.g. ``CN-North``), country (``CN``). A caller override for one of
those places and exactly the period year wins. Otherwise the first place that has
any factor of the kind wins (**locality beats recency**), and within it the
nearest year (a tie goes to the earlier, published year). The GHG Protocol Scope 2
Guidance (2015, section 6.11) asks for the most precise, most local grid average
available; the choice made for each site (level, place, year, value, source) is
recorded in the factors-used table and printed with every report.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ems.datafiles import data_path
from ems.errors import AccountingError, ConfigError
from ems.readings import SiteInfo
from ems.yamldoc import load_document

__all__ = ["GRID_LEVELS", "FactorSet", "FactorsUsed", "builtin_sets_with", "load_factor_set"]

_SCALAR_SECTIONS = ("coefficients", "emission")
GRID_LEVELS = ("province", "region", "country")
"""Places a grid factor can belong to, most local first."""
_GRID_COLUMNS = ["place", "level", "year", "kind", "value", "unit", "source", "to_confirm"]


@dataclass
class FactorSet:
    """A loaded factor set.

    Attributes
    ----------
    name, version : str
        Identity of the set (reported with every figure).
    data : dict
        The parsed YAML after overrides.
    overrides : dict
        What the caller changed.
    """

    name: str
    version: str
    data: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    _grid: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    _index: dict[tuple[str, str, str], list[dict[str, Any]]] | None = field(default=None, repr=False, compare=False)

    # -- scalars ---------------------------------------------------------------
    def entry(self, key: str) -> dict[str, Any]:
        """Return the entry (value, unit, source) of a coefficient or emission factor."""
        for sec in _SCALAR_SECTIONS:
            sect = self.data.get(sec) or {}
            if key in sect and isinstance(sect[key], dict):
                return {**sect[key], "section": sec}
        known = sorted(k for s in _SCALAR_SECTIONS for k in (self.data.get(s) or {}))
        raise AccountingError(f"factor set {self.name!r}: expected a factor named {key!r}; found {known}")

    def value(self, key: str) -> float:
        """Return a scalar factor's value (see :meth:`entry`)."""
        return float(self.entry(key)["value"])

    # -- prices ------------------------------------------------------------------
    @property
    def home_currency(self) -> str:
        """The set's ``currency``, else its first price table's (plain price overrides apply to it)."""
        return _home_currency(self.data)

    def price_entry(self, key: str, currency: str) -> dict[str, Any]:
        """Return a price (value, unit, source) in ``currency``.

        Raises
        ------
        AccountingError
            The set has no price table in that currency or no such price.
        """
        table = (self.data.get("prices") or {}).get(currency)
        if not isinstance(table, dict):
            raise AccountingError(
                f"factor set {self.name!r}: expected a price table in {currency} (a site's prices are in its "
                f"own currency); found tables in {sorted(self.data.get('prices') or {})}"
            )
        if not isinstance(table.get(key), dict):
            raise AccountingError(f"factor set {self.name!r}: no price {key!r} in {currency}; found {sorted(table)}")
        return {**table[key], "currency": currency}

    # -- grid --------------------------------------------------------------------
    def grid_table(self) -> pd.DataFrame:
        """Return the grid factors as a frame (:data:`_GRID_COLUMNS`)."""
        if self._grid is None:
            df = pd.DataFrame(self.data.get("grid") or [], columns=_GRID_COLUMNS)
            for c, default in (("to_confirm", False), ("unit", "kgCO2/kWh"), ("source", "")):
                df[c] = df[c].astype(object).where(df[c].notna(), default)
            df["to_confirm"] = df["to_confirm"].astype(bool)
            self._grid = df
        return self._grid

    def _grid_index(self) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
        """Grid rows by (kind, place, level class): ``override`` rows apart from published ones."""
        if self._index is None:
            idx: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            for row in self.grid_table().to_dict("records"):
                cls = "override" if row["level"] == "override" else "published"
                idx.setdefault((str(row["kind"]), str(row["place"]), cls), []).append(row)
            self._index = idx
        return self._index

    def grid_factor(self, kind: str, places: Sequence[tuple[str, str]], year: int) -> dict[str, Any]:
        """Choose a grid factor for a site's places and a year (rule in the module docs).

        Parameters
        ----------
        kind : str
            ``average`` (location-based) or ``residual`` (market-based remainder).
        places : sequence of (level, place)
            The site's places, most local first, e.g. ``[("province", "CN-SD"),
            ("region", "CN-North"), ("country", "CN")]``; empty places are skipped.
        year : int
            The period's local calendar year.

        Returns
        -------
        dict
            ``value`` [kgCO2/kWh] (None when no place has a factor of the kind),
            ``level``, ``place``, ``year``, ``unit``, ``source``, ``to_confirm``, ``note``.
        """
        idx = self._grid_index()
        wanted = list(dict.fromkeys(p for _, p in places if p))
        for place in wanted:
            ov = [r for r in idx.get((kind, place, "override"), []) if int(r["year"]) == year]
            if ov:
                return _pick(ov[-1], year, "override", f"caller override for {place} {year}")
        for place in wanted:
            rows = idx.get((kind, place, "published"))
            if not rows:
                continue
            row = min(rows, key=lambda r: abs(int(r["year"]) - year) * 2 + (int(r["year"]) > year))
            y = int(row["year"])
            how = "period year" if y == year else f"nearest year {y} for {year}"
            lvl = str(row["level"])
            return _pick(row, year, lvl, f"{lvl} {place}: {how}; most local first, then nearest year")
        what = {"average": "grid-average", "residual": "residual-mix"}.get(kind, kind)
        return {"value": None, "level": "", "place": "", "year": year, "unit": "kgCO2/kWh", "source": "",
                "to_confirm": False,
                "note": f"no {what} factor for {' or '.join(wanted) or 'the site'} in factor set {self.name!r}"}

    # -- coal equivalent, GWP edition, dual control --------------------------------------
    def coal_equivalent(self, year: int) -> dict[str, Any]:
        """Electricity at coal equivalent (等价值) for a year [kgce/kWh]: that year's entry, else the nearest."""
        rows = self.data.get("electricity_coal_equivalent") or []
        if not rows:
            raise AccountingError(f"factor set {self.name!r}: no 'electricity_coal_equivalent' series (GB/T 2589 等价值)")
        row = min(rows, key=lambda r: (abs(int(r["year"]) - year) * 2 + (int(r["year"]) > year)))
        note = "period year" if int(row["year"]) == year else f"nearest year {row['year']} for {year}"
        return {**row, "note": note}

    @property
    def gwp_edition(self) -> str:
        """IPCC assessment report whose GWPs are used (``AR4``, ``AR5`` or ``AR6``)."""
        return str((self.data.get("gwp") or {}).get("edition", "AR5"))

    @property
    def dual_control_sources(self) -> list[str]:
        """Sources (certificate schemes, contract kinds) excluded from dual-control totals."""
        return list((self.data.get("dual_control") or {}).get("excluded_sources") or [])


_USED_COLUMNS = ["name", "site", "level", "place", "year_requested", "year_used", "value", "unit", "source", "note",
                 "to_confirm", "set", "version"]


class FactorsUsed:
    """Collects the factors used, for the audit table ``factors_used``.

    One row per coefficient, emission factor, price and GWP, and per site and year for
    grid factors (level, place and year chosen, value, source, note).
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _add(self, key: tuple[Any, ...], fs: FactorSet, **row: Any) -> None:
        self.rows[key] = {"site": "*", "level": "", "place": "*", "year_requested": "", "year_used": "", "note": "",
                          "to_confirm": False, "set": fs.name, "version": fs.version, **row}

    def _add_value(self, key: tuple[Any, ...], fs: FactorSet, e: Mapping[str, Any], **row: Any) -> float:
        """One value as its set gives it; an inherited value is listed once, under the set that defines it."""
        owner = str(e.get("_set", fs.name))
        self._add((owner, *key), fs, value=float(e["value"]), unit=str(e.get("unit", "")),
                  source=str(e.get("source", "")).strip(), to_confirm=bool(e.get("to_confirm", False)),
                  set=owner, version=str(e.get("_version", fs.version)), **row)
        return float(e["value"])

    def scalar(self, fs: FactorSet, key: str) -> float:
        return self._add_value((key,), fs, fs.entry(key), name=key)

    def price(self, fs: FactorSet, key: str, currency: str) -> float:
        e = fs.price_entry(key, currency)
        return self._add_value((key, currency), fs, e, name=key, note="assumption" if e.get("assumption") else "")

    def coal_equivalent(self, fs: FactorSet, year: int) -> float:
        e = fs.coal_equivalent(year)
        return self._add_value(("coal_equivalent", year), fs, e, name="electricity_kgce_per_kwh_coal_equivalent",
                               year_requested=str(year), year_used=str(e["year"]), note=str(e["note"]))

    def grid(self, fs: FactorSet, kind: str, si: SiteInfo, year: int, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
        g = fs.grid_factor(kind, si.places(), year)
        if g["value"] is None and fallback is not None:
            g = {**fallback, "note": f"{g['note']}: the location-based factor ({fallback['place']} "
                 f"{fallback['year']}) is used instead, the last step of the GHG Protocol Scope 2 market-based "
                 "hierarchy"}
        self._add((fs.name, "grid", kind, si.site, year), fs, name=f"grid_{kind}_kgco2_per_kwh", site=si.site,
                  level=g["level"], place=g["place"], year_requested=str(year), year_used=str(g["year"]),
                  value=float(g["value"]) if g["value"] is not None else 0.0, unit=g["unit"], source=g["source"],
                  note=g["note"], to_confirm=bool(g["to_confirm"]))
        return g

    def gwp(self, gases: pd.DataFrame, editions: Mapping[str, str]) -> None:
        """One row per gas and IPCC edition used (memo gases without a GWP are not listed)."""
        from ems.gases import load_gases

        t = load_gases()
        for gas, site in gases[["gas", "site"]].drop_duplicates().itertuples(index=False):
            e = editions.get(site, t.default_edition)
            v = t.gwp(gas, e) if t.canonical(gas) else None
            if v is None:
                continue
            self.rows[("gwp", gas, e)] = {"name": f"gwp100 {gas}", "site": "*", "level": "", "place": "*",
                                          "year_requested": "", "year_used": "", "value": float(v), "unit": "kgCO2e/kg",
                                          "source": t.source(e), "note": f"IPCC {e}; basket {t.get(gas).basket}",
                                          "to_confirm": False, "set": "gases.yaml", "version": t.version}

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()), columns=_USED_COLUMNS)


def _pick(row: Mapping[str, Any], year: int, level: str, note: str) -> dict[str, Any]:
    return {"value": float(row["value"]), "level": level, "place": str(row["place"]), "year": int(row["year"]),
            "unit": str(row["unit"]), "source": str(row["source"]), "to_confirm": bool(row["to_confirm"]),
            "note": note}


def _home_currency(data: Mapping[str, Any]) -> str:
    return str(data.get("currency") or next(iter(data.get("prices") or {"CNY": {}})))


def builtin_sets_with(places: Sequence[str], kind: str = "average") -> list[str]:
    """Names of the built-in factor sets with a ``kind`` grid factor for any of ``places``."""
    d = data_path("factors")
    names = sorted(Path(str(x)).stem for x in d.iterdir() if str(x).endswith(".yaml"))
    return [n for n in names if any((kind, p, "published") in load_factor_set(n)._grid_index() for p in places)]


def _builtin(name: str) -> Path | None:
    path = data_path("factors", f"{name}.yaml")
    return path if path.exists() else None


def _sources(data: dict[str, Any]) -> None:
    """Replace ``src`` keys of grid rows by the text of the set's ``sources``."""
    srcs = data.get("sources") or {}
    for row in data.get("grid") or []:
        key = row.pop("src", None)
        if key is not None:
            if key not in srcs:
                raise ConfigError(f"factor set {data.get('name')!r}: grid row cites unknown source {key!r}")
            row["source"] = str(srcs[key]).strip()


def _read(path: Path) -> dict[str, Any]:
    """Parse a factor set (cached by path and modification time; callers get a deep copy)."""
    return copy.deepcopy(_read_cached(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _read_cached(name: str, mtime_ns: int) -> dict[str, Any]:
    path = Path(name)
    data = load_document(path).data
    if "name" not in data:
        raise ConfigError(f"{path}: expected a mapping with 'name', 'coefficients', 'grid'; found {type(data).__name__}")
    base = data.pop("extends", None)
    if base:
        parent = _inherited(_read(_resolve(str(base))))
        for k, v in data.items():
            parent[k] = {**parent[k], **v} if isinstance(v, dict) and isinstance(parent.get(k), dict) else v
        data = parent
    _sources(data)
    out: dict[str, Any] = data
    return out


def _inherited(parent: dict[str, Any]) -> dict[str, Any]:
    """Tag a parent set's values with the set that defines them (``_set``, ``_version``), for the audit table."""
    tag = {"_set": str(parent["name"]), "_version": str(parent.get("version", ""))}
    tables = [parent.get(sec) or {} for sec in _SCALAR_SECTIONS] + list((parent.get("prices") or {}).values())
    entries = [e for t in tables for e in t.values()] + list(parent.get("electricity_coal_equivalent") or [])
    for e in entries:
        if isinstance(e, dict) and "_set" not in e:
            e.update(tag)
    return parent


def _resolve(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    b = _builtin(name)
    if b is None:
        d = data_path("factors")
        known = sorted(Path(str(x)).stem for x in d.iterdir() if str(x).endswith(".yaml"))
        raise ConfigError(f"unknown factor set {name!r}; expected one of {known} or a path to a YAML file")
    return b


def _override_grid(data: dict[str, Any], key: str, val: Any) -> None:
    parts = key.split(":")
    if len(parts) != 4:
        raise ConfigError(f"override {key!r}: expected 'grid:<kind>:<place>:<year>'")
    _, kind, place, year = parts
    data.setdefault("grid", []).append({"place": place, "level": "override", "year": int(year), "kind": kind,
                                        "value": float(val), "unit": "kgCO2/kWh", "source": "caller override"})


def _override_price(data: dict[str, Any], key: str, val: Any) -> bool:
    prices = data.get("prices") or {}
    if key.startswith("prices:"):
        parts = key.split(":")
        if len(parts) != 3 or not isinstance(prices.get(parts[1]), dict):
            raise ConfigError(f"override {key!r}: expected 'prices:<currency>:<name>' with a currency in {sorted(prices)}")
        cur, name = parts[1], parts[2]
    else:
        cur, name = _home_currency(data), key
    entry = (prices.get(cur) or {}).get(name)
    if not isinstance(entry, dict):
        return False
    entry["value"] = float(val)
    entry["source"] = f"caller override (was: {entry.get('source', '')})".strip()
    return True


def _override(data: dict[str, Any], key: str, val: Any) -> None:
    if key == "gwp_edition":
        from ems.gases import load_gases

        if val not in load_gases().editions:
            raise ConfigError(f"override gwp_edition: expected one of {', '.join(load_gases().editions)}; found {val!r}")
        data.setdefault("gwp", {})["edition"] = val
    elif key.startswith("grid:"):
        _override_grid(data, key, val)
    elif key.startswith("coal_equivalent:"):
        year = int(key.split(":", 1)[1])
        rows = [r for r in data.get("electricity_coal_equivalent") or [] if int(r["year"]) != year]
        data["electricity_coal_equivalent"] = [*rows, {"year": year, "value": float(val), "unit": "kgce/kWh",
                                                       "source": "caller override"}]
    else:
        for sec in _SCALAR_SECTIONS:
            entry = (data.get(sec) or {}).get(key)
            if isinstance(entry, dict):
                entry["value"] = float(val)
                entry["source"] = f"caller override (was: {entry.get('source', '')})".strip()
                return
        if not _override_price(data, key, val):
            raise ConfigError(f"override {key!r}: no such factor in set {data.get('name')!r}")


def load_factor_set(name: str = "cn-2023", overrides: dict[str, Any] | None = None) -> FactorSet:
    """Load a factor set by name (built in) or path, applying overrides.

    Parameters
    ----------
    name : str
        Built-in set name (``cn-2023``) or a path to a YAML file.
    overrides : dict, optional
        See the module docs for the key forms.

    Returns
    -------
    FactorSet
    """
    data = _read(_resolve(name))
    ov = dict(overrides or {})
    for key, val in ov.items():
        _override(data, key, val)
    return FactorSet(name=str(data["name"]), version=str(data.get("version", "")), data=data, overrides=ov)
