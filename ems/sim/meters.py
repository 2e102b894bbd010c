"""From flows to readings: what each meter sends.

Every reading is built from the site's flows (:class:`ems.sim.site.SiteFlows`):
interval averages are the flows themselves, cumulative registers are a starting
value (drawn per meter, so nobody relies on zero) plus the running sum of
``power x interval``. ``ts`` is the interval end in UTC.

=================  =========================================================
meter id           quantities (from ``ems.readings.METER_KINDS``)
=================  =========================================================
``grid``           power_kw (import - export), import_kwh, export_kwh
PV array id        power_kw (AC delivered), energy_kwh, curtailed_kwh
battery id         power_kw (discharge - charge), charge_kwh, discharge_kwh, soc_pct
``load-<use>``     power_kw, energy_kwh; use in production, base, hvac,
                   compressed_air, electrified
``chp``            power_kw, energy_kwh, heat_kw, heat_gj (heat used)
``steam``          heat_kw, heat_gj (purchased)
``boiler``         heat_kw, heat_gj
``waste_heat``     heat_kw, heat_gj
``gas``            flow_m3h, volume_m3 (all on-site gas)
fleet id           mass_kg (fuel delivered; jumps at deliveries)
``production``     output_rmb
``line-<product>`` output_units (units made by a production line)
``weather``        ghi_wm2, poa_wm2, temp_air_c
=================  =========================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd

from ems.model.site import ProductLine, PvArray, Site
from ems.readings import METER_KINDS, Carrier, MeterInfo, MeterKind, SiteInfo
from ems.sim.loads import END_USES
from ems.sim.pv import inverter_kw
from ems.sim.site import SiteFlows, export_limit
from ems.sim.thermal import MJ_PER_KWH

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "meter_infos",
    "site_info",
    "site_series",
    "site_tables",
    "slice_ends",
    "start_registers",
    "tidy_frame",
    "wide_frame",
]

FloatArray = npt.NDArray[np.float64]

_REGISTER_DECADES = {
    "kWh": (4.0, 7.0),
    "GJ": (2.0, 5.0),
    "m3": (4.0, 7.0),
    "kg": (3.0, 5.0),
    "RMB": (7.0, 9.5),
}


def _meters(
    site: Site, arrays: dict[str, FloatArray]
) -> list[tuple[str, MeterKind, str, dict[str, object]]]:
    out: list[tuple[str, MeterKind, str, dict[str, object]]] = [
        ("grid", MeterKind.GRID, Carrier.ELECTRICITY, {"contract_kw": site.grid.contract_kw})
    ]
    out += [(p.id, MeterKind.PV, Carrier.ELECTRICITY, _pv_attrs(p)) for p in site.pv]
    for b in site.batteries:
        out.append(
            (
                b.id,
                MeterKind.BATTERY,
                Carrier.ELECTRICITY,
                {
                    "energy_kwh": b.energy_kwh,
                    "power_kw": b.power_kw,
                    "strategy": b.dispatch.strategy,
                    "eta_charge": b.eta_charge,
                    "eta_discharge": b.eta_discharge,
                },
            )
        )
    for use in END_USES:
        if f"load.{use}" in arrays:
            out.append((f"load-{use}", MeterKind.LOAD, Carrier.ELECTRICITY, {"end_use": use}))
    if site.chp is not None:
        out.append(
            (
                "chp",
                MeterKind.CHP,
                Carrier.ELECTRICITY,
                {"kw_e": site.chp.kw_e, "fuel": Carrier.NATURAL_GAS.value},
            )
        )
    if site.steam is not None:
        out.append(("steam", MeterKind.STEAM, Carrier.HEAT, {}))
    if "boiler_heat" in arrays:
        out.append(("boiler", MeterKind.BOILER, Carrier.HEAT, {"fuel": Carrier.NATURAL_GAS.value}))
    if "waste_heat" in arrays:
        out.append(("waste_heat", MeterKind.WASTE_HEAT, Carrier.HEAT, {}))
    if "gas_m3h" in arrays:
        out.append(
            ("gas", MeterKind.GAS, Carrier.NATURAL_GAS, {"lhv_mj_per_m3": site.gas_lhv_mj_per_m3})
        )
    for f in site.fleets:
        out.append((f.id, MeterKind.FUEL, f.fuel, {"fuel": f.fuel}))
    out.append(("production", MeterKind.PRODUCTION, Carrier.OUTPUT, {}))
    out += [(f"line-{p.id}", MeterKind.LINE, Carrier.OUTPUT, _line_attrs(p)) for p in site.products]
    out.append(("weather", MeterKind.WEATHER, Carrier.WEATHER, {}))
    return out


def _pv_attrs(p: PvArray) -> dict[str, object]:
    """A PV array's metadata: ratings, orientation and commissioning date (capacity in service)."""
    return {
        "kwp": p.kwp,
        "inverter_kw": inverter_kw(p),
        "tilt_deg": p.tilt_deg,
        "azimuth_deg": p.azimuth_deg,
        "commissioned": p.commissioned.isoformat() if p.commissioned else "",
    }


