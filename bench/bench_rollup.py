"""Benchmark: a year of ten sites at 15 minutes (~25 quantities a site, ~9 M rows) rolled
up into every KPI by local day, month and year.

Run: ``python bench/bench_rollup.py`` (writes ``bench/results/rollup.md``). Target <= 1 s for
the rollup (stage 1 + daily frame + three rollups), not counting data generation.

The data carry what the carbon accounting reads: three production lines a site (unit
registers with per-unit gas emissions), monthly certificate retirements with serials and
plants, monthly contract deliveries and refrigerant top-ups. ``--anchor REV`` (default: the
merge base with ``main``) times the same group-year rollup with the code of REV in a
subprocess, on the same readings less the unit registers that code does not know, and
reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from ems.accounting.energy import stage1
from ems.accounting.factors import load_factor_set
from ems.accounting.kpis import _Used, daily_frame, kpis, rollup
from ems.readings import MeterInfo, ReadingSet, SiteInfo, events_frame

T = TypeVar("T")

TARIFF = {
    "currency": "CNY",
    "prices": {"sharp": 1.3, "peak": 1.0, "flat": 0.65, "valley": 0.3},
    "seasons": [
        {"months": [7, 8], "windows": [{"period": "sharp", "start_h": 19, "end_h": 21},
                                       {"period": "peak", "start_h": 8, "end_h": 11},
                                       {"period": "valley", "start_h": 23, "end_h": 7}], "default": "flat"},
        {"months": [1, 2, 3, 4, 5, 6, 9, 10, 11, 12],
         "windows": [{"period": "peak", "start_h": 8, "end_h": 11}, {"period": "valley", "start_h": 23, "end_h": 7}],
         "default": "flat"},
    ],
    "demand_charge_per_kw_month": 38.0,
    "export_price": 0.39,
}

# meter -> (kind, carrier, [(quantity, mean per-interval increment or level)])
LAYOUT = [
    ("grid", "grid", "electricity", [("power_kw", None), ("import_kwh", 500.0), ("export_kwh", 5.0)]),
    ("pv1", "pv", "electricity", [("power_kw", None), ("energy_kwh", 120.0), ("curtailed_kwh", 1.0)]),
    ("pv2", "pv", "electricity", [("power_kw", None), ("energy_kwh", 80.0), ("curtailed_kwh", 1.0)]),
    ("bess", "battery", "electricity", [("power_kw", None), ("charge_kwh", 50.0), ("discharge_kwh", 45.0), ("soc_pct", None)]),
    ("load-production", "load", "electricity", [("power_kw", None), ("energy_kwh", 400.0)]),
    ("load-hvac", "load", "electricity", [("power_kw", None), ("energy_kwh", 150.0)]),
    ("load-base", "load", "electricity", [("power_kw", None), ("energy_kwh", 100.0)]),
    ("steam", "steam", "heat", [("heat_kw", None), ("heat_gj", 0.8)]),
    ("gas", "gas", "natural_gas", [("flow_m3h", None), ("volume_m3", 20.0)]),
    ("fleet", "fuel", "diesel", [("mass_kg", 0.3)]),
    ("production", "production", "output", [("output_rmb", 20000.0)]),
    ("line-ac", "line", "output", [("output_units", 40.0)]),
    ("line-fridge", "line", "output", [("output_units", 30.0)]),
    ("line-heater", "line", "output", [("output_units", 5.0)]),
]
LINE_GASES = {
    "line-ac": [{"gas": "R-32", "kg_per_unit": 0.009, "kind": "fugitive", "activity": "charging losses"}],
    "line-fridge": [{"gas": "HFC-245fa", "kg_per_unit": 0.018, "kind": "process", "activity": "foam blowing"},
                    {"gas": "R-600a", "kg_per_unit": 0.0006, "kind": "fugitive", "activity": "charging losses"}],
    "line-heater": [{"gas": "HCFC-141b", "kg_per_unit": 0.02, "kind": "process", "activity": "foam blowing"}],
}


def make(n_sites: int = 10, year: int = 2024, interval_s: int = 900, seed: int = 1) -> ReadingSet:
    rng = np.random.default_rng(seed)
    tz = "Asia/Shanghai"
    t0 = pd.Timestamp(f"{year}-01-01", tz=tz).tz_convert("UTC")
    t1 = pd.Timestamp(f"{year + 1}-01-01", tz=tz).tz_convert("UTC")
    ts = pd.date_range(t0, t1, freq=pd.Timedelta(seconds=interval_s)).as_unit("ns")
    n = len(ts)
    sites, meters, cols = [], [], []
    for i in range(n_sites):
        sid = f"site{i:02d}"
        sites.append(SiteInfo(sid, sid, "group", f"company{i % 3}", f"park{i % 5}", tz, 30.0, 120.0, "CN",
                              "CN-East", "cn-2023", {"tariff": TARIFF, "contract_kw": 5000}))
        for m, kind, carrier, qs in LAYOUT:
            attrs: dict[str, object] = {"energy_kwh": 2000.0} if kind == "battery" else {}
            if kind == "line":
                attrs = {"product": m, "emissions": LINE_GASES[m]}
            meters.append(MeterInfo(sid, m, kind, carrier, tuple(q for q, _ in qs), interval_s, attrs))
            for q, mean in qs:
                if mean is None:
                    vals = rng.random(n) * 100.0
                else:
                    vals = np.cumsum(rng.random(n) * 2 * mean)
                cols.append((sid, m, q, vals))
    k = len(cols)
    # rows ordered by ts, then series (what a store returns for ORDER BY ts)
    value = np.stack([c[3] for c in cols], axis=1).reshape(-1)
    sidx = np.tile(np.arange(k), n)
    site_cat = pd.Categorical.from_codes(np.asarray([sorted({c[0] for c in cols}).index(c[0]) for c in cols])[sidx],
                                         categories=sorted({c[0] for c in cols}))
    mnames = sorted({c[1] for c in cols})
    qnames = sorted({c[2] for c in cols})
    meter_cat = pd.Categorical.from_codes(np.asarray([mnames.index(c[1]) for c in cols])[sidx], categories=mnames)
    q_cat = pd.Categorical.from_codes(np.asarray([qnames.index(c[2]) for c in cols])[sidx], categories=qnames)
    idx = pd.DatetimeIndex(np.repeat(ts.asi8, k).view("M8[ns]"), tz="UTC", name="ts")
    df = pd.DataFrame({"site": site_cat, "meter": meter_cat, "quantity": q_cat, "value": value}, index=idx)
    plant = {"plant": "wind farm", "plant_commissioned": f"{year - 3}-06-30", "market_boundary": "CN"}
    certs = [
        {"ts": f"{year}-{m:02d}-15T02:00Z", "site": s.site, "kind": "certificate", "subject": "GEC", "value": 100.0,
         "detail": {"id": f"gec-{m}", "vintage": year, "period_year": year, "technology": "wind", **plant,
                    "serials": {"prefix": f"GEC-{s.site}", "first": 100 * m + 1, "last": 100 * m + 100}}}
        for s in sites for m in range(1, 13)
    ]
    contracts = [
        {"ts": f"{year}-{m:02d}-28T02:00Z", "site": s.site, "kind": "contract_delivery", "subject": "hydro", "value": 50.0,
         "detail": {"id": "hydro", "period_start": f"{year}-{m:02d}-01", "period_end": f"{year}-{m:02d}-28", **plant}}
        for s in sites for m in range(1, 13)
    ]
    topups = [{"ts": f"{year}-06-01T02:00Z", "site": s.site, "kind": "refrigerant_topup", "subject": "R-410A", "value": 3.0}
              for s in sites]
    return ReadingSet(readings=df, events=events_frame(certs + contracts + topups), meters=meters, sites=sites)


def _machine() -> str:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return (f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, Python {platform.python_version()}, "
            f"numpy {np.__version__}, pandas {pd.__version__}; load average {load:.1f} when written")


def _timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Run ``fn``; return (wall [s], CPU of this process [s], result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


WORKER = """
import json, sys, time
from ems.accounting.energy import stage1
from ems.accounting.factors import load_factor_set
from ems.accounting.kpis import _Used, daily_frame, kpis, rollup
from ems.readings import ReadingSet
rs = ReadingSet.from_parquet(sys.argv[1])
fsets = {s.site: load_factor_set(s.factor_set) for s in rs.sites}
def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out
runs = []
for _ in range(int(sys.argv[2])):
    a = timed(lambda: stage1(rs))
    b = timed(lambda: daily_frame(a[2].energy, rs, fsets, _Used())[0])
    c = timed(lambda: rollup(b[2], by="group", period="year"))
    k = timed(lambda: kpis(rs, by="group", period="year"))
    runs.append([a[:2], b[:2], c[:2], k[:2], (a[0] + b[0] + c[0], a[1] + b[1] + c[1])])
