"""Property test: the energy balance closes at every step of random small sites."""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_fixtures import make_scenario, make_site

from ems.sim.engine import simulate

TOL = 1e-6

battery = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["b1"]),
        "energy_kwh": st.floats(10, 5000),
        "power_kw": st.floats(5, 2000),
        "eta_charge": st.floats(0.8, 1.0),
        "eta_discharge": st.floats(0.8, 1.0),
        "dispatch": st.one_of(
            st.just({"strategy": "self_consumption"}),
            st.just({"strategy": "tou_arbitrage"}),
            st.floats(50, 3000).map(lambda t: {"strategy": "peak_shaving", "threshold_kw": t}),
        ),
        "reliability": st.one_of(st.just({}), st.just({"mtbf_h": 30.0, "mttr_h": 5.0})),
    }
)


@st.composite
def sites(draw):
    pv = (
        [
            {
                "id": "pv1",
                "kwp": draw(st.floats(1, 8000)),
                "inverter_kw": draw(st.floats(1, 8000)),
                "reliability": draw(
                    st.one_of(st.just({}), st.just({"mtbf_h": 40.0, "mttr_h": 6.0}))
                ),
            }
        ]
        if draw(st.booleans())
        else []
    )
    bats = [draw(battery)] if draw(st.booleans()) else []
    if bats and draw(st.booleans()):
        second = draw(battery)
        second["id"] = "b2"
        bats.append(second)
    export = draw(st.one_of(st.none(), st.just(0.0), st.floats(0, 3000)))
    dr = draw(
        st.one_of(
            st.none(),
            st.just({"events_per_year": 300, "duration_h": 3, "cap_fraction": 0.3, "months": [6]}),
        )
    )
    chp = draw(st.one_of(st.none(), st.just({"kw_e": 300})))
    loads = {
        "production": {"peak_kw": draw(st.floats(0, 3000))},
        "base": {"kw": draw(st.floats(0, 500))},
    }
    return make_site(
        pv=pv,
        batteries=bats,
        loads=loads,
        chp=chp,
        grid={
            "contract_kw": draw(st.floats(100, 5000)),
            "region": "x",
            "export_limit_kw": export,
            "demand_response": dr,
            "tariff": make_site().grid.tariff.model_dump(),
        },
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=sites(), seed=st.integers(0, 2**32 - 1), days=st.integers(1, 4))
def test_energy_balance_property(site, seed, days):
    start = dt.date(2024, 6, 3)
    r = simulate(make_scenario([site], start, start + dt.timedelta(days=days), 3600, seed=seed))
    f = r.flows[site.id].frame()
    for c in (
        "pv_to_load",
        "pv_to_battery",
        "pv_to_grid",
        "pv_curtailed",
        "battery_to_load",
        "grid_to_load",
        "grid_to_battery",
        "grid_import",
        "grid_export",
        "charge",
        "discharge",
        "load",
        "shed",
    ):
        assert (f[c] >= -TOL).all(), c
    assert np.allclose(
        f["load"], f["pv_to_load"] + f["battery_to_load"] + f["grid_to_load"] + f["chp"], atol=TOL
    )
    assert np.allclose(
        f["pv"],
        f["pv_to_load"] + f["pv_to_battery"] + f["pv_to_grid"] + f["pv_curtailed"],
        atol=TOL,
    )
    assert np.allclose(f["grid_import"], f["grid_to_load"] + f["grid_to_battery"], atol=TOL)
    limit = (
        site.grid.export_limit_kw
        if site.grid.export_limit_kw is not None
        else site.grid.contract_kw
    )
    assert (f["grid_export"] <= limit + TOL).all()
    assert (f["charge"] * f["discharge"] <= TOL).all() or len(site.batteries) > 1
    for b in site.batteries:
        soc = f[f"soc.{b.id}"]
        assert (
            soc.min() >= b.soc_min * b.energy_kwh - TOL
            and soc.max() <= b.soc_max * b.energy_kwh + TOL
        )
        # SoC moves by charge x eta_c - discharge / eta_d
        e = np.concatenate([[b.soc_initial * b.energy_kwh], soc.to_numpy()])
        d = f[f"charge.{b.id}"] * b.eta_charge - f[f"discharge.{b.id}"] / b.eta_discharge
        assert np.allclose(np.diff(e), d.to_numpy(), atol=1e-6)
        assert (f[f"charge.{b.id}"] <= b.power_kw + TOL).all() and (
            f[f"discharge.{b.id}"] <= b.power_kw + TOL
        ).all()
    # the readings say the same: loads = pv + battery + grid + chp
    w = r.wide(site.id)
    lhs = w[[c for c in w if c.startswith("load-") and c.endswith(".power_kw")]].sum(axis=1)
    rhs = (
        w["grid.power_kw"]
        + sum(w[f"{p.id}.power_kw"] for p in site.pv)
        + sum(w[f"{b.id}.power_kw"] for b in site.batteries)
    )
    if site.chp is not None:
        rhs = rhs + w["chp.power_kw"]
    assert np.allclose(lhs, rhs, atol=1e-6)
