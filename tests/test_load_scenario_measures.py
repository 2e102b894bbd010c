"""Loading a scenario applies its physical measures and never simulates; measures sized from
KPIs are an explicit study step."""

from pathlib import Path

import pytest

import ems
from ems.model.loader import load_scenario as load_raw
from ems.model.measures import apply_physical
from ems.studies.measures import size_measures

MEASURES = Path(__file__).parents[1] / "scenarios" / "measures"


def _kwp(scenario):
    return sum(a.kwp for s in scenario.sites for a in s.pv)


def _certificates(scenario):
    return sum(len(s.procurement.certificates) for s in scenario.sites)


@pytest.fixture
def no_simulation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading a scenario simulated it")

    monkeypatch.setattr("ems.sim.engine.simulate", refuse)
    monkeypatch.setattr("ems.studies.run.run_kpis", refuse)


def test_physical_measures_applied_once_without_simulating(no_simulation):
    raw = load_raw(MEASURES / "add-pv.yaml")
    applied = ems.load_scenario(MEASURES / "add-pv.yaml")
    assert _kwp(applied) > _kwp(raw)
    assert _kwp(ems.load_scenario(MEASURES / "add-pv.yaml", measures=False)) == _kwp(raw)
    again, changes = apply_physical(applied)
    assert _kwp(again) == _kwp(applied) and [c.measure for c in changes] == ["add_pv"]


def test_measures_sized_from_kpis_wait_for_the_study_step(no_simulation):
    sc = ems.load_scenario(MEASURES / "package.yaml")  # physical ones applied; certificates sized later
    raw = load_raw(MEASURES / "package.yaml")
    assert _kwp(sc) > _kwp(raw)
    assert _certificates(sc) == _certificates(raw)
    assert [m["measure"] for m in sc.extra["measures"]][-1] == "buy_certificates"


def test_the_study_step_sizes_them():
    sc = ems.load_scenario(MEASURES / "buy-certificates.yaml")
    sized = size_measures(sc)
    assert _certificates(sized) == _certificates(sc) + 1
    assert size_measures(ems.load_scenario(MEASURES / "add-pv.yaml")).sites  # nothing to size: unchanged
