"""Hourly grid carbon intensity from files: the ems layout and the common public exports.

:func:`read_intensity` reads a CSV or Parquet file into an
:class:`~ems.accounting.intensity.IntensitySeries`; the layout is detected from the header
(or named with ``layout=``). Layouts (``docs/grid-intensity.md`` has the column tables):

``ems``
    ``region, hour_utc, average_g_per_kwh[, marginal_g_per_kwh][, residual_g_per_kwh]``;
    ``hour_utc`` is the start of the hour, ISO 8601 with its offset (``2024-01-01T00:00Z``).
``electricitymaps``
    Electricity Maps' data-portal export (hourly, or finer and averaged to hours):
    ``Datetime (UTC), Country, Zone Name, Zone Id, Carbon Intensity gCO₂eq/kWh (direct),
    Carbon Intensity gCO₂eq/kWh (LCA | Life cycle), ..., Data Source, Data Estimated, ...``
    (header capitalisation varies between editions; matched without case). The direct
    (combustion) intensity is read by default; ``kind="lifecycle"`` reads the other one.
``entsoe``
    ENTSO-E Transparency Platform "Actual generation per production type" (16.1.B&C), either
    the file-library export (tab-separated, one row per area, time and production type:
    ``DateTime(UTC), ResolutionCode, AreaCode, AreaDisplayName, AreaTypeCode, AreaMapCode,
    ProductionType, ActualGenerationOutput[MW], ActualConsumption[MW], UpdateTime(UTC)``) or
    the web export (one row per time: ``Area, MTU (CET/CEST) | MTU (UTC) | MTU,
    <type>  - Actual Aggregated [MW], <type>  - Actual Consumption [MW], ...``). The average
    intensity of each hour is derived here: generation by type times the direct factors of
    ``ems/data/gridmix/technologies.yaml``, over total generation (production-based: flows
    between areas are not traced; marginal and residual stay empty).

References
----------
Electricity Maps, data portal (app.electricitymaps.com/datasets): CSV fields as listed on the
portal's download pages. ENTSO-E Transparency Platform, "Actual Generation per Production Type
16.1.B&C" (transparency.entsoe.eu; file-library export ``AggregatedGenerationPerType_16.1.B_C``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ems.accounting.gridmix import load_technologies
from ems.accounting.intensity import IntensitySeries, validate_intensity
from ems.errors import AccountingError

__all__ = ["LAYOUTS", "read_intensity", "write_intensity"]

LAYOUTS = ("ems", "electricitymaps", "entsoe")
"""File layouts :func:`read_intensity` accepts."""

_G = 1000.0  # gCO2/kWh per kgCO2/kWh


def read_intensity(
    path: str | Path,
    *,
    layout: str = "auto",
    region: str | None = None,
    kind: str = "direct",
    mtu_tz: str | None = None,
) -> IntensitySeries:
    """Read an hourly carbon-intensity file.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` (comma- or tab-separated) or ``.parquet`` file.
    layout : str
        ``auto`` (from the header) or one of :data:`LAYOUTS`.
    region : str, optional
        Region name to use instead of the file's zone/area code (for files of one region).
    kind : str
        Electricity Maps only: ``direct`` (default; combustion, for Scope 2) or ``lifecycle``.
    mtu_tz : str, optional
        ENTSO-E web export only: IANA zone of an ``MTU`` column whose header names none.

    Returns
    -------
    IntensitySeries

    Raises
    ------
    AccountingError
        Unknown layout, missing columns, bad values: the message names file, line and field.
    """
    p = Path(path)
    raw = _read_table(p)
    lay = _detect(raw, p) if layout == "auto" else layout
    if lay not in LAYOUTS:
        raise AccountingError(f"{p}: layout: expected one of {['auto', *LAYOUTS]}; found {layout!r}")
    if lay == "ems":
        return _ems(raw, p, region=region)
    if lay == "electricitymaps":
        return _electricitymaps(raw, p, region=region, kind=kind)
    return _entsoe(raw, p, region=region, mtu_tz=mtu_tz)


def write_intensity(series: IntensitySeries, path: str | Path) -> Path:
    """Write a series in the ems layout (``.csv`` or ``.parquet``), gCO2/kWh, with its provenance.

    The ``source`` column names the method and origin of the values (``derived: <file>``); the
    full provenance (:meth:`IntensitySeries.describe`: every input's source, the notes) goes into
    ``<path>.provenance.txt`` beside it.
    """
    p = Path(path)
    f = series.frame
    out = pd.DataFrame({
        "region": f["region"],
        "hour_utc": f["hour"].dt.strftime("%Y-%m-%dT%H:%MZ") if p.suffix.lower() != ".parquet" else f["hour"],
        "average_g_per_kwh": (f["average_kg_per_kwh"] * _G).round(3),
        "marginal_g_per_kwh": (f["marginal_kg_per_kwh"] * _G).round(3),
        "residual_g_per_kwh": (f["residual_kg_per_kwh"] * _G).round(3),
        "source": f"{series.method}: {series.source}" + (f" ({series.data_source})" if len(series.data_source) < 80 else ""),
    })
    if p.suffix.lower() == ".parquet":
        out.to_parquet(p, index=False)
    elif p.suffix.lower() == ".csv":
        out.to_csv(p, index=False)
    else:
        raise AccountingError(f"{p}: expected a .csv or .parquet path; found {p.suffix or 'no suffix'!r}")
    p.with_name(p.name + ".provenance.txt").write_text(series.describe() + "\n", encoding="utf-8")
    return p


def _read_table(p: Path) -> pd.DataFrame:
    if not p.exists():
        raise AccountingError(f"{p}: no such file")
    if p.suffix.lower() == ".parquet":
        df = pd.read_parquet(p)
        df.attrs["first_line"] = 0  # row numbers, not lines
        return df
    if p.suffix.lower() not in (".csv", ".tsv", ".txt"):
        raise AccountingError(f"{p}: expected a .csv or .parquet file; found {p.suffix or 'no suffix'!r}")
    with p.open(encoding="utf-8-sig") as fh:
        head = fh.readline()
    sep = "\t" if head.count("\t") > head.count(",") else (";" if head.count(";") > head.count(",") else ",")
    try:
        df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AccountingError(f"{p}: not a readable CSV file: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["first_line"] = 2  # header is line 1
    return df


def _lines(raw: pd.DataFrame) -> np.ndarray:
    return np.arange(len(raw)) + int(raw.attrs.get("first_line", 2))


def _col(raw: pd.DataFrame, *patterns: str) -> str | None:
    """First column whose lower-cased name matches one of the regex patterns."""
    for pat in patterns:
        for c in raw.columns:
            if re.fullmatch(pat, c.lower()):
                return str(c)
    return None


def _detect(raw: pd.DataFrame, p: Path) -> str:
    if "hour_utc" in raw.columns and "average_g_per_kwh" in raw.columns:
        return "ems"
    if _col(raw, r"datetime \(utc\)") and _col(raw, r"carbon intensity gco₂eq/kwh.*", r"carbon intensity gco2eq/kwh.*"):
        return "electricitymaps"
    if _col(raw, r"productiontype") or any("actual aggregated" in c.lower() for c in raw.columns):
        return "entsoe"
    raise AccountingError(
        f"{p}: unknown layout; expected the ems columns (region, hour_utc, average_g_per_kwh), an "
        f"Electricity Maps export (Datetime (UTC), Carbon Intensity gCO₂eq/kWh (direct), ...) or an "
        f"ENTSO-E generation-per-type export; found columns {list(raw.columns)[:8]}"
    )


def _to_number(raw: pd.DataFrame, col: str, p: Path, *, blank_ok: bool = False) -> np.ndarray:
    s = raw[col]
    if not pd.api.types.is_numeric_dtype(s):
        txt = s.astype(str).str.strip()
        num = pd.to_numeric(txt.replace({"": np.nan}), errors="coerce")
        bad = num.isna() & (txt != "") if blank_ok else num.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise AccountingError(f"{p}:{_lines(raw)[i]}: field {col!r}: expected a number; found {txt.iloc[i]!r}")
        out: np.ndarray = num.to_numpy(dtype=float)
        return out
    vals: np.ndarray = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    return vals


def _utc(values: pd.Series, p: Path, raw: pd.DataFrame, col: str, *, naive_is_utc: bool) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    txt = values.astype(str).str.strip()
    ts = pd.to_datetime(txt, errors="coerce", utc=True, format="ISO8601")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AccountingError(f"{p}:{_lines(raw)[i]}: field {col!r}: expected an ISO 8601 time; found {txt.iloc[i]!r}")
    if not naive_is_utc:
        naive = ~txt.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).to_numpy()
        if naive.any():
            i = int(np.flatnonzero(naive)[0])
            raise AccountingError(
                f"{p}:{_lines(raw)[i]}: field {col!r}: expected a time with its UTC offset "
                f"(e.g. 2024-01-01T00:00Z); found naive {txt.iloc[i]!r}"
            )
    return ts


def _ems(raw: pd.DataFrame, p: Path, *, region: str | None) -> IntensitySeries:
    need = ["region", "hour_utc", "average_g_per_kwh"]
    miss = [c for c in need if c not in raw.columns and not (c == "region" and region)]
    if miss:
        raise AccountingError(f"{p}: expected columns {need}; missing {miss}")
    f = pd.DataFrame({
        "region": raw["region"] if region is None else region,
        "hour": _utc(raw["hour_utc"], p, raw, "hour_utc", naive_is_utc=False),
    })
    for g, kg in (("average_g_per_kwh", "average_kg_per_kwh"), ("marginal_g_per_kwh", "marginal_kg_per_kwh"),
                  ("residual_g_per_kwh", "residual_kg_per_kwh")):
        if g in raw.columns:
            f[kg] = _to_number(raw, g, p, blank_ok=g != "average_g_per_kwh") / _G
    data_source = ", ".join(sorted(set(raw["source"].astype(str)))) if "source" in raw.columns else ""
    frame = validate_intensity(f, str(p), _lines(raw))
    return IntensitySeries(frame, str(p), "measured", data_source)


def _hourly_mean(f: pd.DataFrame, cols: list[str]) -> tuple[pd.DataFrame, int]:
    """Average sub-hourly rows to whole hours; returns the frame and the rows merged."""
    f = f.assign(hour=f["hour"].dt.floor("h"))
    out = f.groupby(["region", "hour"], as_index=False, sort=False)[cols].mean()
    return out, len(f) - len(out)


def _electricitymaps(raw: pd.DataFrame, p: Path, *, region: str | None, kind: str) -> IntensitySeries:
    tcol = _col(raw, r"datetime \(utc\)")
    pat = {"direct": r"carbon intensity gco[₂2]eq/kwh \(direct\)",
           "lifecycle": r"carbon intensity gco[₂2]eq/kwh \((lca|life cycle|life cycle assessment)\)"}
    if kind not in pat:
        raise AccountingError(f"{p}: kind: expected 'direct' or 'lifecycle'; found {kind!r}")
    vcol = _col(raw, pat[kind])
    zcol = _col(raw, r"zone id")
    if tcol is None or vcol is None or (zcol is None and region is None):
        raise AccountingError(
            f"{p}: Electricity Maps layout: expected 'Datetime (UTC)', 'Zone Id' and "
            f"'Carbon Intensity gCO₂eq/kWh ({kind})'; found {list(raw.columns)}"
        )
    f = pd.DataFrame({
        "region": raw[zcol] if region is None else region,
        "hour": _utc(raw[tcol], p, raw, tcol, naive_is_utc=True),  # the header says UTC
        "average_kg_per_kwh": _to_number(raw, vcol, p) / _G,
    })
    f, merged = _hourly_mean(f, ["average_kg_per_kwh"])
    notes = [f"Electricity Maps {kind} intensity (consumption-based, flow-traced)"]
    if merged:
        notes.append(f"{merged} sub-hourly rows averaged into whole hours")
    est = _col(raw, r"data estimated")
    if est is not None:
        n_est = int(raw[est].astype(str).str.strip().str.lower().isin(("true", "1", "yes")).sum())
        notes.append(f"{n_est} of {len(raw)} rows estimated by the data provider")
    src = _col(raw, r"data source")
    data_source = ", ".join(sorted(set(raw[src].astype(str)) - {""})) if src else "Electricity Maps"
    frame = validate_intensity(f, str(p))
    return IntensitySeries(frame, str(p), "measured", f"Electricity Maps ({data_source})", tuple(notes))


_WEB_TYPE = re.compile(r"^(?P<type>.+?)\s+-\s+Actual (?P<what>Aggregated|Consumption)\s*\[MW\]$")


def _entsoe(raw: pd.DataFrame, p: Path, *, region: str | None, mtu_tz: str | None) -> IntensitySeries:
    long = _entsoe_long(raw, p) if _col(raw, r"productiontype") else _entsoe_web(raw, p, mtu_tz)
    if region is not None:
        long = long.assign(region=region)
    techs = load_technologies()
    mapping: dict[str, str | None] = techs["entsoe_production_types"]
    unknown = sorted(set(long["ptype"]) - set(mapping))
    if unknown:
        raise AccountingError(
            f"{p}: ENTSO-E production types {unknown} are not in ems/data/gridmix/technologies.yaml; "
            f"expected one of {sorted(mapping)}"
        )
    ef = {k: (None if v is None else float(techs["technologies"][v]["kg_per_kwh"])) for k, v in mapping.items()}
    long = long[long["ptype"].map(lambda t: ef[t] is not None)]
    long = long.assign(kg=long["mw"] * long["ptype"].map(lambda t: ef[t]).astype(float))
    # mean MW over the hour's market time units = MWh in the hour
    per = long.assign(hour=long["ts"].dt.floor("h")).groupby(["region", "hour", "ts"], as_index=False)[["mw", "kg"]].sum()
    hourly = per.groupby(["region", "hour"], as_index=False)[["mw", "kg"]].mean()
    empty = hourly["mw"] <= 0
    f = hourly.loc[~empty, ["region", "hour"]].assign(
        average_kg_per_kwh=(hourly.loc[~empty, "kg"] / hourly.loc[~empty, "mw"]).to_numpy()
    )
    notes = ["derived from ENTSO-E actual generation per production type x direct factors "
             "(ems/data/gridmix/technologies.yaml); production-based, flows between areas not traced"]
    if empty.any():
        notes.append(f"{int(empty.sum())} hours without generation data left out")
    frame = validate_intensity(f, str(p))
    return IntensitySeries(frame, str(p), "derived", "ENTSO-E Transparency Platform", tuple(notes))


def _entsoe_long(raw: pd.DataFrame, p: Path) -> pd.DataFrame:
    tcol = _col(raw, r"datetime ?\(utc\)")
    acol = _col(raw, r"areamapcode")
    gcol = _col(raw, r"actualgenerationoutput(\[mw\])?")
    ptcol = _col(raw, r"productiontype")
    if tcol is None or acol is None or gcol is None or ptcol is None:
        raise AccountingError(
            f"{p}: ENTSO-E file-library layout: expected DateTime(UTC), AreaMapCode, ProductionType and "
            f"ActualGenerationOutput[MW]; found {list(raw.columns)}"
        )
    out = pd.DataFrame({
        "region": raw[acol].astype(str).str.strip().to_numpy(),
        "ts": _utc(raw[tcol], p, raw, tcol, naive_is_utc=True).to_numpy(),
        "ptype": raw[ptcol].astype(str).str.strip().to_numpy(),
        "mw": _to_number(raw, gcol, p, blank_ok=True),
    })
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    out["mw"] = out["mw"].fillna(0.0)
    return out[_one_area_type(raw)]


def _one_area_type(raw: pd.DataFrame) -> np.ndarray:
    """Rows of one area type per map code: a country (CTY) type first, else a bidding zone, else any."""
    tcol = _col(raw, r"areatypecode")
    acol = _col(raw, r"areamapcode")
    if tcol is None or acol is None:
        return np.ones(len(raw), dtype=bool)
    types = raw[tcol].astype(str).to_numpy()
    codes = raw[acol].astype(str).to_numpy()
    rank = np.select([np.char.find(types.astype(str), "CTY") >= 0, np.char.find(types.astype(str), "BZN") >= 0], [0, 1], 2)
    df = pd.DataFrame({"code": codes, "type": types, "rank": rank})
    best = df.sort_values("rank", kind="stable").drop_duplicates("code")
    chosen = dict(zip(best["code"], best["type"], strict=True))
    keep: np.ndarray = types == pd.Series(codes).map(chosen).to_numpy()
    return keep


def _entsoe_web(raw: pd.DataFrame, p: Path, mtu_tz: str | None) -> pd.DataFrame:
    mcol = _col(raw, r"mtu( \(.*\))?")
    gen = {c: m.group("type").strip() for c in raw.columns if (m := _WEB_TYPE.match(c)) and m.group("what") == "Aggregated"}
    if mcol is None or not gen:
        raise AccountingError(
            f"{p}: ENTSO-E web layout: expected an 'MTU' column and '<type>  - Actual Aggregated [MW]' "
            f"columns; found {list(raw.columns)[:6]}"
        )
    ts = _mtu_start(raw, p, mcol, mtu_tz)
    area = raw["Area"].astype(str).str.split("|").str[-1].str.strip() if "Area" in raw.columns else pd.Series("", index=raw.index)
    parts = []
    for col, ptype in gen.items():
        txt = raw[col].astype(str).str.strip()
        txt = txt.mask(txt.str.lower().isin(("n/e", "-", "")), "0").mask(txt.str.lower() == "n/a", "nan")
        mw = pd.to_numeric(txt, errors="coerce")
        bad = mw.isna() & (txt != "nan")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise AccountingError(f"{p}:{_lines(raw)[i]}: field {col!r}: expected a number, 'n/e' or 'N/A'; found {txt.iloc[i]!r}")
        parts.append(pd.DataFrame({"region": area.to_numpy(), "ts": ts, "ptype": ptype, "mw": mw.fillna(0.0).to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def _mtu_start(raw: pd.DataFrame, p: Path, mcol: str, mtu_tz: str | None) -> pd.DatetimeIndex:
    """Start of each market time unit ``dd.mm.yyyy HH:MM - dd.mm.yyyy HH:MM [(CET|CEST)]`` in UTC."""
    zone = re.search(r"\((.*)\)", mcol)
    label = zone.group(1) if zone else None
    tz = {"UTC": "UTC", "CET/CEST": "Europe/Brussels"}.get(label or "", mtu_tz)
    if tz is None:
        raise AccountingError(
            f"{p}: column {mcol!r} names no time zone; expected 'MTU (UTC)', 'MTU (CET/CEST)' or "
            f"mtu_tz=<IANA zone>"
        )
    txt = raw[mcol].astype(str).str.strip()
    start = txt.str.split(" - ").str[0].str.strip()
    dst = start.str.extract(r"\((CEST|CET)\)$")[0]
    start = start.str.replace(r"\s*\((CEST|CET)\)$", "", regex=True)
    local = pd.to_datetime(start, errors="coerce", dayfirst=True, format="mixed")
    bad = local.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AccountingError(f"{p}:{_lines(raw)[i]}: field {mcol!r}: expected 'dd.mm.yyyy HH:MM - ...'; found {txt.iloc[i]!r}")
    if tz == "UTC":
        return pd.DatetimeIndex(local).tz_localize("UTC")
    # an hour repeated in autumn is told apart by its (CEST)/(CET) suffix, else by its order
    ambiguous = (dst == "CEST").to_numpy() if dst.notna().any() else "infer"
    try:
        out = pd.DatetimeIndex(local).tz_localize(tz, ambiguous=ambiguous, nonexistent="raise")
    except (ValueError, TypeError) as exc:  # pytz/zoneinfo errors on impossible local times
        raise AccountingError(f"{p}: column {mcol!r}: local times not valid in {tz}: {exc}") from None
    return out.tz_convert("UTC")
