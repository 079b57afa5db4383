"""Fit heads on k-shot subsets of cached embeddings and score them: one run, one configuration
across seeds (:func:`fit`), or the whole grid (:func:`sweep`).

One run = (cache, head, k, seed): the head is fitted on the seed's k-shot ids (drawn from train only,
see ``splits.json``) after the ``heads.scaler`` standardiser (:mod:`featpipe.heads.scaling`), a binary decision
threshold is chosen on the **val** ids of the split's ``val_policy`` (the whole val split, or the matched
k-per-class val subset), and val and test are scored with :func:`featpipe.evaluation.metrics.score` at that
threshold (``val_<metric>`` columns are what model selection uses). Test labels are used for scoring and
nothing else. Every run's per-image val and test probabilities go to a predictions file, and a run whose
scores are mostly tied or that predicts one class for >= 95% of images is flagged ``degenerate``. Every cache is read once and checked against the splits (same manifest, same backbone
and layer); runs are independent and deterministic: same cache + params + seed give the same numbers,
whatever ``n_jobs`` (BLAS runs single-threaded inside each run).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from featpipe import __version__
from featpipe.params.config import Params
from featpipe.data.splits import Splits, load_splits
from featpipe.core.errors import CacheError, DataError
from featpipe.features.cache import cache_path, read_features
from featpipe.heads import head_params, make_head
from featpipe.evaluation.metrics import SCALAR_METRICS, choose_threshold, curves, degenerate, score
from featpipe.results.table import (RUNS_CSV, canonical_params, run_id, upsert_runs, write_curves,
                              write_metrics_json, write_predictions)
from featpipe.heads.scaling import fit_pipeline, pool_scaler
from featpipe.engine.base import Executor
from featpipe.engine.local import LocalExecutor


@dataclass(frozen=True)
class CacheData:
    """The rows of one feature cache that the splits use, read once."""

    path: Path
    backbone: str
    weights: str
    layer: str
    tag: str  # weights tag of the cache file name ("" for the backbone's default weights)
    weights_request: str  # what was asked for (--weights / extract.weights): predict rebuilds the backbone from it
    attrs: dict
    X: np.ndarray  # (N, D) float32: train rows, then val, then test
    y: np.ndarray  # (N,) int64
    row: dict = field(repr=False)  # manifest id -> row in X
    val: np.ndarray = field(repr=False)  # row indices of the val split
    test: np.ndarray = field(repr=False)  # row indices of the test split


@dataclass
class RunResult:
    row: dict  # one results-table row
    classes: list
    test_ids: list
    y_test: np.ndarray
    proba_test: np.ndarray
    curves: dict | None = None
    model_path: str | None = None
    predictions: pd.DataFrame | None = None  # per-image val and test outputs (written beside runs.csv)


def weights_tag(backbone: str, weights: str = "default") -> str | None:
    """The cache-name tag of ``weights`` for ``backbone`` (None for the backbone's default weights)."""
    if weights in (None, "", "default"):
        return None
    from featpipe.backbones import get
    from featpipe.backbones.weights import resolve

    return resolve(get(backbone), weights).tag


def load_cache(cache_dir: str | Path, splits: Splits, backbone: str, *, layer: str | None = None,
               weights: str = "default") -> CacheData:
    """Read ``cache/<dataset>/<backbone>[@layer][+tag].h5`` and check it belongs to these splits."""
    tag = weights_tag(backbone, weights)
    path = cache_path(cache_dir, splits.dataset, backbone, layer=layer, weights_tag=tag)
    if not path.is_file():
        raise CacheError(f"feature cache {path} not found: run 'featpipe extract --backbone {backbone}' first")
    fs = read_features(path)
    a = fs.attrs
    if a.get("manifest_sha256") != splits.manifest_sha256:
        raise CacheError(f"{path} was extracted from another manifest than {splits.dataset}'s splits "
                         f"(stale cache): re-run 'featpipe extract --backbone {backbone}'")
    if a.get("backbone") not in (None, backbone):
        raise CacheError(f"{path} holds features of backbone {a.get('backbone')!r}, not {backbone!r}")
    if (a.get("layer") or "") != (layer or ""):
        raise CacheError(f"{path} holds layer {a.get('layer') or 'final'!r}, not {layer or 'final'!r}")
    ids = list(dict.fromkeys([*splits.train, *splits.val, *splits.test]))
    sel = fs.select(ids)
    row = {k: i for i, k in enumerate(ids)}
    if np.any((sel.labels < 0) | (sel.labels >= len(splits.classes))):
        raise CacheError(f"{path} holds labels outside 0..{len(splits.classes) - 1}: re-run 'featpipe extract'")
    val = np.fromiter((row[k] for k in splits.val), np.int64, len(splits.val))
    test = np.fromiter((row[k] for k in splits.test), np.int64, len(splits.test))
    X = np.ascontiguousarray(sel.features, dtype=np.float32)
    return CacheData(path, backbone, str(a.get("weights") or weights or "default"), layer or "", tag or "",
                     str(weights or "default"), a, X,
                     sel.labels.astype(np.int64), row, val, test)


def single_threaded():
    """BLAS limited to one thread inside a run: reproducible sums whatever n_jobs, no oversubscription."""
    from featpipe.heads import one_blas_thread

    return one_blas_thread()


def model_file(models_dir: str | Path, data: CacheData, dataset: str, head: str, shots: int, seed: int,
               hp: dict) -> Path:
    from featpipe.saved.models import head_model_path

    return head_model_path(models_dir, backbone=data.backbone, layer=data.layer or None, weights_tag=data.tag or None,
                           head=head, shots=shots, seed=seed, dataset=dataset, head_params=hp)


def fit_run(data: CacheData, splits: Splits, *, head: str, shots: int, seed: int, params: Params,
            models_dir: str | Path | None = None) -> RunResult:
    """Fit ``head`` on the ``shots``-shot subset of ``seed``; threshold on val; score on test."""
    from featpipe.data.manifest import ids_sha256

    train_ids = splits.shots(seed, shots)
    leaked = set(train_ids) & (set(splits.test) | set(splits.val))
    if leaked:
        raise DataError(f"{len(leaked)} k-shot training ids are also in val/test (e.g. {sorted(leaked)[0]!r}): "
                        "the splits file is corrupt; rerun 'featpipe prepare'")
    tr = np.fromiter((data.row[k] for k in train_ids), np.int64, len(train_ids))
    val_ids = splits.val_for(seed, shots)
    va = np.fromiter((data.row[k] for k in val_ids), np.int64, len(val_ids))
    classes = list(splits.classes)
    n_classes = len(classes)
    y_tr = data.y[tr]
    if np.unique(y_tr).size < n_classes:
        raise DataError(f"the {shots}-shot subset of seed {seed} lacks a class; rerun 'featpipe prepare'")
    hp = head_params(head, params.heads)
    with single_threaded():
        model = fit_pipeline(make_head(head, params.heads, seed=seed), data.X[tr], y_tr, kind=params.heads.scaler,
                             pool=lambda center: _pool(data, splits, center))
        proba = model.predict_proba(data.X[np.r_[va, data.test]])  # one pass over val + test
    proba_val = proba[: va.size] if va.size else None
    proba_test = proba[va.size:]
    threshold = None
    if n_classes == 2:
        threshold = choose_threshold(data.y[va], proba_val) if proba_val is not None else 0.5
    y_test = data.y[data.test]
    s = score(y_test, proba_test, classes=classes, threshold=threshold)
    sv = score(data.y[va], proba_val, classes=classes, threshold=threshold, detail=False) if va.size else {}
    why = degenerate(proba_test, n_classes=n_classes, threshold=threshold)
    why = f"test: {why}" if why else (f"val: {w}" if va.size and (w := degenerate(proba_val, n_classes=n_classes,
                                                                                       threshold=threshold)) else "")
    clf = model[-1]
    row = {
        "dataset": splits.dataset, "backbone": data.backbone, "weights": data.weights,
        "weights_id": data.attrs.get("weights_id", ""), "layer": data.layer,
        "head": head, "head_params": canonical_params(hp), "shots": int(shots), "seed": int(seed),
        "split_sha256": splits.sha256, "ids_sha256": ids_sha256(train_ids), "n_classes": n_classes,
        "n_train": int(tr.size), "n_val": int(va.size), "n_test": int(data.test.size),
        "degenerate": bool(why), "degenerate_reason": why,
        **{k: v for k, v in s.items() if k not in ("per_class", "confusion_matrix", "n")},
        **{f"val_{k}": sv.get(k, float("nan")) for k in SCALAR_METRICS if k != "threshold"},
        "val_policy": splits.val_policy,
        "scaler_ids_sha256": ids_sha256(splits.train) if params.heads.scaler in ("pool", "center") else "",
        "cv_used": bool(getattr(clf, "cv_used_", False)),
        "chosen_params": canonical_params(getattr(clf, "best_params_", {})),
        "confusion_matrix": json.dumps(s["confusion_matrix"], separators=(",", ":")),
    }
    row["run_id"] = run_id(row)
    for name, pc in s["per_class"].items():
        for m in ("precision", "recall", "f1"):
            row[f"{m}[{name}]"] = pc[m]
    result = RunResult(row, classes, list(splits.test), y_test, proba_test,
                       predictions=prediction_frame(classes, val=(val_ids, data.y[va], proba_val),
                                                    test=(list(splits.test), y_test, proba_test)))
    if params.fit.curves:
        result.curves = curves(y_test, proba_test, classes=classes)
    if models_dir is not None and params.fit.save_models:
        from featpipe.heads.io import save_head

        path = model_file(models_dir, data, splits.dataset, head, shots, seed, hp)
        save_head(path, model, _meta(data, splits, head=head, hp=hp, shots=shots, seed=seed, threshold=threshold,
                                     train_ids=train_ids))
        result.model_path = str(path)
    row["model_path"] = result.model_path or ""
    return result


def _pool(data: CacheData, splits: Splits, center_only: bool):
    """The standardiser fitted on every train-split row of ``data`` (no labels), memoised per cache."""
    idx = np.fromiter((data.row[k] for k in splits.train), np.int64, len(splits.train))
    return pool_scaler((str(data.path), data.X.shape, splits.sha256), lambda: data.X[idx], center_only=center_only)


def prediction_frame(classes: Sequence[str], **parts) -> pd.DataFrame:
    """Per-image outputs: ``split, id, label, p[<class>]...`` for each ``name=(ids, labels, proba)``."""
    frames = []
    for name, (ids, y, proba) in parts.items():
        if proba is None or not len(ids):
            continue
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim == 1:
            p = np.column_stack([1 - p, p])
        f = pd.DataFrame({"split": name, "id": list(ids), "label": np.asarray(y, dtype=np.int64)})
        for j, c in enumerate(classes):
            f[f"p[{c}]"] = p[:, j]
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["split", "id", "label"])


