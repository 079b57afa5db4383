"""The SVC head (linear or RBF), C and gamma cross-validated inside the k-shot set (its torch twin for Grad-CAM,
:func:`featpipe.heads.torch_twin.svc_twin`, is a kernel expansion over the support vectors)."""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC, _libsvm

from featpipe.heads.base import _can_cv, _Head, build_pipeline, gram, grid_cv_folds, per_rows
from featpipe.params.heads import SvcParams


def _libsvm_fit_predict(K_train, K_test, y, *, C: float, class_weight, seed: int) -> np.ndarray:
    """``SVC(kernel="precomputed", C, class_weight).fit(K_train, y).predict(K_test)`` for labels 0..K-1 present in
    ``y``: the same libsvm calls with the same arguments, without SVC's per-call validation (30x faster on few-shot
    folds; a CV is 25 of them). Tests compare the CV's choice with ``GridSearchCV``."""
    n_cls = int(y.max()) + 1
    weights = len(y) / (n_cls * np.bincount(y, minlength=n_cls)) if class_weight == "balanced" else np.ones(n_cls)
    _libsvm.set_verbosity_wrap(0)  # as SVC.fit does (verbose=False): libsvm prints its solver log otherwise
    model = _libsvm.fit(K_train, y.astype(np.float64), svm_type=0, kernel="precomputed", C=C, class_weight=weights,
                        sample_weight=np.empty(0), cache_size=200.0, random_seed=seed)
    support, sv, n_sv, dual, icpt, prob_a, prob_b = model[:7]
    return _libsvm.predict(K_test, support, sv, n_sv, dual, icpt, prob_a, prob_b, svm_type=0,
                           kernel="precomputed", cache_size=200.0).astype(np.int64)


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
        G = gram(X)
        sq = np.diag(G)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * G, 0.0)

        def kernel(g):
            return G if g is None else np.exp(-g * dist)

        if self.cv_used_:
            kernels = {g: kernel(g) for g in gammas}
            seed = np.random.RandomState(self.random_state).randint(np.iinfo("i").max)  # as SVC.fit draws it

            def fit_predict_all(tr, te):
                sliced = {g: (np.ascontiguousarray(K[np.ix_(tr, tr)]), np.ascontiguousarray(K[np.ix_(te, tr)]))
                          for g, K in kernels.items()}
                return [_libsvm_fit_predict(*sliced[g], y[tr], C=c, class_weight=self.class_weight, seed=seed)
                        for c, g in grid]

            best, self.cv_score_ = grid_cv_folds(fit_predict_all, len(grid), y, folds=self.cv_folds,
                                                 seed=self.random_state, scoring=self.scoring)
            C, g = grid[best]
            gamma = gamma if g is None else g
        self.best_params_ = {"C": float(C)} | ({"gamma": float(gamma)} if self.kernel == "rbf" else {})
        # random_state: libsvm draws a seed from numpy's global generator when none is given (unused without
        # probability=True, but it moves the caller's global random state)
        self.svc_ = self._final_fit(X, y, kernel(None if self.kernel == "linear" else gamma), C, gamma)

    def _final_fit(self, X, y, K, C: float, gamma: float) -> SVC:
        """``SVC(kernel, C, gamma).fit(X, y)``, solved by libsvm on the kernel matrix ``K`` computed by BLAS (libsvm's
        own per-pair kernel on D-dim rows cost 80 ms at 400 images, this 3 ms): the fitted attributes of a
        ``kernel="precomputed"`` fit, with the support vectors' rows, make the ``kernel`` SVC it describes."""
        pre = SVC(kernel="precomputed", C=C, class_weight=self.class_weight, random_state=self.random_state).fit(K, y)
        svc = SVC(kernel=self.kernel, C=C, gamma=gamma, class_weight=self.class_weight, random_state=self.random_state)
        for name, value in vars(pre).items():
            if name.endswith("_") or (name.startswith("_") and not name.startswith("__")):
                setattr(svc, name, value)
        svc.support_vectors_ = np.ascontiguousarray(X[pre.support_])
        svc.shape_fit_, svc.n_features_in_, svc._gamma = X.shape, X.shape[1], gamma
        return svc

    def decision_function(self, X):
        """= ``svc_.decision_function`` (ovr shape for > 2 classes), with the kernel computed by BLAS
        instead of libsvm's per-pair loop (about 50x faster for thousands of test images)."""
        X = self._check(X)
        svc = self.svc_
        sv = svc.support_vectors_
        if self.kernel == "linear":
            K = X @ sv.T
        else:
            sq = per_rows(X, "sqnorm", lambda X: (X * X).sum(1))[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * (X @ sv.T)
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


def factory(params, *, seed: int = 0):
    p = params.svc
    return build_pipeline(FewShotSVC(kernel=p.kernel, C=p.C, gamma=p.gamma, C_grid=tuple(p.C_grid),
                                     gamma_grid=tuple(p.gamma_grid), class_weight=p.class_weight,
                                     cv_folds=params.cv_folds, scoring=params.cv_scoring, random_state=seed), params)


def naming_params(own: dict) -> dict:
    """The settings that name an SVC configuration: a linear kernel has no gamma."""
    if own.get("kernel") == "linear":
        own = {k: v for k, v in own.items() if k not in ("gamma", "gamma_grid")}
    return own


HEAD = dict(name="svc", params=SvcParams, estimator=FewShotSVC, factory=factory, naming=naming_params,
            cross_validated=True, also_explains=(SVC,), calibrated=False)
