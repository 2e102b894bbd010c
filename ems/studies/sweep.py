"""Parameter sweeps over measures, run in parallel on Dask.

A sweep spec (YAML)::

    scenario: qingdao-2024-hourly.yaml   # relative to the spec file
    resolution: 1h                       # optional: replace the scenario's
    site: qingdao                        # default site of the swept measures
    measures: []                         # fixed measures in every variant (optional)
    parameters:                          # <measure>.<parameter>: values
      add_pv.kwp: [0, 10000, 20000]      # a list: grid over all combinations
      add_storage.energy_kwh: [0, 10000]
      buy_certificates.mwh: {min: 0, max: 30000}   # a range: random sampling (needs 'sample')
    sample: {n: 20, seed: 1}             # optional: n random variants instead of the grid
    target: {metric: green_share, min: 0.30}       # or max: for a ceiling

A measure whose swept values in a variant are all 0 is left out of that variant.
Each variant is simulated, accounted and priced on a worker (:func:`run_variant`),
which returns a small dict, not the readings. The base is the scenario as it is.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from ems.errors import ConfigError, MissingExtraError
from ems.model.scenario import ResolvedScenario
from ems.studies.measures import MEASURES, load_costs
from ems.yamldoc import load_document

__all__ = [
    "SweepResult",
    "SweepSpec",
    "cheapest_meeting",
    "load_sweep_spec",
    "pareto_front",
    "run_sweep",
    "run_variant",
    "variants",
]

log = logging.getLogger(__name__)


@dataclass
class SweepSpec:
    """A parsed sweep spec (see module docs)."""

    scenario: ResolvedScenario
    site: str | None
    fixed: list[dict[str, Any]]
    parameters: dict[str, Any]
    sample: dict[str, Any] | None
    target: dict[str, Any] | None
    source: str = "<spec>"


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec and load its scenario.

    Raises
    ------
    ConfigError
        A missing file or field, an unknown measure or parameter, empty values.
    """
    from ems.model.loader import load_scenario
    from ems.model.scenario import ScenarioFile

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep: expected a spec file, found no file at {str(p)!r}")
    d = load_document(p).data  # size, depth and file-type limits, located errors
    if not isinstance(d, dict) or "scenario" not in d or not d.get("parameters"):
        raise ConfigError(f"{p}: expected a mapping with 'scenario' and 'parameters'")
    sc = load_scenario(p.parent / str(d["scenario"]))
    if d.get("resolution"):
        res = ScenarioFile._resolution(str(d["resolution"]))
        sc.resolution_s = int(pd.Timedelta(pd.tseries.frequencies.to_offset(res)).total_seconds())
    params = dict(d["parameters"])
    for key, vals in params.items():
        name, _, par = str(key).partition(".")
        if name not in MEASURES or par not in MEASURES[name].params:
            raise ConfigError(f"{p}: parameters.{key}: expected <measure>.<parameter> of the catalogue "
                              f"(ems measures), found {key!r}")
        if isinstance(vals, dict):
            if not {"min", "max"} <= set(vals) or not d.get("sample"):
                raise ConfigError(f"{p}: parameters.{key}: a range needs min and max, and 'sample: {{n: N}}'")
        elif not isinstance(vals, list) or not vals:
            raise ConfigError(f"{p}: parameters.{key}: expected a non-empty list or {{min, max}}, found {vals!r}")
    target = d.get("target")
    if target is not None and (not isinstance(target, dict) or "metric" not in target
                               or not ({"min", "max"} & set(target))):
        raise ConfigError(f"{p}: target: expected {{metric: NAME, min: X}} or {{metric: NAME, max: X}}, found {target!r}")
    return SweepSpec(scenario=sc, site=d.get("site"), fixed=list(d.get("measures") or []), parameters=params,
                     sample=d.get("sample"), target=target, source=str(p))