def _meta(data: CacheData, splits: Splits, *, head, hp, shots, seed, threshold, train_ids) -> dict:
    import sklearn

    a = data.attrs
    return {
        "dataset": splits.dataset, "classes": list(splits.classes), "backbone": data.backbone,
        "weights": data.weights, "weights_request": data.weights_request, "weights_id": a.get("weights_id", ""),
        "layer": data.layer,
        "preprocess": a.get("preprocess"), "embedding_dim": int(data.X.shape[1]),
        "precision": a.get("precision"), "manifest_sha256": splits.manifest_sha256,
        "split_sha256": splits.sha256, "head": head, "head_params": hp, "shots": int(shots), "seed": int(seed),
        "threshold": threshold, "train_ids": list(train_ids), "featpipe_version": __version__,
        "sklearn_version": sklearn.__version__,
    }


# --------------------------------------------------------------------------- many runs


def _write(results: Sequence[RunResult], *, params: Params, results_dir: str | Path, splits: Splits) -> pd.DataFrame:
    rdir = Path(results_dir)
    for r in results:
        if r.predictions is not None:
            write_predictions(rdir, r.row, r.predictions)
    table = upsert_runs(rdir / RUNS_CSV, [r.row for r in results])
    if params.fit.curves:
        for r in results:
            if r.curves:
                write_curves(rdir / "curves", r.row, r.curves)
    write_metrics_json(rdir, clinical=params.clinical, split_sha256=splits.sha256, select_metric=params.report.metric)
    return table


