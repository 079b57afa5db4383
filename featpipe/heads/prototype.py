"""The nearest-prototype head (cosine similarity to class means, the standard few-shot baseline); its torch
twin is the same similarity (logits = similarity / temperature)."""

from __future__ import annotations

import numpy as np

from featpipe.heads.base import _Head, _softmax, build_pipeline, per_rows
from featpipe.params.heads import PrototypeParams


class NearestPrototype(_Head):
    """Nearest class mean by cosine similarity (the standard few-shot baseline).

    ``decision_function``: cosine similarity to each class prototype, (N, C) (binary: the difference
    class 1 - class 0); ``predict_proba``: softmax(similarity / temperature).
    """

    def __init__(self, metric="cosine", temperature=0.1):
        self.metric = metric
        self.temperature = temperature

    def _fit(self, X, y):
        if self.metric != "cosine":
            raise ValueError(f"metric must be 'cosine', got {self.metric!r}")
        protos = np.stack([X[y == c].mean(axis=0) for c in range(self.classes_.size)])
        self.prototypes_ = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)

    def _similarity(self, X):
        Xn = per_rows(self._check(X), "unit", lambda X: X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12))
        return Xn @ self.prototypes_.T

    def decision_function(self, X):
        s = self._similarity(X)
        return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

    def predict_proba(self, X):
        return _softmax(self._similarity(X) / self.temperature)


def factory(params, *, seed: int = 0):
    p = params.prototype
    return build_pipeline(NearestPrototype(metric=p.metric, temperature=p.temperature), params)


HEAD = dict(name="prototype", params=PrototypeParams, estimator=NearestPrototype, factory=factory, calibrated=False)
