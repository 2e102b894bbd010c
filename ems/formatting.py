"""One way to show numbers to a person: console tables, the HTML report, the compare report.

The rule (``docs/glossary.md``, "Numbers in outputs"):

* thousands separators, and a fixed number of decimals per unit (:data:`DECIMALS`):
  ``28,524 kW``, ``533.4 tce``, ``2,027.5 tCO2e``, ``10.3 %``;
* shares in percent (a stored fraction ``0.103`` shows as ``10.3``), intensities in
  kilograms per RMB 10k (a stored ``0.009166 tce/RMB 10k`` shows as ``9.17 kgce``);
* the unit in the column header (``energy [tce]``), never in the cell;
* a missing value shows as ``–``; never ``nan``, ``None``, ``<NA>``, never scientific
  notation, never ``-0.0`` (a value that rounds to zero shows as zero).

Machine outputs (CSV, JSON, Parquet) are not formatted: they keep full-precision numbers
in the stored units of ``docs/kpis.md`` (a share as a fraction, an intensity in t per
RMB 10k) and write a missing value as an empty field (CSV) or null (JSON, Parquet),
never as the text ``nan`` or ``None`` (:func:`machine_frame`).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DECIMALS",
    "MISSING",
    "Display",
    "Table",
    "cell",
    "display_of",
    "header",
    "html_page",
    "labelled",
    "machine_frame",
    "number",
    "plural",
    "table_of",
    "thousands_axis",
    "to_html",
    "to_rich",
    "with_unit",
    "year",
]

MISSING = "–"
"""What a missing value (NaN, None, NA) shows as."""

DECIMALS: dict[str, int] = {
    "kWh": 0, "MWh": 1, "kW": 0, "GJ": 1, "m3": 0, "kg": 0, "tce": 1, "tCO2e": 1, "tCO2e/yr": 1,
    "CNY": 0, "CNY/yr": 0, "RMB": 0, "CNY/tCO2e": 0, "%": 1, "kgce/RMB 10k": 2,
    "kgCO2e/RMB 10k": 2, "kWh/RMB 10k": 1, "GJ/RMB 10k": 3, "m3/RMB 10k": 2, "kg/RMB 10k": 3,
    "kWh/kWp": 0, "kWp": 0, "yr": 1, "h": 1, "cycles": 1, "s": 1, "readings": 0, "readings/s": 0,
    "messages": 0,
}
"""Decimals shown per display unit."""


@dataclass(frozen=True)
class Display:
    """How a stored quantity shows: in ``unit``, after multiplying by ``scale``.

    Attributes
    ----------
    unit : str
        Display unit, a key of :data:`DECIMALS`; goes in the column header.
    scale : float
        Stored value x scale = displayed value (100 for a share shown in %).
    """

    unit: str
    scale: float = 1.0

    @property
    def decimals(self) -> int:
        """Decimals shown for this unit."""
        return DECIMALS.get(self.unit, 2)


_SHARE = Display("%", 100.0)
_EXACT: dict[str, Display] = {
    "green_share": _SHARE, "cfe": _SHARE, "self_consumption": _SHARE, "self_sufficiency": _SHARE,
    "load_factor": _SHARE, "energy_saving_rate": _SHARE, "change_vs_base": _SHARE,
    "battery_efc": Display("cycles"), "hours": Display("h"),
    "tce_per_10k_rmb": Display("kgce/RMB 10k", 1000.0),
    "tce_excl_re_per_10k_rmb": Display("kgce/RMB 10k", 1000.0),
    "scope12_location_intensity_t_per_10k_rmb": Display("kgCO2e/RMB 10k", 1000.0),
    "scope12_market_intensity_t_per_10k_rmb": Display("kgCO2e/RMB 10k", 1000.0),
    "payback_years": Display("yr"), "cost_per_tco2e": Display("CNY/tCO2e"),
    "capex": Display("CNY"), "annual_cost": Display("CNY/yr"), "total_annual_cost": Display("CNY/yr"),
    "opex_per_year": Display("CNY/yr"), "savings_per_year": Display("CNY/yr"),
    "avoided_t_per_year": Display("tCO2e/yr"), "demand_charge": Display("CNY"),
    "export_revenue": Display("CNY"), "pv_kwh_per_kwp": Display("kWh/kWp"),
    "lifetime_years": Display("yr"), "discount_rate": _SHARE, "pv_kwp": Display("kWp"),
}
_SUFFIXES: tuple[tuple[str, Display], ...] = (
    ("_kwh_per_10k_rmb", Display("kWh/RMB 10k")), ("_gj_per_10k_rmb", Display("GJ/RMB 10k")),
    ("_m3_per_10k_rmb", Display("m3/RMB 10k")), ("_kg_per_10k_rmb", Display("kg/RMB 10k")),
    ("_share", _SHARE), ("_tce_equiv", Display("tce")), ("_tce", Display("tce")),
    ("_t", Display("tCO2e")), ("_mwh", Display("MWh")), ("_kwh", Display("kWh")), ("_kw", Display("kW")),
    ("_gj", Display("GJ")), ("_m3", Display("m3")), ("_kg", Display("kg")), ("_rmb", Display("RMB")),
    ("_cost", Display("CNY")), ("_cny", Display("CNY")),
)


def display_of(column: str) -> Display | None:
    """How the stored column ``column`` (a KPI name of ``docs/kpis.md``) shows; None: not a quantity."""
    name = column.removeprefix("p:")
    if name in _EXACT:
        return _EXACT[name]
    if name in ("tce", "total_cost", "cost"):
        return Display("tce") if name == "tce" else Display("CNY")
    for suffix, d in _SUFFIXES:
        if name.endswith(suffix):
            return d
    return None


def _missing(x: Any) -> bool:
    if x is None or x is pd.NA or x is pd.NaT:
        return True
    return isinstance(x, float) and math.isnan(x)


def number(x: Any, decimals: int = 2, *, signed: bool = False) -> str:
    """``x`` with thousands separators and ``decimals`` decimals; :data:`MISSING` if missing.

    A value that rounds to zero shows as zero (never ``-0.0``); infinity as ``∞``.
    ``signed`` puts ``+`` before positive values (for deltas).
    """
    if _missing(x):
        return MISSING
    v = float(x)
    if math.isinf(v):
        return ("+" if signed and v > 0 else "-" if v < 0 else "") + "∞"
    v = round(v, decimals)
    if v == 0:
        v = 0.0  # no "-0.0"
    return f"{v:+,.{decimals}f}" if signed and v != 0 else f"{v:,.{decimals}f}"


def _exact(x: float) -> str:
    """A factor or parameter as given (shortest round-trip form, no exponent)."""
    text = f"{x:,.10f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def cell(x: Any, display: Display | None = None, *, signed: bool = False) -> str:
    """The text of one value in a table for people.

    Parameters
    ----------
    x : any
        Number, string, bool, timestamp, or a missing value.
    display : Display, optional
        The value's unit and scale; without one a number shows as given
        (factors, parameters) and an integer with separators.
    signed : bool
        A delta: ``+`` before positive values.
    """
    if _missing(x):
        return MISSING
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, pd.Timestamp | dt.datetime):
        return x.isoformat(sep=" ", timespec="minutes")
    if isinstance(x, numbers.Integral) and display is None:
        n = int(x)
        return f"{n:+,d}" if signed and n > 0 else f"{n:,d}"
    if isinstance(x, numbers.Real):
        if display is None:
            return _exact(float(x))
        return number(float(x) * display.scale, display.decimals, signed=signed)
    return str(x)


def labelled(x: Any, label: str, *, signed: bool = False) -> str:
    """A value already in the display unit its label names: ``labelled(1.23e5, "grid import [MWh]")``."""
    m = re.search(r"\[([^\]]+)\]\s*$", label)
    return number(x, DECIMALS.get(m.group(1), 2) if m else 2, signed=signed)


def plural(n: int, word: str) -> str:
    """A count with its noun: ``1 event``, ``2 events``, ``61,152 readings``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def year(x: Any) -> str:
    """A calendar year: no thousands separator; :data:`MISSING` if missing (or an empty text)."""
    if _missing(x) or pd.isna(x) or (isinstance(x, str) and not x.strip()):
        return MISSING
    return f"{int(x)}"


