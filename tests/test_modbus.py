"""Modbus TCP: the register map (pure), the gateway file, ``ems modbus`` read by a plain pymodbus client."""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import numpy as np
import pytest
from builders import make_readingset
from modbus_kit import serve_modbus

from ems.errors import LocatedError, PayloadError
from ems.modbus import registers as R
from ems.modbus.config import builtin_models, load_gateway_data
from ems.modbus.gateway import check_reading
from ems.readings import MeterInfo
from ems.telemetry import codec

pymodbus = pytest.importorskip("pymodbus")


# --------------------------------------------------------------------------- words


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize(
    ("typ", "factor", "value"),
    [("float32", 1.0, 1234.5), ("float64", 1.0, 1234567.891), ("int16", 1.0, -123.0), ("uint16", 0.1, 6553.4),
     ("int32", 1e-3, -812.5), ("uint32", 0.1, 1234567.8), ("int64", 1.0, -(2.0**40)), ("uint64", 1e-3, 98765432.125)],
)
def test_encode_decode_round_trip(typ, factor, value, order):
    reg = R.Register("power_kw", 0, typ, factor, order)
    words = R.encode(reg, value)
    assert len(words) == R.TYPES[typ].words and all(0 <= w <= 0xFFFF for w in words)
    assert R.decode(reg, words) == pytest.approx(value, rel=1e-7, abs=factor / 2)


def test_word_order_is_the_order_of_words_not_bytes():
    big = R.encode(R.Register("import_kwh", 0, "uint32", 1.0, "big"), 0x12345678)
    little = R.encode(R.Register("import_kwh", 0, "uint32", 1.0, "little"), 0x12345678)
    assert big == [0x1234, 0x5678] and little == [0x5678, 0x1234]
    # IEEE 754 single 1.0 is 0x3F800000: high word first in the SDM630 order
    assert R.encode(R.Register("power_kw", 0, "float32"), 1.0) == [0x3F80, 0x0000]


def test_not_implemented_values_decode_to_none_and_nan_is_kept():
    for typ in ("int16", "uint16", "int32", "uint32", "int64", "uint64"):
        reg = R.Register("power_kw", 0, typ)
        assert R.decode(reg, R.encode(reg, math.nan)) is None
    f = R.Register("power_kw", 0, "float32")
    assert math.isnan(R.decode(f, R.encode(f, math.nan)))
    assert R.decode(f, [0x7F80, 0]) == math.inf  # +inf: returned as is, the gateway dead-letters it


def test_unsigned_counter_wraps_like_a_meter():
    reg = R.Register("import_kwh", 0, "uint16", 1.0)
    assert R.decode(reg, R.encode(reg, 65536 + 5)) == 5


def test_units_convert_to_the_contract():
    assert R.unit_factor("W", "kW") == 1e-3 and R.unit_factor("MJ", "GJ") == 1e-3
    with pytest.raises(ValueError, match=r"convertible to kW \(W, kW, MW\), found 'Wh'"):
        R.unit_factor("Wh", "kW")


def test_plan_reads_joins_within_gap_and_limit():
    regs = [R.Register(f"q{i}", a, "float32") for i, a in enumerate((0, 2, 10, 200, 202))]
    assert [(s.address, s.count) for s in R.plan_reads(regs, max_gap=0)] == [(0, 4), (10, 2), (200, 4)]
    assert [(s.address, s.count) for s in R.plan_reads(regs, max_gap=6)] == [(0, 12), (200, 4)]
    many = [R.Register(f"q{i}", 2 * i, "float32") for i in range(100)]
    assert all(s.count <= R.MAX_READ for s in R.plan_reads(many, max_gap=0))


def test_every_meter_kinds_quantities_have_a_register_in_each_block():
    """The map's promise: every quantity a meter of the contract may send, in each clocked block.

    (A production line's ``output_units`` had none: ``ems modbus --gateway`` then wrote a gateway file
    that ``ems gateway`` refused, for the demo's Velenje line meter.)
    """
    from ems.modbus.server import served_registers
    from ems.readings import METER_KINDS

    wanted = {q for _, qs in METER_KINDS.values() for q in qs}
    for name in ("ems-em3-float32", "ems-em3-int32", "ems-em3-int64"):
        have = {r.quantity for r in builtin_models()[name].registers}
        assert wanted <= have, (name, sorted(wanted - have))  # (loading the map converted every unit)
    assert wanted <= {r.quantity for r in served_registers()}


