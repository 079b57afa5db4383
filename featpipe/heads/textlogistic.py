"""The text-initialised logistic head: multinomial logistic regression whose weights start from, and are pulled
towards, the class prompts' text embeddings (``W0``, set as ``prior`` by the caller: the zero-shot classifier
written in the head's input space, :func:`featpipe.fewshot.zeroshot.text_prior`), then fitted on the k-shot set:

    minimise  C * sum_i w_i * cross_entropy(softmax(W x_i + b), y_i) + |W - W0|^2 / 2

(``w_i``: balanced class weights; the bias is not penalised). With no k-shot image the solution is the
zero-shot classifier; with many it approaches the plain L2 logistic regression; ``prior=None`` is the plain
multinomial L2 logistic regression. Convex: L-BFGS from ``W0`` finds the one optimum. Binary: ``coef_`` is the
class-1 minus class-0 row, so the torch twin is one ``nn.Linear`` like the logistic head's.
"""

from __future__ import annotations

import numpy as np

from featpipe.heads.base import _Head, _softmax, build_pipeline
from featpipe.params.heads import TextlogisticParams


class TextPriorLogistic(_Head):
    """Logistic regression pulled towards text-derived weights ``prior`` ((C, D), or None = towards 0)."""

    def __init__(self, C=1.0, max_iter=1000, prior=None):
        self.C = C
        self.max_iter = max_iter
        self.prior = prior

    def _fit(self, X, y):
        from scipy.optimize import minimize

        n, d = X.shape
        k = self.classes_.size
        W0 = np.zeros((k, d)) if self.prior is None else np.asarray(self.prior, dtype=np.float64)
        if W0.shape != (k, d):
            raise ValueError(f"the text prior has shape {W0.shape}, the head needs {(k, d)} (classes x features)")
        Y = np.eye(k)[y]
        sw = (n / (k * np.bincount(y, minlength=k)))[y]
        C = float(self.C)

        def f(theta):
            W, b = theta[: k * d].reshape(k, d), theta[k * d:]
            Z = X @ W.T + b
            Z = Z - Z.max(axis=1, keepdims=True)
            logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
            loss = -C * np.sum(sw * np.sum(Y * logp, axis=1)) + 0.5 * np.sum((W - W0) ** 2)
            G = C * (sw[:, None] * (np.exp(logp) - Y))
            return loss, np.concatenate([(G.T @ X + (W - W0)).ravel(), G.sum(axis=0)])

        theta0 = np.concatenate([W0.ravel(), np.zeros(k)])
        res = minimize(f, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter), "gtol": 1e-10, "ftol": 1e-14})
        W, b = res.x[: k * d].reshape(k, d), res.x[k * d:]
        self.weights_, self.bias_ = W, b
        self.coef_ = (W[1] - W[0])[None, :] if k == 2 else W
        self.intercept_ = np.array([b[1] - b[0]]) if k == 2 else b
        self.n_iter_ = int(res.nit)
        self.best_params_ = {"C": C, "prior": self.prior is not None}

    def decision_function(self, X):
        z = self._check(X) @ self.coef_.T + self.intercept_
        return z[:, 0] if self.classes_.size == 2 else z

    def predict_proba(self, X):
        return _softmax(self._check(X) @ self.weights_.T + self.bias_)


def factory(params, *, seed: int = 0):
    p = params.textlogistic
    return build_pipeline(TextPriorLogistic(C=p.C, max_iter=p.max_iter), params)


HEAD = dict(name="textlogistic", params=TextlogisticParams, estimator=TextPriorLogistic, factory=factory,
            text_prior=True)
