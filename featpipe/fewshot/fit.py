"""Fit heads on k-shot subsets of cached embeddings: one run (:func:`fit_run`) or the whole grid (:func:`run_grid`).

One run = (cache, head, k, seed): the head is fitted on the seed's k-shot ids (drawn from train only,
see ``splits.json``) after the ``heads.scaler`` standardiser (:mod:`featpipe.heads.scaling`), and its val
and test probabilities become a results row, predictions and curves through
:func:`featpipe.evaluation.record.record_run` (threshold chosen on the **val** ids of the split's
``val_policy``, scores, degenerate flag), exactly as a fine-tuning run does. Every cache is read once and
checked against the splits (same manifest, same backbone and layer); runs are independent and
deterministic: same cache + params + seed give the same numbers, whatever ``n_jobs`` (BLAS runs
single-threaded inside each run). The fit and sweep stages (rows written, ``metrics.json``, summaries) are
:mod:`featpipe.results.stages`.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import sklearn

from featpipe.backbones.registry import get as get_backbone
from featpipe.backbones.weights import resolve
from featpipe.core.errors import CacheError, DataError
from featpipe.core.names import canonical_params, head_model_path, short_part, weights_name
from featpipe.data.manifest import ids_sha256
from featpipe.data.multilabel import kshot_text
from featpipe.data.splits import Splits
from featpipe.engine.base import Executor
from featpipe.engine.local import LocalExecutor
from featpipe.evaluation.calibration import apply_temperature, fit_temperature
from featpipe.evaluation.multilabel import record_multilabel
from featpipe.evaluation.record import Outputs, RunRecord, check_disjoint, record_run
from featpipe.features.cache import cache_path, read_features
from featpipe.fewshot.labels import fit_per_label
from featpipe.fewshot.zeroshot import text_prior
from featpipe.heads.base import one_blas_thread, per_rows
from featpipe.heads.io import save_head
from featpipe.heads.registry import get as get_head
from featpipe.heads.registry import head_params, make_head
from featpipe.heads.scaling import fit_pipeline, pool_scaler, scaled_rows
from featpipe.params.config import Params


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
    return resolve(get_backbone(backbone), weights).tag


def split_rows(splits: Splits) -> tuple[list[str], dict, np.ndarray, np.ndarray]:
    """The rows a run reads: the split's ids (train, then val, then test, each once), id -> row, and the row
    indices of val and of test."""
    ids = list(dict.fromkeys([*splits.train, *splits.val, *splits.test]))
    row = {k: i for i, k in enumerate(ids)}
    val = np.fromiter((row[k] for k in splits.val), np.int64, len(splits.val))
    test = np.fromiter((row[k] for k in splits.test), np.int64, len(splits.test))
    return ids, row, val, test


def check_class_count(splits: Splits, limit: int) -> None:
    """One line, before any fit, when the task has more classes than ``limit`` (``fit.max_classes``)."""
    n = len(splits.classes)
    if n > limit:
        raise DataError(f"{splits.dataset} has {n:,} classes, more than fit.max_classes = {limit:,} (every run's "
                        "predictions, curves and per-class metrics grow with the classes); merge classes, or raise "
                        f"the limit with -S fit.max_classes={n} if you accept the time and memory")


def load_cache(cache_dir: str | Path, splits: Splits, backbone: str, *, layer: str | None = None,
               weights: str = "default") -> CacheData:
    """Read ``cache/<dataset>/<backbone>[@layer][+tag].h5`` and check it belongs to these splits."""
    layer = get_backbone(backbone).resolve_layer(layer) if layer else None  # "final", a suffix: as extract names it
    tag = weights_tag(backbone, weights)
    path = cache_path(cache_dir, splits.dataset, backbone, layer=layer, weights_tag=tag)
    if not path.is_file():
        raise CacheError(f"feature cache {path} not found: run 'featpipe extract --backbone {backbone}' first")
    fs = read_features(path)
    a = fs.attrs
    if a.get("manifest_sha256") != splits.manifest_sha256:
        raise CacheError(f"{path} was extracted from another manifest than {splits.dataset}'s splits were made "
                         f"from (stale cache): if the manifest changed since 'featpipe prepare', re-run 'featpipe prepare', then "
                         f"'featpipe extract --backbone {backbone}'")
    if a.get("backbone") not in (None, backbone):
        raise CacheError(f"{path} holds features of backbone {a.get('backbone')!r}, not {backbone!r}")
    if (a.get("layer") or "") != (layer or ""):
        raise CacheError(f"{path} holds layer {a.get('layer') or 'final'!r}, not {layer or 'final'!r}")
    ids, row, val, test = split_rows(splits)
    sel = fs.select(ids)
    if np.any((sel.labels < 0) | (sel.labels >= len(splits.classes))):
        raise CacheError(f"{path} holds labels outside 0..{len(splits.classes) - 1}: re-run 'featpipe extract'")
    X = np.ascontiguousarray(sel.features, dtype=np.float32)
    X.setflags(write=False)  # shared by every run of the grid, never changed
    return CacheData(path, backbone, weights_name(a.get("weights") or weights or "default", a.get("weights_id", "")),
                     layer or "", tag or "",
                     str(weights or "default"), a, X,
                     sel.labels.astype(np.int64), row, val, test)


def single_threaded():
    """BLAS limited to one thread inside a run: reproducible sums whatever n_jobs, no oversubscription."""
    return one_blas_thread()


def model_file(models_dir: str | Path, data: CacheData, dataset: str, head: str, shots: int, seed: int,
               hp: dict) -> Path:
    """Where the head of this run is saved (name from :func:`featpipe.core.names.head_model_path`)."""
    return head_model_path(models_dir, backbone=data.backbone, layer=data.layer or None, weights_tag=data.tag or None,
                           head=head, shots=shots, seed=seed, dataset=dataset, head_params=hp)


def fit_run(data: CacheData, splits: Splits, *, head: str, shots: int, seed: int, params: Params,
            models_dir: str | Path | None = None) -> RunResult:
    """Fit ``head`` on the ``shots``-shot subset of ``seed``; record its val and test outputs
    (:func:`featpipe.evaluation.record.record_run`); save the head when ``models_dir`` and ``fit.save_models``."""
    train_ids = splits.shots(seed, shots)
    check_disjoint(train_ids, splits.val, splits.test)  # before fitting
    if splits.labels:  # a multi-label task: one head per label (featpipe.fewshot.labels)
        return _fit_multilabel(data, splits, train_ids, head=head, shots=shots, seed=seed, params=params,
                               models_dir=models_dir)
    tr = np.fromiter((data.row[k] for k in train_ids), np.int64, len(train_ids))
    val_ids = splits.val_for(seed, shots)
    va = np.fromiter((data.row[k] for k in val_ids), np.int64, len(val_ids))
    classes = list(splits.classes)
    y_tr = data.y[tr]
    if np.unique(y_tr).size < len(classes):
        raise DataError(f"the {shots}-shot subset of seed {seed} lacks a class; rerun 'featpipe prepare'")
    hp = head_params(head, params.heads)
    with single_threaded():
        pipe = make_head(head, params.heads, seed=seed)
        if get_head(head).text_prior:  # the zero-shot classifier's weights, written for the head's input
            pipe[-1].set_params(prior=_text_prior(data, splits, params))
        model = fit_pipeline(pipe, data.X[tr], y_tr, kind=params.heads.scaler,
                             pool=lambda center: _pool(data, splits, center),
                             key=(str(data.path), data.X.shape, _sample_digest(data.X), tr.tobytes()))
        proba = _scores(model, data, va)  # one pass over val + test
    proba, temperature = _calibrate(proba, data.y[va], params.heads.calibrate)
    clf = model[-1]
    key = {"dataset": splits.dataset, "backbone": data.backbone, "weights": data.weights,
           "weights_id": data.attrs.get("weights_id", ""), "layer": data.layer, "head": head,
           "head_params": canonical_params(hp), "shots": int(shots), "seed": int(seed), "split_sha256": splits.sha256}
    own = {"features": data.attrs.get("features", ""),  # which embedding the cache holds (cls, mean, avgpool, ...)
           "scaler_ids_sha256": ids_sha256(splits.train) if params.heads.scaler in ("pool", "center") else "",
           "cv_used": bool(getattr(clf, "cv_used_", False)),
           "chosen_params": canonical_params(getattr(clf, "best_params_", {})), "capped": splits.capped(shots),
           "fraction": splits.fraction(shots), "images_per_class": splits.images_per_class(shots),
           "calibration": params.heads.calibrate, "temperature": temperature}
    test = Outputs(list(splits.test), data.y[data.test], proba[va.size:])
    rec = record_run(key, classes=classes, train_ids=train_ids,
                     val=Outputs(val_ids, data.y[va], proba[: va.size] if va.size else None), test=test,
                     val_policy=splits.val_policy, manifest_sha256=splits.manifest_sha256, columns=own,
                     with_curves=params.fit.curves,
                     calibrated=get_head(head).calibrated or params.heads.calibrate == "temperature")
    result = RunResult(rec.row, classes, list(test.ids), test.labels, test.proba, curves=rec.curves,
                       predictions=rec.predictions)
    if models_dir is not None and params.fit.save_models:
        path = model_file(models_dir, data, splits.dataset, head, shots, seed, hp)
        save_head(path, model, _sidecar(data, rec, head=head, hp=hp)
                  | {"temperature": None if np.isnan(temperature) else temperature})
        result.model_path = str(path)
    rec.row["model_path"] = result.model_path or ""
    return result


def _fit_multilabel(data: CacheData, splits: Splits, train_ids: list[str], *, head: str, shots: int, seed: int,
                    params: Params, models_dir: str | Path | None) -> RunResult:
    """One multi-label run: ``head`` fitted one-vs-rest per label on the k-shot set's known labels
    (:func:`featpipe.fewshot.labels.fit_per_label`), thresholds per label on val, the row of
    :func:`featpipe.evaluation.multilabel.record_multilabel`. With ``models_dir`` and ``fit.save_models`` each
    label's head is saved as a binary head of its own (:func:`_save_labels`)."""
    if get_head(head).text_prior:
        raise DataError(f"head {head} (text-initialised) is not available for multi-label tasks: drop it from fit.heads")
    if params.heads.calibrate != "none":
        raise DataError("heads.calibrate=temperature is not available for multi-label tasks: set heads.calibrate=none")
    tr = np.fromiter((data.row[k] for k in train_ids), np.int64, len(train_ids))
    val_ids = splits.val_for(seed, shots)
    va = np.fromiter((data.row[k] for k in val_ids), np.int64, len(val_ids))
    labels = splits.labels
    hp = head_params(head, params.heads)
    with single_threaded():
        models, unfit = fit_per_label(lambda: make_head(head, params.heads, seed=seed), data.X[tr],
                                      splits.label_matrix(train_ids), labels, kind=params.heads.scaler,
                                      pool=lambda center: _pool(data, splits, center))
        proba = np.full((va.size + data.test.size, len(labels)), np.nan)
        for j, model in enumerate(models):
            if model is not None:
                proba[:, j] = _scores(model, data, va)[:, 1]
    key = {"dataset": splits.dataset, "backbone": data.backbone, "weights": data.weights,
           "weights_id": data.attrs.get("weights_id", ""), "layer": data.layer, "head": head,
           "head_params": canonical_params(hp), "shots": int(shots), "seed": int(seed), "split_sha256": splits.sha256}
    own = {"features": data.attrs.get("features", ""),
           "scaler_ids_sha256": ids_sha256(splits.train) if params.heads.scaler in ("pool", "center") else "",
           "capped": splits.capped(shots), "kshot_counts": kshot_text(splits.achieved(seed, shots)),
           "calibration": params.heads.calibrate}
    rec = record_multilabel(key, labels=labels, train_ids=train_ids, unfit=unfit,
                            val=(val_ids, splits.label_matrix(val_ids), proba[: va.size]),
                            test=(list(splits.test), splits.label_matrix(splits.test), proba[va.size:]),
                            val_policy=splits.val_policy, manifest_sha256=splits.manifest_sha256, columns=own,
                            calibrated=get_head(head).calibrated)
    if models_dir is not None and params.fit.save_models:
        _save_labels(models_dir, data, splits, rec, models, head=head, hp=hp, train_ids=train_ids)
    return RunResult(rec.row, labels, list(splits.test), splits.label_matrix(splits.test), proba[va.size:],
                     predictions=rec.predictions)