def test_builtin_map_blocks_read_in_one_request():
    for name in ("ems-em3-float32", "ems-em3-int32", "ems-em3-int64"):
        m = builtin_models()[name]
        assert m.has_clock and len(R.plan_reads(m.registers, m.max_gap)) == 1
    assert not builtin_models()["ems-em3-sdm630"].has_clock


# --------------------------------------------------------------------------- gateway file

GOOD = """\
models:
  sdm630:
    registers:
      - {quantity: power_kw, address: 0x0034, type: float32, unit: W}
      - {quantity: import_kwh, address: 0x0048, type: float32, unit: kWh}
devices:
  - {site: alpha, meter: grid, kind: grid, host: 127.0.0.1, port: 5020, unit: 1, model: sdm630, interval_s: 900}
  - {site: alpha, meter: gas, kind: gas, host: 127.0.0.1, port: 5020, unit: 2, model: ems-em3-int64,
     interval_s: 900, poll_s: 1}
"""


def test_gateway_file_good():
    spec, models = load_gateway_data(GOOD, "gw.yaml")
    assert [d.meter for d in spec.devices] == ["grid", "gas"]
    assert models["sdm630"].register("power_kw").factor == 1e-3
    assert set(models) == {"sdm630", "ems-em3-int64"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (("unit: W}", "unit: Wh}"), r"gw\.yaml:4: models\.sdm630\.registers\.0: unit of power_kw: expected a unit convertible to kW"),
        (("type: float32, unit: kWh", "type: float33, unit: kWh"), r"gw\.yaml:5: models\.sdm630\.registers\.1\.type: expected 'int16'"),
        (("model: ems-em3-int64", "model: nope"), r"gw\.yaml:8: devices\.1\.model: expected a model of this file or"),
        (("unit: 2,", "unit: 1,"), r"gw\.yaml:8: devices\.1: expected each host, port and unit once"),
        (("kind: gas", "kind: gaz"), r"gw\.yaml:8: devices\.1\.kind: expected 'grid'"),
        (("interval_s: 900}", "interval_s: 900, poll_s: 5}"), r"gw\.yaml:7: devices\.0\.poll_s: expected interval_s \(900\)"),
        (("address: 0x0048", "address: 0x0035"), r"gw\.yaml:2: models\.sdm630: expected registers that do not overlap"),
        (("  - {site: alpha, meter: grid", "  - {site: Alpha, meter: grid"), r"gw\.yaml:7: devices\.0\.site: expected text matching"),
    ],
)
def test_gateway_file_errors_name_file_line_and_field(change, match):
    with pytest.raises(LocatedError, match=match):
        load_gateway_data(GOOD.replace(*change), "gw.yaml")


def test_gateway_file_unknown_field_is_an_error():
    with pytest.raises(LocatedError, match=r"gw\.yaml:7: devices\.0\.prot: expected a known field.*did you mean 'port'"):
        load_gateway_data(GOOD.replace("port: 5020, unit: 1", "prot: 5020, unit: 1"), "gw.yaml")


# --------------------------------------------------------------------------- checks

GRID = MeterInfo("alpha", "grid", "grid", "electricity", ("power_kw", "import_kwh", "export_kwh"), 900)


def test_check_reading_leaves_out_not_implemented_and_rejects_bad_values():
    ok = check_reading(GRID, {"power_kw": 5.0, "import_kwh": 10.0, "export_kwh": None}, 900_000_000_000, None)
    assert ok == {"power_kw": 5.0, "import_kwh": 10.0}
    prev = codec.Reading(1, 900_000_000_000, ok)
    with pytest.raises(PayloadError, match=r"register_backwards: .*import_kwh went from 10\.0"):
        check_reading(GRID, {"power_kw": 5.0, "import_kwh": 9.5}, 1_800_000_000_000, prev)
    with pytest.raises(PayloadError, match=r"non_finite: .*power_kw: expected a finite number, found nan"):
        check_reading(GRID, {"power_kw": math.nan, "import_kwh": 11.0}, 1_800_000_000_000, prev)
    with pytest.raises(PayloadError, match="interval_mismatch"):
        check_reading(GRID, {"power_kw": 1.0}, 1_800_000_000_000, prev, interval_s=60)
    with pytest.raises(PayloadError, match="missing_field"):
        check_reading(GRID, {"power_kw": None}, 1_800_000_000_000, prev)