def _line_attrs(line: ProductLine) -> dict[str, object]:
    """A production line's metadata: its product and per-unit emissions (gas, kg_per_unit, kind, activity, source)."""
    return {
        "product": line.product,
        "emissions": [e.model_dump(mode="json") for e in line.emissions],
    }


def meter_infos(flows: SiteFlows) -> list[MeterInfo]:
    """Metadata of every meter the site has."""
    step = flows.grid.resolution_s
    return [
        MeterInfo(
            site=flows.site.id,
            meter=mid,
            kind=kind.value,
            carrier=str(carrier),
            quantities=METER_KINDS[kind][1],
            interval_s=step,
            attrs=attrs,
        )
        for mid, kind, carrier, attrs in _meters(flows.site, flows.arrays)
    ]


def site_info(site: Site) -> SiteInfo:
    """Registration of a site."""
    return SiteInfo(
        site=site.id,
        name=site.name,
        group=site.hierarchy.group,
        company=site.hierarchy.company,
        park=site.hierarchy.park,
        tz=site.location.tz,
        lat=site.location.lat,
        lon=site.location.lon,
        country=site.location.country,
        grid_region=site.grid.region,
        factor_set=site.factor_set,
        province=site.location.province or "",
        attrs={
            "contract_kw": site.grid.contract_kw,
            "tariff": site.grid.tariff.model_dump(mode="json")
            if site.grid.tariff is not None
            else None,
            "export_limit_kw": export_limit(site),
            "boundary": {
                "approach": site.reporting.approach,
                "included": site.reporting.included,
                "reason": site.reporting.reason,
            },
        },
    )


def start_registers(flows: SiteFlows, rng: np.random.Generator) -> dict[tuple[str, str], float]:
    """Draw a plausible non-zero starting value for every register of the site."""
    from ems.readings import QUANTITIES

    out: dict[tuple[str, str], float] = {}
    for m in meter_infos(flows):
        for q in m.quantities:
            spec = QUANTITIES[q]
            if spec.kind != "register":
                continue
            lo, hi = _REGISTER_DECADES.get(spec.unit, (3.0, 6.0))
            out[(m.meter, q)] = float(np.round(10 ** rng.uniform(lo, hi), 1))
    return out


@dataclass(frozen=True)
class _Register:
    """A cumulative register, summed when read: ``start + cumsum(rate * per_step)``."""

    start: float
    rate: FloatArray
    per_step: float

    def values(self) -> FloatArray:
        out: FloatArray = self.start + np.cumsum(self.rate * self.per_step)
        return out

    def chunks(self, ends: Sequence[int]) -> Iterator[FloatArray]:
        """:meth:`values` in pieces ending before each of ``ends`` (steps, increasing), equal
        bit for bit (the sum is sequential)."""
        total = None
        a = 0
        for b in ends:
            part = self.rate[a:b] * self.per_step
            if total is None:
                run = np.cumsum(part)
            else:
                run = np.cumsum(np.concatenate([[total], part]))[1:]
            total = run[-1]
            a = b
            yield self.start + run


def site_series(flows: SiteFlows) -> Iterator[tuple[str, str, FloatArray]]:
    """Yield ``(meter, quantity, values)`` for every reading series of the site, in meter order."""
    for m, q, v in _series(flows):
        yield m, q, v.values() if isinstance(v, _Register) else v


