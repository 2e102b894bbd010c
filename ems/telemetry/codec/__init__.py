"""Encode and decode telemetry payloads (contract v1, ``docs/telemetry.md``).

Pure functions: bytes in, checked values out, or a :class:`~ems.errors.PayloadError`
whose ``reason`` is a short code (``malformed_json``, ``unknown_meter``, ...). No
network, no clock: callers pass ``now_ns``.

Everything a message carries is bounded before it is used: the payload's size
(before it is parsed), nesting, counts, timestamps (from 1970-01-01 to the
ingestor's clock plus the tolerated skew), sequence numbers (64-bit), intervals
and values (finite, at most :data:`MAX_ABS_VALUE` in magnitude); a value out of
bounds is ``out_of_range``.

:func:`parse_data` checks a data payload on its own (the schema: what any reader
could check); :func:`check_data` checks it against the meter's metadata and its
previous reading (quantities, interval, registers); :func:`decode_data` does both.

The package holds one module per part of the contract, and exports their public names:

* :mod:`~ems.telemetry.codec.wire`: limits, timestamps, JSON objects and typed fields;
* :mod:`~ems.telemetry.codec.data`: data payloads (readings of one meter);
* :mod:`~ems.telemetry.codec.checks`: a data message against its meter (registers, rates);
* :mod:`~ems.telemetry.codec.registration`: meter metadata, site registrations, meter status;
* :mod:`~ems.telemetry.codec.events`: event ledger entries.

Dead-letter records are :mod:`ems.telemetry.deadletter`'s.
"""

from __future__ import annotations

from ems.telemetry.codec.checks import (
    JUMP_FACTOR,
    REGISTER_RATE_DEFAULTS,
    check_data,
    check_registers,
    decode_data,
    register_rates,
)
from ems.telemetry.codec.data import DataMessage, Reading, encode_data, encode_rows, parse_data
from ems.telemetry.codec.events import decode_events, encode_events
from ems.telemetry.codec.registration import (
    check_gas,
    check_line_gases,
    decode_meta,
    decode_site,
    encode_meta,
    encode_site,
    meter_from_fields,
    meter_status,
    site_from_fields,
)
from ems.telemetry.codec.wire import (
    MAX_ABS_VALUE,
    MAX_DEPTH,
    MAX_DEPTH_META,
    MAX_INTERVAL_S,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    MAX_SEQ,
    format_ts,
    load_object,
    parse_ts,
)

__all__ = [
    "JUMP_FACTOR",
    "MAX_ABS_VALUE",
    "MAX_DEPTH",
    "MAX_DEPTH_META",
    "MAX_INTERVAL_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "MAX_SEQ",
    "REGISTER_RATE_DEFAULTS",
    "DataMessage",
    "Reading",
    "check_data",
    "check_gas",
    "check_line_gases",
    "check_registers",
    "decode_data",
    "decode_events",
    "decode_meta",
    "decode_site",
    "encode_data",
    "encode_events",
    "encode_meta",
    "encode_rows",
    "encode_site",
    "format_ts",
    "load_object",
    "meter_from_fields",
    "meter_status",
    "parse_data",
    "parse_ts",
    "register_rates",
    "site_from_fields",
]
