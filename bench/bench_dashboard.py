"""How the dashboard behaves with a year of data in the store (writes bench/results/dashboard.md).

    python bench/bench_dashboard.py [scenario]     # default scenarios/qingdao-more-pv.yaml

Simulates the scenario (a year), writes all but its last day into a fresh embedded store
(its register aggregates kept up to date as written), then times: the monitor's first
refresh (the year's daily frame from the store's stage 1), the overview, the site view for
each range (cold and cached), and refreshes as the last day arrives in eight parts (the
incremental path: today's readings only), each followed by the overview that recomputes the
KPIs of what changed. Best of three runs of the whole sequence; the load average is recorded.
"""

from __future__ import annotations

import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

import ems
from ems.dashboard.monitor import Monitor
from ems.store import open_store

END_TO_END = "**new readings to the updated overview** (refresh + overview; target 50)"


def timed(fn: Callable[[], Any], n: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000.0


def one_run(rs: Any) -> dict[str, list[float]]:
    r = rs.readings
    cut = r.index.max() - pd.Timedelta(days=1)
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store")
        store.register_sites(rs.sites)
        store.register_meters(rs.meters)
        out["write the year but its last day"] = [timed(lambda: store.write_readings(r[r.index <= cut]))]
        store.write_events(rs.events)
        mon = Monitor(store, today_every_s=0.0)
        out["first refresh (the year's daily frame)"] = [timed(mon.refresh)]
        out["first overview (KPIs of every site)"] = [timed(mon.overview)]
        out["refresh, nothing new"] = [timed(mon.refresh)]
        out["overview (cached KPIs)"] = [timed(mon.overview, n=20)]
        site = rs.sites[0].site
        for rng in ("day", "week", "month", "year"):
            out[f"site view {rng} (cold)"] = [timed(lambda rng=rng: mon.site_view(site, rng))]
            out[f"site view {rng} (cached)"] = [timed(lambda rng=rng: mon.site_view(site, rng), n=20)]
        last = r[r.index > cut]
        edges = pd.date_range(cut, last.index.max(), periods=9)
        for a, b in itertools.pairwise(edges):
            store.write_readings(last[(last.index > a) & (last.index <= b)])
            t0 = time.perf_counter()
            out.setdefault("refresh after new readings", []).append(timed(mon.refresh))
            out.setdefault("overview after it (KPIs of the changed site)", []).append(timed(mon.overview))
            out.setdefault(END_TO_END, []).append((time.perf_counter() - t0) * 1000.0)
        out["year tce"] = [mon.overview()["sites"][0]["year"].get("total_tce", float("nan"))]
        store.close()
    return out


def main() -> None:
    scenario = sys.argv[1] if len(sys.argv) > 1 else "scenarios/qingdao-more-pv.yaml"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rs = ems.simulate(ems.load_scenario(scenario))
    sim_s = time.perf_counter() - t0
    runs = [one_run(rs) for _ in range(3)]
    best = {k: [min(r[k][i] for r in runs) for i in range(len(runs[0][k]))] for k in runs[0]}
    load1 = os.getloadavg()[0]
    lines = [
        "# Dashboard benchmark (bench/bench_dashboard.py)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average (1 min) {load0:.1f} at start, {load1:.1f} at end (shared machine).",
        "",
        f"Data: {scenario}, {len(rs.readings):,} reading rows (a year at 15 min), simulated in {sim_s:.1f} s. "
        "Best of 3 runs [ms].",
        "",
        "| step | ms |",
        "| --- | --- |",
    ]
    for k, v in best.items():
        if k == "year tce":
            continue
        lines.append(f"| {k} | {' / '.join(f'{x:.1f}' for x in v)} |")
    lines += [
        "",
        f"Year KPIs of the first site: {best['year tce'][0]:,.1f} tce.",
        "",
        "A refresh after new readings reads them, updates the latest values and stage 1 of the open day "
        "(ems.accounting.incremental.DailyFrame); the refresh whose readings close a day computes that day's "
        "daily rows. The KPIs are computed when a view asks for them, once per change: the overview after a "
        "refresh computes stage 2 of the open day (the daily frame on arrays), today's KPIs and CFE, and the year's "
        "KPIs as the cached sums of the closed days plus the open day's (ems.accounting.rollup.combine): only what "
        "changed is rolled up. The first part of the last day closes the day before (its rows and the year's sums "
        "of closed days are computed again), as does the last part.",
        "",
        f"New readings to the updated overview: median {sorted(best[END_TO_END])[len(best[END_TO_END]) // 2]:.1f} ms, "
        f"worst {max(best[END_TO_END]):.1f} ms (a refresh that closes a day).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / "dashboard.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
