"""Bad telemetry messages, one per rejection reason: (reason, topic, payload)."""

from __future__ import annotations

import json

GOOD_READING = {"seq": 1, "ts": "2024-07-01T00:15:00Z", "values": {"power_kw": 1.5, "import_kwh": 10.0}}


def data(readings=None, **over) -> bytes:
    doc = {"v": 1, "site": "alpha", "meter": "grid", "interval_s": 900,
           "readings": readings if readings is not None else [GOOD_READING]}
    doc.update(over)
    return json.dumps(doc).encode()


def reading(**over) -> dict:
    r = json.loads(json.dumps(GOOD_READING))
    r.update(over)
    return r


T = "ems/v1/alpha/grid"

BAD_CASES: list[tuple[str, str, bytes]] = [
    ("malformed_json", T, b'{"v": 1, "site": '),
    ("invalid_utf8", T, b'{"v": 1, "site": "\xff\xfe"}'),
    ("oversized", T, b'{"pad": "' + b"x" * (1 << 20) + b'"}'),
    ("not_an_object", T, b"[1, 2, 3]"),
    ("too_deep", T, b'{"v": 1, "x": ' + b"[" * 40 + b"]" * 40 + b"}"),
    ("wrong_version", T, data(v=2)),
    ("bad_topic", "ems/v1/Alpha/grid", data()),
    ("bad_topic", T, data(site="beta")),
    ("unknown_site", "ems/v1/nosuch/grid", data(site="nosuch")),
    ("unknown_meter", "ems/v1/alpha/nosuch", data(meter="nosuch")),
    ("missing_field", T, data(readings=[])),
    ("missing_field", T, data(readings=[{"seq": 1, "values": {"power_kw": 1.0}}])),
    ("wrong_type", T, data(readings=[reading(values={"power_kw": "12"})])),
    ("wrong_type", T, data(interval_s="900")),
    ("unknown_quantity", T, data(readings=[reading(values={"power_w": 1500.0})])),
    ("unknown_quantity", T, data(readings=[reading(values={"heat_gj": 1.0})])),
    ("non_finite", T, data().replace(b"1.5", b"NaN")),
    ("non_finite", T, data().replace(b"1.5", b"Infinity")),
    ("register_backwards", T, data(readings=[
        reading(), reading(seq=2, ts="2024-07-01T00:30:00Z", values={"import_kwh": 9.0})])),
    ("future_timestamp", T, data(readings=[reading(ts="2999-01-01T00:00:00Z")])),
    ("naive_timestamp", T, data(readings=[reading(ts="2024-07-01T00:15:00")])),
    ("bad_timestamp", T, data(readings=[reading(ts="yesterday")])),
    ("seq_not_int", T, data(readings=[reading(seq=1.5)])),
    ("seq_not_int", T, data(readings=[reading(seq=-1)])),
    ("interval_mismatch", T, data(interval_s=60)),
]
