"""Classification heads on frozen embeddings: one factory per head, each returning an UNFITTED
scikit-learn ``Pipeline``: ``StandardScaler`` -> optional L2 ``Normalizer`` -> classifier.

Adding a head is one function ``factory(params: HeadsParams, *, seed: int) -> Pipeline`` plus one
line in :data:`HEADS`. Every classifier here follows scikit-learn conventions (no logic in
``__init__``, ``fit`` returns ``self``, fitted attributes end in ``_``, no global random state) and
has ``predict_proba`` (columns in ``classes_`` order) and ``decision_function``.

Hyper-parameter choice happens inside ``fit``, on the k-shot training set only: when every class has at
least ``heads.cv_folds`` images, C (and gamma for an RBF SVC) is chosen by grid search over a seeded
``StratifiedKFold`` (scoring ``heads.cv_scoring``; ties go to the first candidate in grid order, i.e.
the smaller C): :func:`grid_cv` makes exactly ``GridSearchCV``'s choice (tests compare the two) without
its per-fit overhead, which dominated few-shot fits; otherwise the documented default
``heads.<head>.C`` (and ``gamma``) is used. The scaler sees the
whole k-shot set before the CV (an unsupervised step; the test and val splits are never seen).

Speed without changing the answer: with n k-shot images of dimension D >> n, the CV runs on the
n x n Gram matrix (SVC, ``kernel="precomputed"``) or on the n-dimensional coordinates of the images
in the span of the training embeddings (logistic). An L2-penalised linear model's weights lie in that
span (representer theorem), so these give the same solution as fitting on the raw D-dim vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted, validate_data

from featpipe.config import HeadsParams
from featpipe.errors import ConfigError


# --------------------------------------------------------------------------- helpers


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
    w, U = np.linalg.eigh(X @ X.T)
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
    scores = np.zeros((n_candidates, folds))
    for f, (tr, te) in enumerate(_cv(folds, seed).split(np.zeros(len(y)), y)):
        for c in range(n_candidates):
            scores[c, f] = _fold_score(y[te], fit_predict(c, tr, te), scoring)
    means = scores.mean(axis=1)
    best = int(np.argmax(means))
    return best, float(means[best])


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


# --------------------------------------------------------------------------- SVC


class FewShotSVC(_Head):
    """SVC (linear or RBF) with C and gamma cross-validated inside the training set when possible.

    ``gamma`` strings are resolved once on the whole training set ("scale": 1 / (D * X.var()),
    "auto": 1 / D) and that number is used in the CV and the final fit. The final model is a plain
    ``sklearn.svm.SVC`` in ``svc_``; ``predict_proba`` maps its decision values to [0, 1]
    (sigmoid / softmax): a monotone score for ranking metrics, not a calibrated probability
    (``SVC(probability=True)`` is deprecated and runs its own 5-fold CV, impossible at k = 1).
    """

    def __init__(self, kernel="rbf", C=1.0, gamma="scale", C_grid=(0.01, 0.1, 1.0, 10.0, 100.0),
                 gamma_grid=("scale",), class_weight="balanced", cv_folds=5, scoring="balanced_accuracy",
                 random_state=0):
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.C_grid = C_grid
        self.gamma_grid = gamma_grid
        self.class_weight = class_weight
        self.cv_folds = cv_folds
        self.scoring = scoring
        self.random_state = random_state

    @staticmethod
    def _gamma_value(g, X) -> float:
        if g == "scale":
            var = float(X.var())
            return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        if g == "auto":
            return 1.0 / X.shape[1]
        return float(g)

    def _fit(self, X, y):
        if self.kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {self.kernel!r}")
        C, gamma = float(self.C), self._gamma_value(self.gamma, X)
        gammas = [None] if self.kernel == "linear" else [self._gamma_value(g, X) for g in self.gamma_grid]
        grid = [(c, g) for c in self.C_grid for g in gammas]  # ParameterGrid order: C outer, gamma inner
        self.cv_used_ = _can_cv(y, self.cv_folds) and len(grid) > 1
        self.cv_score_ = np.nan
        if self.cv_used_:
            gram = X @ X.T
            sq = np.diag(gram)
            dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
            kernels = {g: gram if g is None else np.exp(-g * dist) for g in gammas}

            def fit_predict(i, tr, te):
                c, g = grid[i]
                K = kernels[g]
                svc = SVC(kernel="precomputed", C=c, class_weight=self.class_weight).fit(K[np.ix_(tr, tr)], y[tr])
                return svc.predict(K[np.ix_(te, tr)])

            best, self.cv_score_ = grid_cv(fit_predict, len(grid), y, folds=self.cv_folds, seed=self.random_state,
                                           scoring=self.scoring)
            C, g = grid[best]
            gamma = gamma if g is None else g
        self.best_params_ = {"C": float(C)} | ({"gamma": float(gamma)} if self.kernel == "rbf" else {})
        self.svc_ = SVC(kernel=self.kernel, C=C, gamma=gamma, class_weight=self.class_weight).fit(X, y)

    def decision_function(self, X):
        """= ``svc_.decision_function`` (ovr shape for > 2 classes), with the kernel computed by BLAS
        instead of libsvm's per-pair loop (about 50x faster for thousands of test images)."""
        X = self._check(X)
        svc = self.svc_
        sv = svc.support_vectors_
        if self.kernel == "linear":
            K = X @ sv.T
        else:
            sq = (X * X).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * (X @ sv.T)
            K = np.exp(-self.best_params_["gamma"] * np.maximum(sq, 0.0))
        dual, icpt = svc.dual_coef_, svc.intercept_
        n_cls = self.classes_.size
        if n_cls == 2:
            return K @ dual[0] + icpt[0]
        starts = np.r_[0, np.cumsum(svc.n_support_)]
        dec = []
        for i in range(n_cls):
            for j in range(i + 1, n_cls):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                dec.append(K[:, si] @ dual[j - 1, si] + K[:, sj] @ dual[i, sj] + icpt[len(dec)])
        dec = np.column_stack(dec)
        # one-vs-one -> one-vs-rest as scikit-learn's _ovr_decision_function: votes + bounded confidence
        votes, conf = np.zeros((len(X), n_cls)), np.zeros((len(X), n_cls))
        k = 0
        for i in range(n_cls):
            for j in range(i + 1, n_cls):
                conf[:, i] += dec[:, k]
                conf[:, j] -= dec[:, k]
                votes[:, i] += dec[:, k] >= 0
                votes[:, j] += dec[:, k] < 0
                k += 1
        return votes + conf / (3 * (np.abs(conf) + 1))