def with_unit(column: str, x: Any, *, signed: bool = False) -> str:
    """A value of ``column`` in running text, with its unit: ``30.7 %``, ``97,109,130 CNY/yr``."""
    d = display_of(column)
    text = cell(x, d, signed=signed)
    return f"{text} {d.unit}" if d is not None and text != MISSING else text


def header(column: str, label: str | None = None) -> str:
    """A column header with its display unit: ``energy [tce]``."""
    d = display_of(column)
    text = label or column
    return f"{text} [{d.unit}]" if d is not None and "[" not in text else text


@dataclass
class Table:
    """A table for people: headers, rows of text, and which columns hold numbers.

    Attributes
    ----------
    title : str
    headers : list of str
    rows : list of list of str
    numeric : list of bool
        Per column: right-aligned numbers.
    wrap : set of int
        Columns that may wrap (long text); the others never do.
    notes : list of str
        Lines shown under the table.
    """

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    wrap: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def table_of(
    df: pd.DataFrame,
    title: str = "",
    *,
    columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    signed: Iterable[str] = (),
    wrap: Iterable[str] = (),
) -> Table:
    """Format ``df``'s ``columns`` by the rule: units from the column names, into the headers.

    Parameters
    ----------
    df : DataFrame
        Stored values (fractions, t per RMB 10k, ...).
    columns : list of str, optional
        Columns in order; default all.
    labels : dict, optional
        Column -> label without unit (the unit is added).
    signed : list of str
        Delta columns (``+`` before positive values).
    wrap : list of str
        Text columns that may wrap.
    """
    cols = list(columns if columns is not None else df.columns)
    labels = labels or {}
    signed_set, wrap_set = set(signed), set(wrap)
    displays = [display_of(str(c)) for c in cols]
    years = [_is_year(str(c)) for c in cols]
    rows = [
        [year(v) if y else cell(v, d, signed=c in signed_set)
         for c, v, d, y in zip(cols, row, displays, years, strict=True)]
        for row in df[cols].itertuples(index=False, name=None)
    ]
    numeric = [d is not None or (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))
               for c, d in zip(cols, displays, strict=True)]
    return Table(
        title=title,
        headers=[header(str(c), labels.get(str(c))) for c in cols],
        rows=rows,
        numeric=numeric,
        wrap={i for i, c in enumerate(cols) if c in wrap_set},
    )


