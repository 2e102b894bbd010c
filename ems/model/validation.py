"""Validation against the pydantic schemas, every problem with its file, line and field path.

:func:`validate_document` turns each error of a pydantic ``ValidationError`` into
``file:line: field.path: expected ..., found ...``, all of them in one
:class:`~ems.errors.LocatedError` (the first problem fills its ``file``, ``line`` and
``field``; the message lists every problem, one per line). The schema walk
(:func:`child_type`, :func:`fields_at`) is what names the allowed fields, here and for
overrides (:mod:`ems.model.overrides`).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, Union

from pydantic import BaseModel, ValidationError

from ems.errors import LocatedError
from ems.yamldoc import Document, Key, Path_, format_path

__all__ = [
    "child_type",
    "did_you_mean",
    "fields_at",
    "located_error",
    "short_value",
    "unwrap_type",
    "validate_document",
]

_M = TypeVar("_M", bound=BaseModel)
_MAX_REPR = 60


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'add_pv'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def short_value(value: Any) -> str:
    """A value as error messages show it: ``a mapping``, ``a list of 3``, or its ``repr`` cut to 60 characters."""
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
        allowed = fields_at(model, loc[:-1])
        hint = ""
        if allowed:
            hint = did_you_mean(loc[-1], allowed) + f"; allowed fields: {', '.join(allowed)}"
        return f"expected a known field, found unknown field {str(loc[-1])!r}{hint}"
    if msg.startswith("Value error, "):
        text = msg[len("Value error, ") :]
        if "found" in text or isinstance(found, dict | list):
            return text
        return f"{text}; found {short_value(found)}"
    if msg.startswith("Input should be "):
        expected = msg[len("Input should be ") :]
        return f"expected {expected}, found {short_value(found)}"
    if msg.startswith("String should match pattern "):
        return f"expected text matching {msg[len('String should match pattern ') :]}, found {short_value(found)}"
    return f"expected {msg[0].lower()}{msg[1:]}, found {short_value(found)}"


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


def located_error(exc: ValidationError, doc: Document, model: type[BaseModel], prefix: Path_ = ()) -> LocatedError:
    """Turn all errors of a ValidationError into one LocatedError."""
    problems: list[tuple[str, int | None, str, str]] = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *_clean_loc(tuple(err["loc"])))
        file, line = doc.locate(loc)
        problems.append((file, line, format_path(loc), _describe(err, model, loc[len(prefix) :])))
    problems.sort(key=lambda p: (p[0], p[1] or 0))
    lines = []
    for file, line, fld, text in problems:
        where = file if line is None else f"{file}:{line}"
        lines.append(f"{where}: {fld}: {text}" if fld else f"{where}: {text}")
    file, line, fld, text = problems[0]
    out = LocatedError(text, file=file, line=line, field=fld or None)
    out.args = ("\n".join(lines),)
    return out


def unwrap_type(tp: Any) -> Any:
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


def child_type(tp: Any, key: Key) -> tuple[bool, Any]:
    """Type of ``tp[key]``: (exists, type). Any/unknown types accept any key."""
    tp = unwrap_type(tp)
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


def fields_at(model: type[BaseModel], path: Path_) -> list[str]:
    """The field names of the model at ``path`` in ``model`` ([] where there is no model there)."""
    tp: Any = model
    for key in path:
        ok, tp = child_type(tp, key)
        if not ok:
            return []
    tp = unwrap_type(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


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
        raise located_error(exc, doc, model) from None
