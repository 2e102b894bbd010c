"""Property: any mutation of a valid site file either loads or raises LocatedError, nothing else."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ems.errors import LocatedError
from ems.model.loader import load_site_data
from ems.model.site import Site
from ems.yamldoc import parse

TEXT = (Path(__file__).parent.parent / "sites" / "shunde-sheet-metal.yaml").read_text()
DATA = parse(TEXT, "shunde.yaml").data
LINES = TEXT.splitlines(keepends=True)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 1, 1)),
    st.sampled_from(["Asia/Shanghai", "Nowhere/Zone", "", "~", "peak", "R-32", "-1", "1e400"]),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(DATA)


def _check(text: str) -> None:
    outcome: object
    try:
        outcome = load_site_data(text, "mutated.yaml")
    except LocatedError as exc:
        outcome = exc
    if isinstance(outcome, LocatedError):
        assert str(outcome).startswith("mutated.yaml")
    else:
        assert isinstance(outcome, Site)


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values, delete=st.booleans())
def test_data_mutation_loads_or_located_error(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    data = _copy(DATA)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    _check(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(["delete", "duplicate", "insert", "replace_char", "swap"]),
    line=st.integers(min_value=0, max_value=len(LINES) - 1),
    other=st.integers(min_value=0, max_value=len(LINES) - 1),
    junk=st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)
def test_text_mutation_loads_or_located_error(op: str, line: int, other: int, junk: str) -> None:
    lines = list(LINES)
    if op == "delete":
        del lines[line]
    elif op == "duplicate":
        lines.insert(line, lines[line])
    elif op == "insert":
        lines.insert(line, junk + "\n")
    elif op == "replace_char":
        s = lines[line]
        pos = other % max(len(s), 1)
        lines[line] = s[:pos] + junk + s[pos + 1 :]
    else:
        lines[line], lines[other] = lines[other], lines[line]
    _check("".join(lines))