def _series(flows: SiteFlows) -> Iterator[tuple[str, str, FloatArray | _Register]]:
    """:func:`site_series` with the registers not yet summed."""
    a = flows.arrays
    h = flows.grid.dt_h
    r0 = flows.register_start
    site = flows.site

    def reg(meter: str, q: str, rate: FloatArray, per_step: float = h) -> _Register:
        return _Register(r0.get((meter, q), 0.0), rate, per_step)

    gj = h * MJ_PER_KWH / 1000.0
    for mid, kind, _c, _attrs in _meters(site, a):
        if kind == MeterKind.GRID:
            yield mid, "power_kw", a["grid_import"] - a["grid_export"]
            yield mid, "import_kwh", reg(mid, "import_kwh", a["grid_import"])
            yield mid, "export_kwh", reg(mid, "export_kwh", a["grid_export"])
        elif kind == MeterKind.PV:
            yield mid, "power_kw", a[f"pv.{mid}"]
            yield mid, "energy_kwh", reg(mid, "energy_kwh", a[f"pv.{mid}"])
            yield mid, "curtailed_kwh", reg(mid, "curtailed_kwh", flows.flow(f"pv_curtailed.{mid}"))
        elif kind == MeterKind.BATTERY:
            b = next(x for x in site.batteries if x.id == mid)
            yield mid, "power_kw", a[f"discharge.{mid}"] - a[f"charge.{mid}"]
            yield mid, "charge_kwh", reg(mid, "charge_kwh", a[f"charge.{mid}"])
            yield mid, "discharge_kwh", reg(mid, "discharge_kwh", a[f"discharge.{mid}"])
            yield mid, "soc_pct", a[f"soc.{mid}"] / b.energy_kwh * 100.0
        elif kind == MeterKind.LOAD:
            p = a["load." + mid.removeprefix("load-")]
            yield mid, "power_kw", p
            yield mid, "energy_kwh", reg(mid, "energy_kwh", p)
        elif kind == MeterKind.CHP:
            yield mid, "power_kw", flows.flow("chp")
            yield mid, "energy_kwh", reg(mid, "energy_kwh", flows.flow("chp"))
            yield mid, "heat_kw", flows.flow("chp_heat")
            yield mid, "heat_gj", reg(mid, "heat_gj", flows.flow("chp_heat"), gj)
        elif kind in (MeterKind.STEAM, MeterKind.BOILER, MeterKind.WASTE_HEAT):
            key = {
                MeterKind.STEAM: "purchased_heat",
                MeterKind.BOILER: "boiler_heat",
                MeterKind.WASTE_HEAT: "waste_heat",
            }[kind]
            yield mid, "heat_kw", a[key]
            yield mid, "heat_gj", reg(mid, "heat_gj", a[key], gj)
        elif kind == MeterKind.GAS:
            yield mid, "flow_m3h", a["gas_m3h"]
            yield mid, "volume_m3", reg(mid, "volume_m3", a["gas_m3h"])
        elif kind == MeterKind.FUEL:
            yield mid, "mass_kg", reg(mid, "mass_kg", flows.flow(f"fuel_kg.{mid}"), 1.0)
        elif kind == MeterKind.PRODUCTION:
            yield mid, "output_rmb", reg(mid, "output_rmb", a["output_rmb_h"])
        elif kind == MeterKind.LINE:
            yield (
                mid,
                "output_units",
                reg(mid, "output_units", a["units_h." + mid.removeprefix("line-")]),
            )
        elif kind == MeterKind.WEATHER:
            yield mid, "ghi_wm2", a["ghi"]
            yield mid, "poa_wm2", a["poa"]
            yield mid, "temp_air_c", a["temp_air"]


def wide_frame(flows: SiteFlows) -> pd.DataFrame:
    """One site's readings as a wide frame: columns ``meter.quantity``, index ``ts`` (UTC)."""
    cols = {f"{m}.{q}": v for m, q, v in site_series(flows)}
    return pd.DataFrame(cols, index=flows.grid.ts)


def tidy_frame(flows_list: list[SiteFlows]) -> pd.DataFrame:
    """The contract's tidy readings frame for some sites (rows grouped by site, meter, quantity)."""
    from ems.readings import empty_readings

    if not flows_list:
        return empty_readings()
    series = [(f.site.id, m, q, v, f.grid.ts) for f in flows_list for m, q, v in site_series(f)]
    sites = sorted({s for s, *_ in series})
    meters = sorted({m for _, m, *_ in series})
    quants = sorted({q for _, _, q, *_ in series})
    si = {s: i for i, s in enumerate(sites)}
    mi = {m: i for i, m in enumerate(meters)}
    qi = {q: i for i, q in enumerate(quants)}
    lens = [len(v) for *_, v, _ts in series]
    total = int(sum(lens))
    ts = np.empty(total, dtype="datetime64[ns]")
    vals = np.empty(total, dtype="float64")
    code_t = np.int8 if max(len(sites), len(meters), len(quants)) < 127 else np.int32
    sc = np.empty(total, dtype=code_t)
    mc = np.empty(total, dtype=code_t)
    qc = np.empty(total, dtype=code_t)
    pos = 0
    for (s, m, q, _v, t), ln in zip(series, lens, strict=True):
        sl = slice(pos, pos + ln)
        ts[sl] = t.tz_localize(None).as_unit("ns").to_numpy()
        sc[sl] = si[s]
        mc[sl] = mi[m]
        qc[sl] = qi[q]
        pos += ln
    pos = 0
    for i, ln in enumerate(lens):  # values last, releasing each series as it is copied
        vals[pos : pos + ln] = series[i][3]
        series[i] = (*series[i][:3], np.empty(0), series[i][4])
        pos += ln
    del series
    idx = pd.DatetimeIndex(ts, name="ts", copy=False).tz_localize("UTC")
    del ts
    return pd.DataFrame(
        {
            "site": pd.Categorical.from_codes(sc, categories=sites),
            "meter": pd.Categorical.from_codes(mc, categories=meters),
            "quantity": pd.Categorical.from_codes(qc, categories=quants),
            "value": vals,
        },
        index=idx,
        copy=False,
    )


