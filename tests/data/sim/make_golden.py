"""Generate the golden readings ``golden-*.parquet`` that the simulation is held to.

The files keep the readings (and events) of three small runs of the golden sites
of ``tests/sim_fixtures.py`` as the simulator made them at commit ``d999ce4``,
when the sun's position came from pvlib's NREL SPA at every step (every 10 minutes
at one-minute resolution, interpolated in between). ``tests/test_sim_golden.py``
checks that today's simulator gives the same readings within the bounds written
there. Regenerate only when the model changes on purpose, and say so in the commit.
Run from the repository root::

    python tests/data/sim/make_golden.py
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))

RUNS = {
    # name: (site, climate, start, end, resolution_s)
    "qingdao-week-15min": ("qingdao", None, dt.date(2024, 6, 3), dt.date(2024, 6, 10), 900),
    "velenje-dst-15min": ("velenje", None, dt.date(2024, 3, 28), dt.date(2024, 4, 3), 900),
    "qingdao-day-1min": ("qingdao", None, dt.date(2024, 12, 21), dt.date(2024, 12, 22), 60),
}


def main() -> None:
    from sim_fixtures import make_scenario, make_site

    from ems.sim.engine import simulate

    for name, (site, climate, start, end, res) in RUNS.items():
        r = simulate(make_scenario([make_site(site, climate)], start, end, res))
        r.readings.to_parquet(HERE / f"golden-{name}.parquet", compression="zstd")
        ev = r.events.copy()
        ev["detail"] = ev["detail"].astype(str)
        ev.to_parquet(HERE / f"golden-{name}-events.parquet", compression="zstd")
        print(name, len(r.readings))


if __name__ == "__main__":
    main()
