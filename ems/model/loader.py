"""Load site and scenario files: their YAML, their overrides, their files, one located error for every problem.

A site or scenario file is read as a :class:`~ems.yamldoc.Document` (safe YAML
with the line of every value), validated against the pydantic schemas in
:mod:`ems.model.site` and :mod:`ems.model.scenario` (:mod:`ems.model.validation`:
each problem as ``file:line: field.path: expected ..., found ...``, all of them in one
:class:`~ems.errors.LocatedError`). A scenario's overrides of its sites' fields are
applied to the raw site data before validation (:mod:`ems.model.overrides`). Files a
scenario or site names (site files, weather files) must lie inside the project folder,
the working directory or a folder named in ``$EMS_FILE_ROOTS`` (:func:`file_roots`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ems.errors import ConfigError, LocatedError
from ems.model.overrides import apply_scenario_overrides
from ems.model.scenario import ResolvedScenario, ScenarioFile, apply_boundary
from ems.model.site import Site
from ems.model.validation import did_you_mean, short_value, validate_document
from ems.yamldoc import Document, Key, Path_, format_path, load_document, parse

__all__ = [
    "FILE_ROOTS_ENV",
    "file_roots",
    "is_scenario_data",
    "load_scenario",
    "load_scenario_data",
    "load_site",
    "load_site_data",
    "located_measure_error",
]

#: Folders (``os.pathsep``-separated) a scenario may also name files in, besides its own project folder.
FILE_ROOTS_ENV = "EMS_FILE_ROOTS"


def is_scenario_data(data: Mapping[str, Any]) -> bool:
    """Whether parsed top-level data is a scenario (it has ``sites`` and ``period``)."""
    return "sites" in data and "period" in data


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
    return validate_document(parse(text, name), Site)


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
    return _resolve_site_paths(validate_document(doc, Site), path)


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
            return LocatedError(text, file=file, line=line, field=format_path(path))

        if not isinstance(m, Mapping) or "measure" not in m:
            raise fail(f"expected a mapping with 'measure' (one of {', '.join(MEASURES)}), found {short_value(m)}")
        name = m["measure"]
        spec = MEASURES.get(str(name))
        if spec is None:
            words = [MEASURE_WORDS[w] for w in re.split(r"[^a-z]+", str(name).lower()) if w in MEASURE_WORDS]
            hint = f" (did you mean {words[0]!r}?)" if words else did_you_mean(name, MEASURES)
            raise fail(f"expected a measure in {', '.join(MEASURES)}, found {name!r}{hint}", "measure")
        allowed = [*spec.params, *sorted(COMMON_PARAMETERS - {"measure"} - set(spec.params))]
        for key in m:
            if key not in allowed and key != "measure":
                raise fail(f"{name}: expected a parameter in {', '.join(allowed)}, found {key!r}"
                           f"{did_you_mean(key, allowed)}", key)
        sel = m.get("site")
        for sid in [] if sel is None else [sel] if isinstance(sel, str) else list(sel):
            if sid not in site_ids:
                raise fail(f"{name}: expected the id of a site in this scenario ({', '.join(site_ids)}), "
                           f"found {sid!r}{did_you_mean(sid, site_ids)}", "site")


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
    spec = validate_document(doc, ScenarioFile)
    roots = file_roots(base)
    site_docs, by_id = _site_documents(spec, doc, base, roots)
    apply_scenario_overrides(spec, doc, extra, site_docs, by_id)
    _check_measures(doc, spec.measures, list(by_id))
    sites = _bounded(spec, doc, [_resolve_site_paths(validate_document(sdoc, Site), sdoc.name, roots) for sdoc in site_docs])
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
            hint = did_you_mean(site_path.name, sorted(f.name for f in near))
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
