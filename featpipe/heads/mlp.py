"""The MLP head: embedding -> hidden -> ReLU -> dropout -> classes, trained full-batch in numpy; its torch
twin is the same two layers (the span projection folded into the first)."""

from __future__ import annotations

import numpy as np

from featpipe.heads.base import _Head, _proba_from_decision, _softmax, build_pipeline, span_basis
from featpipe.params.heads import MlpParams


def _adamw(p, g, m, v, buf, *, lr: float, weight_decay: float, t: int, b1=0.9, b2=0.999, eps=1e-8) -> None:
    """One AdamW step (PyTorch's rule) on ``p`` in place, with the moments ``m``, ``v`` and two scratch arrays
    ``buf``: ``p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``, each operation rounded as written."""
    num, den = buf
    p *= 1 - lr * weight_decay
    m *= b1
    m += np.multiply(g, 1 - b1, out=num)
    v *= b2
    np.multiply(g, 1 - b2, out=num)
    v += np.multiply(num, g, out=num)
    np.sqrt(np.divide(v, 1 - b2 ** t, out=den), out=den)
    den += eps
    np.divide(m, 1 - b1 ** t, out=num)
    num *= lr
    p -= np.divide(num, den, out=num)


class MLPHead(_Head):
    """embedding -> hidden -> ReLU -> dropout -> classes, trained full-batch with AdamW (PyTorch's update
    rule, betas 0.9/0.999, eps 1e-8) on a class-balanced cross-entropy. Written in numpy (forward and
    backward are two matrix products each): no framework start-up per run, all randomness (init,
    dropout) from ``numpy.random.default_rng(random_state)``, never global state.

    Training stops after ``epochs`` or earlier when the training loss has not improved by ``tol`` for
    ``n_iter_no_change`` epochs (scikit-learn's MLP rule). With ``span=True`` the first layer is
    parametrised as ``W1 = A @ V.T`` with ``V`` an orthonormal basis of the span of the training
    embeddings (r <= n dims, see :func:`span_basis`): the first layer never sees directions no
    training image has, and an epoch costs n*r*hidden instead of n*D*hidden. Initialisation is
    PyTorch's ``nn.Linear`` default (uniform, bound 1/sqrt(fan_in)) with the full model's fan-in D.
    """

    def __init__(self, hidden=512, dropout=0.3, epochs=200, lr=1e-3, weight_decay=1e-4, tol=1e-4,
                 n_iter_no_change=10, span=True, random_state=0):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.span = span
        self.random_state = random_state

    def _fit(self, X, y):
        rng = np.random.default_rng(self.random_state)
        D, C, H = X.shape[1], self.classes_.size, self.hidden
        if self.span:
            Z, V = span_basis(X)
            self.proj_ = V.astype(np.float32)
        else:
            Z, self.proj_ = X, None
        Z = np.ascontiguousarray(Z, dtype=np.float32)
        n, r = Z.shape
        f32 = np.float32
        u = lambda shape, bound: ((rng.random(shape, dtype=f32) * 2 - 1) * bound).astype(f32)
        params = [u((H, r), 1 / np.sqrt(D)), u((H,), 1 / np.sqrt(D)), u((C, H), 1 / np.sqrt(H)), u((C,), 1 / np.sqrt(H))]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        counts = np.bincount(y, minlength=C)
        w = (n / (C * np.maximum(counts, 1))).astype(f32)[y]  # balanced class weights, per image
        onehot = np.eye(C, dtype=f32)[y]
        keep = 1.0 - self.dropout
        best, stale, loss = np.inf, 0, np.nan
        self.n_iter_ = 0
        bufs = [(np.empty_like(p), np.empty_like(p)) for p in params]
        # every (n, H) and (H, r) array of an epoch written into buffers made once: the same operations, without a
        # fresh allocation (page faults) per array and epoch (a third of an epoch's time at 400 images)
        h, draw, pre, dh, mask = (np.empty((n, H), dtype=f32) for _ in range(5))
        flags, grad1 = np.empty((n, H), dtype=bool), np.empty((H, r), dtype=f32)
        for t in range(1, self.epochs + 1):
            W1, c1, W2, c2 = params
            np.matmul(Z, W1.T, out=pre)
            pre += c1
            np.maximum(pre, 0, out=h)
            if self.dropout > 0:
                np.divide(np.less(rng.random(out=draw, dtype=f32), keep, out=flags), f32(keep), out=mask)
            else:
                mask = f32(1)
            hd = np.multiply(h, mask, out=h)
            logits = hd @ W2.T + c2
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            loss = float(-(w * (logp * onehot).sum(1)).sum() / w.sum())
            dlog = (np.exp(logp) - onehot) * (w / w.sum())[:, None]
            np.matmul(dlog, W2, out=dh)
            dh *= mask
            dh *= np.greater(pre, 0, out=flags)
            grads = [np.matmul(dh.T, Z, out=grad1), dh.sum(0), dlog.T @ hd, dlog.sum(0)]
            for p, g, mi, vi, buf in zip(params, grads, m, v, bufs):
                _adamw(p, g, mi, vi, buf, lr=self.lr, weight_decay=self.weight_decay, t=t)
            self.n_iter_ = t
            if loss > best - self.tol:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
            else:
                stale = 0
            best = min(best, loss)
        self.loss_ = loss
        self.w1_, self.b1_, self.w2_, self.b2_ = params

    def decision_function(self, X):
        X = self._check(X)
        if self.proj_ is not None:
            X = X @ self.proj_.astype(np.float64)
        h = np.maximum(X @ self.w1_.T.astype(np.float64) + self.b1_, 0.0)
        logits = h @ self.w2_.T.astype(np.float64) + self.b2_
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X):
        d = self.decision_function(X)
        if d.ndim == 1:  # softmax over two logits == sigmoid of their difference
            return _proba_from_decision(d)
        return _softmax(d)


def factory(params, *, seed: int = 0):
    p = params.mlp
    return build_pipeline(MLPHead(hidden=p.hidden, dropout=p.dropout, epochs=p.epochs, lr=p.lr,
                                  weight_decay=p.weight_decay, tol=p.tol, n_iter_no_change=p.n_iter_no_change,
                                  span=p.span, random_state=seed), params)


HEAD = dict(name="mlp", params=MlpParams, estimator=MLPHead, factory=factory)
