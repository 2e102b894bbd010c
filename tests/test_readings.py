import pandas as pd
import pytest

from ems.errors import ReadingError
from ems.readings import (
    QUANTITIES,
    MeterInfo,
    empty_readings,
    events_frame,
    validate_readings,
)


def test_empty_readings_is_valid():
    validate_readings(empty_readings())


def test_naive_index_rejected():
    df = empty_readings()
    df.index = pd.DatetimeIndex([], name="ts")
    with pytest.raises(ReadingError, match="tz-aware"):
        validate_readings(df)


def test_unknown_quantity_rejected():
    idx = pd.DatetimeIndex(["2024-01-01T00:15Z"], name="ts")
    df = pd.DataFrame({"site": ["a"], "meter": ["grid"], "quantity": ["watts"], "value": [1.0]}, index=idx)
    with pytest.raises(ReadingError, match="unknown quantities"):
        validate_readings(df)


def test_meterinfo_roundtrip():
    m = MeterInfo("a", "grid", "grid", "electricity", ("power_kw", "import_kwh"), 900, {"x": 1})
    assert MeterInfo.from_dict(m.to_dict()) == m


def test_units_in_names():
    for name, q in QUANTITIES.items():
        assert name.endswith(("_kw", "_kwh", "_gj", "_m3", "_m3h", "_kg", "_rmb", "_units", "_pct", "_wm2", "_c"))
        assert q.kind in {"register", "average", "instant"}


def test_events_frame_needs_tz():
    with pytest.raises(ReadingError, match="tz-aware"):
        events_frame([{"ts": "2024-01-01 00:00", "site": "a", "kind": "certificate"}])
    ev = events_frame([{"ts": "2024-01-01 00:00Z", "site": "a", "kind": "certificate", "detail": {"vintage": 2024}}])
    assert ev.index.tz is not None and ev["detail"].iloc[0] == '{"vintage": 2024}'


def test_readings_doc_in_step_with_code():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen", root / "scripts/gen_readings_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (root / "docs/readings.md").read_text() == mod.render(), "run scripts/gen_readings_doc.py"
