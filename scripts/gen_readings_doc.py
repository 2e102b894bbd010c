"""Regenerate docs/readings.md from ems.readings (the tables stay in step with the code)."""

from pathlib import Path

from ems.readings import METER_KINDS, QUANTITIES, SCHEMA_VERSION, EventKind

SUBJECT = {
    "outage_start": "asset id", "outage_end": "asset id",
    "maintenance_start": "asset id", "maintenance_end": "asset id",
    "shutdown_start": "`site`", "shutdown_end": "`site`", "dr_start": "`grid`", "dr_end": "`grid`",
    "fuel_delivery": "fleet meter id", "refrigerant_topup": "gas of `ems/data/gases.yaml`, e.g. R-410A, SF6",
    "certificate": "instrument: GEC, I-REC, GO", "contract_delivery": "hydro, green_power",
    "process_emission": "source",
}
VALUE = {
    "dr_start": "import cap [kW]", "fuel_delivery": "[kg]", "refrigerant_topup": "[kg]",
    "certificate": "[MWh]; detail: id, action (retire, sell), serials, technology, plant, plant_commissioned, "
                   "vintage (or vintage_start, vintage_end), market_boundary, period_year (or period_start, period_end); "
                   "granular: generation_start, generation_end",
    "contract_delivery": "[MWh]; detail: id, period_start, period_end, plant, plant_commissioned, market_boundary, "
                         "profile (baseload, solar, <region>:<technology>, as_consumed)",
    "process_emission": "`unit: kg` with detail.gas, or `unit: kgCO2e`",
}


def render() -> str:
    out = [f"# The readings contract (v{SCHEMA_VERSION})", "", """\
The one contract between the parts of ems: exactly what a real meter sends. The simulator produces readings,
MQTT carries them (`docs/telemetry.md`), the store keeps them (`docs/store.md`), the rollups read them
(`docs/kpis.md`). Nothing downstream reaches into simulator state. The code is `ems/readings.py`; this page
is generated from it by `scripts/gen_readings_doc.py`.

## A reading

A reading is one meter's values at one timestamp:

* `site`, `meter`: identifiers `[a-z0-9][a-z0-9_-]{0,62}`;
* `ts`: the **end** of the interval, UTC, tz-aware; the interval is `(ts - interval_s, ts]`;
* `interval_s`: the reading interval in seconds (60 to 3600);
* values by quantity name, the unit in the name: interval averages (`power_kw`), cumulative registers
  (`import_kwh`), instantaneous values (`soc_pct`).

Energy in an interval is the difference of two registers, so a lost reading loses no energy: the next one
carries it. Registers only grow; one that goes down is a meter reset or rollover, which the accounting
detects and reports instead of turning it into negative energy.

In a frame, a reading spans one row per quantity: the tidy frame has a UTC `DatetimeIndex` named `ts` and
columns `site`, `meter`, `quantity` (categoricals) and `value` (float64).

## Quantities
""", "| name | unit | kind | meaning |", "| --- | --- | --- | --- |"]
    out += [f"| `{q.name}` | {q.unit} | {q.kind} | {q.description} |" for q in QUANTITIES.values()]
    out += ["", "## Meter kinds", "", "| kind | default carrier | quantities |", "| --- | --- | --- |"]
    out += [
        f"| `{k.value}` | {c.value} | {', '.join(f'`{q}`' for q in qs)} |"
        for k, (c, qs) in METER_KINDS.items()
    ]
    out += ["", """\
A site's electrical consumption is the sum of its `load` meters (`attrs.end_use`: production, base, hvac,
compressed_air, electrified, other). The simulator names its meters `grid`, the PV arrays' and batteries'
ids, `load-<end_use>`, `chp`, `steam` (purchased), `boiler`, `waste_heat`, `gas`, the fleets' ids,
`production`, `line-<product line>` and `weather`; a real site may name them as it likes, since kinds and
carriers come from the metadata. A `line` meter's `attrs` name its `product` and per-unit `emissions` (gas,
kg_per_unit, kind fugitive or process, activity, source): production and its gases travel as readings.

## Metadata

Each meter announces a `MeterInfo` (site, meter, kind, carrier, quantities, interval_s, attrs) before data,
and each site a `SiteInfo` (identity, hierarchy group/company/park, IANA time zone, location, country, grid
region, province (ISO 3166-2, may be empty), factor set, and in `attrs` what accounting needs from
configuration: `contract_kw`, `tariff` (with its currency), `export_limit_kw`, `boundary` (reporting-boundary
approach, included, reason)). Over MQTT both are retained messages; a gas not in the GWP table is refused.

The tariff travels as data: `SiteInfo.attrs["tariff"]` is the site file's `grid.tariff` as JSON
(`prices` by period, `seasons` with `months`, `windows` of local `start_h`/`end_h` and a `default`
period, `demand_charge_per_kw_month`, `export_price`). `ems.readings.tou_periods(local_times, tariff)`
maps local times to its periods; the simulator (battery arbitrage) and the accounting (energy per
period) both use it, so the accounting reads readings and their metadata only.

`ems.open_readings(source)` is the one way to get a `ReadingSet`: from a store (path or URL; events and
metadata at once, the readings frame on first use, stage 1 from the store's register aggregates), a
readings folder (`ems run --out`), or a scenario file (simulated).

## Events

Discrete happenings are events in a ledger beside the readings: a UTC `ts` and `site`, `kind`, `subject`,
`value`, `unit`, `detail` (JSON text).
""", "| kind | subject | value |", "| --- | --- | --- |"]
    out += [f"| `{k.value}` | {SUBJECT.get(k.value, '')} | {VALUE.get(k.value, '')} |" for k in EventKind]
    out += ["", """\
## Versioning

Adding a quantity, a meter kind or an event kind is a compatible change; renaming one or changing its
meaning or unit needs a new version, carried in MQTT topics (`ems/v2/...`) and payloads (`"v": 2`)."""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parents[1].joinpath("docs/readings.md").write_text(render())
