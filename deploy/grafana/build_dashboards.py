"""Write the Grafana dashboards of the compose stack (deploy/grafana/dashboards/*.json).

Run after changing a panel:  python deploy/grafana/build_dashboards.py
The JSON files are what Grafana provisions; tests/test_compose.py checks every Flux
query against the line-protocol design of ems.store.lineproto (measurement = meter
kind; tags site, meter, carrier, group, company, park; fields = the quantities;
events in measurement ``event``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "influxdb", "uid": "ems-influxdb"}
RANGE = "from(bucket: v.defaultBucket)\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)"

COLORS = {
    "pv": "#E0A800",
    "load": "#E8615A",
    "grid": "#4C82E6",
    "battery": "#2EB67D",
    "chp": "#A970FF",
    "steam": "#FF8C42",
    "boiler": "#B5835A",
    "waste_heat": "#D9B38C",
    "gas": "#8E9AAF",
}


def any_of(col: str, values: list[str]) -> str:
    return " or ".join(f'r.{col} == "{v}"' for v in values)


def power_sum(kinds: list[str], field: str, site_filter: str) -> str:
    """Mean power per meter and window, summed over the meters of each kind."""
    return (
        f"{RANGE}\n"
        f"  |> filter(fn: (r) => {site_filter})\n"
        f"  |> filter(fn: (r) => {any_of('_measurement', kinds)})\n"
        f'  |> filter(fn: (r) => r._field == "{field}")\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        '  |> group(columns: ["_measurement", "_time"])\n'
        "  |> sum()\n"
        '  |> group(columns: ["_measurement"])\n'
        '  |> sort(columns: ["_time"])'
    )


def latest_sum(kind: str, field: str, site_filter: str, by: str = "_measurement") -> str:
    """Latest value of each meter of a kind in the range, summed (per site with by=site)."""
    return (
        f"{RANGE}\n"
        f'  |> filter(fn: (r) => r._measurement == "{kind}" and r._field == "{field}")\n'
        f"  |> filter(fn: (r) => {site_filter})\n"
        "  |> last()\n"
        f'  |> group(columns: ["{by}"])\n'
        "  |> sum()"
    )


def energy_daily(field_by_kind: dict[str, str], site_filter: str, by: str) -> str:
    """Energy per local day from the register differences (resets ignored)."""
    cond = " or ".join(
        f'(r._measurement == "{k}" and r._field == "{f}")' for k, f in field_by_kind.items()
    )
    return (
        'import "timezone"\n'
        'option location = timezone.location(name: "${tz}")\n\n'
        f"{RANGE}\n"
        f"  |> filter(fn: (r) => {cond})\n"
        f"  |> filter(fn: (r) => {site_filter})\n"
        "  |> difference(nonNegative: true)\n"
        "  |> timeShift(duration: -1s)\n"
        '  |> aggregateWindow(every: 1d, fn: sum, createEmpty: false, timeSrc: "_start")\n'
        f'  |> group(columns: ["{by}", "_time"])\n'
        "  |> sum()\n"
        f'  |> group(columns: ["{by}"])\n'
        '  |> sort(columns: ["_time"])'
    )


def energy_total(field_by_kind: dict[str, str], site_filter: str, by: str) -> str:
    """Energy over the whole range: register increase, summed by ``by``."""
    cond = " or ".join(
        f'(r._measurement == "{k}" and r._field == "{f}")' for k, f in field_by_kind.items()
    )
    return (
        f"{RANGE}\n"
        f"  |> filter(fn: (r) => {cond})\n"
        f"  |> filter(fn: (r) => {site_filter})\n"
        "  |> difference(nonNegative: true)\n"
        "  |> sum()\n"
        f'  |> group(columns: ["{by}"])\n'
        "  |> sum()"
    )


def target(query: str, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "query": query}


_ids = iter(range(1, 1000))


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    grid: tuple[int, int, int, int],
    *,
    unit: str = "",
    description: str = "",
    options: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    custom: dict[str, Any] | None = None,
    decimals: int | None = None,
    transformations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if custom:
        defaults["custom"] = custom
    p: dict[str, Any] = {
        "id": next(_ids),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        p["transformations"] = transformations
    return p


def color_by_name(names: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": n},
            "properties": [
                {"id": "color", "value": {"mode": "fixed", "fixedColor": COLORS.get(k, "#999")}},
                {"id": "displayName", "value": n},
            ],
        }
        for n, k in names.items()
    ]


def rename_measurements(names: dict[str, str]) -> list[dict[str, Any]]:
    """Series are named by their group key (_measurement); give them readable names."""
    return [
        {
            "matcher": {"id": "byFrameRefID", "options": "A"},
            "properties": [{"id": "displayName", "value": "${__field.labels._measurement}"}],
        }
    ] + [
        {
            "matcher": {"id": "byName", "options": k},
            "properties": [
                {"id": "color", "value": {"mode": "fixed", "fixedColor": COLORS.get(k, "#999")}},
                {"id": "displayName", "value": label},
            ],
        }
        for k, label in names.items()
    ]


def site_variable(multi: bool) -> dict[str, Any]:
    return {
        "name": "site",
        "label": "Site",
        "type": "query",
        "datasource": DS,
        "query": 'import "influxdata/influxdb/schema"\n\nschema.tagValues(bucket: v.defaultBucket, tag: "site")',
        "definition": "site tag values",
        "refresh": 2,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "sort": 1,
    }


def tz_variable() -> dict[str, Any]:
    zones = ["Asia/Shanghai", "Europe/Ljubljana", "UTC"]
    return {
        "name": "tz",
        "label": "Local zone (days)",
        "type": "custom",
        "query": ",".join(zones),
        "current": {"text": zones[0], "value": zones[0]},
        "options": [{"text": z, "value": z, "selected": i == 0} for i, z in enumerate(zones)],
        "multi": False,
        "includeAll": False,
    }


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    variables: list[dict[str, Any]],
    description: str,
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["ems"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "5s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "2024-07-15T00:00:00+08:00", "to": "2024-07-22T00:00:00+08:00"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": links,
        "panels": panels,
    }


ELEC_IN = {"grid": "import_kwh", "pv": "energy_kwh", "chp": "energy_kwh"}
FLOW_NAMES = {
    "pv": "PV",
    "load": "Load",
    "grid": "Grid (import +)",
    "battery": "Battery (discharge +)",
    "chp": "CHP",
}


def group_overview() -> dict[str, Any]:
    sites = "contains(value: r.site, set: ${site:json})"
    panels = []
    stat_opts = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "textMode": "value_and_name",
        "orientation": "horizontal",
    }
    rename_site = [
        {
            "matcher": {"id": "byFrameRefID", "options": "A"},
            "properties": [{"id": "displayName", "value": "${__field.labels.site}"}],
        }
    ]
    for i, (kind, field, title) in enumerate(
        [
            ("pv", "power_kw", "PV now"),
            ("load", "power_kw", "Load now"),
            ("grid", "power_kw", "Grid now (import +)"),
            ("battery", "soc_pct", "Battery state of charge"),
        ]
    ):
        panels.append(
            panel(
                "stat",
                title,
                [target(latest_sum(kind, field, sites, by="site"))],
                (6 * i, 0, 6, 6),
                unit="percent" if field == "soc_pct" else "kwatt",
                decimals=0,
                options=stat_opts,
                overrides=rename_site,
                description="Latest reading in the time range, per site (sum over the site's meters of this kind).",
            )
        )
    ts_custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}
    panels.append(
        panel(
            "timeseries",
            "Grid import by site",
            [
                target(
                    f'{RANGE}\n  |> filter(fn: (r) => r._measurement == "grid" and r._field == "power_kw")\n'
                    f"  |> filter(fn: (r) => {sites})\n"
                    "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
                    '  |> group(columns: ["site", "_time"])\n  |> sum()\n  |> group(columns: ["site"])\n'
                    '  |> sort(columns: ["_time"])'
                )
            ],
            (0, 6, 12, 9),
            unit="kwatt",
            custom=ts_custom,
            overrides=rename_site,
        )
    )
    panels.append(
        panel(
            "timeseries",
            "PV by site",
            [
                target(
                    f'{RANGE}\n  |> filter(fn: (r) => r._measurement == "pv" and r._field == "power_kw")\n'
                    f"  |> filter(fn: (r) => {sites})\n"
                    "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
                    '  |> group(columns: ["site", "_time"])\n  |> sum()\n  |> group(columns: ["site"])\n'
                    '  |> sort(columns: ["_time"])'
                )
            ],
            (12, 6, 12, 9),
            unit="kwatt",
            custom=ts_custom,
            overrides=rename_site,
        )
    )
    bar_opts = {
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    }
    supply = {**ELEC_IN, "grid": "import_kwh"}
    cond = " or ".join(
        f'(r._measurement == "{k}" and r._field == "{f}")' for k, f in supply.items()
    )
    panels.append(
        panel(
            "bargauge",
            "Electricity consumed in range",
            [
                target(
                    f"{RANGE}\n"
                    f'  |> filter(fn: (r) => {cond} or (r._measurement == "grid" and r._field == "export_kwh"))\n'
                    f"  |> filter(fn: (r) => {sites})\n"
                    "  |> difference(nonNegative: true)\n  |> sum()\n"
                    '  |> map(fn: (r) => ({r with _value: if r._field == "export_kwh" then -r._value else r._value}))\n'
                    '  |> group(columns: ["site"])\n  |> sum()'
                )
            ],
            (0, 15, 8, 8),
            unit="kwatth",
            options=bar_opts,
            decimals=0,
            overrides=rename_site,
            description="Grid import + PV + CHP - grid export over the time range (register increases); "
            "battery losses are inside.",
        )
    )
    panels.append(
        panel(
            "bargauge",
            "PV share of electricity supplied in range",
            [
                target(
                    f"{RANGE}\n"
                    f"  |> filter(fn: (r) => {cond})\n"
                    f"  |> filter(fn: (r) => {sites})\n"
                    "  |> difference(nonNegative: true)\n  |> sum()\n"
                    '  |> group(columns: ["site"])\n'
                    "  |> reduce(identity: {pv: 0.0, total: 0.0}, fn: (r, accumulator) => ({\n"
                    '      pv: accumulator.pv + (if r._measurement == "pv" then r._value else 0.0),\n'
                    "      total: accumulator.total + r._value}))\n"
                    "  |> map(fn: (r) => ({site: r.site, _value: if r.total > 0.0 then r.pv / r.total else 0.0}))"
                )
            ],
            (8, 15, 8, 8),
            unit="percentunit",
            options=bar_opts,
            decimals=1,
            overrides=rename_site,
            description="On-site PV generation over the electricity supplied (grid import + PV + CHP). "
            "Green share with contracts and certificates, tce and emissions need the factor "
            "tables: see the built-in dashboard or `ems report`.",
        )
    )
    panels.append(
        panel(
            "barchart",
            "Grid import per day",
            [target(energy_daily({"grid": "import_kwh"}, sites, "site"))],
            (16, 15, 8, 8),
            unit="kwatth",
            overrides=rename_site,
            options={
                "xTickLabelRotation": -45,
                "stacking": "normal",
                "legend": {"showLegend": True},
            },
            transformations=[
                {"id": "joinByField", "options": {"byField": "_time", "mode": "outer"}}
            ],
        )
    )
    panels.append(
        panel(
            "table",
            "Events",
            [
                target(
                    f'{RANGE}\n  |> filter(fn: (r) => r._measurement == "event")\n'
                    f"  |> filter(fn: (r) => {sites})\n"
                    '  |> pivot(rowKey: ["_time", "site", "kind", "subject"], columnKey: ["_field"], valueColumn: "_value")\n'
                    '  |> group()\n  |> keep(columns: ["_time", "site", "kind", "subject", "value", "unit"])\n'
                    '  |> sort(columns: ["_time"], desc: true)'
                )
            ],
            (0, 23, 24, 8),
            description="Outages, maintenance, deliveries, demand-response events from the event ledger.",
        )
    )
    return dashboard(
        "ems-group-overview",
        "ems · Group overview",
        panels,
        [site_variable(True), tz_variable()],
        "Every site of the group: power now, power over time, energy in the range. Matches the built-in "
        "dashboard's overview (ems dashboard).",
        [
            {
                "title": "Site view",
                "type": "link",
                "url": "/d/ems-site?${site:queryparam}&${__url_time_range}",
            }
        ],
    )


def site_view() -> dict[str, Any]:
    site = 'r.site == "${site}"'
    panels = []
    stat_opts = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area",
        "textMode": "value_and_name",
    }
    for i, (kind, field, title, unit) in enumerate(
        [
            ("pv", "power_kw", "PV", "kwatt"),
            ("load", "power_kw", "Load", "kwatt"),
            ("grid", "power_kw", "Grid (import +)", "kwatt"),
            ("battery", "power_kw", "Battery (discharge +)", "kwatt"),
            ("battery", "soc_pct", "State of charge", "percent"),
            ("steam", "heat_kw", "Steam", "kwatt"),
        ]
    ):
        panels.append(
            panel(
                "stat",
                title,
                [target(latest_sum(kind, field, site))],
                (4 * i, 0, 4, 4),
                unit=unit,
                decimals=0,
                options=stat_opts,
            )
        )
    ts_custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}
    panels.append(
        panel(
            "timeseries",
            "Power by flow",
            [target(power_sum(["pv", "load", "grid", "battery", "chp"], "power_kw", site))],
            (0, 4, 24, 10),
            unit="kwatt",
            custom=ts_custom,
            overrides=rename_measurements(FLOW_NAMES),
            description="Mean per window of each meter, summed over the meters of a kind. Signs: grid import > 0, "
            "battery discharge > 0.",
        )
    )
    panels.append(
        panel(
            "timeseries",
            "Heat",
            [target(power_sum(["steam", "boiler", "waste_heat", "chp"], "heat_kw", site))],
            (0, 14, 12, 8),
            unit="kwatt",
            custom=ts_custom,
            overrides=rename_measurements(
                {
                    "steam": "Steam (purchased)",
                    "boiler": "Boiler",
                    "waste_heat": "Recovered heat",
                    "chp": "CHP heat",
                }
            ),
        )
    )
    panels.append(
        panel(
            "timeseries",
            "Battery state of charge",
            [
                target(
                    f'{RANGE}\n  |> filter(fn: (r) => r._measurement == "battery" and r._field == "soc_pct")\n'
                    f"  |> filter(fn: (r) => {site})\n"
                    "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
                    '  |> group(columns: ["meter"])'
                )
            ],
            (12, 14, 12, 8),
            unit="percent",
            custom=ts_custom,
        )
    )
    bars = {"xTickLabelRotation": -45, "stacking": "normal", "legend": {"showLegend": True}}
    join_time = [{"id": "joinByField", "options": {"byField": "_time", "mode": "outer"}}]
    panels.append(
        panel(
            "barchart",
            "Electricity per day (supply)",
            [
                target(
                    energy_daily(
                        {
                            "grid": "import_kwh",
                            "pv": "energy_kwh",
                            "chp": "energy_kwh",
                            "battery": "discharge_kwh",
                        },
                        site,
                        "_measurement",
                    )
                )
            ],
            (0, 22, 12, 9),
            unit="kwatth",
            options=bars,
            transformations=join_time,
            overrides=rename_measurements(
                {"grid": "Grid import", "pv": "PV", "chp": "CHP", "battery": "Battery out"}
            ),
        )
    )
    panels.append(
        panel(
            "barchart",
            "Heat and gas per day",
            [
                target(
                    energy_daily(
                        {
                            "steam": "heat_gj",
                            "boiler": "heat_gj",
                            "waste_heat": "heat_gj",
                            "chp": "heat_gj",
                        },
                        site,
                        "_measurement",
                    ),
                    "A",
                ),
                target(energy_daily({"gas": "volume_m3"}, site, "_measurement"), "B"),
            ],
            (12, 22, 12, 9),
            options=bars,
            transformations=join_time,
            overrides=rename_measurements(
                {
                    "steam": "Steam [GJ]",
                    "boiler": "Boiler [GJ]",
                    "waste_heat": "Recovered [GJ]",
                    "chp": "CHP heat [GJ]",
                    "gas": "Natural gas [m³]",
                }
            ),
        )
    )
    panels.append(
        panel(
            "table",
            "Events",
            [
                target(
                    f'{RANGE}\n  |> filter(fn: (r) => r._measurement == "event")\n'
                    f"  |> filter(fn: (r) => {site})\n"
                    '  |> pivot(rowKey: ["_time", "site", "kind", "subject"], columnKey: ["_field"], valueColumn: "_value")\n'
                    '  |> group()\n  |> keep(columns: ["_time", "kind", "subject", "value", "unit", "detail"])\n'
                    '  |> sort(columns: ["_time"], desc: true)'
                )
            ],
            (0, 31, 24, 8),
        )
    )
    # event markers on the time series, as in the built-in site view
    dash = dashboard(
        "ems-site",
        "ems · Site",
        panels,
        [site_variable(False), tz_variable()],
        "One site: power flows, heat, battery, energy per day by carrier and the event ledger. Matches the "
        "built-in dashboard's site view (ems dashboard).",
        [
            {
                "title": "Group overview",
                "type": "link",
                "url": "/d/ems-group-overview?${__url_time_range}",
            }
        ],
    )
    dash["annotations"]["list"].append(
        {
            "name": "Events",
            "datasource": DS,
            "enable": True,
            "iconColor": "purple",
            "target": {
                "refId": "Anno",
                "query": (
                    f'{RANGE}\n  |> filter(fn: (r) => r._measurement == "event" and r._field == "unit")\n'
                    f"  |> filter(fn: (r) => {site})\n"
                    '  |> map(fn: (r) => ({_time: r._time, _value: r.kind + " " + r.subject}))'
                ),
            },
        }
    )
    return dash


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, d in (("ems-group-overview.json", group_overview()), ("ems-site.json", site_view())):
        (OUT / name).write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
