"""Load site and scenario files: safe YAML with line numbers, overrides, located errors.

A site or scenario file is YAML read with PyYAML's *safe* composer (no tags that
run code), so every value keeps the line it came from. Validation against the
pydantic schemas in :mod:`ems.model.site` and :mod:`ems.model.scenario` then
reports each problem as ``file:line: field.path: expected ..., found ...``, all of
them in one :class:`~ems.errors.LocatedError` (the first problem fills its
``file``, ``line`` and ``field``; the message lists every problem, one per line).

Overrides
---------
A scenario may override any site field with a dotted path, applied to the raw
YAML data before validation::

    overrides:
      qingdao:
        pv.0.kwp: 20000            # a field inside a list item
        pv.2: {id: pv-new, kwp: 5000}   # index == length appends an item
        batteries: [{id: bess2, energy_kwh: 10000, power_kw: 5000}]   # whole subtree
        steam.annual_gj: 80000     # creates 'steam' if the site has none

A path must exist in the schema; list indices must exist in the data (or equal the
length, to append). Errors name the scenario file and the override's line.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import pandas as pd
import yaml
from pydantic import BaseModel, ValidationError

from ems.errors import ConfigError, LocatedError
from ems.model.scenario import ResolvedScenario, ScenarioFile, apply_boundary
from ems.model.site import Site

__all__ = [
    "Document",
    "apply_override",
    "file_roots",
    "is_scenario_data",
    "load_document",
    "load_scenario",
    "load_scenario_data",
    "load_site",
    "load_site_data",
    "located_measure_error",
    "parse",
    "read_config_text",
    "validate_document",
]

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)

Key = str | int
Path_ = tuple[Key, ...]

#: Guard against alias bombs ("billion laughs"): most nodes one document may expand to.
MAX_NODES = 200_000
#: Largest site or scenario file read [bytes] (the reference sites are a few KiB).
MAX_FILE_BYTES = 10 << 20
#: Deepest nesting of mappings and lists accepted (a site needs 6).
MAX_DEPTH = 64
#: Folders (``os.pathsep``-separated) a scenario may also name files in, besides its own project folder.
FILE_ROOTS_ENV = "EMS_FILE_ROOTS"
_DEPTH_TOKENS = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
                 yaml.FlowSequenceStartToken)
_END_TOKENS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
_MAX_REPR = 60
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 60 -> 4 ms for the reference group


@dataclass
class Document:
    """A parsed YAML mapping with the file and line of every value.

    Attributes
    ----------
    data : dict
        Plain Python data (dicts, lists, scalars) as ``yaml.safe_load`` gives.
    name : str
        File path or a name for a string (``<string>``).
    locations : dict
        ``path tuple -> (file, line)``, 1-based lines. For a mapping entry the line
        of its key, for a list item the line where the item starts.
    """

    data: dict[str, Any]
    name: str
    locations: dict[Path_, tuple[str, int | None]] = field(default_factory=dict)

    def locate(self, path: Path_) -> tuple[str, int | None]:
        """File and line of ``path``, or of its nearest located ancestor."""
        for n in range(len(path), -1, -1):
            hit = self.locations.get(tuple(path[:n]))
            if hit is not None:
                return hit
        return self.name, None


# --------------------------------------------------------------------------- YAML


class _Builder:
    """Turn a composed YAML node tree into plain data, recording lines and duplicate keys."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.locations: dict[Path_, tuple[str, int | None]] = {}
        self.constructor = yaml.constructor.SafeConstructor()
        self.count = 0
        self._active: set[int] = set()  # nodes being built: an alias back to one of them is a cycle

    def build(self, node: yaml.Node, path: Path_) -> Any:
        if id(node) in self._active or len(path) > MAX_DEPTH:
            raise self._cycle_or_depth(node, path)
        self._active.add(id(node))
        try:
            return self._build(node, path)
        finally:
            self._active.discard(id(node))

    def _cycle_or_depth(self, node: yaml.Node, path: Path_) -> LocatedError:
        what = (f"expected values nested at most {MAX_DEPTH} levels deep, found deeper"
                if len(path) > MAX_DEPTH else "expected an alias (*name) to refer to a finished value, "
                "found a recursive alias that contains itself")
        return LocatedError(what, file=self.name, line=node.start_mark.line + 1, field=_dotted(path) or None)

    def _build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise LocatedError(
                f"expected a document of at most {MAX_NODES} values, found more (alias expansion?)",
                file=self.name,
                line=node.start_mark.line + 1,
            )
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            raise LocatedError(
                f"expected plain YAML (mappings, lists, values), found the tag {node.tag!r}",
                file=self.name,
                line=node.start_mark.line + 1,
                field=_dotted(path) or None,
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            out: list[Any] = []
            for i, item in enumerate(node.value):
                self.locations[(*path, i)] = (self.name, item.start_mark.line + 1)
                out.append(self.build(item, (*path, i)))
            return out
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError, TypeError) as exc:
            why = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
            raise LocatedError(
                f"expected a valid YAML value, found {node.value!r} ({why})",
                file=self.name,
                line=node.start_mark.line + 1,
                field=_dotted(path) or None,
            ) from None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        own_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.update(self._merge_source(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise LocatedError(
                    "expected a plain key (text or number), found a "
                    + ("mapping" if isinstance(key_node, yaml.MappingNode) else "list"),
                    file=self.name,
                    line=line,
                    field=_dotted(path) or None,
                )
            try:
                key = self.constructor.construct_object(key_node)
            except (yaml.YAMLError, ValueError, OverflowError, TypeError):
                key = str(key_node.value)
            if not isinstance(key, str | int | float | bool) or isinstance(key, bool):
                key = str(key_node.value)
            if key in own_lines:
                raise LocatedError(
                    f"duplicate key {key!r}: first at line {own_lines[key]}, again at line {line}; "
                    "expected each key once (YAML would silently keep the last)",
                    file=self.name,
                    line=line,
                    field=_dotted((*path, key)),
                )
            own_lines[key] = line
            self.locations[(*path, key)] = (self.name, line)
            out[key] = self.build(value_node, (*path, key))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _merge_source(self, node: yaml.Node, path: Path_) -> dict[Any, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        result: dict[Any, Any] = {}
        for src in reversed(sources):  # earlier sources win
            if not isinstance(src, yaml.MappingNode):
                raise LocatedError(
                    "expected a mapping (or list of mappings) after '<<', found something else",
                    file=self.name,
                    line=src.start_mark.line + 1,
                    field=_dotted(path) or None,
                )
            if id(src) in self._active:
                raise self._cycle_or_depth(src, path)
            saved = dict(self.locations)
            result.update(self._mapping(src, path))
            # keep own lines for keys present; merged keys point at the anchor's lines
            self.locations = {**self.locations, **saved}
        return result


def parse(text: str, name: str = "<string>") -> Document:
    """Parse YAML text into a :class:`Document` (a mapping with line numbers).

    Parameters
    ----------
    text : str
        YAML source.
    name : str
        File name used in error messages.

    Raises
    ------
    LocatedError
        Syntax errors, duplicate keys, an empty document, or a document that is
        not a mapping.
    """
    try:
        _check_depth(text, name)
        node = yaml.compose(text, Loader=_LOADER)
    except RecursionError:  # pragma: no cover - _check_depth stops this first
        raise LocatedError(f"expected values nested at most {MAX_DEPTH} levels deep, found deeper", file=name) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or "invalid YAML"
        ctx = f" ({exc.context})" if exc.context else ""
        raise LocatedError(f"YAML syntax error: {what}{ctx}", file=name, line=line) from None
    except yaml.YAMLError as exc:
        raise LocatedError(f"YAML error: {exc}", file=name) from None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        raise LocatedError("expected a mapping of fields, found an empty file", file=name, line=1)
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else f"a single value {node.value!r}"
        raise LocatedError(
            f"expected a mapping of fields (key: value lines), found {kind}",
            file=name,
            line=node.start_mark.line + 1,
        )
    builder = _Builder(name)
    data = builder.build(node, ())
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise LocatedError(
            f"expected text keys at the top level, found {bad[0]!r}",
            file=name,
            line=builder.locations.get((bad[0],), (name, 1))[1],
        )
    return Document(data=data, name=name, locations=builder.locations)


def _check_depth(text: str, name: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` before composing (PyYAML's composer recurses)."""
    depth = 0
    for tok in yaml.scan(text, Loader=_LOADER):
        if isinstance(tok, _DEPTH_TOKENS):
            depth += 1
            if depth > MAX_DEPTH:
                raise LocatedError(f"expected values nested at most {MAX_DEPTH} levels deep, found deeper",
                                   file=name, line=tok.start_mark.line + 1)
        elif isinstance(tok, _END_TOKENS):
            depth -= 1


def read_config_text(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """Read a configuration file (YAML, JSON) safely: a regular file, at most ``max_bytes``, UTF-8.

    Never blocks on a FIFO, never reads a device (``/dev/zero``), never reads more than the limit.

    Raises
    ------
    ConfigError
        Missing, not a regular file, unreadable; :class:`LocatedError` when too large or not UTF-8.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"file not found: expected a YAML file at {str(p)!r}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            raise ConfigError(f"expected a regular file, found {kind} at {str(p)!r}")
        data = _read_at_most(fd, max_bytes + 1) if st.st_size <= max_bytes else b""
    finally:
        os.close(fd)
    if st.st_size > max_bytes or len(data) > max_bytes:
        raise LocatedError(f"expected a file of at most {max_bytes >> 20} MiB, found {max(st.st_size, len(data)):,} bytes",
                           file=str(p))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocatedError(f"expected UTF-8 text, found undecodable bytes ({exc.reason})", file=str(p)) from None


def _read_at_most(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0 and (chunk := os.read(fd, min(n, 1 << 20))):
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def load_document(path: str | Path) -> Document:
    """Read (:func:`read_config_text`) and parse a YAML file; a missing file is a :class:`ConfigError` naming the path."""
    p = Path(path)
    return parse(read_config_text(p), str(p))


def is_scenario_data(data: Mapping[str, Any]) -> bool:
    """Whether parsed top-level data is a scenario (it has ``sites`` and ``period``)."""
    return "sites" in data and "period" in data


# --------------------------------------------------------------------------- errors


def _did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'add_pv'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(path: Path_ | tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _describe(err: Mapping[str, Any], model: type[BaseModel], loc: Path_) -> str:
    """One pydantic error as 'expected ..., found ...'."""
    kind = err["type"]
    msg = str(err["msg"])
    found = err.get("input")
    if kind == "missing":
        return "expected this required field, found it missing"
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = ""
        if allowed:
            hint = _did_you_mean(loc[-1], allowed) + f"; allowed fields: {', '.join(allowed)}"
        return f"expected a known field, found unknown field {str(loc[-1])!r}{hint}"
    if msg.startswith("Value error, "):
        text = msg[len("Value error, ") :]
        if "found" in text or isinstance(found, dict | list):
            return text
        return f"{text}; found {_short(found)}"
    if msg.startswith("Input should be "):
        expected = msg[len("Input should be ") :]
        return f"expected {expected}, found {_short(found)}"
    if msg.startswith("String should match pattern "):
        return f"expected text matching {msg[len('String should match pattern ') :]}, found {_short(found)}"
    return f"expected {msg[0].lower()}{msg[1:]}, found {_short(found)}"


def _clean_loc(loc: tuple[Any, ...]) -> Path_:
    """Drop pydantic's union/function tags from an error location."""
    out: list[Key] = []
    for part in loc:
        if isinstance(part, int):
            out.append(part)
        elif isinstance(part, str) and ("[" in part or part in {"function-after", "function-before"}):
            continue
        else:
            out.append(str(part))
    return tuple(out)


def _located(exc: ValidationError, doc: Document, model: type[BaseModel], prefix: Path_ = ()) -> LocatedError:
    """Turn all errors of a ValidationError into one LocatedError."""
    problems: list[tuple[str, int | None, str, str]] = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *_clean_loc(tuple(err["loc"])))
        file, line = doc.locate(loc)
        problems.append((file, line, _dotted(loc), _describe(err, model, loc[len(prefix) :])))
    problems.sort(key=lambda p: (p[0], p[1] or 0))
    lines = []
    for file, line, fld, text in problems:
        where = file if line is None else f"{file}:{line}"
        lines.append(f"{where}: {fld}: {text}" if fld else f"{where}: {text}")
    file, line, fld, text = problems[0]
    out = LocatedError(text, file=file, line=line, field=fld or None)
    out.args = ("\n".join(lines),)
    return out


# --------------------------------------------------------------------------- schema walking


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional from a type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _child_type(tp: Any, key: Key) -> tuple[bool, Any]:
    """Type of ``tp[key]``: (exists, type). Any/unknown types accept any key."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if isinstance(key, str) and key in tp.model_fields:
            return True, tp.model_fields[key].annotation
        return False, None
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(key, int), typing.get_args(tp)[0]
    if origin is dict:
        return isinstance(key, str), typing.get_args(tp)[1]
    if isinstance(tp, type) or origin is typing.Literal:
        return False, None  # a single value: str, float, date, ...
    return True, Any


def _fields_at(model: type[BaseModel], path: Path_) -> list[str]:
    tp: Any = model
    for key in path:
        ok, tp = _child_type(tp, key)
        if not ok:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _split_path(dotted: str) -> Path_:
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

    def fail(text: str) -> LocatedError:
        return LocatedError(text, file=file, line=line, field=label)

    if not path or any(p == "" for p in path):
        raise fail(f"expected a dotted path such as 'pv.0.kwp', found {str(dotted)!r}")
    tp: Any = model
    node: Any = data
    for depth, key in enumerate(path):
        here = _dotted(path[:depth]) or "the site"
        ok, child_tp = _child_type(tp, key)
        if not ok:
            allowed = _fields_at(model, path[:depth])
            if isinstance(key, int):
                raise fail(f"expected a field name in {here}, found list index {key}")
            if allowed:
                hint = _did_you_mean(key, allowed)
                raise fail(
                    f"expected a known field of {here}, found unknown field {key!r}{hint}; "
                    f"allowed fields: {', '.join(allowed)}"
                )
            if typing.get_origin(_unwrap(tp)) is list:
                raise fail(f"expected an index into the list {here}, found {key!r}")
            raise fail(f"expected the path to end at {here} (a single value), found more: {key!r}")
        last = depth == len(path) - 1
        if isinstance(key, int):
            if not isinstance(node, list):
                raise fail(f"expected {here} to be a list, found {_short(node)}")
            if not 0 <= key <= len(node) or (key == len(node) and not last):
                raise fail(
                    f"expected an index from 0 to {len(node) - 1} in {here} "
                    f"(or {len(node)} to append), found {key}"
                )
            if last:
                if key == len(node):
                    node.append(value)
                else:
                    node[key] = value
                return path
            node = node[key]
        else:
            if not isinstance(node, dict):
                raise fail(f"expected {here} to be a mapping, found {_short(node)}")
            if last:
                node[key] = value
                return path
            nxt = node.get(key)
            if nxt is None:
                inner = _unwrap(child_tp)
                nxt = [] if typing.get_origin(inner) is list else {}
                node[key] = nxt
            node = nxt
        tp = child_tp
    return path  # pragma: no cover - loop always returns


# --------------------------------------------------------------------------- sites


def _validate_site(doc: Document) -> Site:
    try:
        return Site.model_validate(doc.data)
    except ValidationError as exc:
        raise _located(exc, doc, Site) from None


def file_roots(folder: str | Path) -> list[Path]:
    """Folders that files named by a scenario or site in ``folder`` may be in.

    The project folder (the parent of ``folder``: a scenario in ``project/scenarios/`` may
    name ``../sites/x.yaml``), the working directory, and the folders listed in
    ``$EMS_FILE_ROOTS`` (``os.pathsep``-separated), where an operator asks for more explicitly.
    """
    extra = [Path(x).resolve() for x in os.environ.get(FILE_ROOTS_ENV, "").split(os.pathsep) if x]
    return [Path(folder).resolve().parent, Path.cwd().resolve(), *extra]


def _check_inside(path: Path, roots: list[Path], what: str, where: tuple[str, int | None], field: str,
                  suffixes: tuple[str, ...] = ()) -> None:
    """A file named by a scenario or site: inside ``roots`` (symbolic links followed), with one of ``suffixes``."""
    real = path.resolve()
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise LocatedError(
            f"expected {what} inside {roots[0]} (the project folder), the working directory or a folder "
            f"named in ${FILE_ROOTS_ENV}; found {str(path)!r}, outside them",
            file=where[0], line=where[1], field=field,
        )
    if suffixes and real.suffix.lower() not in suffixes:
        raise LocatedError(f"expected {what} named *{' or *'.join(suffixes)}; found {str(path)!r}",
                           file=where[0], line=where[1], field=field)


def _resolve_site_paths(site: Site, site_file: str | Path, roots: list[Path] | None = None) -> Site:
    """Make file paths inside a site (the weather file) absolute, relative to the site file; inside ``roots``."""
    w = site.weather
    if w.path:
        path = Path(w.path) if Path(w.path).is_absolute() else (Path(site_file).parent / w.path)
        _check_inside(path, roots or file_roots(Path(site_file).parent), "the weather file", (str(site_file), None),
                      "weather.path")
        w.path = str(path.resolve())
    return site


def load_site_data(text: str, name: str = "<string>") -> Site:
    """Validate a site from YAML text; ``name`` is used in error messages."""
    return _validate_site(parse(text, name))


def load_site(path: str | Path) -> Site:
    """Load and validate a site file.

    A relative ``weather.path`` is made absolute, relative to the site file.

    Raises
    ------
    ConfigError
        The file does not exist.
    LocatedError
        YAML or schema problems, each with file, line and field path.
    """
    doc = load_document(path)
    if is_scenario_data(doc.data):
        raise LocatedError(
            "expected a site file, found a scenario file (it has 'sites' and 'period')",
            file=doc.name,
            line=1,
        )
    return _resolve_site_paths(_validate_site(doc), path)


# --------------------------------------------------------------------------- scenarios


def _sub_locations(doc: Document, prefix: Path_) -> Iterator[tuple[Path_, tuple[str, int | None]]]:
    n = len(prefix)
    for p, loc in doc.locations.items():
        if len(p) > n and p[:n] == prefix:
            yield p[n:], loc


def _resolution_s(resolution: str) -> int:
    return int(pd.Timedelta(pd.tseries.frequencies.to_offset(resolution)).total_seconds())


def load_scenario_data(
    text: str,
    name: str = "<string>",
    *,
    base_dir: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> ResolvedScenario:
    """Resolve a scenario from YAML text; site paths are relative to ``base_dir`` (default cwd)."""
    return _resolve(parse(text, name), Path(base_dir) if base_dir is not None else Path.cwd(), overrides)


def load_scenario(
    path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> ResolvedScenario:
    """Load a scenario file, its sites (relative to it), and apply overrides.

    Parameters
    ----------
    path : str or Path
        Scenario YAML file.
    overrides : dict, optional
        ``site id -> {dotted.path: value}``, applied after the file's own overrides.

    Returns
    -------
    ResolvedScenario

    Raises
    ------
    ConfigError
        A missing scenario file.
    LocatedError
        Any problem in the scenario or a site file, with file, line and path.
    """
    doc = load_document(path)
    return _resolve(doc, Path(path).parent, overrides)


def _check_measures(doc: Document, measures: Iterable[Any], site_ids: list[str]) -> None:
    """Names in a scenario's ``measures:``: the measure, its parameters, its sites, located.

    The values are checked when the measures are applied (:func:`located_measure_error`
    locates those errors too), so ``ems validate`` and ``ems run`` refuse the same files.
    """
    from ems.model.measures import COMMON_PARAMETERS, MEASURE_WORDS, MEASURES

    for i, m in enumerate(measures):
        def fail(text: str, key: Key | None = None, i: int = i) -> LocatedError:
            path: Path_ = ("measures", i) if key is None else ("measures", i, key)
            file, line = doc.locate(path)
            return LocatedError(text, file=file, line=line, field=_dotted(path))

        if not isinstance(m, Mapping) or "measure" not in m:
            raise fail(f"expected a mapping with 'measure' (one of {', '.join(MEASURES)}), found {_short(m)}")
        name = m["measure"]
        spec = MEASURES.get(str(name))
        if spec is None:
            words = [MEASURE_WORDS[w] for w in re.split(r"[^a-z]+", str(name).lower()) if w in MEASURE_WORDS]
            hint = f" (did you mean {words[0]!r}?)" if words else _did_you_mean(name, MEASURES)
            raise fail(f"expected a measure in {', '.join(MEASURES)}, found {name!r}{hint}", "measure")
        allowed = [*spec.params, *sorted(COMMON_PARAMETERS - {"measure"} - set(spec.params))]
        for key in m:
            if key not in allowed and key != "measure":
                raise fail(f"{name}: expected a parameter in {', '.join(allowed)}, found {key!r}"
                           f"{_did_you_mean(key, allowed)}", key)
        sel = m.get("site")
        for sid in [] if sel is None else [sel] if isinstance(sel, str) else list(sel):
            if sid not in site_ids:
                raise fail(f"{name}: expected the id of a site in this scenario ({', '.join(site_ids)}), "
                           f"found {sid!r}{_did_you_mean(sid, site_ids)}", "site")


def located_measure_error(exc: ConfigError, path: str | Path) -> ConfigError:
    """Give a ``measures.<i>: ...`` error of applying a scenario's measures its file and line."""
    m = re.match(r"measures\.(\d+): (.*)", str(exc), re.S)
    if m is None or isinstance(exc, LocatedError):
        return exc
    i = int(m.group(1))
    file, line = load_document(path).locate(("measures", i))
    return LocatedError(m.group(2), file=file, line=line, field=f"measures.{i}")


def _bounded(spec: ScenarioFile, doc: Document, sites: list[Site]) -> list[Site]:
    """Apply the scenario's reporting boundary; an excluded id must be one of its sites."""
    unknown = sorted(set(spec.boundary.exclude) - {s.id for s in sites}) if spec.boundary else []
    if unknown:
        file, line = doc.locate(("boundary", "exclude"))
        raise LocatedError(f"expected ids of sites in this scenario ({', '.join(sorted(s.id for s in sites))}), "
                           f"found {unknown}", file=file, line=line, field="boundary.exclude")
    return apply_boundary(spec.boundary, sites)


def _resolve(
    doc: Document, base: Path, extra: Mapping[str, Mapping[str, Any]] | None
) -> ResolvedScenario:
    if not is_scenario_data(doc.data):
        missing = [k for k in ("sites", "period") if k not in doc.data]
        raise LocatedError(
            f"expected a scenario file with 'sites' and 'period', found no {' or '.join(map(repr, missing))}",
            file=doc.name,
            line=1,
        )
    try:
        spec = ScenarioFile.model_validate(doc.data)
    except ValidationError as exc:
        raise _located(exc, doc, ScenarioFile) from None
    roots = file_roots(base)
    site_docs, by_id = _site_documents(spec, doc, base, roots)
    _apply_overrides(spec, doc, extra, site_docs, by_id)
    _check_measures(doc, spec.measures, list(by_id))
    sites = _bounded(spec, doc, [_resolve_site_paths(_validate_site(sdoc), sdoc.name, roots) for sdoc in site_docs])
    start, end = spec.period.bounds()
    return ResolvedScenario(
        name=spec.name,
        sites=sites,
        start=start,
        end=end,
        resolution_s=_resolution_s(spec.resolution),
        seed=spec.seed,
        source=doc.name,
        extra={
            "description": spec.description,
            "factor_set": spec.factor_set,
            "measures": spec.measures,
            "site_files": [os.path.normpath(base / s) for s in spec.sites],
        },
    )


def _site_documents(
    spec: ScenarioFile, doc: Document, base: Path, roots: list[Path]
) -> tuple[list[Document], dict[str, int]]:
    """Read a scenario's site files (inside ``roots``), each once; return them and their index by site id."""
    site_docs: list[Document] = []
    by_id: dict[str, int] = {}
    for i, rel in enumerate(spec.sites):
        site_path = Path(os.path.normpath(base / rel))
        file, line = doc.locate(("sites", i))
        _check_inside(site_path, roots, "a site file", (file, line), f"sites.{i}", (".yaml", ".yml"))
        if not site_path.is_file():
            near = site_path.parent.glob("*.y*ml") if site_path.parent.is_dir() else ()
            hint = _did_you_mean(site_path.name, sorted(f.name for f in near))
            raise LocatedError(
                f"expected an existing site file, found no file at {str(site_path)!r}{hint}",
                file=file,
                line=line,
                field=f"sites.{i}",
            )
        sdoc = load_document(site_path)
        sid = sdoc.data.get("id")
        if isinstance(sid, str):
            if sid in by_id:
                raise LocatedError(
                    f"expected each site once, found site id {sid!r} again "
                    f"(also {spec.sites[by_id[sid]]!r})",
                    file=file,
                    line=line,
                    field=f"sites.{i}",
                )
            by_id[sid] = i
        if spec.factor_set is not None:
            sdoc.data["factor_set"] = spec.factor_set
            sdoc.locations[("factor_set",)] = doc.locate(("factor_set",))
        site_docs.append(sdoc)
    return site_docs, by_id


def _apply_overrides(
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
            f"found {site_id!r}{_did_you_mean(site_id, by_id)}",
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


def validate_document(doc: Document, model: type[_M]) -> _M:
    """Validate a parsed document against a pydantic model; every problem with its file and line.

    Raises
    ------
    LocatedError
        ``file:line: field.path: expected ..., found ...`` for each problem.
    """
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise _located(exc, doc, model) from None
