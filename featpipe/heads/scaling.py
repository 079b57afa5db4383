"""The feature standardiser in front of every head (``heads.scaler``), fitted in one place.

- ``pool`` (default): a ``StandardScaler`` fitted on the features of the **whole train split**, without
  labels (unsupervised, no val/test image). At k = 1 a scaler fitted on the two k-shot images divides by
  ``|x1 - x0| / 2`` per feature: features where the two images happen to agree get blown up (scale down
  to 3e-3 measured on PneumoniaMNIST), test values reach |z| of hundreds and an RBF kernel underflows.
  The pool's statistics do not depend on which k images were labelled.
- ``kshot``: fitted on the k-shot training images only (the behaviour before ``heads.scaler`` existed).
- ``center``: the pool's mean subtracted, no scaling; with the prototype head's cosine similarity this is
  SimpleShot's CL2N (centre, then L2-normalise).
- ``none``: features as extracted.

A fitted head is a plain scikit-learn ``Pipeline`` whose ``scale`` step is a fitted ``StandardScaler``
(or ``"passthrough"``) whatever the choice, so saved heads, ``predict`` and the Grad-CAM torch twin
read it unchanged. The ids the pool scaler was fitted on are recorded (``scaler_ids_sha256``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

SCALERS = ("pool", "kshot", "center", "none")

_POOL: dict[tuple, StandardScaler] = {}


def pool_scaler(key: tuple, features: Callable[[], np.ndarray], *, center_only: bool = False) -> StandardScaler:
    """A StandardScaler fitted on ``features()`` (the train split's rows), memoised under ``key``."""
    k = (*key, center_only)
    if k not in _POOL:
        if len(_POOL) > 8:
            _POOL.clear()
        _POOL[k] = StandardScaler(with_std=not center_only).fit(np.asarray(features(), dtype=np.float64))
    return _POOL[k]


_SCALED: dict[tuple, tuple[StandardScaler, np.ndarray]] = {}


def scaled_rows(model: Pipeline, key: tuple, rows: Callable[[], np.ndarray]) -> np.ndarray | None:
    """``model``'s ``scale`` step applied to ``rows()``, memoised under ``key`` when that step is a memoised pool
    scaler (:func:`pool_scaler`: the same for every run of a cache, so the scored rows are too); None for any
    other scaler. The transform works row by row: the rows equal what ``model.predict_proba(rows())`` scales."""
    scaler = model.steps[0][1]
    if not any(scaler is s for s in _POOL.values()):
        return None
    k = (*key, id(scaler))
    hit = _SCALED.get(k)
    if hit is None or hit[0] is not scaler:
        if len(_SCALED) > 4:
            _SCALED.clear()
        hit = _SCALED[k] = (scaler, scaler.transform(rows()))
        hit[1].setflags(write=False)  # shared by every run of the cache (heads remember what they derive from it)
    return hit[1]


_TRAIN: list = []  # [(scaler, rows key, the rows scaled)]: the last training rows scaled by a pool scaler


def _scaled_train(scaler: StandardScaler, X: np.ndarray, key: tuple | None) -> np.ndarray:
    """``scaler.transform(X)``; with ``key`` (what names the rows of ``X``) remembered, read-only, for the next
    fit on the same rows with the same scaler (the other heads of a run's k-shot set): they get the same matrix,
    and what they derive from it (its Gram matrix, :func:`featpipe.heads.base.gram`) is computed once."""
    hit = _TRAIN[0] if _TRAIN else None
    if key is not None and hit is not None and hit[0] is scaler and hit[1] == key:
        return hit[2]
    Xs = scaler.transform(np.asarray(X, dtype=np.float64))
    if key is not None:
        Xs.setflags(write=False)
        _TRAIN[:] = [(scaler, key, Xs)]
    return Xs


def fit_pipeline(pipe: Pipeline, X: np.ndarray, y: np.ndarray, *, kind: str,
                 pool: Callable[[bool], StandardScaler] | None = None, key: tuple | None = None) -> Pipeline:
    """Fit ``pipe`` (its first step is ``scale``) on (X, y) with the ``kind`` of standardiser.

    ``pool(center_only)`` returns the scaler fitted on the unlabelled train split (``pool``/``center``). ``key``:
    what names the rows ``X`` (the same key, the same rows): their scaled copy is shared by the next fit."""
    if kind not in SCALERS:
        raise ValueError(f"heads.scaler must be one of {', '.join(SCALERS)}, got {kind!r}")
    if pipe.steps[0][0] != "scale":
        raise ValueError("a head pipeline starts with its 'scale' step")
    if kind == "kshot":
        return pipe.fit(X, y)
    if kind == "none":
        scaler = "passthrough"
        Xs = np.asarray(X, dtype=np.float64)
    else:
        if pool is None:
            raise ValueError(f"heads.scaler={kind} needs the train split's features")
        scaler = pool(kind == "center")
        Xs = _scaled_train(scaler, X, key)
    rest = Pipeline(pipe.steps[1:]).fit(Xs, y)
    return Pipeline([("scale", scaler), *rest.steps])