def variants(parameters: Mapping[str, Any], sample: Mapping[str, Any] | None = None) -> list[dict[str, float]]:
    """The parameter combinations: the full grid, or ``sample['n']`` random ones.

    Lists are sampled by choice, ``{min, max}`` ranges uniformly; ``sample['seed']``
    makes it repeatable.
    """
    keys = list(parameters)
    if sample is None:
        for k in keys:
            if isinstance(parameters[k], dict):
                raise ConfigError(f"parameters.{k}: a range needs 'sample'")
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(parameters[k] for k in keys))]
    rng = np.random.default_rng(int(sample.get("seed", 0)))
    n = int(sample["n"])
    out = []
    for _ in range(n):
        v: dict[str, float] = {}
        for k in keys:
            spec = parameters[k]
            if isinstance(spec, dict):
                v[k] = float(rng.uniform(float(spec["min"]), float(spec["max"])))
            else:
                v[k] = spec[int(rng.integers(len(spec)))]
        out.append(v)
    return out


def measures_of(variant: Mapping[str, Any], site: str | None, fixed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Turn a variant's ``measure.param: value`` into measure mappings (all-zero measures dropped)."""
    by: dict[str, dict[str, Any]] = {}
    for key, val in variant.items():
        name, _, par = key.partition(".")
        by.setdefault(name, {"measure": name, **({"site": site} if site else {})})[par] = val
    out = [dict(m) for m in fixed]
    for m in by.values():
        swept = [v for k, v in m.items() if k not in ("measure", "site")]
        if all(isinstance(v, int | float) and v == 0 for v in swept):
            continue
        out.append(m)
    return out


def run_variant(scenario: ResolvedScenario, variant: Mapping[str, Any], site: str | None,
                fixed: Sequence[Mapping[str, Any]], base: Mapping[str, float] | None,
                costs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Simulate, account and price one variant; return a small flat dict.

    Runs on a Dask worker. The scenario's own measures come first, then the fixed
    ones, then the swept ones.
    """
    from ems.studies.run import evaluate, year_fraction

    ms = list(scenario.extra.get("measures") or []) + measures_of(variant, site, fixed)
    r = evaluate(scenario, ms, base=base, costs=costs)
    r.pop("measures", None)
    r["total_annual_cost"] = r["total_cost"] / year_fraction(scenario) + r["annual_cost"]
    return {**{f"p:{k}": v for k, v in variant.items()}, **r}


def pareto_front(cost: Sequence[float], emissions: Sequence[float]) -> npt.NDArray[np.bool_]:
    """Mask of the points no other point beats on both cost and emissions (both minimised).

    A point is dominated when another is no worse on both and better on one.
    Duplicates of a non-dominated point are all kept; NaN points are never on the front.

    Parameters
    ----------
    cost : sequence of float [currency/yr]
    emissions : sequence of float [tCO2e]

    Returns
    -------
    ndarray of bool
    """
    c = np.asarray(cost, dtype=float)
    e = np.asarray(emissions, dtype=float)
    if c.shape != e.shape:
        raise ValueError(f"pareto_front: cost and emissions differ in length ({c.size} vs {e.size})")
    ok = np.isfinite(c) & np.isfinite(e)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        better_eq = ok & (c <= c[i]) & (e <= e[i])
        strictly = (c < c[i]) | (e < e[i])
        if np.any(better_eq & strictly):
            front[i] = False
    out: npt.NDArray[np.bool_] = front
    return out


def cheapest_meeting(results: pd.DataFrame, target: Mapping[str, Any], cost: str = "total_annual_cost") -> pd.Series | None:
    """The cheapest row meeting ``target`` (``{metric, min}`` or ``{metric, max}``), or None."""
    col = str(target["metric"])
    if col not in results:
        raise ConfigError(f"target.metric: expected a result column such as green_share, found {col!r}")
    ok = pd.Series(True, index=results.index)
    if "min" in target:
        ok &= results[col] >= float(target["min"])
    if "max" in target:
        ok &= results[col] <= float(target["max"])
    sel = results[ok & results[cost].notna()]
    if sel.empty:
        return None
    return sel.loc[sel[cost].idxmin()]


@dataclass
class SweepResult:
    """Result of :func:`run_sweep`: ``results`` (one row per variant, ``pareto`` flag), ``base`` and ``best``."""

    results: pd.DataFrame
    base: dict[str, Any]
    best: pd.Series | None
    target: dict[str, Any] | None

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto front (cost vs Scope 1+2), cheapest first."""
        return self.results[self.results["pareto"]].sort_values("total_annual_cost")

    def write(self, out: Path) -> list[Path]:
        """Write ``results.csv`` (and ``.parquet``), ``pareto.csv`` and ``best.csv`` into ``out``;
        return the files written (no stale ``best.csv`` of an earlier sweep is left)."""
        out.mkdir(parents=True, exist_ok=True)
        (out / "best.csv").unlink(missing_ok=True)
        self.results.to_csv(out / "results.csv", index=False)
        try:
            self.results.to_parquet(out / "results.parquet", index=False)
        except (ImportError, ValueError) as exc:  # pragma: no cover - pyarrow is a dependency
            log.warning("no parquet written: %s", exc)
        self.front.to_csv(out / "pareto.csv", index=False)
        if self.best is not None:
            pd.DataFrame([self.best]).to_csv(out / "best.csv", index=False)
        return [f for f in (out / "results.csv", out / "results.parquet", out / "pareto.csv", out / "best.csv")
                if f.exists()]


def _on_dask(spec: SweepSpec, vs: list[dict[str, float]], costs: Mapping[str, Any], scheduler: str | None,
             n_workers: int, progress: Callable[[int, int], None] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The base and every variant run on a Dask cluster (a local one unless ``scheduler``)."""
    try:
        dist: Any = importlib.import_module("distributed")
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingExtraError("dask.distributed", "sweep") from exc
    cluster = None
    if scheduler is None:
        cluster = dist.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.WARNING)
    client = dist.Client(cluster if cluster is not None else scheduler)
    try:
        sc_f = client.scatter(spec.scenario, broadcast=True)
        base = client.submit(run_variant, sc_f, {}, spec.site, [], None, costs, pure=False).result()
        futs = [client.submit(run_variant, sc_f, v, spec.site, spec.fixed, base, costs, pure=False) for v in vs]
        order = {f.key: i for i, f in enumerate(futs)}
        got: dict[int, dict[str, Any]] = {}
        for done, fut in enumerate(dist.as_completed(futs), 1):
            got[order[fut.key]] = fut.result()
            if progress:
                progress(done, len(vs))
        return base, [got[i] for i in range(len(vs))]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_sweep(
    spec: SweepSpec,
    *,
    scheduler: str | None = None,
    n_workers: int = 2,
    costs: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Run every variant of ``spec`` on Dask.

    Parameters
    ----------
    spec : SweepSpec
    scheduler : str, optional
        None: a local cluster (``n_workers`` processes, one thread each);
        ``"synchronous"``: in this process (tests, debugging); otherwise the
        address of a running scheduler (``tcp://host:8786``).
    n_workers : int
    costs : dict, optional
    progress : callable, optional
        ``progress(done, total)``.
    """
    costs = costs if costs is not None else load_costs()
    vs = variants(spec.parameters, spec.sample)
    sc = spec.scenario
    if scheduler == "synchronous":
        base = run_variant(sc, {}, spec.site, [], None, costs)
        rows = []
        for i, v in enumerate(vs):
            rows.append(run_variant(sc, v, spec.site, spec.fixed, base, costs))
            if progress:
                progress(i + 1, len(vs))
    else:
        base, rows = _on_dask(spec, vs, costs, scheduler, n_workers, progress)
    df = pd.DataFrame(rows)
    df["pareto"] = pareto_front(df["total_annual_cost"], df["net_scope12_t"]) if len(df) else []
    best = cheapest_meeting(df, spec.target) if spec.target and len(df) else None
    return SweepResult(results=df, base=base, best=best, target=spec.target)

