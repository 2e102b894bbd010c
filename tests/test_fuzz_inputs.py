"""Property-based fuzzing of the payload decoder and the site/scenario loader.

Whatever the bytes, the decoder raises only ``PayloadError`` with a reason from the
contract's table, and the loader only ``ConfigError``/``LocatedError`` with a message;
nothing else escapes (no KeyError, TypeError, RecursionError, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ems.errors import ConfigError, PayloadError
from ems.readings import MeterInfo, SiteInfo
from ems.telemetry import codec, topics

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REASONS = {
    "oversized", "invalid_utf8", "malformed_json", "not_an_object", "too_deep", "wrong_version", "bad_topic",
    "unknown_site", "unknown_meter", "missing_field", "wrong_type", "unknown_quantity", "non_finite",
    "register_backwards", "future_timestamp", "naive_timestamp", "bad_timestamp", "seq_not_int",
    "interval_mismatch", "out_of_range", "register_jump",
}
GRID = MeterInfo("alpha", "grid", "grid", "electricity", ("power_kw", "import_kwh", "export_kwh"), 900)
METERS = {("alpha", "grid"): GRID}
NOW = 1_800_000_000 * 10**9

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["2024-07-01T00:15:00Z", "2024-07-01T00:15:00", "x", "power_kw"]),
)
json_value = st.recursive(
    json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)
quantity = st.sampled_from(["power_kw", "import_kwh", "export_kwh", "heat_gj", "power_w", "", "ts"])
reading = st.fixed_dictionaries(
    {},
    optional={
        "seq": st.one_of(st.integers(-5, 2**64), json_value),
        "ts": st.one_of(st.sampled_from(["2024-07-01T00:15:00Z", "2024-07-01T00:30:00+08:00",
                                         "2024-07-01T00:15:00", "2999-01-01T00:00:00Z", "", "2024-13-01T00:00:00Z"]),
                        json_value),
        "values": st.one_of(st.dictionaries(quantity, st.one_of(st.floats(), json_value), max_size=4), json_value),
    },
)
document = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), json_value),
        "site": st.one_of(st.just("alpha"), json_value),
        "meter": st.one_of(st.just("grid"), json_value),
        "interval_s": st.one_of(st.just(900), json_value),
        "readings": st.one_of(st.lists(reading, max_size=5), json_value),
        "extra": json_value,
    },
)


def _check(exc: PayloadError) -> None:
    assert exc.reason in REASONS, exc.reason
    assert str(exc).startswith(exc.reason + ":") and len(str(exc)) > len(exc.reason) + 5


def _decode(payload: bytes) -> None:
    try:
        msg = codec.decode_data("alpha", "grid", payload, METERS, now_ns=NOW, known_sites={"alpha"})
    except PayloadError as exc:
        _check(exc)
    else:
        assert msg.readings  # accepted: at least one reading


@FUZZ
@given(st.binary(max_size=300))
def test_decoder_survives_any_bytes(payload):
    _decode(payload)


@FUZZ
@given(document)
def test_decoder_survives_structured_json(doc):
    _decode(json.dumps(doc, allow_nan=True).encode())


@FEW
@given(st.integers(1, 3000), st.sampled_from([b"[", b"{\"a\":"]))
def test_decoder_survives_deep_nesting(depth, opener):
    _decode(opener * depth)


@FUZZ
@given(json_value)
def test_meta_site_events_decoders_survive(doc):
    raw = json.dumps(doc, allow_nan=True).encode()
    for fn in (lambda: codec.decode_meta("alpha", "grid", raw), lambda: codec.decode_site("alpha", raw),
               lambda: codec.decode_events("alpha", raw, now_ns=NOW)):
        try:
            out = fn()
        except PayloadError as exc:
            _check(exc)
        else:
            assert isinstance(out, MeterInfo | SiteInfo | list)


@FUZZ
@given(st.text(max_size=80) | st.sampled_from(["ems/v1/../x", "ems/v1/site/+", "ems/v1/#", "ems/v1/\u0430lpha/grid",
                                                "ems/v1/alpha/grid/meta/x", "ems/v1/" + "a" * 70 + "/grid"]))
def test_topic_parser_survives(topic):
    try:
        t = topics.parse_topic(topic)
    except PayloadError as exc:
        _check(exc)
    else:
        assert t.site is None or topics.ID_RE.fullmatch(t.site)
        assert "+" not in topic and "#" not in topic and ".." not in topic


# ---------------------------------------------------------------- the loader

SITE_TEXT = (ROOT / "sites" / "qingdao.yaml").read_text()
SITE_LINES = SITE_TEXT.splitlines()
yaml_token = st.sampled_from(["", "- ", ": ", "{", "}", "[", "]", "!!python/object/apply:os.system ['true']",
                              "&a", "*a", "<<: *a", "~", "null", "-1e9", "nan", "'", '"', "\t", "  ", "#", "x",
                              "2024-01-01", "1_000", "0x10", "yes", "?", "|", ">"])


@st.composite
def mutated_site(draw):
    lines = list(SITE_LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "value", "indent", "insert"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(yaml_token)}{draw(st.text(max_size=8))}"
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "    "])) + lines[i].lstrip()
        else:
            lines.insert(i, draw(yaml_token) + draw(st.text(max_size=10)))
        if not lines:
            break
    return "\n".join(lines) + "\n"


def _has_reason(exc: ConfigError) -> None:
    assert len(str(exc)) > 10, repr(exc)


def _load(text: str) -> None:
    from ems.model.loader import load_site_data

    try:
        load_site_data(text, "fuzz.yaml")
    except ConfigError as exc:
        _has_reason(exc)


@FUZZ
@given(mutated_site())
def test_loader_survives_mutated_site_files(text):
    _load(text)


@FEW
@given(st.text(max_size=200))
def test_loader_survives_any_text(text):
    _load(text)
