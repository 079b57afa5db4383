"""The logistic head: L2 logistic regression fitted in the span of the k-shot embeddings (the same optimum
as on the raw embeddings), C cross-validated inside the k-shot set; its torch twin is one ``nn.Linear``.

Two classes: solved exactly by Newton's method on the k-shot Gram matrix (:mod:`featpipe.heads.newton`),
warm-started along the C grid in each CV fold. More classes: scikit-learn's multinomial lbfgs on the span
coordinates at tolerance :data:`SOLVER_TOL`."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from featpipe.heads.base import _can_cv, _Head, build_pipeline, gram, grid_cv, grid_cv_folds, span_basis
from featpipe.heads.newton import class_weights, fit_binary, fit_path
from featpipe.params.heads import LogisticParams

# The multiclass solver (lbfgs) stops when the largest gradient component of its objective
# (mean loss + ||w||^2 / (2 C n)) is below this, or earlier on its objective's relative change. The objective is
# (1 / (C n))-strongly convex, so the solution is within sqrt(dims) * tol * C * n of the optimum (L2 norm): 1e-8
# keeps a 200-shot fit's probabilities within ~1e-5 of the exact optimum, where scikit-learn's default 1e-4 left
# differences of 2e-3 that depended on the machine's rounding. (At C = 100 on 42 PneumoniaMNIST images in 3
# classes it stopped 2e-4 from the exact optimum: tests/test_newton.py checks C <= 1 at 1e-6.)
SOLVER_TOL = 1e-8


class FewShotLogistic(_Head):
    """L2 logistic regression (multinomial for more than two classes, scikit-learn's default),
    C cross-validated inside the training set when possible.

    Fitted on the training images' Gram matrix (two classes, Newton, exact) or on their coordinates in
    their own span (more classes, lbfgs): the same optimum as on the raw embeddings, far cheaper when
    D >> n. ``tol`` is the lbfgs tolerance (multiclass only). ``estimator_`` is a ``LogisticRegression``
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
        if self.classes_.size == 2:
            return self._fit_binary(X, y)
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

    def _fit_binary(self, X, y):
        """Newton on the Gram matrix: the exact optimum (gradient ~1e-11), the CV folds' kernels sliced from it."""
        G = gram(X)
        C = float(self.C)
        self.cv_used_ = _can_cv(y, self.cv_folds) and len(self.C_grid) > 1
        self.cv_score_ = np.nan
        if self.cv_used_:
            grid = [float(c) for c in self.C_grid]

            def fit_predict_all(tr, te):
                path = fit_path(G[np.ix_(tr, tr)], y[tr], class_weights(y[tr], 2, self.class_weight), grid,
                                max_iter=self.max_iter)
                G_te = G[np.ix_(te, tr)]
                return [(G_te @ a + b > 0).astype(np.int64) for a, b in path]

            best, self.cv_score_ = grid_cv_folds(fit_predict_all, len(grid), y, folds=self.cv_folds,
                                                 seed=self.random_state, scoring=self.scoring)
            C = grid[best]
        self.best_params_ = {"C": C}
        a, b, steps = fit_binary(G, y, class_weights(y, 2, self.class_weight), C, max_iter=self.max_iter)
        est = LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter, tol=float(self.tol))
        est.coef_, est.intercept_ = (a @ X)[None, :], np.array([b])
        est.classes_, est.n_features_in_, est.n_iter_ = np.arange(2), X.shape[1], np.array([steps], dtype=np.int32)
        self.estimator_ = est

    def decision_function(self, X):
        return self.estimator_.decision_function(self._check(X))

    def predict_proba(self, X):
        return self.estimator_.predict_proba(self._check(X))


def factory(params, *, seed: int = 0):
    p = params.logistic
    return build_pipeline(FewShotLogistic(C=p.C, C_grid=tuple(p.C_grid), class_weight=p.class_weight,
                                          max_iter=p.max_iter, cv_folds=params.cv_folds, scoring=params.cv_scoring,
                                          random_state=seed), params)


HEAD = dict(name="logistic", params=LogisticParams, estimator=FewShotLogistic, factory=factory,
            cross_validated=True, also_explains=(LogisticRegression,))
