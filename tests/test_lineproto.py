"""Property tests of :func:`ems.store.lineproto.reading_lines` (the vectorised write path)
against a row-by-row reference written from the line protocol spec: hostile names
(spaces, commas, equals signs, backslashes, quotes, unicode, newlines), any float,
repeated keys and any row order give the same bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from ems.readings import MeterInfo, SiteInfo
from ems.store import lineproto

HOSTILE = st.text(alphabet=st.sampled_from([*list("ab=, \\\"'\n\r\t#é水🔥"), "\u2028"]), min_size=1, max_size=6)


def reference_lines(df: pd.DataFrame, meters: dict, sites: dict) -> list[str]:
    """One line per (site, meter, second), the last value of each field, by plain loops."""
    last: dict[tuple[str, str, int], dict[str, float]] = {}
    secs = df.index.as_unit("ns").asi8 // 1_000_000_000
    for t, s, m, q, v in zip(secs.tolist(), df["site"], df["meter"], df["quantity"], df["value"], strict=True):
        last.setdefault((s, m, t), {})[q] = v
    out = []
    for (s, m, t) in sorted(last):
        fields = ",".join(f"{lineproto.escape_key(q)}={float(v)!r}" for q, v in sorted(last[(s, m, t)].items()))
        out.append(f"{lineproto.series_prefix(meters[(s, m)], sites[s])} {fields} {t}")
    return out


@st.composite
def frames(draw):
    site_ids = draw(st.lists(HOSTILE, min_size=1, max_size=3, unique=True))
    sites = {
        s: SiteInfo(site=s, name=s, group=draw(HOSTILE), company=draw(HOSTILE), park=draw(st.just("") | HOSTILE),
                    tz="UTC", lat=0.0, lon=0.0, country="CN", grid_region="CN-East", factor_set="cn-2024")
        for s in site_ids
    }
    meters = {}
    for s in site_ids:
        for m in draw(st.lists(HOSTILE, min_size=1, max_size=3, unique=True)):
            qs = tuple(draw(st.lists(HOSTILE, min_size=1, max_size=3, unique=True)))
            meters[(s, m)] = MeterInfo(s, m, draw(HOSTILE), draw(HOSTILE), qs, 900)
    keys = list(meters)
    rows = draw(st.lists(
        st.tuples(st.sampled_from(keys), st.integers(-3, 3), st.data()), min_size=1, max_size=40))
    data = []
    for (s, m), k, d in rows:
        q = d.draw(st.sampled_from(meters[(s, m)].quantities))
        v = d.draw(st.floats(allow_nan=False, allow_infinity=False))
        data.append((pd.Timestamp("2024-01-01T00:00Z") + pd.Timedelta(seconds=900 * k), s, m, q, v))
    df = pd.DataFrame(data, columns=["ts", "site", "meter", "quantity", "value"]).set_index("ts")
    if draw(st.booleans()):
        for c in ("site", "meter", "quantity"):
            df[c] = df[c].astype("category")
    return df, meters, sites


@settings(max_examples=300, deadline=None)
@given(frames(), st.integers(1, 12))
def test_reading_lines_equal_the_row_by_row_reference(case, chunk_rows):
    df, meters, sites = case
    lines = lineproto.reading_lines(df, meters, sites)
    assert lines == reference_lines(df, meters, sites)
    chunks = list(lineproto.reading_line_chunks(df, meters, sites, chunk_rows=chunk_rows))
    assert [line for c in chunks for line in c] == lines
    assert all(c for c in chunks)  # no empty chunk
    # a raw newline never reaches the wire: each string is exactly one line
    assert all("\n" not in line for line in lines)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_reading_lines_format_every_float_as_repr(values):
    m = MeterInfo("s", "m", "grid", "electricity", ("power_kw",), 900)
    site = SiteInfo(site="s", name="s", group="g", company="c", park="p", tz="UTC", lat=0.0, lon=0.0,
                    country="CN", grid_region="CN-East", factor_set="cn-2024")
    ts = pd.date_range("2024-01-01T00:00Z", periods=len(values), freq="s", name="ts")
    df = pd.DataFrame({"site": "s", "meter": "m", "quantity": "power_kw", "value": values}, index=ts)
    lines = lineproto.reading_lines(df, {("s", "m"): m}, {"s": site})
    assert [ln.split(" ")[1] for ln in lines] == [f"power_kw={v!r}" for v in np.asarray(values, float).tolist()]


def test_hostile_names_are_escaped_as_the_spec_says():
    m = MeterInfo('s 1,"x"', "m=1\\", "grid,a b", "elec\ntricity", ("p kw,=\\",), 900)
    site = SiteInfo(site='s 1,"x"', name="n", group="g=1", company="Acme Co", park="", tz="UTC", lat=0.0,
                    lon=0.0, country="CN", grid_region="CN-East", factor_set="cn-2024")
    df = pd.DataFrame({"site": [m.site], "meter": [m.meter], "quantity": ["p kw,=\\"], "value": [1.0]},
                      index=pd.DatetimeIndex(["2024-01-01T00:00Z"], name="ts"))
    (line,) = lineproto.reading_lines(df, {(m.site, m.meter): m}, {m.site: site})
    assert line == (
        'grid\\,a\\ b,carrier=elec\\ntricity,company=Acme\\ Co,group=g\\=1,meter=m\\=1\\\\,'
        'site=s\\ 1\\,"x" p\\ kw\\,\\=\\\\=1.0 1704067200'
    )
