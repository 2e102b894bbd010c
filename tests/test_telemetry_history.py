"""The gateway's history of published messages: answers by seq, bounded, durable across a restart."""

from __future__ import annotations

import pytest

from ems.errors import ConfigError
from ems.telemetry.history import History


def _payload(seq: int) -> bytes:
    return b'{"seq": %d, "pad": "%s"}' % (seq, b"x" * 100)


def test_payloads_come_back_by_meter_and_seq_in_order(tmp_path):
    with History(tmp_path / "h", limit_bytes=1 << 20, segment_bytes=1 << 12) as h:
        _payloads_by_meter(h)


def _payloads_by_meter(h: History) -> None:
    for seq in range(1, 101):
        for meter in ("grid", "pv1"):
            h.append("alpha", meter, seq, _payload(seq) + meter.encode())
    h.append("alpha", "grid", 7, _payload(7) + b"grid")  # a seq repeated (a restart) is answered once
    got = list(h.payloads("alpha", "grid", 5, 9))
    assert got == [_payload(s) + b"grid" for s in range(5, 10)]
    assert list(h.payloads("alpha", "grid", 200, 300)) == [] and list(h.payloads("beta", "grid", 1, 9)) == []
    assert h.first_seq("alpha", "pv1") == 1


def test_bounded_the_oldest_segment_goes_first(tmp_path):
    with History(tmp_path / "h", limit_bytes=8 << 10, segment_bytes=2 << 10) as h:
        _bounded(h)


def _bounded(h: History) -> None:
    for seq in range(1, 501):
        h.append("alpha", "grid", seq, _payload(seq))
    assert h.used_bytes <= 8 << 10 and h.dropped_segments > 0
    first = h.first_seq("alpha", "grid")
    assert first is not None and first > 400  # only the latest ~60 messages fit
    assert next(p.decode().split(",")[0] for p in h.payloads("alpha", "grid", 1, 500)) == f'{{"seq": {first}'
    assert len(list(h.payloads("alpha", "grid", 1, 500))) == 501 - first


def test_durable_after_sync_and_a_cut_record_is_ignored(tmp_path):
    h = History(tmp_path / "h")
    for seq in range(1, 11):
        h.append("alpha", "grid", seq, _payload(seq))
    h.close()
    seg = next((tmp_path / "h").glob("*.history"))
    with open(seg, "ab") as f:  # a crash in the middle of an append
        f.write(b"EMSPH\x00\x01")
    again = History(tmp_path / "h")
    assert [p for p in again.payloads("alpha", "grid", 1, 10)] == [_payload(s) for s in range(1, 11)]
    with again:
        again.append("alpha", "grid", 11, _payload(11))  # appends go to a new segment, after the cut one
        assert list(again.payloads("alpha", "grid", 11, 11)) == [_payload(11)]


def test_a_limit_below_two_segments_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="at least two segments"):
        History(tmp_path / "h", limit_bytes=1 << 20, segment_bytes=1 << 20)


def test_gateway_stats_line_reads_without_json():
    from ems.modbus.commands import gateway_stats_line

    now = {"devices": 500, "offline": 2, "polls": 15000, "readings": 15000, "acknowledged": 14990, "deadlettered": 1,
           "poll_errors": {"timeout": 3}, "poll_latency_p50_s": 0.0123, "poll_latency_p99_s": 0.2501, "backfilled": 0}
    line = gateway_stats_line(now, {**now, "readings": 12500}, 5.0)
    assert line == ("500 readings/s; 14,990 readings acknowledged; 1 reading dead-lettered; "
                    "poll latency p50 0.01 s, p99 0.25 s; 2 of 500 devices offline; poll errors: timeout 3")
    line = gateway_stats_line({**now, "intervals_skipped": 4}, None, 5.0)
    assert line.endswith("poll errors: timeout 3; 4 intervals skipped (polled too late)")