def _save_labels(models_dir, data: CacheData, splits: Splits, rec: RunRecord, models: list, *, head: str, hp: dict,
                 train_ids: list[str]) -> None:
    """Each fitted label's head as a binary head ``<head file stem>-<label>.skops``: classes ``[no <label>,
    <label>]``, its val threshold, the k-shot ids whose label is known; ``task: multilabel`` and ``label`` in the
    sidecar (Grad-CAM scores it against that label). ``predict``, Grad-CAM and the loader read it as any head."""
    labels = splits.labels
    base = model_file(models_dir, data, splits.dataset, head, int(rec.row["shots"]), int(rec.row["seed"]), hp)
    Y = splits.label_matrix(train_ids)
    paths = []
    for j, (name, model) in enumerate(zip(labels, models)):
        if model is None:
            continue
        path = base.with_name(f"{base.stem}-{short_part(name)}{base.suffix}")
        side = {**rec.sidecar, "classes": [f"no {name}", name], "threshold": rec.sidecar["thresholds"][name],
                "train_ids": [i for i, y in zip(train_ids, Y[:, j]) if y >= 0], "task": "multilabel", "label": name}
        save_head(path, model, _sidecar(data, RunRecord(rec.row, None, None, None, side), head=head, hp=hp))
        paths.append(str(path))
    rec.row["model_path"] = "; ".join(paths)


