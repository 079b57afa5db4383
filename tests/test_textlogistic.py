"""The text-initialised logistic head: without a prior it is L2 logistic regression; with one it is pulled towards
the zero-shot classifier (all of it with no data weight), which helps at one shot when the text is right."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from featpipe.heads.textlogistic import TextPriorLogistic


def _data(n_per_class, rng, d=20, sep=1.5):
    y = np.repeat([0, 1], n_per_class)
    X = rng.standard_normal((y.size, d))
    X[:, 0] += sep * (2 * y - 1)
    return X, y


def test_without_a_prior_it_is_l2_logistic_regression():
    X, y = _data(15, np.random.default_rng(0))
    head = TextPriorLogistic(C=0.5).fit(X, y)
    # two softmax rows each penalised = one binary logistic regression with twice the C
    ref = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(head.coef_, ref.coef_, atol=1e-5)
    np.testing.assert_allclose(head.intercept_, ref.intercept_, atol=1e-5)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-6)


def test_the_prior_pulls_the_weights_and_helps_at_one_shot():
    rng = np.random.default_rng(1)
    prior = np.zeros((2, 20))
    prior[1, 0], prior[0, 0] = 2.0, -2.0  # the "text" knows the discriminative direction
    head = TextPriorLogistic(C=1e-6, prior=prior).fit(*_data(1, rng))
    np.testing.assert_allclose(head.weights_, prior, atol=1e-4)  # no data weight: the zero-shot classifier
    Xt, yt = _data(500, rng)
    wins = 0
    for seed in range(10):
        X1, y1 = _data(1, np.random.default_rng(100 + seed))
        plain = TextPriorLogistic(C=1.0).fit(X1, y1).predict_proba(Xt)[:, 1]
        text = TextPriorLogistic(C=1.0, prior=prior).fit(X1, y1).predict_proba(Xt)[:, 1]
        wins += roc_auc_score(yt, text) > roc_auc_score(yt, plain)
    assert wins >= 9


def test_a_prior_of_the_wrong_shape_is_refused():
    X, y = _data(3, np.random.default_rng(2))
    with pytest.raises(ValueError, match="text prior has shape"):
        TextPriorLogistic(prior=np.zeros((2, 3))).fit(X, y)