_COST = {"mlp": 3.0, "logistic": 2.0, "svc": 2.0, "prototype": 0.2}  # relative time of one run, by head


def _cost(task: tuple) -> float:
    """Relative time of one (cache, head, shots, seed) run: heavy runs (large k, MLP) go first."""
    _, head, shots, _ = task
    return (shots + 5) * _COST.get(head, 1.0)


_META = ("path", "backbone", "weights", "layer", "tag", "weights_request", "attrs", "y", "row", "val", "test")


def _fit_task(task: tuple, shared, *, metas: list, splits: Splits, params: Params, models_dir) -> RunResult:
    """One (cache, head, shots, seed) run on the engine; the feature matrices come in ``shared`` (``X<i>``)."""
    c, h, k, s = task
    data = CacheData(X=shared[f"X{c}"], **metas[c])
    return fit_run(data, splits, head=h, shots=k, seed=s, params=params, models_dir=models_dir)


def run_grid(splits: Splits, caches: Sequence[CacheData], *, heads: Sequence[str], shots: Sequence[int],
             seeds: Sequence[int], params: Params, models_dir: str | Path | None = None,
             n_jobs: int | None = None, engine: Executor | None = None) -> list[RunResult]:
    """Every (cache, head, k, seed) run, in grid order, mapped over ``engine`` (default: the local engine with
    ``n_jobs`` processes, ``fit.n_jobs`` by default); the feature matrices are shared read-only, each run asks
    ``engine.fit_cpus`` CPUs."""
    for h in heads:
        head_params(h, params.heads)  # unknown head names fail before any work
    n_jobs = params.fit.n_jobs if n_jobs is None else n_jobs
    engine = engine or LocalExecutor(workers=n_jobs)
    grid = [(c, h, k, s) for c in range(len(caches)) for h in heads for k in shots for s in seeds]
    metas = [{f: getattr(c, f) for f in _META} for c in caches]
    task = functools.partial(_fit_task, metas=metas, splits=splits, params=params, models_dir=models_dir)
    return engine.map(task, grid, cpus=params.engine.fit_cpus, cost=_cost,
                      shared={f"X{i}": c.X for i, c in enumerate(caches)})


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
    _write(runs, params=params, results_dir=results_dir, splits=splits)
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
    _write(runs, params=params, results_dir=results_dir, splits=splits)
    return runs


def summarize_results(runs: Iterable[RunResult], *, params: Params) -> dict:
    """{config name: per-metric summary across seeds + clinical flag} for these runs only."""
    from featpipe.results.table import summarize_runs

    return summarize_runs(pd.DataFrame([r.row for r in runs]), clinical=params.clinical,
                          select_metric=params.report.metric)


def bootstrap_table(runs: Sequence[RunResult], *, seed: int, manifest_path: str | Path, n_boot: int) -> str:
    """Text table of the patient-level bootstrap intervals of the run of ``seed`` (resampling seeded by it)."""
    from featpipe.core.errors import FeatpipeError

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
    from featpipe.data.manifest import read_manifest
    from featpipe.evaluation.metrics import bootstrap_ci

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
