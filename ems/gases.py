"""Greenhouse gases: names, baskets and 100-year GWPs as data (``ems/data/gases.yaml``).

One table serves the site schema (``ems validate`` refuses an unknown gas at its line),
the telemetry codec (an event naming an unknown gas is dead-lettered) and the accounting
(kg of a named gas x GWP of the chosen IPCC edition). Gases outside the Kyoto basket
(HCFCs, CFCs under the Montreal Protocol; hydrocarbons and HFOs) are known, so they can
be reported as memo items, but never enter Scope 1.

References
----------
IPCC AR4 WG1 Table 2.14; AR5 WG1 Table 8.A.1; AR6 WG1 Table 7.SM.7.
GHG Protocol Corporate Standard (2004), chapters 4 and 9.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ems.datafiles import data_path
from ems.errors import AccountingError, ConfigError
from ems.yamldoc import load_document

__all__ = ["BASKETS", "Gas", "GasTable", "load_gases", "unknown_gas_message"]

BASKETS = ("kyoto", "montreal", "none")
"""``kyoto``: in Scope 1; ``montreal`` (CFCs, HCFCs) and ``none`` (hydrocarbons, HFOs): memo items."""


@dataclass(frozen=True)
class Gas:
    """One gas or refrigerant blend.

    Attributes
    ----------
    name : str
        Canonical name, e.g. ``HFC-32``, ``R-410A``.
    label : str
        Chemical or common name.
    basket : str
        One of :data:`BASKETS`.
    gwp : mapping
        Edition (``AR4``, ``AR5``, ``AR6``) -> GWP100 [kgCO2e/kg], or None where the edition has none.
    components : mapping
        For a blend: component name -> mass fraction [-]; empty for a pure gas.
    """

    name: str
    label: str
    basket: str
    gwp: Mapping[str, float | None]
    components: Mapping[str, float] = field(default_factory=dict)

    @property
    def in_scope1(self) -> bool:
        """Whether the gas is in the Kyoto basket (counted in Scope 1)."""
        return self.basket == "kyoto"


@dataclass(frozen=True)
class GasTable:
    """The gas table: lookup by name or alias (case-insensitive) and GWP by edition."""

    gases: Mapping[str, Gas]
    aliases: Mapping[str, str]
    editions: Mapping[str, str]
    default_edition: str
    version: str

    def canonical(self, name: str) -> str | None:
        """Return the canonical name of ``name`` (an alias, any case), or None if unknown."""
        return self.aliases.get(str(name).strip().upper())

    def get(self, name: str) -> Gas:
        """Return the gas named ``name``.

        Raises
        ------
        AccountingError
            The name is not in the table (the message lists the closest names).
        """
        key = self.canonical(name)
        if key is None:
            raise AccountingError(unknown_gas_message(name, self))
        return self.gases[key]

    def gwp(self, name: str, edition: str) -> float | None:
        """GWP100 [kgCO2e/kg] of ``name`` in ``edition``; None where the edition has no value."""
        if edition not in self.editions:
            raise AccountingError(f"GWP edition: expected one of {sorted(self.editions)}; found {edition!r}")
        return self.get(name).gwp.get(edition)

    def source(self, edition: str) -> str:
        """Citation of an edition's table."""
        return str(self.editions.get(edition, ""))

    def frame(self) -> pd.DataFrame:
        """The table as a frame: ``gas, label, basket, in_scope1, AR4, AR5, AR6, components``."""
        rows = [
            {"gas": g.name, "label": g.label, "basket": g.basket, "in_scope1": g.in_scope1,
             **{e: g.gwp.get(e) for e in self.editions},
             "components": ", ".join(f"{k} {v:.0%}" for k, v in g.components.items())}
            for g in self.gases.values()
        ]
        return pd.DataFrame(rows)


def unknown_gas_message(name: Any, table: GasTable | None = None) -> str:
    """Message for an unknown gas: what was found and the closest known names."""
    t = table or load_gases()
    names = sorted({*t.gases, *(a for a in t.aliases.values())})
    close = difflib.get_close_matches(str(name).upper(), [n.upper() for n in names], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(n for n in names if n.upper() in close)}?)" if close else ""
    return (
        f"expected a gas of the GWP table ems/data/gases.yaml (e.g. R-410A, HFC-32, HFC-245fa, SF6, "
        f"R-22); found unknown gas {name!r}{hint}"
    )


def _blend(name: str, parts: Mapping[str, float], pure: Mapping[str, Gas], editions: Mapping[str, str]) -> Gas:
    total = sum(float(v) for v in parts.values())
    if abs(total - 1.0) > 1e-6 or any(p not in pure for p in parts):
        raise ConfigError(f"gases.yaml: blend {name}: expected known components summing to 1; found {dict(parts)}")
    gwp: dict[str, float | None] = {}
    for e in editions:
        vals = [pure[p].gwp.get(e) for p in parts]
        known = [v for v in vals if v is not None]
        total_gwp = sum(v * float(f) for v, f in zip(known, parts.values(), strict=True))
        gwp[e] = None if len(known) < len(vals) else float(math.floor(total_gwp + 0.5))
    basket = "kyoto" if all(pure[p].basket == "kyoto" for p in parts) else "montreal"
    label = "blend of " + ", ".join(f"{k} {float(v):.0%}" for k, v in parts.items())
    return Gas(name, label, basket, gwp, {k: float(v) for k, v in parts.items()})


def _table(data: Mapping[str, Any], src: str) -> GasTable:
    editions = {str(k): str(v) for k, v in (data.get("editions") or {}).items()}
    pure: dict[str, Gas] = {}
    aliases: dict[str, str] = {}
    for name, d in (data.get("gases") or {}).items():
        if d.get("basket") not in BASKETS:
            raise ConfigError(f"{src}: gas {name}: expected basket in {list(BASKETS)}; found {d.get('basket')!r}")
        g = d.get("gwp") or {}
        pure[name] = Gas(name, str(d.get("name", name)), str(d["basket"]),
                         {e: (None if g.get(e) is None else float(g[e])) for e in editions})
        for a in (name, *(d.get("aliases") or [])):
            aliases[str(a).upper()] = name
    gases: dict[str, Gas] = dict(pure)
    for name, parts in (data.get("blends") or {}).items():
        gases[name] = _blend(name, parts, pure, editions)
        aliases[name.upper()] = name
    return GasTable(gases=gases, aliases=aliases, editions=editions,
                    default_edition=str(data.get("default_edition", "AR5")), version=str(data.get("version", "")))


@functools.lru_cache(maxsize=4)
def load_gases(path: str | None = None) -> GasTable:
    """Load the gas table (built in, or a YAML file of the same shape).

    Parameters
    ----------
    path : str, optional
        A YAML file; default ``ems/data/gases.yaml``.

    Returns
    -------
    GasTable
    """
    p = Path(path) if path else data_path("gases.yaml")
    return _table(load_document(p).data, str(p))