print(json.dumps({"runs": runs, "scope1_t": float(c[2]["scope1_t"].iloc[0]),
                  "green_kwh": float(c[2]["green_kwh"].iloc[0])}))
"""


def _anchor_rev(rev: str | None) -> str:
    if rev:
        return rev
    out = subprocess.run(["git", "merge-base", "HEAD", "main"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return out.stdout.strip()


def _worker(code_root: Path, data: Path, repeats: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(data), str(repeats)], capture_output=True, text=True,
                         env=env, check=True, cwd=str(code_root))
    res: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def anchor_comparison(rs: ReadingSet, rev: str, repeats: int = 5) -> list[str]:
    """Group-year rollup of this code and of REV on the same readings (REV without the unit registers)."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-anchor-") as tmp:
        old_root = Path(tmp) / "anchor"
        old_root.mkdir()
        arch = subprocess.run(["git", "archive", rev, "ems"], capture_output=True, check=True, cwd=repo).stdout
        subprocess.run(["tar", "-x", "-C", str(old_root)], input=arch, check=True)
        rs.to_parquet(Path(tmp) / "new")
        old = ReadingSet(readings=rs.readings[rs.readings["quantity"] != "output_units"], events=rs.events,
                         meters=[m for m in rs.meters if m.kind != "line"], sites=rs.sites)
        old.readings = old.readings.assign(quantity=old.readings["quantity"].cat.remove_unused_categories())
        old.to_parquet(Path(tmp) / "old")
        new_r = _worker(repo, Path(tmp) / "new", repeats)
        old_r = _worker(old_root, Path(tmp) / "old", repeats)

    def best(r: dict[str, object], i: int, j: int) -> float:
        return min(float(run[i][j]) for run in r["runs"])  # type: ignore[index, attr-defined]

    names = ["stage 1", "daily frame", "group-year rollup", "one `kpis(rs, by='group', period='year')` call",
             "**total** (stage 1 + daily frame + group-year rollup)"]
    lines = [
        f"| step | this code, best CPU of {repeats} [s] | anchor `{rev[:10]}`, best CPU [s] | ratio | this code, best wall [s] | anchor, best wall [s] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, n in enumerate(names):
        nc, oc, nw, ow = best(new_r, i, 1), best(old_r, i, 1), best(new_r, i, 0), best(old_r, i, 0)
        lines.append(f"| {n} | {nc:.3f} | {oc:.3f} | {nc / oc:.2f} | {nw:.3f} | {ow:.3f} |")
    lines += ["", f"Scope 1 of the group with per-gas emissions: {new_r['scope1_t']:,.0f} t (anchor, combustion and "
              f"top-ups only: {old_r['scope1_t']:,.0f} t); green kWh {new_r['green_kwh']:,.0f} (anchor {old_r['green_kwh']:,.0f})."]
    return lines


def _steps(rs: ReadingSet) -> tuple[list[float], list[float], dict[str, pd.DataFrame]]:
    """Best wall and CPU of 7 runs of stage 1, daily frame, rollups and their total; the last rollups."""
    fsets = {s.site: load_factor_set(s.factor_set) for s in rs.sites}
    runs = []
    frames: dict[str, pd.DataFrame] = {}
    for _ in range(7):
        w1, c1, s1 = _timed(lambda: stage1(rs))
        w2, c2, out = _timed(lambda: daily_frame(s1.energy, rs, fsets, _Used()))  # noqa: B023
        daily = out[0]

        def rollups() -> dict[str, pd.DataFrame]:
            f = {p: rollup(daily, by="site", period=p) for p in ("day", "month", "year")}  # noqa: B023
            f["group-year"] = rollup(daily, by="group", period="year")  # noqa: B023
            return f

        w3, c3, frames = _timed(rollups)
        runs.append(((w1, c1), (w2, c2), (w3, c3), (w1 + w2 + w3, c1 + c2 + c3)))
    return [min(r[i][0] for r in runs) for i in range(4)], [min(r[i][1] for r in runs) for i in range(4)], frames


ANCHOR_TEXT = (
    "Same machine, same run, each side in its own subprocess: this code reads the readings above (three "
    "production lines a site with per-unit gas emissions, 120 certificate retirements with serials and "
    "plants checked against RE100, 120 contract deliveries); the anchor reads the same readings without "
    "the unit registers (its readings contract has no `output_units`) and counts certificates without "
    "a registry."
)


def _step_lines(best_w: list[float], best_c: list[float], one: list[tuple[float, float]], lost: list[tuple[float, float]],
                lost_kpis: list[tuple[float, float]], gen_path: list[tuple[float, float]]) -> list[str]:
    return [
        "| step | best wall of 7 [s] | best CPU of 7 [s] |",
        "| --- | --- | --- |",
        f"| stage 1 (registers -> per site, meter, quantity, local day, tariff period) | {best_w[0]:.3f} | {best_c[0]:.3f} |",
        f"| daily frame (flows, tce, emissions, cost, certificates) | {best_w[1]:.3f} | {best_c[1]:.3f} |",
        f"| rollups: site x day, month, year + group x year | {best_w[2]:.3f} | {best_c[2]:.3f} |",
        f"| **total** (target <= 1 s) | **{best_w[3]:.3f}** | **{best_c[3]:.3f}** |",
        f"| one `kpis(rs, by='company', period='month')` call (best of 3) | {min(o[0] for o in one):.3f} | "
        f"{min(o[1] for o in one):.3f} |",
        f"| with 0.1 % of the messages lost (gaps): stage 1 (best of 3) | "
        f"{min(o[0] for o in lost):.3f} | {min(o[1] for o in lost):.3f} |",
        f"| with 0.1 % of the messages lost: one `kpis(rs, by='site', period='month')` (best of 2) | "
        f"{min(o[0] for o in lost_kpis):.3f} | {min(o[1] for o in lost_kpis):.3f} |",
        f"| stage 1 of the rows shuffled (sorted by series and ts first; best of 3) | "
        f"{min(g[0] for g in gen_path):.3f} | {min(g[1] for g in gen_path):.3f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", default=None, help="git revision to compare with (default: merge base with main)")
    ap.add_argument("--no-anchor", action="store_true", help="skip the anchor comparison")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t = time.perf_counter()
    rs = make()
    gen = time.perf_counter() - t
    rows = len(rs.readings)
    best_w, best_c, frames = _steps(rs)
    one = [_timed(lambda: kpis(rs, by="company", period="month"))[:2] for _ in range(3)]
    # rows in no order: stage 1 sorts them by series and ts first
    shuffled = ReadingSet(readings=rs.readings.sample(frac=1.0, random_state=3), events=rs.events,
                          meters=rs.meters, sites=rs.sites)
    gen_path = [_timed(lambda: stage1(shuffled))[:2] for _ in range(3)]
    # 0.1 % of the messages lost: gaps split pro rata
    lossy = ReadingSet(
        readings=rs.readings[np.random.default_rng(2).random(rows) > 0.001],
        events=rs.events, meters=rs.meters, sites=rs.sites,
    )
    lost = [_timed(lambda: stage1(lossy))[:2] for _ in range(3)]
    lost_kpis = [_timed(lambda: kpis(lossy, by="site", period="month"))[:2] for _ in range(2)]
    rev = "" if args.no_anchor else _anchor_rev(args.anchor)
    anchor = anchor_comparison(rs, rev) if rev else []
    load1 = os.getloadavg()
    lines = [
        "# Rollup benchmark (bench/bench_rollup.py)",
        "",
        f"Machine: {_machine()}",
        "",
        f"Load average (1 min) at start {load0[0]:.1f}, at end {load1[0]:.1f}: the machine is shared, so wall "
        "times above ~1 are inflated; CPU time (`time.process_time()`) is what this single-threaded work "
        "costs on a quiet machine.",
        "",
        f"Data: 10 sites x 1 year at 15 min, {rows:,} reading rows ({sum(len(x[3]) for x in LAYOUT)} quantities a "
        f"site, {sum(1 for x in LAYOUT for q in x[3] if q[1] is not None)} registers), "
        f"ordered by ts; generated in {gen:.1f} s.",
        "",
        *_step_lines(best_w, best_c, one, lost, lost_kpis, gen_path),
        "",
        f"KPI rows: day {len(frames['day'])}, month {len(frames['month'])}, year {len(frames['year'])}.",
        "",
        "Stage 1 is one implementation (ems/accounting/energy/) that works series by series on views "
        "of the rows: ts-major rows like these (every timestamp carries the same series) are strided "
        "views, series-major rows (the simulator's) slices, anything else is sorted by series and ts "
        "first (rows in time order: a radix sort by series; rows in no order: a counting sort by series and "
        "rank of ts). It gives the same numbers, bit for bit, in every row order. The series of a ts-major "
        "block share their interval starts, so their hours, days and tariff periods are worked out once; the "
        "daily frame is built on arrays (it is now cheaper than before the certificate registry and Scope 1 "
        "by gas came in); what remains above the anchor's stage 1 is the per-series loop on strided views. "
        "The first stage 1 of a shuffled year in a process pays for its memory (~0.8 s more on this VM).",
    ]
    if anchor:
        lines += ["", "## With the certificate registry and Scope 1 by gas, against the anchor", "", ANCHOR_TEXT, "", *anchor]
    text = "\n".join(lines) + "\n"
    print(text)
    out_md = Path(__file__).resolve().parent / "results" / "rollup.md"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)


if __name__ == "__main__":
    main()