_YEAR_COLUMNS = frozenset(
    ("year", "vintage", "year_used", "year_requested", "base_year", "target_year", "period_year", "first_year_met")
)


def _is_year(column: str) -> bool:
    return column in _YEAR_COLUMNS


def to_rich(t: Table) -> Any:
    """The table as a :class:`rich.table.Table` (markup in cells is shown, not interpreted).

    Cells never wrap; the unit of a header goes on a line of its own. Long text columns
    (``t.wrap``) go under the table, one line per row (``first cell: text``; with several,
    ``first cell, header: text``), so that a terminal of any width shows whole sentences
    rather than a word per line.
    """
    from rich.markup import escape
    from rich.table import Table as RichTable

    keep = [i for i in range(len(t.headers)) if i not in t.wrap]
    named = len(t.wrap) > 1
    below = [f"{row[0]}{', ' + t.headers[i] if named else ''}: {row[i]}"
             for row in t.rows for i in sorted(t.wrap) if row[i] not in ("", MISSING)]
    notes = [*below, *t.notes]
    rt = RichTable(title=escape(t.title) if t.title else None, caption="\n".join(map(escape, notes)) or None,
                   caption_justify="left")
    for i in keep:
        num = t.numeric[i] if i < len(t.numeric) else False
        widest = max((len(r[i]) for r in t.rows), default=1)
        rt.add_column(escape(t.headers[i].replace(" [", "\n[", 1)), justify="right" if num else "left",
                      min_width=widest)
    for row in t.rows:
        rt.add_row(*(escape(row[i]) for i in keep))
    return rt


def to_html(t: Table, *, heading: int = 2) -> str:
    """The table as HTML (escaped), numbers right-aligned by the report stylesheet."""
    parts = [f"<h{heading}>{html.escape(t.title)}</h{heading}>"] if t.title else []
    kind = ["num" if t.numeric[i] else "wrap" if i in t.wrap else "text" for i in range(len(t.headers))]
    head = "".join(f"<th class='{kind[i]}'>{html.escape(h)}</th>" for i, h in enumerate(t.headers))
    body = "".join(
        "<tr>" + "".join(f"<td class='{kind[i]}'>{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in t.rows
    )
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in t.notes]
    return "".join(parts)


def thousands_axis(axis: Any) -> None:
    """A matplotlib axis by the same rule: tick labels with separators, no exponent or offset."""
    from matplotlib.ticker import StrMethodFormatter

    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def stylesheet() -> str:
    """The one stylesheet of ems's HTML reports (``ems/report.css``)."""
    return resources.files("ems").joinpath("report.css").read_text(encoding="utf-8")


def html_page(title: str, body: Iterable[str]) -> str:
    """A self-contained HTML page: ``title``, the report stylesheet, and ``body`` (HTML parts)."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{stylesheet()}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</main></body></html>"
    )


_TEXT_MISSING = re.compile(r"^(nan|NaN|None|<NA>|NaT)$")
"""How Python and pandas print a missing value (``str(None)``...); a word such as ``none`` is data."""


def machine_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` for CSV, JSON and Parquet: numbers untouched, missing values as real nulls.

    Object columns holding Python objects become strings, and the texts ``nan``,
    ``None``, ``<NA>``, ``NaT`` (from an earlier ``str()``) become null.
    """
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].map(_machine_value)
    return out


def _machine_value(x: Any) -> Any:
    if _missing(x):
        return None
    if isinstance(x, str):
        return None if _TEXT_MISSING.match(x) else x
    if isinstance(x, bool | int | float):
        return x
    return str(x)
