"""The kept predictions reproduce runs.csv exactly; thresholds never split scores that differ only by noise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from test_fit import write_fixture

from featpipe.cli.main import main
from featpipe.evaluation.metrics import SCORE_TOL, choose_threshold, degenerate, predict_labels, score
from featpipe.evaluation.table import read_predictions, read_runs

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "sensitivity", "specificity", "brier",
           "threshold")


def test_metrics_recomputed_from_the_kept_predictions_equal_runs_csv_bit_for_bit(tmp_path):
    write_fixture(tmp_path, sep=1.5, seeds=(0, 1, 2), shots=(1, 2, 5))
    (tmp_path / "p.yaml").write_text("fit: {n_jobs: 1}\n")
    base = ["--splits", str(tmp_path / "data/splits.json"), "--params", str(tmp_path / "p.yaml")]
    for head in ("logistic", "svc", "prototype"):
        assert main(["sweep", *base, "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "results"),
                     "--models", str(tmp_path / "models"), "--backbones", "toy", "--heads", head]) == 0
    runs = read_runs(tmp_path / "results/runs.csv")
    preds = read_predictions(tmp_path / "results")
    assert len(runs) == 3 * 3 * 3 and set(preds["run_id"]) == set(runs["run_id"])
    checked = 0
    for r in runs.to_dict("records"):
        g = preds[(preds["run_id"] == r["run_id"])]
        test, val = g[g["split"] == "test"], g[g["split"] == "val"]
        p = test[["p[normal]", "p[pneumonia]"]].to_numpy()
        thr = float(test["threshold"].iloc[0])
        assert thr == choose_threshold(val["label"], val[["p[normal]", "p[pneumonia]"]].to_numpy())  # val alone
        s = score(test["label"].to_numpy(), p, classes=["normal", "pneumonia"], threshold=thr)
        if not r["calibrated"]:  # svc, prototype: monotone scores, no Brier score
            assert r["head"] in ("svc", "prototype") and np.isnan(r["brier"]) and np.isnan(r["val_brier"])
            s["brier"] = np.nan
        for m in METRICS:
            assert (s[m] == r[m]) or (np.isnan(s[m]) and np.isnan(r[m])), (r["head"], r["shots"], m, s[m], r[m])
            checked += 1
        assert json.loads(r["confusion_matrix"]) == s["confusion_matrix"]
    assert checked == len(runs) * len(METRICS)


def test_kept_probabilities_are_the_float64_values_scored(tmp_path):
    from featpipe.evaluation.table import write_predictions

    rng = np.random.default_rng(0)
    p1 = np.r_[rng.random(50), 0.5 + 5e-13, 0.5 + 4e-13, 1 - 1e-16, 1e-300]
    frame = pd.DataFrame({"split": "test", "id": [str(i) for i in range(p1.size)], "label": 0,
                          "p[a]": 1 - p1, "p[b]": p1})
    row = {"dataset": "d", "backbone": "b", "weights": "w", "weights_id": "w", "layer": "", "head": "h",
           "head_params": "{}", "shots": 1, "seed": 0, "split_sha256": "s", "threshold": 0.5 + 4.5e-13}
    write_predictions(tmp_path, row, frame)
    back = read_predictions(tmp_path)
    assert np.array_equal(back["p[b]"].to_numpy(), p1) and np.array_equal(back["p[a]"].to_numpy(), 1 - p1)
    assert back["threshold"].iloc[0] == 0.5 + 4.5e-13


def test_threshold_lies_between_distinct_scores_and_ignores_noise():
    # two clusters of val scores, each smeared by noise far below SCORE_TOL: the threshold sits between the clusters
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.5, 0.5 + 1e-13, 0.5 + 3e-13, 0.7, 0.7 + 2e-13, 0.7 - 1e-13])
    t = choose_threshold(y, s)
    assert t == (0.5 + 3e-13 + 0.7 - 1e-13) / 2
    assert np.min(np.abs(s - t)) > 0.09
    # noise that would decide the classes alone: labels disagree inside one noise cluster -> it is not split
    y2 = np.array([0, 1, 0, 1])
    s2 = np.array([0.5, 0.5 + 1e-12, 0.5 + 2e-13, 0.5 + 5e-13])
    assert choose_threshold(y2, s2) == 0.5  # no threshold separates noise: the head's own boundary ...
    assert "tied across classes" in degenerate(s2, n_classes=2, threshold=0.5, labels=y2)  # ... and the run is flagged
    # a threshold is never placed inside a noise cluster: candidates sit at least SCORE_TOL / 2 from every score
    y3 = np.array([0, 0, 1, 1])
    s3 = np.array([0.2, 0.2 + 1e-12, 0.2 + 3e-12, 0.6])
    assert np.min(np.abs(s3 - choose_threshold(y3, s3))) >= SCORE_TOL / 2
    # equal J: the candidate nearest 0.5 wins (documented tie rule)
    assert choose_threshold([0, 1], [0.2, 0.9]) == (0.2 + 0.9) / 2


def test_test_scores_within_noise_of_the_threshold_are_on_it():
    t = 0.5 + 5e-13  # the SVC k=1 threshold
    p = np.array([0.5, 0.5 + 1e-13, 0.5 + 9e-13, 0.5 - 1e-13, 0.49])
    assert predict_labels(p, n_classes=2, threshold=t).tolist() == [1, 1, 1, 1, 0]
    three = np.array([[0.4, 0.4 + 1e-13, 0.2 - 1e-13], [0.2, 0.5, 0.3]])
    assert predict_labels(three, n_classes=3).tolist() == [0, 1]  # a tie within noise: the first class
