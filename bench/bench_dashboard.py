"""How the dashboard behaves with a year of data in the store (prints figures).

    python bench/bench_dashboard.py [scenario]     # default scenarios/qingdao-more-pv.yaml

Simulates the scenario (a year), writes all but its last day into a fresh embedded
store, then times: the monitor's first refresh (the year's KPIs), the overview, the
site view for each range (cold and cached), and refreshes as the last day arrives in
chunks (the incremental path: today's KPIs only, the year's finished days cached).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import ems
from ems.dashboard.monitor import Monitor
from ems.store import open_store


def timed(label: str, fn, n: int = 1):
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    dt = (time.perf_counter() - t0) / n
    print(f"{label:<48} {dt * 1000:9.1f} ms")
    return out


def main() -> None:
    scenario = sys.argv[1] if len(sys.argv) > 1 else "scenarios/qingdao-more-pv.yaml"
    t0 = time.perf_counter()
    rs = ems.simulate(ems.load_scenario(scenario))
    print(f"simulated {scenario}: {len(rs.readings):,} rows in {time.perf_counter() - t0:.1f} s")
    r = rs.readings
    cut = r.index.max() - pd.Timedelta(days=1)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store")
        store.register_sites(rs.sites)
        store.register_meters(rs.meters)
        timed("write the year but its last day", lambda: store.write_readings(r[r.index <= cut]))
        store.write_events(rs.events)
        mon = Monitor(store, today_every_s=0.0)
        timed("first refresh (year KPIs of every site)", mon.refresh)
        timed("refresh, nothing new", mon.refresh)
        timed("overview (cached group KPIs)", mon.overview, n=20)
        for rng in ("day", "week", "month", "year"):
            timed(f"site view {rng} (cold)", lambda rng=rng: mon.site_view(rs.sites[0].site, rng))
            timed(
                f"site view {rng} (cached)",
                lambda rng=rng: mon.site_view(rs.sites[0].site, rng),
                n=20,
            )
        last = r[r.index > cut]
        edges = pd.date_range(cut, last.index.max(), periods=5)
        for i, (a, b) in enumerate(itertools.pairwise(edges)):
            store.write_readings(last[(last.index > a) & (last.index <= b)])
            timed(f"refresh after new readings ({i + 1}/4 of a day)", mon.refresh)
        print(
            f"year KPIs of {mon.sites[rs.sites[0].site].info.site}: "
            f"{mon.overview()['sites'][0]['year'].get('total_tce', float('nan')):,.1f} tce"
        )
        store.close()


if __name__ == "__main__":
    main()
