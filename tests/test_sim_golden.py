"""Today's readings against the golden readings of ``tests/data/sim/make_golden.py``.

The golden files were made before the simulation stopped using pvlib and SciPy at
run time (commit d999ce4: pvlib's SPA at every step at 15 min, every 10 minutes
and interpolated at one minute). The differences are documented bounds, not noise:

* 15 min: the sun's position differs by less than 1e-4 deg (``test_sun.py``),
  the AR(1) filter and the beta quantiles by less than 1e-12. Every reading is
  within 1e-3 of its unit for instantaneous values (kW, W/m2, degC, m3/h), 1e-2 for
  registers (kWh, GJ, m3, kg, RMB) and 1e-4 percentage points of state of charge.
  Events are equal (times, kinds, subjects, values; not their ``detail`` metadata).
* 1 min: the golden sun was interpolated between 10-minute points (within 0.05 deg
  of SPA), today's is SPA at every minute; irradiance and PV power then differ by
  up to 0.5 W/m2 and 0.5 kW at a minute, the battery (which decides against
  thresholds) by more at single minutes, but every register ends the day within
  1 kWh and events are equal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sim_fixtures import make_scenario, make_site

from ems.readings import QUANTITIES
from ems.sim.engine import simulate

DATA = Path(__file__).parent / "data" / "sim"
sys.path.insert(0, str(DATA))
from make_golden import RUNS  # noqa: E402

BOUNDS_15MIN = {"instant": 1e-3, "register": 1e-2, "soc_pct": 1e-4}


def _run(name: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    site, climate, start, end, res = RUNS[name]
    r = simulate(make_scenario([make_site(site, climate)], start, end, res))
    old = pd.read_parquet(DATA / f"golden-{name}.parquet")
    old_ev = pd.read_parquet(DATA / f"golden-{name}-events.parquet")
    return r.readings, old, r.events, old_ev


def _same_rows(new: pd.DataFrame, old: pd.DataFrame) -> None:
    assert len(new) == len(old)
    assert new.index.equals(old.index)
    for c in ("site", "meter", "quantity"):
        assert np.array_equal(new[c].astype(str).to_numpy(), old[c].astype(str).to_numpy()), c


def _same_events(new: pd.DataFrame, old: pd.DataFrame) -> None:
    """The same events at the same times with the same values; ``detail`` is left out, as
    it carries site-file metadata that grows with the site schema (issue 11 added some)."""
    cols = ["site", "kind", "subject", "value", "unit"]
    new = new[cols].astype({c: str for c in cols if c != "value"})
    old = old[cols].astype({c: str for c in cols if c != "value"})
    pd.testing.assert_frame_equal(new, old, check_exact=True)


def _kind(quantity: str) -> str:
    if quantity == "soc_pct":
        return "soc_pct"
    return "register" if QUANTITIES[quantity].kind == "register" else "instant"


@pytest.mark.parametrize("name", ["qingdao-week-15min", "velenje-dst-15min"])
def test_fifteen_minutes_within_bounds_of_golden(name):
    new, old, ev, old_ev = _run(name)
    _same_rows(new, old)
    diff = (new["value"].to_numpy() - old["value"].to_numpy()).__abs__()
    kinds = np.array([_kind(q) for q in old["quantity"].astype(str)])
    for kind, bound in BOUNDS_15MIN.items():
        sel = kinds == kind
        assert sel.any()
        assert diff[sel].max() <= bound, (kind, diff[sel].max())
    _same_events(ev, old_ev)


def test_one_minute_within_bounds_of_golden():
    new, old, ev, old_ev = _run("qingdao-day-1min")
    _same_rows(new, old)
    key = old["meter"].astype(str) + "." + old["quantity"].astype(str)
    diff = pd.Series(np.abs(new["value"].to_numpy() - old["value"].to_numpy()), index=key.values)
    assert diff[["weather.ghi_wm2", "weather.poa_wm2"]].max() <= 0.5
    assert diff["pv-roof.power_kw"].max() <= 0.5
    assert diff["weather.temp_air_c"].max() <= 1e-9
    last = pd.Series(new["value"].to_numpy(), index=key.values).groupby(level=0).last()
    last_old = pd.Series(old["value"].to_numpy(), index=key.values).groupby(level=0).last()
    registers = [k for k in last.index if QUANTITIES[k.split(".", 1)[1]].kind == "register"]
    assert (last[registers] - last_old[registers]).abs().max() <= 1.0
    _same_events(ev, old_ev)
