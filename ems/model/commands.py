"""``ems validate`` and ``ems schema``: check site and scenario files, export their JSON Schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ems.errors import ConfigError
from ems.model.loader import is_scenario_data, load_scenario, load_site
from ems.model.scenario import ScenarioFile
from ems.model.site import Site
from ems.yamldoc import load_document

__all__ = ["SCHEMA_FILES", "json_schemas", "schema", "validate", "validate_path"]

#: file name -> model exported by ``ems schema``
SCHEMA_FILES: dict[str, Any] = {"site.schema.json": Site, "scenario.schema.json": ScenarioFile}
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_YAML_SUFFIXES = {".yaml", ".yml"}


def json_schemas() -> dict[str, str]:
    """The JSON Schema text of each file that ``ems schema`` writes, by file name."""
    out: dict[str, str] = {}
    for name, model in SCHEMA_FILES.items():
        doc = {"$schema": _DRAFT, **model.model_json_schema()}
        out[name] = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return out


def _files(paths: tuple[str, ...]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _YAML_SUFFIXES)
        else:
            yield p


def validate_path(path: str | Path) -> str:
    """Validate one site or scenario file (told apart by content); return ``'site'`` or ``'scenario'``.

    Raises
    ------
    ConfigError
        The file is missing or invalid (a :class:`~ems.errors.LocatedError` with lines).
    """
    doc = load_document(path)
    if is_scenario_data(doc.data):
        scenario = load_scenario(path)
        _check_measure_values(scenario, path)
        return "scenario"
    load_site(path)
    return "site"


def _check_measure_values(scenario: Any, path: str | Path) -> None:
    """Apply the scenario's measures as ``ems run`` would, without simulating anything.

    Measures sized from a run's KPIs (a target green share) are sized here from
    placeholder totals: their parameters are checked, their size is not computed.
    """
    if not scenario.extra.get("measures"):
        return
    from ems.model.loader import located_measure_error
    from ems.studies.measures import apply_measures

    def placeholder(sc: Any) -> dict[str, dict[str, float]]:
        return {s.id: {"electricity_consumed_kwh": 1.0, "green_kwh": 0.0} for s in sc.sites}

    try:
        apply_measures(scenario, site_totals=placeholder)
    except ConfigError as exc:
        raise located_measure_error(exc, path) from None


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-q", "--quiet", is_flag=True, help="Print only problems.")
def validate(paths: tuple[str, ...], quiet: bool) -> None:
    """Check site and scenario files without running anything.

    PATHS are files or directories (searched for *.yaml and *.yml). A file with
    'sites' and 'period' is a scenario and is checked with its sites and
    overrides; any other file is a site. Prints 'ok PATH' for each good file and
    the located problems (file:line: field: expected ..., found ...) for the
    others; exits 1 if any file is bad.
    """
    n_ok = n_bad = 0
    for f in _files(paths):
        try:
            kind = validate_path(f)
        except ConfigError as exc:
            n_bad += 1
            click.echo(str(exc))
        else:
            n_ok += 1
            if not quiet:
                click.echo(f"ok {f} ({kind})")
    if n_ok + n_bad == 0:
        raise click.ClickException(f"no .yaml or .yml files found in {', '.join(paths)}")
    if n_ok + n_bad > 1:
        click.echo(f"{n_ok} ok, {n_bad} bad", err=True)
    if n_bad:
        raise SystemExit(1)


@click.command()
@click.argument("kind", required=False, type=click.Choice(["site", "scenario"]))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write site.schema.json and scenario.schema.json into this directory.",
)
def schema(kind: str | None, out: str | None) -> None:
    """Export the JSON Schemas of site and scenario files (for editors and other tools).

    Without --out, prints the schema of KIND (site or scenario) or, without KIND,
    a JSON object holding both by file name. Editors using yaml-language-server pick
    a schema from a first line such as
    '# yaml-language-server: $schema=../docs/schema/site.schema.json'.
    """
    texts = json_schemas()
    if kind is not None:
        texts = {f"{kind}.schema.json": texts[f"{kind}.schema.json"]}
    if out is None:
        if len(texts) == 1:
            click.echo(next(iter(texts.values())), nl=False)
        else:
            both = {name: json.loads(text) for name, text in texts.items()}
            click.echo(json.dumps(both, indent=2, ensure_ascii=False))
        return
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (target / name).write_text(text, encoding="utf-8")
        click.echo(f"wrote {target / name}")
