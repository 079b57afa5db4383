"""The fit and sweep stages, files to files: few-shot runs of heads written to the results table and summarised.

:func:`fit` (one head at one k on every seed) and :func:`sweep` (backbones x heads x shots x seeds) read
the splits and the feature caches, run the grid (:func:`featpipe.fewshot.fit.run_grid`), write every run's
predictions, curves and row as it finishes (a journal, :class:`featpipe.evaluation.table.RunJournal`, so an
interrupted sweep keeps what it computed), upsert the rows into the table and recompute ``metrics.json``
from it (:func:`featpipe.results.summary.write_metrics_json`).
:func:`bootstrap_table` adds the patient-level bootstrap intervals of one seed's run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.backbones.registry import get as get_backbone
from featpipe.core.errors import DataError, FeatpipeError
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import Splits, load_splits
from featpipe.evaluation.table import RunJournal
from featpipe.fewshot.fit import RunResult, check_class_count, load_cache, run_grid
from featpipe.fewshot.zeroshot import zeroshot_runs
from featpipe.params.config import Params
from featpipe.results.stats import bootstrap_ci
from featpipe.results.summary import format_per_class, per_class_summary, summarize_runs, write_metrics_json


def finish(journal: RunJournal, *, params: Params, results_dir: str | Path, splits: Splits) -> pd.DataFrame:
    """The journal's rows into ``results_dir``'s table, then its ``metrics.json``; the table."""
    table = journal.commit()
    write_metrics_json(results_dir, clinical=params.clinical, split_sha256=splits.sha256,
                       select_metric=params.report.metric)
    return table


def check_grid(splits: Splits, *, shots: Sequence[int], seeds: Sequence[int]) -> None:
    """Every (seed, k) of the grid has its k-shot subset in the splits, and the grid is not empty: else one
    line naming what is missing (before any fit)."""
    if not seeds or not shots:
        raise DataError(f"nothing to fit: no {'seeds' if not seeds else 'shots'} (fit.seeds / fit.shots, or "
                        "split.seeds / split.shots of the splits file)")
    for s in seeds:
        for k in shots:
            splits.shots(s, k)  # one-line DataError naming the seeds and shots the file has


def grid_into(results_dir: str | Path, splits: Splits, caches, *, params: Params, **grid) -> list[RunResult]:
    """:func:`run_grid` with each run written as it finishes (a journal: an interruption, an error or a kill
    keeps the runs already done), then the table and ``metrics.json``."""
    check_grid(splits, shots=grid["shots"], seeds=grid["seeds"])
    j = RunJournal(results_dir)
    try:
        runs = run_grid(splits, caches, params=params, on_result=j.add, **grid)
    finally:
        finish(j, params=params, results_dir=results_dir, splits=splits)
    return runs


def fit(splits_path: str | Path, *, head: str, shots: int, seeds: Sequence[int] | None, params: Params,
        backbone: str | None = None, cache_dir: str | Path = "cache", results_dir: str | Path = "results",
        models_dir: str | Path | None = "models", layer: str | None = None, weights: str | None = None,
        n_jobs: int | None = None) -> tuple[list[RunResult], dict]:
    """One head at one k on every seed: writes rows, curves, metrics.json, models; returns (runs, summary)."""
    splits = load_splits(splits_path)
    check_class_count(splits, params.fit.max_classes)
    backbone = backbone or params.extract.backbones[0]
    seeds = list(seeds or params.fit.seeds or sorted(splits.fewshot))
    data = load_cache(cache_dir, splits, backbone, layer=layer if layer is not None else params.extract.layer,
                      weights=weights or params.extract.weights)
    runs = grid_into(results_dir, splits, [data], heads=[head], shots=[shots], seeds=seeds, params=params,
                     models_dir=models_dir, n_jobs=n_jobs)
    return runs, summarize_results(runs, params=params)


def sweep(splits_path: str | Path, *, params: Params, cache_dir: str | Path = "cache",
          results_dir: str | Path = "results", models_dir: str | Path | None = "models",
          backbones: Sequence[str] | None = None, heads: Sequence[str] | None = None,
          shots: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
          n_jobs: int | None = None, engine=None, text_only: bool = False) -> list[RunResult]:
    """The grid backbones x heads x shots x seeds (defaults: ``fit.*``, else ``extract.backbones`` and the
    seeds and shots present in the splits file). ``text_only``: only the backbones with a text tower (the DVC
    stage of the text-initialised head runs for every extracted backbone); with none left it writes only
    ``TEXT.txt`` saying why (and makes the models folder) and returns no runs."""
    splits = load_splits(splits_path)
    f = params.fit
    check_class_count(splits, f.max_classes)
    backbones = list(backbones or f.backbones or params.extract.backbones)
    if text_only:
        without = [b for b in backbones if get_backbone(b).text is None]
        backbones = [b for b in backbones if b not in without]
        if not backbones:
            for d in (results_dir, models_dir):
                if d is not None:
                    Path(d).mkdir(parents=True, exist_ok=True)
            (Path(results_dir) / "TEXT.txt").write_text(
                f"no text-initialised runs: {', '.join(without) or 'no backbone'} has no text tower\n")
            return []
    caches = [load_cache(cache_dir, splits, b, layer=params.extract.layer, weights=params.extract.weights)
              for b in backbones]
    seeds = list(seeds or f.seeds or sorted(splits.fewshot))
    if not shots and not f.shots:  # the splits file's shots (those of its first seed: every seed has the same)
        shots = sorted(splits.fewshot.get(seeds[0] if seeds else None) or next(iter(splits.fewshot.values()), {}))
    shots = list(shots or f.shots)
    runs = grid_into(results_dir, splits, caches, heads=list(heads or f.heads), shots=shots, seeds=seeds,
                     params=params, models_dir=models_dir, n_jobs=n_jobs, engine=engine)
    return runs


def zeroshot(splits_path: str | Path, *, params: Params, cache_dir: str | Path = "cache",
             results_dir: str | Path = "results", backbones: Sequence[str] | None = None,
             prompts: str | Path | None = None, allow_empty: bool = False) -> list:
    """Zero-shot runs (shots = 0, one per prompt set) of ``backbones`` (default: ``zeroshot.backbones``, else the
    ``extract.backbones`` with a text tower) written like :func:`sweep`'s; returns the run records. With
    ``allow_empty`` a backbone without a text tower is skipped (the DVC stage runs for every extracted backbone)
    and a stage with nothing to score writes only ``ZEROSHOT.txt`` saying why."""
    splits = load_splits(splits_path)
    if splits.labels:  # prompts name classes; a multi-label task has one prompt pair per label (not yet)
        if not allow_empty:
            raise FeatpipeError("zero-shot is not available for multi-label tasks (data.csv.labels) yet")
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        (Path(results_dir) / "ZEROSHOT.txt").write_text("no zero-shot runs: not available for multi-label tasks yet\n")
        return []
    names = list(backbones or params.zeroshot.backbones
                 or [b for b in params.extract.backbones if get_backbone(b).text is not None])
    without = [b for b in names if get_backbone(b).text is None]
    if without and not allow_empty:
        raise FeatpipeError(f"{', '.join(without)} has no text tower: zero-shot needs a CLIP-like backbone "
                             "(medsiglip, biomedclip)")
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
    j = RunJournal(results_dir)
    for r in records:
        j.add(r)
    finish(j, params=params, results_dir=results_dir, splits=splits)
    return records



def summarize_results(runs: Iterable, *, params: Params) -> dict:
    """{config name: per-metric summary across seeds + clinical flag} for these runs (results or rows) only."""
    return summarize_runs(_frame(runs), clinical=params.clinical, select_metric=params.report.metric)


def per_class_results(runs: Iterable, *, params: Params) -> str:
    """The per-class table (precision, recall, F1 over seeds) of the val-chosen configurations of these runs."""
    df = _frame(runs)
    summary = summarize_runs(df, clinical=params.clinical, select_metric=params.report.metric)
    return format_per_class(per_class_summary(df, summary, params.report.metric))


def _frame(runs: Iterable) -> pd.DataFrame:
    return pd.DataFrame([dict(r) if isinstance(r, Mapping) else r.row for r in runs])  # RunResult, RunRecord or a row


def bootstrap_table(runs: Sequence[RunResult], *, seed: int, manifest_path: str | Path, n_boot: int) -> str:
    """Text table of the patient-level bootstrap intervals of the run of ``seed`` (resampling seeded by it)."""
    chosen = [r for r in runs if r.row["seed"] == seed]
    if not chosen:
        raise FeatpipeError(f"seed {seed} is not among the seeds fitted ({sorted({r.row['seed'] for r in runs})})")
    run = chosen[0]
    if run.row.get("task") == "multilabel":
        return f"seed {seed}: no patient-level bootstrap for multi-label runs yet (intervals over seeds: see the report)"
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
