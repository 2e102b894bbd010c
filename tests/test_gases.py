"""Named gases end to end: refused by ``ems validate`` at file:line, dead-lettered by the ingestor,
and from a simulated production line through the readings to Scope 1 by gas."""

from __future__ import annotations

import json
import time
from pathlib import Path

import brokers
import pytest
from click.testing import CliRunner

import ems
from ems.accounting import kpis
from ems.errors import LocatedError, PayloadError
from ems.model.commands import validate
from ems.model.loader import load_scenario_data, load_site
from ems.readings import MeterInfo, SiteInfo
from ems.telemetry import codec

MINI = Path(__file__).parent / "data" / "model" / "site-minimal.yaml"
mosquitto = brokers.mosquitto  # fixture

PRODUCTS = """products:
  - id: fridges
    product: refrigerators
    annual_units: 87840
    emissions:
      - {gas: HFC-245fa, kg_per_unit: 0.018, kind: process, activity: foam blowing}
      - {gas: R-600a, kg_per_unit: 0.0006, activity: charging}
refrigerants:
  - {gas: R-22, charge_kg: 100, annual_leak_rate: 0.1, services_per_year: 52}
procurement:
  certificates_sold:
    - {id: own-pv, pv: pv-a, mwh: 5, vintage: 2024, date: 2024-07-05}
"""


def _site(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(MINI.read_text() + extra)
    return p


def test_validate_refuses_an_unknown_gas_at_its_line(tmp_path):
    p = _site(tmp_path, PRODUCTS.replace("HFC-245fa", "HFC-245xx"))
    with pytest.raises(LocatedError) as exc:
        load_site(p)
    line = MINI.read_text().count("\n") + 6  # the line of the emission in the appended block
    assert f"{p}:{line}: products.0.emissions.0.gas" in str(exc.value)
    assert "unknown gas 'HFC-245xx'" in str(exc.value)
    r = CliRunner().invoke(validate, [str(p)])
    assert r.exit_code == 1 and f"{p}:{line}" in r.output
    p2 = _site(tmp_path, "refrigerants:\n  - {gas: R-41OA, charge_kg: 10}\n")
    with pytest.raises(LocatedError, match=r"refrigerants.0.gas: .*unknown gas 'R-41OA' \(did you mean .*R-410A"):
        load_site(p2)


def test_codec_refuses_unknown_gases():
    now = time.time_ns()
    ev = {"v": 1, "site": "alpha", "events": [{"ts": "2024-07-01T00:15:00Z", "kind": "refrigerant_topup", "subject": "R-999",
                                               "value": 1.0, "unit": "kg"}]}
    with pytest.raises(PayloadError) as exc:
        codec.decode_events("alpha", json.dumps(ev).encode(), now_ns=now)
    assert exc.value.reason == "unknown_gas" and "events[0].subject" in str(exc.value)
    ev["events"][0] |= {"kind": "process_emission", "subject": "foam", "detail": {"gas": "HFC-999"}}
    with pytest.raises(PayloadError, match=r"unknown_gas: .*detail.gas"):
        codec.decode_events("alpha", json.dumps(ev).encode(), now_ns=now)
    line = MeterInfo("alpha", "line-x", "line", "output", ("output_units",), 900,
                     {"product": "x", "emissions": [{"gas": "R-999", "kg_per_unit": 1.0}]})
    with pytest.raises(PayloadError, match=r"unknown_gas: .*attrs.emissions\[0\].gas"):
        codec.decode_meta("alpha", "line-x", codec.encode_meta(line))
    ok = MeterInfo("alpha", "line-x", "line", "output", ("output_units",), 900,
                   {"product": "x", "emissions": [{"gas": "r-410a", "kg_per_unit": 1.0}]})
    assert codec.decode_meta("alpha", "line-x", codec.encode_meta(ok)) == ok


@pytest.mark.service
def test_ingestor_dead_letters_an_unknown_gas(mosquitto, tmp_path):
    from ems.store import open_store
    from ems.telemetry.connection import BrokerConfig, connect_and_wait, make_client
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    dl = tmp_path / "dl.jsonl"
    ing = Ingestor(cfg, store, IngestOptions(client_id="ing-gas", batch_s=0.2, deadletter=dl)).start()
    bad = {"v": 1, "site": "alpha", "events": [{"ts": "2024-07-01T00:15:00Z", "kind": "refrigerant_topup",
                                                "subject": "R-999", "value": 1.0, "unit": "kg"}]}
    good = {"v": 1, "site": "alpha", "events": [{"ts": "2024-07-01T00:15:00Z", "kind": "refrigerant_topup",
                                                 "subject": "R-32", "value": 1.0, "unit": "kg"}]}
    client = make_client(cfg, "pub-gas")
    connect_and_wait(client, cfg)
    try:
        client.publish("ems/v1/alpha/_events", json.dumps(bad).encode(), qos=1).wait_for_publish(10)
        client.publish("ems/v1/alpha/_events", json.dumps(good).encode(), qos=1).wait_for_publish(10)
        assert ing.wait_for(lambda c: c["rejected"] >= 1, 30), ing.stats()
    finally:
        client.disconnect()
        client.loop_stop()
        ing.stop()
    records = [json.loads(x) for x in dl.read_text().splitlines()]
    assert [r["reason"] for r in records] == ["unknown_gas"] and "R-999" in records[0]["message"]
    ev = store.read().events
    assert list(ev["subject"]) == ["R-32"]  # the good message is stored, the bad one only dead-lettered
    store.close()


def test_production_line_readings_to_scope1_by_gas(tmp_path):
    (tmp_path / "site.yaml").write_text(MINI.read_text() + PRODUCTS)
    sc = load_scenario_data(
        "name: gas-week\nsites: [site.yaml]\nperiod: {start: 2024-07-01, end: 2024-07-08}\nresolution: 1h\nseed: 3\n"
        "boundary: {approach: operational_control, reason: test}\n",
        base_dir=tmp_path,
    )
    rs = ems.simulate(sc)
    line = next(m for m in rs.meters if m.meter == "line-fridges")
    assert line.kind == "line" and line.attrs["emissions"][0]["gas"] == "HFC-245fa"
    info: SiteInfo = rs.sites[0]
    assert info.attrs["boundary"] == {"approach": "operational_control", "included": True, "reason": "test"}
    res = kpis(rs, by="site", period=("2024-07-01", "2024-07-07"))
    row = res.kpis.iloc[0]
    units = row["output_units"]
    assert 0 < units < 87840 * 7 / 366 * 3  # follows the shift calendar
    assert row["scope1_process_kg"] == pytest.approx(units * 0.018 * 858, rel=1e-9)
    assert row["memo_non_kyoto_gas_kg"] == pytest.approx(units * 0.0006 + row["refrigerant_kg"], rel=1e-9)
    g = res.gases
    assert set(g["gas"]) >= {"HFC-245fa", "R-600a", "HCFC-22"}
    inst = res.instruments
    assert list(inst["status"]) == ["sold"] and inst["plant"].iloc[0] == "mini/pv-a"
    assert row["pv_sold_counted_kwh"] > 0
