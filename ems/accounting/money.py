"""Money with currencies: every cost carries its currency; totals never add two currencies.

A site's prices and costs are in its own currency (its tariff's ``currency``, else its
country's, ``ems/data/fx.yaml``). Totals above the site (company, park, group) convert each
day's costs to the reporting currency at the latest rate dated on or before that day
(the earliest rate for days before the first one); the rates are data with their date
and source, and the report names the currency and every rate it used.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.datafiles import data_path
from ems.errors import AccountingError, ConfigError
from ems.readings import SiteInfo
from ems.yamldoc import load_document

__all__ = ["convert", "load_fx", "site_currency"]


@functools.lru_cache(maxsize=4)
def load_fx(path: str | None = None) -> dict[str, Any]:
    """Load exchange rates: ``reporting_currency``, ``country_currency``, ``rates`` (base, quote, date, rate, source)."""
    p = Path(path) if path else data_path("fx.yaml")
    data = load_document(p).data
    if "rates" not in data:
        raise ConfigError(f"{p}: expected a mapping with 'reporting_currency', 'country_currency', 'rates'")
    return data


def site_currency(site: SiteInfo, fx: Mapping[str, Any]) -> str:
    """Currency of a site's prices: its tariff's, else its country's."""
    tariff = site.attrs.get("tariff") or {}
    cur = tariff.get("currency") if isinstance(tariff, Mapping) else None
    if cur:
        return str(cur)
    by_country = fx.get("country_currency") or {}
    if site.country not in by_country:
        raise AccountingError(
            f"site {site.site}: no currency: expected a tariff currency or country {site.country!r} in "
            f"fx.yaml country_currency {sorted(by_country)}"
        )
    return str(by_country[site.country])


def convert(dates: np.ndarray, base: str, quote: str, fx: Mapping[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Rate [quote per base] for each local date, and the rate rows used.

    Parameters
    ----------
    dates : array of datetime64
        Local days.
    base, quote : str
        ISO 4217 codes; equal codes give 1.

    Returns
    -------
    rates : ndarray
    used : list of dict
        The rate rows applied (date, rate, source) with the first and last day each covered.
    """
    if base == quote:
        return np.ones(len(dates)), []
    rows = sorted((r for r in fx.get("rates") or [] if r["base"] == base and r["quote"] == quote),
                  key=lambda r: pd.Timestamp(r["date"]))
    if not rows:
        inv = [r for r in fx.get("rates") or [] if r["base"] == quote and r["quote"] == base]
        if not inv:
            raise AccountingError(f"no exchange rate {base}->{quote} in fx.yaml; add a dated, sourced rate")
        r, used = convert(dates, quote, base, fx)
        return 1.0 / r, used
    at = np.asarray([np.datetime64(pd.Timestamp(r["date"]).date(), "ns") for r in rows])
    idx = np.clip(np.searchsorted(at, np.asarray(dates, dtype="datetime64[ns]"), side="right") - 1, 0, len(rows) - 1)
    days = np.asarray(dates)
    used = []
    for i in np.unique(idx):
        covered = days[idx == i]
        used.append({**rows[int(i)], "pair": f"{base}/{quote}", "first_day": str(pd.Timestamp(covered.min()).date()),
                     "last_day": str(pd.Timestamp(covered.max()).date())})
    return np.asarray([float(r["rate"]) for r in rows])[idx], used