def _dictionary(codes: npt.NDArray[np.integer], names: list[str]) -> pa.DictionaryArray:
    import pyarrow as pa

    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names, pa.string()))


def site_tables(flows: SiteFlows, max_rows: int = 2_000_000) -> Iterator[pa.Table]:
    """One site's readings as Arrow tables of at most ``max_rows`` rows (as few as fit, of
    about even size, each ending at a local midnight where one fits), in time order.

    The same rows as :func:`tidy_frame` (columns ``ts``, ``site``, ``meter``,
    ``quantity``, ``value``; ``ts`` a column, not the index), ordered by time and,
    within a time, by series as :func:`site_series` yields them; each table holds
    whole steps. Dictionary columns list meters and quantities in sorted order.
    This is what ``ems run`` writes into the embedded store, without building
    the tidy frame. A table that ends with the reading at a local midnight closes its
    days: the store's register aggregates take the next one from the rows in hand.
    """
    import pyarrow as pa

    series = list(_series(flows))
    n_series = len(series)
    meters = sorted({m for m, _q, _v in series})
    quants = sorted({q for _m, q, _v in series})
    code = np.int8 if max(len(meters), len(quants)) < 2**7 else np.int32
    m_codes = np.array([meters.index(m) for m, _q, _v in series], dtype=code)
    q_codes = np.array([quants.index(q) for _m, q, _v in series], dtype=code)
    ts_ns = flows.grid.ts.as_unit("ns").asi8
    ends = slice_ends(ts_ns, flows.site.location.tz, max(1, max_rows // max(n_series, 1)))
    ts_type = pa.timestamp("ns", tz="UTC")
    sums = {j: v.chunks(ends) for j, (_m, _q, v) in enumerate(series) if isinstance(v, _Register)}
    for a, b in zip([0, *ends[:-1]], ends, strict=True):
        values = np.empty((b - a, n_series))
        for j, (_m, _q, v) in enumerate(series):
            values[:, j] = v[a:b] if not isinstance(v, _Register) else next(sums[j])
        yield pa.table(
            {
                "ts": pa.array(np.repeat(ts_ns[a:b], n_series), ts_type),
                "site": _dictionary(np.zeros((b - a) * n_series, dtype=np.int8), [flows.site.id]),
                "meter": _dictionary(np.tile(m_codes, b - a), meters),
                "quantity": _dictionary(np.tile(q_codes, b - a), quants),
                "value": values.reshape(-1),
            }
        )


def slice_ends(ts_ns: npt.NDArray[np.int64], tz: str, fit: int) -> list[int]:
    """Ends (exclusive step indices) of as few slices of at most ``fit`` steps as hold
    ``ts_ns`` [ns, UTC, increasing], of about even size; each ends after a reading at a
    local midnight of zone ``tz`` where one lies within reach.
    """
    n = len(ts_ns)
    steps = max(1, -(-n // max(1, -(-n // fit))))  # as few as fit, of even size
    wall = pd.DatetimeIndex(ts_ns.view("M8[ns]"), tz="UTC").tz_convert(tz).tz_localize(None).asi8
    days = np.flatnonzero(wall % 86_400_000_000_000 == 0) + 1  # ends after a reading at midnight
    out: list[int] = []
    a = 0
    while a < n:
        b = min(a + steps, n)
        if b < n:
            near = days[(days > a) & (days <= min(a + fit, n))]
            b = int(near[np.argmin(np.abs(near - b))]) if len(near) else b
        out.append(b)
        a = b
    return out