# --------------------------------------------------------------------------- logistic


# lbfgs stops when the largest gradient component of its objective (mean loss + ||w||^2 / (2 C n)) is below
# this. The objective is (1 / (C n))-strongly convex, so the solution is within sqrt(dims) * tol * C * n of the
# optimum (L2 norm): 1e-8 keeps a 200-shot fit's probabilities within ~1e-5 of the exact optimum, where
# scikit-learn's default 1e-4 left differences of 2e-3 that depended on the machine's rounding.
SOLVER_TOL = 1e-8


class FewShotLogistic(_Head):
    """L2 logistic regression (multinomial for more than two classes, scikit-learn's default),
    C cross-validated inside the training set when possible.

    Fitted on the coordinates of the training images in their own span (exactly the same optimum
    as on the raw embeddings, far cheaper when D >> n); ``estimator_`` is a ``LogisticRegression``
    whose ``coef_`` is mapped back to the D embedding dimensions, so it applies to any embedding.
    """

    def __init__(self, C=1.0, C_grid=(0.01, 0.1, 1.0, 10.0, 100.0), class_weight="balanced", max_iter=2000,
                 cv_folds=5, scoring="balanced_accuracy", random_state=0, tol=SOLVER_TOL):
        self.C = C
        self.C_grid = C_grid
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.cv_folds = cv_folds
        self.scoring = scoring
        self.random_state = random_state
        self.tol = tol

    def _fit(self, X, y):
        Z, V = span_basis(X)
        base = LogisticRegression(C=float(self.C), class_weight=self.class_weight, max_iter=self.max_iter,
                                  tol=float(self.tol))
        C = float(self.C)
        self.cv_used_ = _can_cv(y, self.cv_folds) and len(self.C_grid) > 1
        self.cv_score_ = np.nan
        if self.cv_used_:
            grid = [float(c) for c in self.C_grid]

            def fit_predict(i, tr, te):
                return clone(base).set_params(C=grid[i]).fit(Z[tr], y[tr]).predict(Z[te])

            best, self.cv_score_ = grid_cv(fit_predict, len(grid), y, folds=self.cv_folds, seed=self.random_state,
                                           scoring=self.scoring)
            C = grid[best]
        self.best_params_ = {"C": C}
        est = clone(base).set_params(C=C).fit(Z, y)
        est.coef_ = est.coef_ @ V.T
        est.n_features_in_ = X.shape[1]
        self.estimator_ = est

    def decision_function(self, X):
        return self.estimator_.decision_function(self._check(X))

    def predict_proba(self, X):
        return self.estimator_.predict_proba(self._check(X))


