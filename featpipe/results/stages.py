"""The fit and sweep stages, files to files: few-shot runs of heads written to the results table and summarised.

:func:`fit` (one head at one k on every seed) and :func:`sweep` (backbones x heads x shots x seeds) read
the splits and the feature caches, run the grid (:func:`featpipe.fewshot.fit.run_grid`), write every run's
row, predictions and curves (:func:`featpipe.evaluation.table.write_records`) and recompute
``metrics.json`` from the table (:func:`featpipe.results.summary.write_metrics_json`).
:func:`bootstrap_table` adds the patient-level bootstrap intervals of one seed's run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError, FeatpipeError
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import Splits, load_splits
from featpipe.evaluation.table import write_records
from featpipe.fewshot.fit import RunResult, load_cache, run_grid
from featpipe.fewshot.zeroshot import zeroshot_runs
from featpipe.params.config import Params
from featpipe.results.stats import bootstrap_ci
from featpipe.results.summary import summarize_runs, write_metrics_json


def write_runs(results: Sequence[RunResult], *, params: Params, results_dir: str | Path,
               splits: Splits) -> pd.DataFrame:
    """Rows, predictions and curves of ``results`` into ``results_dir``, then its ``metrics.json``; the table."""
    table = write_records(results_dir, results)
    write_metrics_json(results_dir, clinical=params.clinical, split_sha256=splits.sha256,
                       select_metric=params.report.metric)
    return table


def fit(splits_path: str | Path, *, head: str, shots: int, seeds: Sequence[int] | None, params: Params,
        backbone: str | None = None, cache_dir: str | Path = "cache", results_dir: str | Path = "results",
        models_dir: str | Path | None = "models", layer: str | None = None, weights: str | None = None,
        n_jobs: int | None = None) -> tuple[list[RunResult], dict]:
    """One head at one k on every seed: writes rows, curves, metrics.json, models; returns (runs, summary)."""
    splits = load_splits(splits_path)
    backbone = backbone or params.extract.backbones[0]
    seeds = list(seeds or params.fit.seeds or sorted(splits.fewshot))
    data = load_cache(cache_dir, splits, backbone, layer=layer if layer is not None else params.extract.layer,
                      weights=weights or params.extract.weights)
    runs = run_grid(splits, [data], heads=[head], shots=[shots], seeds=seeds, params=params,
                    models_dir=models_dir, n_jobs=n_jobs)
    write_runs(runs, params=params, results_dir=results_dir, splits=splits)
    return runs, summarize_results(runs, params=params)


def sweep(splits_path: str | Path, *, params: Params, cache_dir: str | Path = "cache",
          results_dir: str | Path = "results", models_dir: str | Path | None = "models",
          backbones: Sequence[str] | None = None, heads: Sequence[str] | None = None,
          shots: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
          n_jobs: int | None = None, engine=None) -> list[RunResult]:
    """The grid backbones x heads x shots x seeds (defaults: ``fit.*``, else ``extract.backbones`` and the
    seeds and shots present in the splits file)."""
    splits = load_splits(splits_path)
    f = params.fit
    backbones = list(backbones or f.backbones or params.extract.backbones)
    caches = [load_cache(cache_dir, splits, b, layer=params.extract.layer, weights=params.extract.weights)
              for b in backbones]
    seeds = list(seeds or f.seeds or sorted(splits.fewshot))
    if not shots and not f.shots and seeds and seeds[0] in splits.fewshot:
        shots = sorted(splits.fewshot[seeds[0]])
    shots = list(shots or f.shots)
    runs = run_grid(splits, caches, heads=list(heads or f.heads), shots=shots, seeds=seeds, params=params,
                    models_dir=models_dir, n_jobs=n_jobs, engine=engine)
    write_runs(runs, params=params, results_dir=results_dir, splits=splits)
    return runs


def zeroshot(splits_path: str | Path, *, params: Params, cache_dir: str | Path = "cache",
             results_dir: str | Path = "results", backbones: Sequence[str] | None = None,
             prompts: str | Path | None = None, allow_empty: bool = False) -> list:
    """Zero-shot runs (shots = 0, one per prompt set) of ``backbones`` (default: ``zeroshot.backbones``, else the
    ``extract.backbones`` with a text tower) written like :func:`sweep`'s; returns the run records. With
    ``allow_empty`` a backbone without a text tower is skipped (the DVC stage runs for every extracted backbone)
    and a stage with nothing to score writes only ``ZEROSHOT.txt`` saying why."""
    from featpipe.backbones.registry import get as get_backbone

    splits = load_splits(splits_path)
    names = list(backbones or params.zeroshot.backbones
                 or [b for b in params.extract.backbones if get_backbone(b).text is not None])
    without = [b for b in names if get_backbone(b).text is None]
    if without and not allow_empty:
        raise FeatpipeError(f"{', '.join(without)} has no text tower: zero-shot needs a CLIP-like backbone (medsiglip)")
    names = [b for b in names if b not in without]
    if not names:
        if not allow_empty:
            raise FeatpipeError("no backbone with a text tower to run zero-shot with: set zeroshot.backbones "
                                "(e.g. [medsiglip]) or pass --backbones")
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        (Path(results_dir) / "ZEROSHOT.txt").write_text(
            f"no zero-shot runs: {', '.join(without) or 'no backbone'} has no text tower\n")
        return []
    records = []
    for b in names:
        data = load_cache(cache_dir, splits, b, weights=params.extract.weights)
        records += zeroshot_runs(data, splits, prompts_path=prompts or params.zeroshot.prompts, cache_dir=cache_dir,
                                 with_curves=params.fit.curves)
    write_runs(records, params=params, results_dir=results_dir, splits=splits)
    return records


def summarize_results(runs: Iterable[RunResult], *, params: Params) -> dict:
    """{config name: per-metric summary across seeds + clinical flag} for these runs only."""
    return summarize_runs(pd.DataFrame([r.row for r in runs]), clinical=params.clinical,
                          select_metric=params.report.metric)


def bootstrap_table(runs: Sequence[RunResult], *, seed: int, manifest_path: str | Path, n_boot: int) -> str:
    """Text table of the patient-level bootstrap intervals of the run of ``seed`` (resampling seeded by it)."""
    chosen = [r for r in runs if r.row["seed"] == seed]
    if not chosen:
        raise FeatpipeError(f"seed {seed} is not among the seeds fitted ({sorted({r.row['seed'] for r in runs})})")
    run = chosen[0]
    ci = bootstrap_run(run, manifest_path=manifest_path, n_boot=n_boot, seed=seed)
    lines = [f"seed {seed}: patient-level bootstrap 95% intervals on test ({n_boot} resamples of patients)"]
    for metric, iv in ci.items():
        lines.append(f"  {metric:<18}{run.row[metric]:>8.3f}   [{iv['low']:.3f}, {iv['high']:.3f}]")
    return "\n".join(lines)


def bootstrap_run(run: RunResult, *, manifest_path: str | Path, n_boot: int, seed: int = 0) -> dict:
    """Patient-level bootstrap 95% intervals for one run's test metrics (patients from the manifest)."""
    m = read_manifest(manifest_path).set_index("id")
    missing = [i for i in run.test_ids if i not in m.index]
    if missing:
        raise DataError(f"{len(missing)} test ids are not in {manifest_path} (first {missing[0]!r}): "
                        "is it the manifest these splits came from?")
    patients = m.loc[run.test_ids, "patient_id"].astype(str).to_numpy()
    thr = run.row.get("threshold")
    thr = None if thr is None or not np.isfinite(thr) else float(thr)
    return bootstrap_ci(run.y_test, run.proba_test, classes=run.classes, patients=patients, threshold=thr,
                        n_boot=n_boot, seed=seed)
