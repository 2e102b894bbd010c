"""YAML documents with the file and line of every value, read safely.

A site or scenario file is YAML read with PyYAML's *safe* composer (no tags that
run code), so every value keeps the line it came from (:class:`Document`). What a
file may hold is bounded: its size (:data:`MAX_FILE_BYTES`, read without blocking on
a FIFO or a device), its nesting (:data:`MAX_DEPTH`) and the values it expands to
through aliases (:data:`MAX_NODES`); a key given twice is refused, as YAML would
silently keep the last. Every problem is a :class:`~ems.errors.LocatedError` with the
file, the line and the field path.

This is the one YAML reader of the package: site and scenario files
(:mod:`ems.model.loader`), gateway files, study files, and the data files of
``ems/data/`` (factor sets, the gas table, exchange rates, frameworks, grid mixes,
targets).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ems.errors import ConfigError, LocatedError

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "Document",
    "Key",
    "Path_",
    "format_path",
    "load_document",
    "parse",
    "read_config_text",
]

Key = str | int
Path_ = tuple[Key, ...]
"""A path into a document: mapping keys and list indices."""

#: Guard against alias bombs ("billion laughs"): most nodes one document may expand to.
MAX_NODES = 200_000
#: Largest site or scenario file read [bytes] (the reference sites are a few KiB).
MAX_FILE_BYTES = 10 << 20
#: Deepest nesting of mappings and lists accepted (a site needs 6).
MAX_DEPTH = 64
_DEPTH_TOKENS = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
                 yaml.FlowSequenceStartToken)
_END_TOKENS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
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
        return LocatedError(what, file=self.name, line=node.start_mark.line + 1, field=format_path(path) or None)

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
                field=format_path(path) or None,
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
                field=format_path(path) or None,
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
                    field=format_path(path) or None,
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
                    field=format_path((*path, key)),
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
                    field=format_path(path) or None,
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


def format_path(path: Path_ | tuple[Any, ...]) -> str:
    """A path as the dotted text error messages name fields with (``pv.0.kwp``)."""
    return ".".join(str(p) for p in path)
