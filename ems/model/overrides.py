"""Overrides: a scenario's changes to its sites' fields, by dotted path, applied before validation.

A scenario may override any site field with a dotted path, applied to the raw
YAML data before validation::

    overrides:
      qingdao:
        pv.0.kwp: 20000            # a field inside a list item
        pv.2: {id: pv-new, kwp: 5000}   # index == length appends an item
        batteries: [{id: bess2, energy_kwh: 10000, power_kw: 5000}]   # whole subtree
        steam.annual_gj: 80000     # creates 'steam' if the site has none

A path must exist in the schema; list indices must exist in the data (or equal the
length, to append). Errors name the scenario file and the override's line; the
overridden values keep theirs, so validation errors point at the override.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from ems.errors import LocatedError
from ems.model.scenario import ScenarioFile
from ems.model.site import Site
from ems.model.validation import child_type, did_you_mean, fields_at, short_value, unwrap_type
from ems.yamldoc import Document, Key, Path_, format_path

__all__ = ["apply_override", "apply_scenario_overrides"]


class _Refused(Exception):
    """An override path the schema or the data refuses: the message only (:func:`apply_override` locates it)."""


def _split_path(dotted: str) -> Path_:
    """``pv.0.kwp`` as ``("pv", 0, "kwp")``: parts that are digits are list indices."""
    parts: list[Key] = []
    for raw in str(dotted).split("."):
        parts.append(int(raw) if raw.lstrip("-").isdigit() else raw)
    return tuple(parts)


def apply_override(
    data: dict[str, Any],
    dotted: str,
    value: Any,
    *,
    model: type[BaseModel] = Site,
    where: tuple[str, int | None] = ("<overrides>", None),
    site_id: str = "",
) -> Path_:
    """Set ``value`` at ``dotted`` inside raw site data, checking the path against ``model``.

    Parameters
    ----------
    data : dict
        Raw site data (modified in place).
    dotted : str
        Dotted path, e.g. ``pv.0.kwp``; list items by index, index == length appends.
    value : Any
        New value; a mapping or list replaces the whole subtree.
    model : pydantic model class
        Schema the path must exist in.
    where : (file, line)
        Location of the override, for errors.
    site_id : str
        For messages.

    Returns
    -------
    tuple
        The path as keys and indices.

    Raises
    ------
    LocatedError
        Unknown field, a list index out of range, or a path through a scalar.
    """
    file, line = where
    path = _split_path(dotted)
    label = f"overrides.{site_id}.{dotted}" if site_id else str(dotted)
    try:
        if not path or any(p == "" for p in path):
            raise _Refused(f"expected a dotted path such as 'pv.0.kwp', found {str(dotted)!r}")
        _set_at(data, path, value, model)
    except _Refused as exc:
        raise LocatedError(str(exc), file=file, line=line, field=label) from None
    return path


def _set_at(data: dict[str, Any], path: Path_, value: Any, model: type[BaseModel]) -> None:
    """Walk ``path`` through the schema and the data together, one key at a time, and set ``value`` at its end.

    Each key is checked against the schema first (:func:`_schema_refusal`), then against
    the data (:func:`_check_slot`); mappings missing on the way are created.

    Raises
    ------
    _Refused
        The first key that the schema or the data does not allow.
    """
    tp: Any = model
    node: Any = data
    for depth, key in enumerate(path):
        here = format_path(path[:depth]) or "the site"
        ok, child_tp = child_type(tp, key)
        if not ok:
            raise _Refused(_schema_refusal(model, path[:depth], key, tp, here))
        last = depth == len(path) - 1
        _check_slot(node, key, last, here)
        if last:
            _put(node, key, value)
            return
        node = _child(node, key, child_tp)
        tp = child_tp


def _schema_refusal(model: type[BaseModel], parent: Path_, key: Key, tp: Any, here: str) -> str:
    """Why the schema has no ``key`` under ``parent`` (``tp`` is the type there; ``here`` names it)."""
    if isinstance(key, int):
        return f"expected a field name in {here}, found list index {key}"
    allowed = fields_at(model, parent)
    if allowed:
        return (f"expected a known field of {here}, found unknown field {key!r}{did_you_mean(key, allowed)}; "
                f"allowed fields: {', '.join(allowed)}")
    if typing.get_origin(unwrap_type(tp)) is list:
        return f"expected an index into the list {here}, found {key!r}"
    return f"expected the path to end at {here} (a single value), found more: {key!r}"


def _check_slot(node: Any, key: Key, last: bool, here: str) -> None:
    """Refuse ``key`` where the data has no place for it: an index into a non-list or out of range
    (the length itself only at the path's end, to append), a field of a non-mapping."""
    if isinstance(key, int):
        if not isinstance(node, list):
            raise _Refused(f"expected {here} to be a list, found {short_value(node)}")
        if not 0 <= key <= len(node) or (key == len(node) and not last):
            raise _Refused(f"expected an index from 0 to {len(node) - 1} in {here} "
                           f"(or {len(node)} to append), found {key}")
    elif not isinstance(node, dict):
        raise _Refused(f"expected {here} to be a mapping, found {short_value(node)}")


def _put(node: list[Any] | dict[Any, Any], key: Key, value: Any) -> None:
    """Set ``node[key]``; an index equal to a list's length appends."""
    if isinstance(node, list) and key == len(node):
        node.append(value)
    else:
        node[key] = value  # type: ignore[index]


def _child(node: list[Any] | dict[Any, Any], key: Key, child_tp: Any) -> Any:
    """``node[key]``, created empty (a list or a mapping, as the schema's ``child_tp`` says) where a mapping lacks it."""
    if isinstance(node, list):
        return node[int(key)]
    nxt = node.get(key)
    if nxt is None:
        nxt = [] if typing.get_origin(unwrap_type(child_tp)) is list else {}
        node[key] = nxt
    return nxt


def _sub_locations(doc: Document, prefix: Path_) -> Iterator[tuple[Path_, tuple[str, int | None]]]:
    """The locations under ``prefix`` in ``doc``, their paths relative to it."""
    n = len(prefix)
    for p, loc in doc.locations.items():
        if len(p) > n and p[:n] == prefix:
            yield p[n:], loc


def apply_scenario_overrides(
    spec: ScenarioFile,
    doc: Document,
    extra: Mapping[str, Mapping[str, Any]] | None,
    site_docs: list[Document],
    by_id: dict[str, int],
) -> None:
    """Apply the scenario's overrides, then ``extra`` ones, to the site documents (with their lines)."""

    def apply(site_id: str, dotted: str, value: Any, where: tuple[str, int | None], sub: Document | None,
              sub_prefix: Path_) -> None:
        sdoc = site_docs[by_id[site_id]]
        path = apply_override(sdoc.data, dotted, value, where=where, site_id=site_id)
        n = len(path)
        sdoc.locations = {p: loc for p, loc in sdoc.locations.items() if p[:n] != path}
        sdoc.locations[path] = where
        if sub is not None:
            for rel, loc in _sub_locations(sub, sub_prefix):
                sdoc.locations[(*path, *rel)] = loc

    def unknown(site_id: str, file: str, line: int | None) -> LocatedError:
        return LocatedError(
            f"expected the id of a site in this scenario ({', '.join(sorted(by_id)) or 'none'}), "
            f"found {site_id!r}{did_you_mean(site_id, by_id)}",
            file=file,
            line=line,
            field=f"overrides.{site_id}",
        )

    for site_id, paths in spec.overrides.items():
        file, line = doc.locate(("overrides", site_id))
        if site_id not in by_id:
            raise unknown(site_id, file, line)
        for dotted, value in paths.items():
            where = doc.locate(("overrides", site_id, dotted))
            apply(site_id, str(dotted), value, where, doc, ("overrides", site_id, dotted))
    for site_id, extra_paths in (extra or {}).items():
        if site_id not in by_id:
            raise unknown(site_id, doc.name, None)
        for dotted, value in extra_paths.items():
            apply(site_id, str(dotted), value, (doc.name, None), None, ())
