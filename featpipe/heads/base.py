"""What every head shares: the scaler -> [L2] -> classifier pipeline (:func:`build_pipeline`, the one place a
head's pipeline is put together), the estimator base class, the span basis, the in-training-set CV and the
one-BLAS-thread context. Heads themselves are the other modules of this package (see ``__init__``)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data


def build_pipeline(clf, params) -> Pipeline:
    """``StandardScaler`` -> optional L2 ``Normalizer`` -> ``clf``: every head's unfitted pipeline
    (``params``: the shared ``heads`` settings)."""
    steps = [("scale", StandardScaler())]
    if params.l2_normalize:
        steps.append(("l2", Normalizer(norm="l2")))
    steps.append(("clf", clf))
    return Pipeline(steps)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _proba_from_decision(d: np.ndarray) -> np.ndarray:
    """Binary 1-D scores -> [1 - sigmoid, sigmoid]; (N, C) scores -> softmax. Monotone, not calibrated."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 1:
        p1 = expit(d)
        return np.column_stack([1.0 - p1, p1])
    return _softmax(d)


def span_basis(X: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """``(Z, V)`` with ``V`` (D, r) orthonormal spanning the rows of X and ``Z = X @ V`` (n, r), r <= n.

    From the eigen-decomposition of the n x n Gram matrix, so it costs n^2 D, not n D^2.
    """
    X = np.asarray(X, dtype=np.float64)
    w, U = np.linalg.eigh(gram(X))
    keep = w > rtol * max(w.max(), 1e-300)
    w, U = w[keep][::-1], U[:, keep][:, ::-1]
    s = np.sqrt(w)
    V = (X.T @ U) / s
    return U * s, V


def _can_cv(y: np.ndarray, folds: int) -> bool:
    return folds >= 2 and np.bincount(y).min() >= folds


def _cv(folds: int, seed: int) -> StratifiedKFold:
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


def _fold_score(y_true: np.ndarray, y_pred: np.ndarray, scoring: str) -> float:
    if scoring == "accuracy":
        return float(np.mean(y_true == y_pred))
    if scoring == "balanced_accuracy":
        return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))
    raise ValueError(f"unknown CV scoring {scoring!r} (balanced_accuracy or accuracy)")


def grid_cv(fit_predict, n_candidates: int, y: np.ndarray, *, folds: int, seed: int, scoring: str) -> tuple[int, float]:
    """``GridSearchCV``'s choice without its per-fit overhead: folds from a seeded ``StratifiedKFold``,
    mean fold score per candidate, the first best candidate in grid order wins (GridSearchCV's rank
    'min'). ``fit_predict(candidate, train_idx, test_idx) -> predicted labels``. Returns (index, score)."""
    return grid_cv_folds(lambda tr, te: [fit_predict(c, tr, te) for c in range(n_candidates)], n_candidates, y,
                         folds=folds, seed=seed, scoring=scoring)


def grid_cv_folds(fit_predict_all, n_candidates: int, y: np.ndarray, *, folds: int, seed: int,
                  scoring: str) -> tuple[int, float]:
    """:func:`grid_cv` with every candidate of a fold fitted in one call (warm starts along the grid):
    ``fit_predict_all(train_idx, test_idx) -> predicted labels of each candidate, in grid order``."""
    scores = np.zeros((n_candidates, folds))
    for f, (tr, te) in enumerate(_cv(folds, seed).split(np.zeros(len(y)), y)):
        for c, pred in enumerate(fit_predict_all(tr, te)):
            scores[c, f] = _fold_score(y[te], pred, scoring)
    means = scores.mean(axis=1)
    best = int(np.argmax(means))
    return best, float(means[best])


_ROWS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def per_rows(X: np.ndarray, name: str, compute) -> np.ndarray:
    """``compute(X)`` remembered for the read-only matrix ``X`` itself (the scaled val + test rows that every run
    of a cache scores: :func:`featpipe.heads.scaling.scaled_rows`), one matrix per ``name``; computed every time
    for a writeable ``X``, which its owner may change."""
    if X.flags.writeable:
        return compute(X)
    hit = _ROWS.get(name)
    if hit is None or hit[0] is not X:
        hit = _ROWS[name] = (X, compute(X))
    return hit[1]


def gram(X: np.ndarray) -> np.ndarray:
    """``X @ X.T`` (read-only), computed once for a read-only ``X`` that several heads fit on (:func:`per_rows`)."""
    def compute(X):
        G = X @ X.T
        G.setflags(write=False)
        return G

    return per_rows(X, "gram", compute)


_CONTROLLER = None


def one_blas_thread():
    """Context limiting BLAS/OpenMP to one thread. Few-shot problems are too small to gain from threads,
    and on a busy machine a spinning second BLAS thread made a fit 25x slower (measured here)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


class _Head(ClassifierMixin, BaseEstimator):
    """Shared predict / predict_proba; subclasses implement ``_fit(X, y_encoded)`` and ``decision_function``."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError("a head needs images of at least two classes to be fitted")
        with one_blas_thread():
            self._fit(X, y_enc)
        return self

    def predict_proba(self, X):
        return _proba_from_decision(self.decision_function(X))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _check(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float64, reset=False)