def _text_prior(data: CacheData, splits: Splits, params: Params) -> np.ndarray:
    """The text-initialised head's prior (:func:`featpipe.fewshot.zeroshot.text_prior`) for this cache."""
    kind = params.heads.scaler
    scaler = {"pool": lambda: _pool(data, splits, False), "center": lambda: _pool(data, splits, True),
              "none": lambda: "passthrough"}.get(kind, lambda: None)()
    idx = np.fromiter((data.row[k] for k in splits.train), np.int64, len(splits.train))
    return text_prior(data, list(splits.classes), prompts_path=params.zeroshot.prompts, cache_dir=data.path.parent.parent,
                      scaler=scaler, pool_rows=data.X[idx], l2_normalize=params.heads.l2_normalize)


def _calibrate(proba: np.ndarray, y_val: np.ndarray, how: str) -> tuple[np.ndarray, float]:
    """``heads.calibrate``: none -> (proba, NaN); temperature -> T fitted on the val rows (the first
    ``len(y_val)`` rows of ``proba``, val then test) and applied to all of them."""
    if how == "none":
        return proba, float("nan")
    if not len(y_val):
        raise DataError("heads.calibrate=temperature needs val images: use split.val_policy full or matched "
                        "with a val split, or heads.calibrate=none")
    t = fit_temperature(y_val, proba[: len(y_val)])
    return apply_temperature(proba, t), t