# --------------------------------------------------------------------------- a plain pymodbus client


def _f32(regs, order="big"):
    ws = regs if order == "big" else regs[::-1]
    return struct.unpack(">f", struct.pack(">2H", *ws))[0]


def _u(regs, fmt):
    return struct.unpack(fmt, struct.pack(f">{len(regs)}H", *regs))[0]


@pytest.mark.service
def test_register_map_read_by_a_plain_pymodbus_client(tmp_path):
    """Read ems modbus with pymodbus's own client and decode by hand: the documented map holds."""
    from pymodbus.client import ModbusTcpClient

    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas", "weather"))
    with serve_modbus(rs, tmp_path, speed=0.001) as port:  # stays on the first reading
        c = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
        assert c.connect()
        try:
            first = rs.readings[rs.readings.index == rs.readings.index.min()]
            want = {(r.meter, r.quantity): r.value for r in first.itertuples()}
            ts = int(rs.readings.index.min().timestamp())
            units = {"gas": 1, "grid": 2, "weather": 3}  # meters sorted by (site, meter)
            g = c.read_input_registers(0x0200, count=38, device_id=units["grid"]).registers
            assert _u(g[0:2], ">I") == ts and _u(g[2:4], ">I") == 900  # the meter's clock
            assert _f32(g[4:6]) == np.float32(want[("grid", "power_kw")])  # float32 block, kW
            assert _f32(g[6:8]) == np.float32(want[("grid", "import_kwh")])
            assert math.isnan(_f32(g[24:26]))  # volume_m3: not on a grid meter
            sdm = c.read_input_registers(0x0048, count=4, device_id=units["grid"]).registers  # SDM630 import/export
            assert _f32(sdm[0:2]) == np.float32(want[("grid", "import_kwh")])
            hold = c.read_holding_registers(0x0034, count=2, device_id=units["grid"]).registers  # FC3 = FC4
            assert _f32(hold) == np.float32(want[("grid", "power_kw")] * 1000.0)  # SDM630: W
            i64 = c.read_input_registers(0x0500, count=72, device_id=units["grid"]).registers
            assert _u(i64[8:12], ">Q") == round(want[("grid", "import_kwh")] * 1000)  # Wh
            assert _u(i64[4:8], ">q") == round(want[("grid", "power_kw")] * 1000)  # W
            i32 = c.read_input_registers(0x0400, count=38, device_id=units["gas"]).registers
            assert _u(i32[26:28], ">I") == round(want[("gas", "volume_m3")] / 0.1)  # 0.1 m3
            assert _u(i32[6:8], ">I") == 0xFFFFFFFF  # import_kwh: not implemented on a gas meter
            w = c.read_input_registers(0x0400, count=38, device_id=units["weather"]).registers
            assert _u(w[36:38], ">i") == round(want[("weather", "temp_air_c")] / 0.01)
            # what a real meter answers
            assert c.read_input_registers(0x0100, count=2, device_id=1).exception_code == 2  # no such address
            assert c.read_input_registers(0x0200, count=2, device_id=9).exception_code == 11  # no such unit
            assert c.write_register(0x0200, 1, device_id=1).exception_code == 1  # read-only
        finally:
            c.close()


@pytest.mark.service
def test_ems_modbus_lists_units_and_writes_a_gateway_file(tmp_path):
    rs = make_readingset(sites=("alpha", "beta"), days=1, meters=("grid",))
    folder = rs.to_parquet(tmp_path / "rs")
    from ems.telemetry.broker import free_port

    port = free_port()
    res = subprocess.run([sys.executable, "-m", "ems.cli", "modbus", str(folder), "--port", str(port),
                          "--units-per-port", "1", "--gateway", str(tmp_path / "gw.yaml"), "--duration", "0.5"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"{port:>5}    1  alpha/grid" in res.stdout and f"{port + 1:>5}    1  beta/grid" in res.stdout
    spec, _ = load_gateway_data((tmp_path / "gw.yaml").read_text(), "gw.yaml")
    assert [(d.port, d.unit, d.model) for d in spec.devices] == [(port, 1, "ems-em3-float32"), (port + 1, 1, "ems-em3-float32")]
    assert [s.site for s in spec.sites] == ["alpha", "beta"]
