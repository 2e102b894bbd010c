"""Weather from an EPW file (a generated test file, see tests/data/sim/make_epw.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib
import pytest
from sim_fixtures import make_scenario, make_site

from ems.errors import ConfigError
from ems.sim.engine import simulate
from ems.sim.weather import read_weather_file

EPW = Path(__file__).parent / "data" / "sim" / "qingdao_synthetic.epw"


def _site():
    return make_site(weather={"source": "epw", "path": str(EPW)})


def test_epw_year_keeps_the_file_energy_and_timing():
    r = simulate(make_scenario([_site()], dt.date(2023, 1, 1), dt.date(2024, 1, 1), 3600))
    w = r.wide("qingdao")
    data, _ = pvlib.iotools.read_epw(str(EPW), coerce_year=2023)
    assert w["weather.ghi_wm2"].sum() == pytest.approx(data["ghi"].sum(), rel=0.01)
    assert w["weather.temp_air_c"].mean() == pytest.approx(data["temp_air"].mean(), abs=0.05)
    # same hour, same value: the file's hour (pvlib labels its start) = our interval
    ours = w["weather.ghi_wm2"].to_numpy()
    theirs = data["ghi"].to_numpy()
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99
    y = r.summary().loc["qingdao", "pv_specific_yield_kwh_per_kwp"]
    assert 1150 < y < 1400


def test_epw_at_quarter_hours_interpolates():
    r = simulate(make_scenario([_site()], dt.date(2024, 6, 3), dt.date(2024, 6, 4), 900))
    ghi = r.wide("qingdao")["weather.ghi_wm2"]
    assert len(ghi) == 96 and ghi.max() > 300 and ghi.min() == 0


def test_missing_weather_file_is_a_config_error(tmp_path):
    idx = pd.date_range("2024-01-01", periods=3, freq="h", tz="Asia/Shanghai")
    with pytest.raises(ConfigError, match="expected an EPW file, found nothing"):
        read_weather_file(tmp_path / "none.epw", "epw", idx)
    bad = tmp_path / "bad.epw"
    bad.write_text("not an epw\n")
    with pytest.raises(ConfigError, match="expected a readable EPW file"):
        read_weather_file(bad, "epw", idx)
