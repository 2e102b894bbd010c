"""``ems.load_scenario`` applies a scenario's measures, so run, stream and live see them."""

from pathlib import Path

import ems
from ems.model.loader import load_scenario as load_raw

ADD_PV = Path(__file__).parents[1] / "scenarios" / "measures" / "add-pv.yaml"


def _kwp(scenario):
    return sum(a.kwp for s in scenario.sites for a in s.pv)


def test_measures_applied_once():
    raw = load_raw(ADD_PV)
    applied = ems.load_scenario(str(ADD_PV))
    assert _kwp(applied) > _kwp(raw)
    assert _kwp(ems.load_scenario(str(ADD_PV), measures=False)) == _kwp(raw)
