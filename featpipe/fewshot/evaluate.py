"""Few-shot evaluation in memory (the Python API's :func:`evaluate_fewshot`): features + labels + a split ->
the runs table and the per-image predictions as DataFrames, no file written.

Every run goes through the library's own path, :func:`featpipe.fewshot.fit.run_grid` ->
:func:`~featpipe.fewshot.fit.fit_run` (k-shot subset of the seed, ``heads.scaler``, threshold chosen on val,
val and test scored by :func:`featpipe.evaluation.metrics.score`, degenerate flag): a row here is the row
``featpipe fit`` writes to ``results/runs.csv`` for the same features, split and settings, and the
predictions are those it writes under ``results/predictions/`` (read back by ``featpipe.read_predictions``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featpipe.core.errors import CacheError, DataError
from featpipe.core.names import weights_name
from featpipe.data.idsplits import splits_from_ids
from featpipe.data.splits import Splits, load_splits
from featpipe.evaluation.table import prediction_table
from featpipe.features.cache import FeatureSet
from featpipe.fewshot.fit import CacheData, run_grid, split_rows
from featpipe.heads.make import head_settings
from featpipe.params.config import FitParams, Params


def head_configs(heads) -> list[tuple[str, dict]]:
    """``"svc"``, ``["svc", "logistic"]``, ``{"svc": {"C": 10}}`` or ``[("svc", {"C": 1}), ("svc", {"C": 10})]``
    -> ``[(name, keyword settings), ...]``."""
    if isinstance(heads, str):
        return [(heads, {})]
    if isinstance(heads, Mapping):
        return [(str(n), dict(kw or {})) for n, kw in heads.items()]
    return [(h, {}) if isinstance(h, str) else (str(h[0]), dict(h[1] or {})) for h in heads]


def _labels(labels, classes) -> tuple[np.ndarray, list[str]]:
    """Integer labels and class names: string labels are mapped onto ``classes`` (default: sorted names)."""
    lab = np.asarray(labels)
    if lab.dtype.kind in "iu":
        n = int(lab.max()) + 1 if lab.size else 0
        names = [str(c) for c in classes] if classes is not None else [str(c) for c in range(n)]
        if lab.size and (lab.min() < 0 or lab.max() >= len(names)):
            raise DataError(f"labels must be 0..{len(names) - 1} (one per class name), got {lab.min()}..{lab.max()}")
        return lab.astype(np.int64), names
    names = [str(c) for c in classes] if classes is not None else sorted({str(v) for v in lab})
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({str(v) for v in lab} - set(index))
    if unknown:
        raise DataError(f"label {unknown[0]!r} is not one of the classes {names}")
    return np.fromiter((index[str(v)] for v in lab), np.int64, lab.size), names


def _frame(features, labels, ids, attrs) -> tuple[np.ndarray, object, list[str], dict]:
    if isinstance(features, FeatureSet):
        X, ids, attrs = features.features, features.ids if ids is None else ids, {**features.attrs, **(attrs or {})}
        labels = features.labels if labels is None else labels
    else:
        X = features
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != 2:
        raise DataError(f"features must be (N, D), got shape {X.shape}")
    if labels is None or len(labels) != len(X):
        raise DataError(f"need one label per feature row ({len(X)} rows)")
    ids = [str(i) for i in (range(len(X)) if ids is None else ids)]
    if len(ids) != len(X) or len(set(ids)) != len(ids):
        raise DataError(f"need {len(X)} distinct ids, one per feature row")
    return X, labels, ids, dict(attrs or {})


def _cache_data(X: np.ndarray, y: np.ndarray, ids: list[str], attrs: dict, splits: Splits) -> CacheData:
    """The in-memory twin of :func:`featpipe.fewshot.fit.load_cache`: features checked against the split."""
    at = {k: i for i, k in enumerate(ids)}
    missing = [k for k in (*splits.train, *splits.val, *splits.test) if k not in at]
    if missing:
        raise CacheError(f"{len(missing)} ids of the split are not among the features' ids (first: {missing[0]!r})")
    msha = attrs.get("manifest_sha256")
    if msha and msha != splits.manifest_sha256:
        raise CacheError("these features were extracted from another manifest than the split's (stale cache): "
                         "re-run 'featpipe extract'")
    digest = hashlib.sha256(X.tobytes() + "\n".join(ids).encode()).hexdigest()[:16]
    weights = weights_name(attrs.get("weights") or "default", attrs.get("weights_id", ""))  # as load_cache names it
    used, row, val, test = split_rows(splits)
    take = np.fromiter((at[k] for k in used), np.int64, len(used))
    return CacheData(Path(f"<memory:{digest}>"), str(attrs.get("backbone") or "features"), weights,
                     str(attrs.get("layer") or ""), "", str(attrs.get("weights_request") or "default"), attrs,
                     np.ascontiguousarray(X[take]), y[take], row, val, test)


def _predictions(results) -> pd.DataFrame:
    """Per-image val and test outputs of every run, as :func:`featpipe.evaluation.table.read_predictions` reads them."""
    frames = [prediction_table(r.row, r.predictions) for r in results if r.predictions is not None]  # multi-label: none
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "split", "id", "label"])


def evaluate_fewshot(features, labels=None, ids=None, *, splits: Splits | str | Path | None = None,
                     train=None, val=None, test=None, classes: Sequence[str] | None = None,
                     patients: Sequence[str] | None = None, heads=("logistic",), shots: Sequence[int] | None = None,
                     seeds: Sequence[int] | None = None, val_policy: str = "full", attrs: Mapping | None = None,
                     models_dir: str | Path | None = None, n_jobs: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit and score every (head, k, seed) on in-memory features; returns ``(runs, predictions)``.

    ``features``: a :class:`~featpipe.features.cache.FeatureSet` (``load_features``: ids, labels and
    provenance come with it) or an ``(N, D)`` array with ``labels`` (integers, or class names) and ``ids``
    (default ``"0".."N-1"``). The split: ``splits`` (a ``splits.json`` path or ``load_splits``'s result; its
    seeds and shots are the defaults) or ``train``/``val``/``test`` id lists (k-shot subsets drawn as
    ``prepare`` draws them, grouped by ``patients``; defaults shots (1, 5), seeds (0, 1, 2)). ``heads``: a
    name, a list of names, ``{name: settings}`` or ``[(name, settings), ...]`` where settings are
    :func:`~featpipe.heads.make.make_head` keywords. ``attrs``: provenance of array features (e.g.
    ``Backbone.provenance()``); with it, ``models_dir`` saves each fitted head so that ``load_model`` can
    apply it to images. ``n_jobs`` > 1 runs in parallel (same numbers).

    ``runs``: one row per run, the columns of ``results/runs.csv``; ``predictions``: ``run_id, split, id,
    label, p[<class>]..., threshold`` (+ ``patient_id`` when ``patients`` is given)."""
    X, labels, ids, attrs = _frame(features, labels, ids, attrs)
    if models_dir is not None and not attrs.get("weights_id"):
        raise DataError("models_dir needs the features' provenance to save loadable heads: pass a FeatureSet "
                        "(load_features) or attrs=backbone.provenance()")
    if splits is not None:
        splits = splits if isinstance(splits, Splits) else load_splits(splits)
        y, _ = _labels(labels, splits.classes)
        seeds = list(seeds or sorted(splits.fewshot))
        shots = list(shots or sorted(splits.fewshot[seeds[0]]))
    else:
        if train is None or test is None:
            raise DataError("give splits= (a splits.json or load_splits(...)) or train= and test= id lists")
        y, names = _labels(labels, classes)
        seeds, shots = list(seeds or (0, 1, 2)), list(shots or (1, 5))
        splits = splits_from_ids(ids, y, names, train=train, val=val, test=test, patients=patients, seeds=seeds,
                                 shots=shots, val_policy=val_policy)
    data = _cache_data(X, y, ids, attrs, splits)
    fit = dataclasses.replace(FitParams(), curves=False, save_models=models_dir is not None, n_jobs=n_jobs)
    results = []
    for name, kwargs in head_configs(heads):
        params = dataclasses.replace(Params(), heads=head_settings(name, **kwargs), fit=fit)
        results += run_grid(splits, [data], heads=[name], shots=shots, seeds=seeds, params=params,
                            models_dir=models_dir, n_jobs=n_jobs)
    runs = pd.DataFrame([r.row for r in results])
    preds = _predictions(results)
    if patients is not None:
        preds["patient_id"] = preds["id"].map(dict(zip(ids, (str(p) for p in patients))))
    return runs, preds