def _scores(model, data: CacheData, va: np.ndarray) -> np.ndarray:
    """``model``'s probabilities on the rows ``va`` then test; with the pool scaler the scaled rows are computed
    once per cache and val rows (:func:`featpipe.heads.scaling.scaled_rows`), not once per run."""
    rows = np.r_[va, data.test]
    scaled = scaled_rows(model, (str(data.path), data.X.shape, va.tobytes()), lambda: data.X[rows])
    if scaled is None:
        return model.predict_proba(data.X[rows])
    if len(model.steps) == 2:  # the head alone: it reads its input as float64, converted once per cache (exact)
        scaled = per_rows(scaled, "float64", _read_only_float64)
    with sklearn.config_context(assume_finite=True):  # checked once, by the scaler's transform that made them
        return model[1:].predict_proba(scaled)


def _read_only_float64(X: np.ndarray) -> np.ndarray:
    if X.dtype == np.float64:
        return X
    out = X.astype(np.float64)
    out.setflags(write=False)
    return out


def _pool(data: CacheData, splits: Splits, center_only: bool):
    """The standardiser fitted on every train-split row of ``data`` (no labels), memoised per cache."""
    idx = lambda: np.fromiter((data.row[k] for k in splits.train), np.int64, len(splits.train))
    return pool_scaler((str(data.path), data.X.shape, splits.sha256, _sample_digest(data.X)), lambda: data.X[idx()],
                       center_only=center_only)