# --------------------------------------------------------------------------- MLP


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
        b1, b2, eps = 0.9, 0.999, 1e-8
        best, stale, loss = np.inf, 0, np.nan
        self.n_iter_ = 0
        for t in range(1, self.epochs + 1):
            W1, c1, W2, c2 = params
            pre = Z @ W1.T + c1
            h = np.maximum(pre, 0)
            mask = (rng.random(h.shape, dtype=f32) < keep) / f32(keep) if self.dropout > 0 else f32(1)
            hd = h * mask
            logits = hd @ W2.T + c2
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            loss = float(-(w * (logp * onehot).sum(1)).sum() / w.sum())
            dlog = (np.exp(logp) - onehot) * (w / w.sum())[:, None]
            dh = (dlog @ W2) * mask * (pre > 0)
            grads = [dh.T @ Z, dh.sum(0), dlog.T @ hd, dlog.sum(0)]
            for p, g, mi, vi in zip(params, grads, m, v):
                p *= 1 - self.lr * self.weight_decay
                mi *= b1
                mi += (1 - b1) * g
                vi *= b2
                vi += (1 - b2) * g * g
                p -= self.lr * (mi / (1 - b1 ** t)) / (np.sqrt(vi / (1 - b2 ** t)) + eps)
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


# --------------------------------------------------------------------------- prototype


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
        X = self._check(X)
        Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return Xn @ self.prototypes_.T

    def decision_function(self, X):
        s = self._similarity(X)
        return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

    def predict_proba(self, X):
        return _softmax(self._similarity(X) / self.temperature)


# --------------------------------------------------------------------------- factories


def _pipeline(clf, params: HeadsParams) -> Pipeline:
    steps = [("scale", StandardScaler())]
    if params.l2_normalize:
        steps.append(("l2", Normalizer(norm="l2")))
    steps.append(("clf", clf))
    return Pipeline(steps)


def svc(params: HeadsParams, *, seed: int = 0) -> Pipeline:
    p = params.svc
    return _pipeline(FewShotSVC(kernel=p.kernel, C=p.C, gamma=p.gamma, C_grid=tuple(p.C_grid),
                                gamma_grid=tuple(p.gamma_grid), class_weight=p.class_weight,
                                cv_folds=params.cv_folds, scoring=params.cv_scoring, random_state=seed), params)


def logistic(params: HeadsParams, *, seed: int = 0) -> Pipeline:
    p = params.logistic
    return _pipeline(FewShotLogistic(C=p.C, C_grid=tuple(p.C_grid), class_weight=p.class_weight,
                                     max_iter=p.max_iter, cv_folds=params.cv_folds, scoring=params.cv_scoring,
                                     random_state=seed), params)


def mlp(params: HeadsParams, *, seed: int = 0) -> Pipeline:
    p = params.mlp
    return _pipeline(MLPHead(hidden=p.hidden, dropout=p.dropout, epochs=p.epochs, lr=p.lr,
                              weight_decay=p.weight_decay, tol=p.tol, n_iter_no_change=p.n_iter_no_change,
                              span=p.span, random_state=seed), params)


def prototype(params: HeadsParams, *, seed: int = 0) -> Pipeline:
    p = params.prototype
    return _pipeline(NearestPrototype(metric=p.metric, temperature=p.temperature), params)


HEADS: dict[str, Callable[..., Pipeline]] = {"svc": svc, "logistic": logistic, "mlp": mlp, "prototype": prototype}

# Every class a saved head may contain beyond scikit-learn/numpy (the skops trusted-types list).
HEAD_CLASSES = (FewShotSVC, FewShotLogistic, MLPHead, NearestPrototype)


def make_head(name: str, params: HeadsParams, *, seed: int = 0) -> Pipeline:
    """The unfitted pipeline of head ``name`` (``seed`` drives its CV folds / initialisation)."""
    try:
        factory = HEADS[name]
    except KeyError:
        raise ConfigError(f"unknown head '{name}' (known: {', '.join(HEADS)})") from None
    return factory(params, seed=seed)


def head_params(name: str, params: HeadsParams) -> dict:
    """The settings that define head ``name`` (its results-table key): shared ones plus its own section."""
    if name not in HEADS:
        raise ConfigError(f"unknown head '{name}' (known: {', '.join(HEADS)})")
    own = dataclasses.asdict(getattr(params, name)) if hasattr(params, name) else {}
    shared = {"scaler": params.scaler, "l2_normalize": params.l2_normalize}
    if name in ("svc", "logistic"):
        shared |= {"cv_folds": params.cv_folds, "cv_scoring": params.cv_scoring}
    if name == "svc" and own.get("kernel") == "linear":
        own.pop("gamma_grid", None)
        own.pop("gamma", None)
    return shared | own
