"""The knn head: DINOv2's temperature-weighted kNN vote on cosine similarity, checked against a brute-force
loop, k cross-validated inside the k-shot set (capped by its size), its torch twin, and `featpipe sweep --heads knn`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from featpipe.cli.main import main
from featpipe.heads.knn import KNNHead
from featpipe.heads.registry import make_head
from featpipe.heads.torch_twin import torch_head
from featpipe.params.config import HeadsParams
from featpipe.params.heads import KnnParams
from test_fit import write_fixture


def brute_force(train, y, test, k, T, n_classes):
    """One test image at a time: cosine to every training image, the k largest vote exp(s / T)."""
    out = np.zeros((len(test), n_classes))
    for i, x in enumerate(test):
        sims = [float(x @ t / (np.linalg.norm(x) * np.linalg.norm(t))) for t in train]
        order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
        for j in order:
            out[i, y[j]] += np.exp(sims[j] / T)
    return out / out.sum(axis=1, keepdims=True)


def _data(seed=0, n=24, n_classes=2, d=16):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.standard_normal((n, d)) + 1.2 * np.eye(n_classes, d)[y]
    return X, y, rng.standard_normal((30, d)) + 0.6 * np.eye(n_classes, d)[np.arange(30) % n_classes]


@pytest.mark.parametrize("n_classes,k", [(2, 5), (3, 7), (2, 1000)])
def test_probabilities_equal_a_brute_force_weighted_vote(n_classes, k):
    X, y, Xt = _data(n_classes=n_classes)
    head = KNNHead(k=k, k_grid=(k,), temperature=0.1, cv_folds=0).fit(X, y)
    assert head.k_ == min(k, len(y))  # capped by the number of training images
    want = brute_force(X, y, Xt, head.k_, 0.1, n_classes)
    np.testing.assert_allclose(head.predict_proba(Xt), want, rtol=1e-10, atol=1e-12)
    assert np.array_equal(head.predict(Xt), want.argmax(1))
    d = head.decision_function(Xt)
    if n_classes == 2:  # log-odds of the vote share; a class without a vote counts 1e-300 (finite scores)
        both = (want > 0).all(axis=1)
        np.testing.assert_allclose(d[both], np.log(want[both, 1] / want[both, 0]), rtol=1e-9)
        assert np.all(np.abs(d[~both]) > 600) and np.array_equal(d[~both] > 0, want[~both, 1] > 0)


def test_every_image_votes_when_k_reaches_the_k_shot_set_so_scores_rank():
    """1-shot-like sets: k is capped at n, every test image gets its own score (no ties), AUROC well above chance."""
    X, y, Xt = _data(n=4, d=8)
    yt = np.arange(30) % 2
    head = make_head("knn", HeadsParams(scaler="none"), seed=0).fit(X, y)
    assert head[-1].k_ == 4 and not head[-1].cv_used_
    p = head.predict_proba(Xt)[:, 1]
    assert np.unique(p).size == len(p)
    assert roc_auc_score(yt, p) > 0.6


def test_k_is_cross_validated_inside_the_k_shot_set():
    """The CV choice equals a hand loop over the same seeded folds (ties to the smaller k), each k capped."""
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 30)
    X = rng.standard_normal((60, 12)) + 0.5 * np.eye(2, 12)[y]
    grid = (1, 3, 15, 200)
    head = KNNHead(k_grid=grid, temperature=0.07, cv_folds=5, random_state=2).fit(X, y)
    assert head.cv_used_
    scores = []
    for k in grid:
        fold = []
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=2).split(X, y):
            pred = brute_force(X[tr], y[tr], X[te], min(k, len(tr)), 0.07, 2).argmax(1)
            fold.append(np.mean([np.mean(pred[y[te] == c] == c) for c in (0, 1)]))
        scores.append(np.mean(fold))
    best = int(np.argmax(scores))
    assert head.k_ == min(grid[best], 60) and head.cv_score_ == pytest.approx(scores[best])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_torch_twin_equals_the_head_and_has_gradients(n_classes):
    X, y, Xt = _data(n_classes=n_classes)
    params = replace(HeadsParams(cv_folds=0), knn=KnnParams(k=5))
    pipe = make_head("knn", params, seed=0).fit(X, y)
    twin = torch_head(pipe)
    assert twin.kind == "knn"
    xt = torch.from_numpy(Xt)
    np.testing.assert_allclose(twin.decision(xt).numpy(), pipe.decision_function(Xt), atol=1e-9, rtol=0)
    np.testing.assert_allclose(twin.predict_proba(xt).numpy(), pipe.predict_proba(Xt), atol=1e-9)
    x = xt[:4].clone().requires_grad_(True)
    twin(x)[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_temperature_is_refused():
    X, y, _ = _data()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KNNHead(temperature=0).fit(X, y)


def test_sweep_with_the_knn_head_writes_rows(tmp_path):
    (tmp_path / "p.yaml").write_text("fit:\n  n_jobs: 1\n  bootstrap: 0\n  shots: [2, 10]\n  seeds: [0, 1]\n")
    write_fixture(tmp_path)
    rc = main(["sweep", "--splits", str(tmp_path / "data/splits.json"), "--cache-dir", str(tmp_path / "cache"),
               "--results", str(tmp_path / "results"), "--models", str(tmp_path / "models"), "--backbones", "toy",
               "--heads", "knn", "--n-jobs", "1", "--params", str(tmp_path / "p.yaml")])
    assert rc == 0
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    assert set(runs["head"]) == {"knn"} and len(runs) == 4
    assert (runs.loc[runs["shots"] == 10, "auroc"] > 0.7).all()  # the toy features separate the classes
    assert runs["brier"].isna().all()  # a vote share, not a calibrated probability
    hp = json.loads(runs["head_params"].iloc[0])
    assert hp["k_grid"] == [10, 20, 100, 200] and hp["temperature"] == 0.07
