"""The kNN head (DINOv2's kNN probe): cosine similarity to every k-shot image, the k most similar vote with
weights ``exp(similarity / temperature)``, k cross-validated inside the k-shot set from a grid (capped by the
number of training images); its torch twin is the same soft vote (differentiable through the similarities).

Scores: ``votes[c] = sum over the k nearest training images j of class c of exp(s_j / T)`` with ``s_j`` the cosine
similarity of the (scaled, optionally L2-normalised) embeddings. ``predict_proba = votes / votes.sum()`` (the
weighted vote share, which ranks images, unlike a majority count); ``decision_function`` is ``log votes`` per
class (binary: ``log votes[1] - log votes[0]``), floored at :data:`FLOOR` so that a class with no neighbour among
the k has a finite score. When k reaches the number of training images every image votes and no two test images
tie unless their similarities do; with k smaller, two test images whose k neighbours all share one class tie at
probability 1 (the kNN probe's definition).
"""

from __future__ import annotations

import numpy as np

from featpipe.heads.base import _can_cv, _Head, build_pipeline, grid_cv
from featpipe.params.heads import KnnParams

FLOOR = 1e-300  # votes below this count as this (log of a class without a neighbour among the k: about -690.8)


def unit_rows(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def soft_votes(S: np.ndarray, y: np.ndarray, n_classes: int, k: int, temperature: float) -> np.ndarray:
    """(N, C) weighted votes from similarities ``S`` (N, n) to training images of labels ``y``: the ``k`` most
    similar per row vote with ``exp(s / temperature)`` (ties in similarity: the lower training index first)."""
    k = int(min(k, S.shape[1]))
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    w = np.exp(np.take_along_axis(S, idx, axis=1) / temperature)
    votes = np.zeros((S.shape[0], n_classes))
    np.add.at(votes, (np.repeat(np.arange(S.shape[0]), k), y[idx].ravel()), w.ravel())
    return votes


class KNNHead(_Head):
    """Temperature-weighted kNN on cosine similarity (DINOv2's kNN evaluation).

    ``k``: the number of neighbours when the k-shot set is too small for cross-validation (capped by the
    number of training images); ``k_grid``: the candidates cross-validated otherwise (each capped by the fold's
    training size; ties go to the smaller k). Fitted attributes: ``train_`` (unit rows), ``y_`` (encoded
    labels), ``k_`` (the k used), ``cv_used_``, ``best_params_``.
    """

    def __init__(self, k=20, k_grid=(10, 20, 100, 200), temperature=0.07, cv_folds=5, scoring="balanced_accuracy",
                 random_state=0):
        self.k = k
        self.k_grid = k_grid
        self.temperature = temperature
        self.cv_folds = cv_folds
        self.scoring = scoring
        self.random_state = random_state

    def _fit(self, X, y):
        if not self.temperature > 0:
            raise ValueError(f"heads.knn.temperature must be > 0, got {self.temperature!r}")
        U = unit_rows(X)
        n_classes = self.classes_.size
        k = int(min(self.k, len(y)))
        self.cv_used_ = _can_cv(y, self.cv_folds) and len(self.k_grid) > 1
        self.cv_score_ = np.nan
        if self.cv_used_:
            grid = [int(g) for g in self.k_grid]
            S = U @ U.T

            def fit_predict(i, tr, te):
                return np.argmax(soft_votes(S[np.ix_(te, tr)], y[tr], n_classes, grid[i], self.temperature), axis=1)

            best, self.cv_score_ = grid_cv(fit_predict, len(grid), y, folds=self.cv_folds, seed=self.random_state,
                                           scoring=self.scoring)
            k = int(min(grid[best], len(y)))
        self.k_ = k
        self.best_params_ = {"k": k}
        self.train_, self.y_ = U, y.astype(np.int64)

    def _votes(self, X):
        X = self._check(X)
        return soft_votes(unit_rows(X) @ self.train_.T, self.y_, self.classes_.size, self.k_, float(self.temperature))

    def decision_function(self, X):
        s = np.log(np.maximum(self._votes(X), FLOOR))
        return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

    def predict_proba(self, X):
        v = np.maximum(self._votes(X), FLOOR)
        return v / v.sum(axis=1, keepdims=True)


def factory(params, *, seed: int = 0):
    p = params.knn
    return build_pipeline(KNNHead(k=p.k, k_grid=tuple(p.k_grid), temperature=p.temperature, cv_folds=params.cv_folds,
                                  scoring=params.cv_scoring, random_state=seed), params)


HEAD = dict(name="knn", params=KnnParams, estimator=KNNHead, factory=factory, cross_validated=True, calibrated=False)