_DIGESTS: list = []  # [(weak reference to a feature matrix, its digest)]: the matrices this process fits on


def _sample_digest(X: np.ndarray) -> str:
    """A cheap fingerprint of a feature matrix (a hash of 64 evenly spaced rows): a cache rebuilt at the same path
    with other features (another decode setting) in one process never reuses the old cache's pool scaler.
    Remembered for the matrix object itself (read-only feature matrices: the same object holds the same rows),
    so the runs of one cache hash it once."""
    for ref, digest in _DIGESTS:
        if ref() is X:
            return digest
    digest = hashlib.sha256(np.ascontiguousarray(X[:: max(1, len(X) // 64)]).tobytes()).hexdigest()[:16]
    if X.flags.writeable:  # a matrix the caller may change in place: hashed every time
        return digest
    _DIGESTS[:] = [e for e in _DIGESTS if e[0]() is not None][-7:]  # never keeps a matrix alive
    _DIGESTS.append((weakref.ref(X), digest))
    return digest


def _sidecar(data: CacheData, rec: RunRecord, *, head: str, hp: dict) -> dict:
    """The saved head's sidecar: the run's fields (:attr:`RunRecord.sidecar`) and the cache's identity."""
    a = data.attrs
    return {**rec.sidecar, "weights_request": data.weights_request, "layer": data.layer,
            "preprocess": a.get("preprocess"), "embedding_dim": int(data.X.shape[1]), "precision": a.get("precision"),
            "head": head, "head_params": hp, "sklearn_version": sklearn.__version__}


# --------------------------------------------------------------------------- many runs


# Estimated seconds of one run, measured on one core of the 2-core benchmark machine (`python
# benchmarks/sweep_phases.py`: 2,000 train, 824 val + test rows, D = 2,208): a fixed part per run (scoring val + test,
# metrics, curves, the saved head), 6 ms + 3 ns per scored value (rows x D), and the fit, seconds per (k + 5) at
# D = 2,048 by head. An estimate: it orders the work (costliest first) and tells the local engine whether starting
# worker processes pays (``engine.pool_min_seconds``); it never changes a result.
_FIXED_S, _PER_VALUE_S = 6e-3, 3e-9
_FIT_S = {"mlp": 1.5e-3, "logistic": 0.7e-3, "svc": 0.6e-3, "prototype": 0.0, "knn": 0.05e-3}


def _cost(task: tuple, *, sizes: Sequence[tuple[int, int]], labels: int = 1) -> float:
    """Estimated seconds of one (cache, heads, shots, seed) task; ``sizes[cache]`` = (scored rows, embedding dim),
    ``labels``: heads per run (one per label of a multi-label task)."""
    c, heads, shots, _ = task
    rows, dim = sizes[c]
    per_run = _FIXED_S + _PER_VALUE_S * rows * dim
    return labels * sum(per_run + _FIT_S.get(h, 0.7e-3) * (shots + 5) * dim / 2048 for h in heads)


_META = ("path", "backbone", "weights", "layer", "tag", "weights_request", "attrs", "y", "row", "val", "test")


@dataclass
class _Unfinished:
    """What a task that failed part-way returns: the runs it finished (written like any run's) and its error
    (raised in the caller's process once they are)."""

    done: list
    error: Exception

    def __iter__(self):
        return iter(self.done)


def _fit_task(task: tuple, shared, *, metas: list, splits: Splits, params: Params,
              models_dir) -> list[RunResult] | _Unfinished:
    """The runs of every head at one (cache, shots, seed) on the engine, one after the other in one process: they
    share the k-shot rows scaled once and their Gram matrix (:func:`featpipe.heads.scaling.fit_pipeline`); the
    feature matrices come in ``shared`` (``X<i>``). A run that fails ends the task: :class:`_Unfinished`."""
    c, heads, k, s = task
    data = CacheData(X=shared[f"X{c}"], **metas[c])
    done = []
    for h in heads:
        try:
            done.append(fit_run(data, splits, head=h, shots=k, seed=s, params=params, models_dir=models_dir))
        except Exception as exc:  # the runs before it are kept (a sweep that fails keeps what it finished)
            return _Unfinished(done, exc)
    return done


def run_grid(splits: Splits, caches: Sequence[CacheData], *, heads: Sequence[str], shots: Sequence[int],
             seeds: Sequence[int], params: Params, models_dir: str | Path | None = None,
             n_jobs: int | None = None, engine: Executor | None = None,
             on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every (cache, head, k, seed) run, in grid order, mapped over ``engine`` (default: the local engine with
    ``n_jobs`` processes, ``fit.n_jobs`` by default) as one task per (cache, k, seed) that fits every head; the
    feature matrices are shared read-only, each task asks ``engine.fit_cpus`` CPUs. A grid estimated under
    ``engine.pool_min_seconds`` of work runs in this process (see :mod:`featpipe.engine.local`). ``on_result(run)``
    is called in this process as each run finishes (the runs of a task as it finishes; where a run fails, the runs its task
    finished before it, then its error is raised)."""
    for h in heads:
        head_params(h, params.heads)  # unknown head names fail before any work
    n_jobs = params.fit.n_jobs if n_jobs is None else n_jobs
    engine = engine or LocalExecutor(workers=n_jobs, pool_min_seconds=params.engine.pool_min_seconds)
    heads = tuple(heads)
    tasks = [(c, heads, k, s) for c in range(len(caches)) for k in shots for s in seeds]
    metas = [{f: getattr(c, f) for f in _META} for c in caches]
    task = functools.partial(_fit_task, metas=metas, splits=splits, params=params, models_dir=models_dir)

    def deliver(i: int, runs) -> None:
        for r in runs if on_result is not None else ():
            on_result(r)
        if isinstance(runs, _Unfinished):
            raise runs.error

    sizes = [(len(c.val) + len(c.test), c.X.shape[1]) for c in caches]
    cost = functools.partial(_cost, sizes=sizes, labels=max(1, len(splits.labels)))
    done = engine.map(task, tasks, cpus=params.engine.fit_cpus, cost=cost,
                      shared={f"X{i}": c.X for i, c in enumerate(caches)}, on_result=deliver)
    by_run = {(c, h, k, s): r for (c, _, k, s), runs in zip(tasks, done) for h, r in zip(heads, runs)}
    return [by_run[(c, h, k, s)] for c in range(len(caches)) for h in heads for k in shots for s in seeds]
