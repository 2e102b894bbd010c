"""Factor sets: conversion coefficients, emission factors, GWPs, market rules and prices as data.

A factor set is a YAML file in ``ems/data/factors/`` (or any path). Every value
carries its unit, year, region and source; code never holds a factor literal.
A site names its set in :attr:`ems.readings.SiteInfo.factor_set`; a caller may
override single values.

Override keys
-------------
* a scalar by name: ``{"natural_gas_kgce_per_m3": 1.2143}`` (coefficients,
  emission factors, prices);
* a grid factor: ``{"grid:average:CN-East:2022": 0.58}`` (adds or replaces);
* the GWP edition: ``{"gwp_edition": "AR4"}``;
* a certificate rule: ``{"certificates:GEC:valid_years_after_vintage": 0}``.

Grid factor year selection
--------------------------
For a site in ``region`` (country ``CC``) and a period year ``y``, the
candidates are the region's series and the country's series; in each, the
value for ``y`` or else the latest earlier year. The candidate with the more
recent year wins; a tie goes to the regional value. If no earlier year exists,
the earliest later year is used and flagged. Every choice is recorded in the
factors-used table.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ems.errors import AccountingError, ConfigError

__all__ = ["FactorSet", "load_factor_set"]

_SCALAR_SECTIONS = ("coefficients", "emission")


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

    # -- scalars ---------------------------------------------------------------
    def entry(self, key: str) -> dict[str, Any]:
        """Return the entry (value, unit, source) of a scalar factor or price."""
        for sec in (*_SCALAR_SECTIONS, "prices"):
            sect = self.data.get(sec) or {}
            if key in sect and isinstance(sect[key], dict):
                e = dict(sect[key])
                e.setdefault("section", sec)
                return e
        raise AccountingError(
            f"factor set {self.name!r}: expected a factor named {key!r}; found "
            f"{sorted(k for s in (*_SCALAR_SECTIONS, 'prices') for k in (self.data.get(s) or {}) if k != 'currency')}"
        )

    def value(self, key: str) -> float:
        """Return a scalar factor's value (see :meth:`entry`)."""
        return float(self.entry(key)["value"])

    # -- grid --------------------------------------------------------------------
    def grid_table(self) -> pd.DataFrame:
        """Return the grid factors as a frame (region, year, kind, value, unit, source)."""
        if self._grid is not None:
            return self._grid
        rows = self.data.get("grid") or []
        df = pd.DataFrame(rows, columns=["region", "year", "kind", "value", "unit", "source", "to_confirm"])
        df["to_confirm"] = df["to_confirm"].fillna(False).astype(bool)
        self._grid = df
        return df

    def grid_factor(self, kind: str, region: str, country: str, year: int) -> dict[str, Any]:
        """Pick the grid factor for a site and a year.

        Parameters
        ----------
        kind : str
            ``average`` (location-based) or ``residual`` (market-based remainder).
        region : str
            The site's grid region, e.g. ``CN-East``.
        country : str
            ISO 3166-1 alpha-2 country of the site (fallback series).
        year : int
            The period's local calendar year.

        Returns
        -------
        dict
            ``value`` [kgCO2/kWh], ``region`` and ``year`` used, ``unit``, ``source``,
            ``note`` (how the year was chosen); ``value`` is None when the set has no
            series of that kind for the region or country.
        """
        t = self.grid_table()
        t = t[t["kind"] == kind]
        best: tuple[int, int, dict[str, Any]] | None = None  # (year, regional?, row)
        later: tuple[int, dict[str, Any]] | None = None
        for rank, reg in ((1, region), (0, country)):
            s = t[t["region"] == reg]
            if s.empty:
                continue
            earlier = s[s["year"] <= year]
            if not earlier.empty:
                row = earlier.loc[earlier["year"].idxmax()].to_dict()
                cand = (int(row["year"]), rank, row)
                if best is None or cand[:2] > best[:2]:
                    best = cand
            else:
                row = s.loc[s["year"].idxmin()].to_dict()
                if later is None or int(row["year"]) < later[0]:
                    later = (int(row["year"]), row)
        if best is not None:
            row = best[2]
            note = "period year" if best[0] == year else f"latest earlier year ({best[0]}) for {year}"
        elif later is not None:
            row = later[1]
            note = f"no year <= {year}; earliest later year {later[0]} used"
        else:
            return {"value": None, "region": region, "year": year, "unit": "kgCO2/kWh", "source": "", "note": f"no {kind} factor for {region} or {country}"}
        return {
            "value": float(row["value"]),
            "region": str(row["region"]),
            "year": int(row["year"]),
            "unit": str(row["unit"]),
            "source": str(row["source"]),
            "to_confirm": bool(row["to_confirm"]),
            "note": note,
        }

    # -- GWP, certificates, dual control ----------------------------------------------
    @property
    def gwp_edition(self) -> str:
        """IPCC assessment report whose GWPs are used (``AR4`` or ``AR5``)."""
        return str(self.data.get("gwp", {}).get("edition", "AR5"))

    def gwp(self, gas: str) -> float:
        """Return the GWP [kgCO2e/kg] of a refrigerant in the selected edition."""
        table = self.data.get("gwp", {}).get(self.gwp_edition) or {}
        if gas not in table:
            raise AccountingError(
                f"factor set {self.name!r}: no {self.gwp_edition} GWP for refrigerant {gas!r}; "
                f"expected one of {sorted(table)}"
            )
        return float(table[gas])

    def certificate_rule(self, scheme: str) -> dict[str, Any] | None:
        """Return the market rule of a certificate scheme, or None if the set has none."""
        rules = self.data.get("certificates") or {}
        r = rules.get(scheme)
        return dict(r) if r else None

    @property
    def dual_control_sources(self) -> list[str]:
        """Sources (certificate schemes, contract kinds) excluded from dual-control totals."""
        return list((self.data.get("dual_control") or {}).get("excluded_sources") or [])

    @property
    def currency(self) -> str:
        """Currency of the price table."""
        return str((self.data.get("prices") or {}).get("currency", "CNY"))


