"""featpipe.heads: each head learns a known separation, is at chance on shuffled labels, picks C inside
the training set only when it can, and is deterministic without touching global random state."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from featpipe.params.config import HeadsParams
from featpipe.params.heads import MlpParams, SvcParams
from featpipe.core.errors import ConfigError
from featpipe.heads.base import one_blas_thread, span_basis
from featpipe.heads.registry import HEADS, head_params, make_head

D = 48
SEP = 4.0  # distance between the class means in units of the noise sd: Bayes accuracy = Phi(SEP / 2)


def gaussian(n_per_class: int, rng, n_classes: int = 2, sep: float = SEP):
    """Class c ~ N(mu_c, I) in D dims, class means SEP apart (simplex corners for 3 classes)."""
    basis = np.linalg.qr(np.random.default_rng(123).normal(size=(D, n_classes)))[0].T  # fixed orthonormal directions
    means = basis * sep / np.sqrt(2)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(size=(y.size, D)) + means[y] + 3.0  # an offset the scaler must handle
    return X.astype(np.float32), y


FAST = HeadsParams(mlp=MlpParams(epochs=150))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_reaches_expected_accuracy_and_is_at_chance_on_shuffled_labels(name):
    rng = np.random.default_rng(0)
    X, y = gaussian(40, rng)
    Xt, yt = gaussian(300, rng)
    bayes = norm.cdf(SEP / 2)  # 0.977
    head = make_head(name, FAST, seed=0)
    assert isinstance(head, Pipeline) and not hasattr(head[-1], "classes_")  # unfitted
    acc = np.mean(head.fit(X, y).predict(Xt) == yt)
    assert acc >= bayes - 0.06, f"{name}: {acc:.3f} vs Bayes {bayes:.3f}"
    proba = head.predict_proba(Xt)
    assert proba.shape == (600, 2) and np.allclose(proba.sum(1), 1)
    assert np.array_equal(head.predict(Xt), proba.argmax(1))

    # labels unrelated to the class: exactly half of each true class in each shuffled class
    shuffled = np.concatenate([rng.permutation(np.repeat([0, 1], 20)) for _ in range(2)])
    acc0 = np.mean(make_head(name, FAST, seed=0).fit(X, shuffled).predict(Xt) == yt)
    assert abs(acc0 - 0.5) < 0.1, f"{name} on shuffled labels: {acc0:.3f}"


@pytest.mark.parametrize("name", ["logistic", "mlp", "svc"])
def test_three_classes(name):
    rng = np.random.default_rng(1)
    X, y = gaussian(30, rng, n_classes=3)
    Xt, yt = gaussian(200, rng, n_classes=3)
    head = make_head(name, FAST, seed=0).fit(X, y)
    assert head.predict_proba(Xt).shape == (600, 3)
    assert np.mean(head.predict(Xt) == yt) > 0.85


def test_cv_only_when_every_class_has_cv_folds_images():
    rng = np.random.default_rng(2)
    params = HeadsParams(cv_folds=5, svc=SvcParams(C=3.0))
    X, y = gaussian(4, rng)
    small = make_head("svc", params, seed=0).fit(X, y)[-1]
    assert not small.cv_used_ and small.best_params_["C"] == 3.0  # the documented default
    X5, y5 = gaussian(5, rng)
    X5, y5 = X5[:-1], y5[:-1]  # class 1 has 4 images
    assert not make_head("logistic", params, seed=0).fit(X5, y5)[-1].cv_used_
    X, y = gaussian(5, rng)
    fitted = make_head("svc", params, seed=0).fit(X, y)[-1]
    assert fitted.cv_used_ and fitted.best_params_["C"] in params.svc.C_grid


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_svc_cv_on_gram_matrix_equals_plain_gridsearch(kernel):
    rng = np.random.default_rng(3)
    X, y = gaussian(15, rng, sep=1.0)
    params = HeadsParams(svc=SvcParams(kernel=kernel, gamma_grid=(0.002, 0.02)))
    head = make_head("svc", params, seed=7).fit(X, y)
    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    cv = StratifiedKFold(5, shuffle=True, random_state=7)
    grid = {"C": list(params.svc.C_grid)} | ({"gamma": [0.002, 0.02]} if kernel == "rbf" else {})
    ref = GridSearchCV(SVC(kernel=kernel, class_weight="balanced"), grid, cv=cv, scoring="balanced_accuracy").fit(Xs, y)
    assert head[-1].cv_score_ == pytest.approx(ref.best_score_)
    assert head[-1].best_params_["C"] == ref.best_params_["C"]
    # same model up to libsvm's stopping tolerance (precomputed vs built-in kernel)
    np.testing.assert_allclose(head.decision_function(X), ref.best_estimator_.decision_function(Xs), atol=5e-3)


@pytest.mark.parametrize("kernel,n_classes", [("rbf", 2), ("linear", 3), ("rbf", 4)])
def test_svc_blas_decision_function_equals_libsvm(kernel, n_classes):
    rng = np.random.default_rng(8)
    X, y = gaussian(12, rng, n_classes=n_classes, sep=1.5)
    Xt, _ = gaussian(40, rng, n_classes=n_classes)
    head = make_head("svc", HeadsParams(svc=SvcParams(kernel=kernel)), seed=0).fit(X, y)
    Xs = head[:-1].transform(Xt)
    np.testing.assert_allclose(head[-1].decision_function(Xs), head[-1].svc_.decision_function(Xs), atol=1e-8)
    assert np.array_equal(head.predict(Xt), head[-1].svc_.predict(Xs))


def test_logistic_cv_choice_equals_gridsearchcv():
    rng = np.random.default_rng(9)
    X, y = gaussian(10, rng, n_classes=3, sep=1.0)
    head = make_head("logistic", HeadsParams(), seed=2).fit(X, y)
    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    with one_blas_thread():
        ref = GridSearchCV(LogisticRegression(class_weight="balanced", max_iter=2000),
                           {"C": [0.01, 0.1, 1.0, 10.0, 100.0]}, cv=StratifiedKFold(5, shuffle=True, random_state=2),
                           scoring="balanced_accuracy").fit(Xs, y)
    assert head[-1].best_params_["C"] == ref.best_params_["C"]
    assert head[-1].cv_score_ == pytest.approx(ref.best_score_)


def _objective_gradient(est, Xs, y, C):
    """Gradient of scikit-learn's L2 logistic objective (weighted mean loss + ||W||^2 / (2 C n)) at a fitted
    multinomial model, over (coef, intercept), in the raw embedding space."""
    n_cls = est.coef_.shape[0]
    sw = (len(y) / (n_cls * np.bincount(y)))[y]  # class_weight="balanced"
    R = (est.predict_proba(Xs) - np.eye(n_cls)[y]) * (sw / sw.sum())[:, None]
    return np.c_[R.T @ Xs + est.coef_ / (C * sw.sum()), R.sum(0)]


def test_logistic_in_the_span_equals_logistic_on_raw_embeddings():
    """What the solver guarantees: the head's solution, mapped back to the D raw dimensions, has the gradient
    of the raw-space objective at the solver tolerance (the optimum lies in the span), and so agrees with a
    raw-space fit solved to the same gradient within a tolerance derived from both gradients."""
    from featpipe.heads.logistic import SOLVER_TOL

    rng = np.random.default_rng(4)
    X, y = gaussian(8, rng, n_classes=3, sep=2.0)  # n = 24 < D = 48
    Xt, _ = gaussian(50, rng, n_classes=3)
    params = HeadsParams(cv_folds=50)  # no CV: default C
    head = make_head("logistic", params, seed=0).fit(X, y)
    sc = StandardScaler().fit(X.astype(np.float64))
    Xs = sc.transform(X)
    g_head = _objective_gradient(head[-1].estimator_, Xs, y, C=1.0)
    assert np.abs(g_head).max() <= 10 * SOLVER_TOL
    with warnings.catch_warnings():  # newton-cg's line search reaches rounding limits; its gradient is checked next
        warnings.simplefilter("ignore")
        ref = LogisticRegression(C=1.0, class_weight="balanced", solver="newton-cg", tol=1e-10, max_iter=1000).fit(Xs, y)
    g_ref = _objective_gradient(ref, Xs, y, C=1.0)
    assert np.abs(g_ref).max() <= 10 * SOLVER_TOL
    # strong convexity 1 / (C n): |theta - theta*| <= |g| C n; a probability moves by at most |x| |dtheta| / 2
    Xts = np.c_[sc.transform(Xt), np.ones(len(Xt))]
    atol = 0.5 * np.linalg.norm(Xts, axis=1).max() * (np.linalg.norm(g_head) + np.linalg.norm(g_ref)) * 1.0 * len(y)
    assert atol < 1e-3  # a meaningful bound, not a loose one
    np.testing.assert_allclose(head.predict_proba(Xt), ref.predict_proba(sc.transform(Xt)), rtol=0, atol=atol)
    Z, V = span_basis(Xs)
    assert Z.shape[1] <= 24 and np.allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-8)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_deterministic_and_no_global_random_state(name):
    rng = np.random.default_rng(5)
    X, y = gaussian(10, rng, sep=1.5)
    np_state = np.random.get_state()[1].copy()
    a = make_head(name, FAST, seed=3).fit(X, y).predict_proba(X)
    b = make_head(name, FAST, seed=3).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)
    assert np.array_equal(np.random.get_state()[1], np_state)
    if name == "mlp":
        c = make_head(name, FAST, seed=4).fit(X, y).predict_proba(X)
        assert not np.array_equal(a, c)


def test_factories_and_registry():
    assert set(HEADS) >= {"svc", "logistic", "mlp", "prototype"}
    steps = [s for s, _ in make_head("prototype", HeadsParams(l2_normalize=True)).steps]
    assert steps == ["scale", "l2", "clf"]
    assert [s for s, _ in make_head("svc", HeadsParams()).steps] == ["scale", "clf"]
    with pytest.raises(ConfigError, match="unknown head 'nearest'"):
        make_head("nearest", HeadsParams())
    hp = head_params("svc", HeadsParams())
    assert hp["kernel"] == "rbf" and hp["cv_folds"] == 5 and "hidden" not in hp
    assert "gamma_grid" not in head_params("svc", dataclasses.replace(HeadsParams(), svc=SvcParams(kernel="linear")))
    mlp = make_head("mlp", HeadsParams())[-1]
    assert (mlp.hidden, mlp.dropout) == (512, 0.3)


def test_the_head_registry_is_the_one_list_of_heads():
    """Adding a head is adding its module: params.yaml sections, CLI choices, saved-model trusted types and
    Grad-CAM all come from the registry."""
    from featpipe.heads import registry as heads
    from featpipe.cli.commands.fit import HEAD_CHOICES
    from featpipe.params.config import load_params
    from featpipe.heads.io import TRUSTED

    for name, spec in heads.REGISTRY.items():
        assert isinstance(getattr(HeadsParams(), name), spec.params)  # heads.<name> in params.yaml
        assert name in HEAD_CHOICES
        assert f"{spec.estimator.__module__}.{spec.estimator.__qualname__}" in TRUSTED
        assert heads.spec_for(spec.estimator()) is spec  # Grad-CAM finds its torch twin
    p = load_params(None, ["heads.prototype.temperature=0.5"])
    assert p.heads.prototype.temperature == 0.5
    with pytest.raises(ConfigError, match="heads.nearest"):
        load_params(None, ["heads.nearest.k=3"])


def test_every_registered_head_has_its_params_section_and_every_section_a_head():
    """The head registry and params.yaml's per-head sections (featpipe.params.heads) are the same set of heads,
    and each head module's params class is its section's class."""
    from featpipe.heads import registry
    from featpipe.params.heads import SECTIONS

    assert set(registry.names()) == set(SECTIONS)
    for name in registry.names():
        assert registry.get(name).params is SECTIONS[name]
        assert type(getattr(HeadsParams(), name)) is SECTIONS[name]


@pytest.mark.parametrize("kernel,n_classes", [("rbf", 2), ("rbf", 3), ("linear", 2)])
def test_svc_fitted_on_the_blas_kernel_is_libsvms_own_fit(kernel, n_classes):
    """The final SVC is solved on the kernel matrix computed by BLAS: the same support vectors, dual
    coefficients and decision values as ``SVC(kernel).fit`` on the raw rows, and a working plain SVC."""
    rng = np.random.default_rng(11)
    X, y = gaussian(12, rng, n_classes=n_classes, sep=1.5)
    Xt, _ = gaussian(30, rng, n_classes=n_classes)
    head = make_head("svc", HeadsParams(svc=SvcParams(kernel=kernel)), seed=0).fit(X, y)
    svc, Xs = head[-1].svc_, head[:-1].transform(X)
    ref = SVC(kernel=kernel, C=svc.C, gamma=head[-1].best_params_.get("gamma", "scale"), class_weight="balanced",
              random_state=0).fit(Xs, y)
    assert np.array_equal(svc.support_, ref.support_) and np.array_equal(svc.n_support_, ref.n_support_)
    np.testing.assert_allclose(svc.dual_coef_, ref.dual_coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(svc.intercept_, ref.intercept_, rtol=0, atol=1e-9)
    Xts = head[:-1].transform(Xt)
    np.testing.assert_allclose(svc.decision_function(Xts), ref.decision_function(Xts), rtol=0, atol=1e-8)
    assert np.array_equal(svc.predict(Xts), ref.predict(Xts))


@pytest.mark.parametrize("n_classes,class_weight", [(2, "balanced"), (3, "balanced"), (3, None)])
def test_cv_fits_call_libsvm_as_svc_does(n_classes, class_weight):
    """The CV's direct libsvm calls predict what ``SVC(kernel="precomputed").fit(...).predict`` does, for every C."""
    from featpipe.heads.svc import _libsvm_fit_predict

    rng = np.random.default_rng(8)
    X, y = gaussian(9, rng, n_classes=n_classes, sep=1.0)
    y = np.r_[y, 0, 0, 0]  # unequal classes
    X = np.r_[X, rng.normal(size=(3, D)).astype(np.float32) + 3.0].astype(np.float64)
    K = np.exp(-0.01 * ((X[:, None] - X[None]) ** 2).sum(-1))
    tr, te = np.arange(0, len(y), 2), np.arange(1, len(y), 2)
    seed = np.random.RandomState(0).randint(np.iinfo("i").max)
    agree = []
    for C in (0.01, 0.1, 1.0, 10.0, 100.0):
        ref = SVC(kernel="precomputed", C=C, class_weight=class_weight, random_state=0).fit(K[np.ix_(tr, tr)], y[tr])
        got = _libsvm_fit_predict(np.ascontiguousarray(K[np.ix_(tr, tr)]), np.ascontiguousarray(K[np.ix_(te, tr)]),
                                  y[tr], C=C, class_weight=class_weight, seed=seed)
        np.testing.assert_array_equal(got, ref.predict(K[np.ix_(te, tr)]))
        agree.append(np.mean(got == y[te]))
    assert max(agree) > 1 / n_classes  # the predictions carry information
