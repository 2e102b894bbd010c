"""The pvlib floor of ``bench/bench_sim.py``: clear-sky plane-of-array irradiance, nothing else.

    python bench/pvlib_floor.py SITES.json            # from the command line, as ``ems run`` is
    python bench/pvlib_floor.py SITES.json --repeat 3 # also prints compute-only seconds

``SITES.json`` (written by ``bench/bench_sim.py``) lists each site's location and
arrays, and the period and resolution. For every site this computes what a PV
simulation cannot do without: the solar position (pvlib's NREL SPA, ``nrel_numpy``),
the Ineichen clear sky (with pvlib's Linke turbidity table) and the transposition of
every array to its plane (isotropic sky), at the interval midpoints of the local
year. It imports pvlib and pandas only: its wall time from the command line is the
floor that ``ems run`` of the same sites is compared with.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def floor(spec: dict[str, Any]) -> float:
    """Seconds pvlib takes for the clear-sky POA of every array of the sites."""
    import pandas as pd
    import pvlib

    t = time.perf_counter()
    step = pd.Timedelta(seconds=spec["resolution_s"])
    for s in spec["sites"]:
        t0 = pd.Timestamp(spec["start"]).tz_localize(s["tz"]).tz_convert("UTC")
        t1 = pd.Timestamp(spec["end"]).tz_localize(s["tz"]).tz_convert("UTC")
        mid = pd.date_range(t0 + step / 2, t1, freq=step, inclusive="left")
        loc = pvlib.location.Location(s["lat"], s["lon"], "UTC", s["altitude_m"])
        sp = loc.get_solarposition(mid)
        cs = loc.get_clearsky(mid, model="ineichen", solar_position=sp)
        for tilt, az in s["arrays"] or [[20.0, 180.0]]:
            pvlib.irradiance.get_total_irradiance(
                tilt, az, sp["apparent_zenith"], sp["azimuth"], cs["dni"], cs["ghi"], cs["dhi"]
            )
    return time.perf_counter() - t


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 1
    times = [floor(spec) for _ in range(repeat)]
    print(json.dumps({"compute_s": min(times)}))


if __name__ == "__main__":
    main()