def _builtin(name: str) -> Path | None:
    p = resources.files("ems").joinpath("data", "factors", f"{name}.yaml")
    path = Path(str(p))
    return path if path.exists() else None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{path}: expected a mapping with 'name', 'coefficients', 'grid'; found {type(data).__name__}")
    base = data.pop("extends", None)
    if base:
        parent = _read(_resolve(str(base)))
        for k, v in data.items():
            if isinstance(v, dict) and isinstance(parent.get(k), dict):
                parent[k] = {**parent[k], **v}
            else:
                parent[k] = v
        return parent
    return data


def _resolve(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    b = _builtin(name)
    if b is None:
        d = resources.files("ems").joinpath("data", "factors")
        known = sorted(Path(str(x)).stem for x in d.iterdir() if str(x).endswith(".yaml"))
        raise ConfigError(f"unknown factor set {name!r}; expected one of {known} or a path to a YAML file")
    return b


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
    data = copy.deepcopy(_read(_resolve(name)))
    ov = dict(overrides or {})
    for key, val in ov.items():
        if key == "gwp_edition":
            if val not in (data.get("gwp") or {}):
                raise ConfigError(f"override gwp_edition: expected one of AR4, AR5; found {val!r}")
            data["gwp"]["edition"] = val
        elif key.startswith("grid:"):
            parts = key.split(":")
            if len(parts) != 4:
                raise ConfigError(f"override {key!r}: expected 'grid:<kind>:<region>:<year>'")
            _, kind, region, year = parts
            grid = [g for g in data.get("grid", []) if not (g["kind"] == kind and g["region"] == region and int(g["year"]) == int(year))]
            grid.append({"region": region, "year": int(year), "kind": kind, "value": float(val), "unit": "kgCO2/kWh", "source": "caller override"})
            data["grid"] = grid
        elif key.startswith("certificates:"):
            parts = key.split(":")
            if len(parts) != 3:
                raise ConfigError(f"override {key!r}: expected 'certificates:<scheme>:<rule>'")
            data.setdefault("certificates", {}).setdefault(parts[1], {})[parts[2]] = val
        else:
            for sec in (*_SCALAR_SECTIONS, "prices"):
                sect = data.get(sec) or {}
                if key in sect and isinstance(sect[key], dict):
                    sect[key]["value"] = float(val)
                    sect[key]["source"] = f"caller override (was: {sect[key].get('source', '')})".strip()
                    break
            else:
                raise ConfigError(f"override {key!r}: no such factor in set {data.get('name')!r}")
    return FactorSet(name=str(data["name"]), version=str(data.get("version", "")), data=data, overrides=ov)
