"""The incremental daily frame: fed readings batch by batch, its daily rows equal the daily
rows of all readings at once."""

import numpy as np
import pandas as pd
import pytest
from builders import TARIFF, plant

from ems.accounting.energy import stage1
from ems.accounting.incremental import DailyFrame
from ems.accounting.kpis import _factor_sets, _Used, daily_frame

COLUMNS = ["grid_import_kwh", "grid_export_kwh", "pv_generated_kwh", "pv_exported_kwh", "electricity_consumed_kwh",
           "steam_gj", "output_rmb", "electricity_tce_calorific", "energy_cost", "peak_import_kw", "hours"]


def _want(rs):
    return daily_frame(stage1(rs).energy, rs, _factor_sets(rs, None), _Used())[0]


@pytest.mark.parametrize("batch", [12, 96])
def test_fed_in_batches_it_equals_all_at_once(batch):
    rs = plant({"a": "A"}, n=3 * 96 + 20, tariff=TARIFF)
    r = rs.readings
    ts = np.unique(r.index.asi8)
    frame = DailyFrame(rs.sites[0], rs.meters, rs.events)
    for i in range(0, len(ts), batch):
        lo = ts[max(0, i - 1)]  # overlapping polls, as the dashboard reads them
        got = r[(r.index.asi8 >= lo) & (r.index.asi8 <= ts[min(i + batch, len(ts)) - 1])]
        frame.add(got)
    assert frame.open_from == pd.Timestamp("2024-07-04", tz="Asia/Shanghai").value  # three days closed
    want = _want(rs).set_index("date")[COLUMNS]
    got = frame.daily.set_index("date")[COLUMNS]
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)


def test_reset_from_closed_rows_then_readings():
    rs = plant({"a": "A"}, n=2 * 96 + 40, tariff=TARIFF)
    r = rs.readings
    cut = pd.Timestamp("2024-07-02", tz="Asia/Shanghai").value
    closed = stage1(rs).energy
    frame = DailyFrame(rs.sites[0], rs.meters, rs.events)
    frame.reset(closed, cut, r[r.index.asi8 >= cut - 86_400_000_000_000])
    pd.testing.assert_frame_equal(frame.daily.set_index("date")[COLUMNS], _want(rs).set_index("date")[COLUMNS],
                                  check_exact=False, rtol=1e-12)
    assert len(frame.today) == 2  # 2 July and the start of 3 July (local)
