"""featpipe.evaluation.metrics: equal to scikit-learn on hand-made cases, thresholds from val, honest intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from featpipe.core.optional import version_tuple
from featpipe.params.config import ClinicalParams
from featpipe.evaluation.metrics import brier, choose_threshold, curves, predict_labels, score
from featpipe.results.stats import bootstrap_ci, clinical_grade, summarize

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # np.trapezoid is numpy 2; featpipe supports numpy 1.26


def test_binary_hand_made_numbers():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    s = score(y, p, classes=["neg", "pos"], threshold=0.5)
    # predictions 0,1,0,1: one TP, one TN, one FP, one FN
    assert s["accuracy"] == 0.5 and s["balanced_accuracy"] == 0.5
    assert s["sensitivity"] == 0.5 and s["specificity"] == 0.5
    assert s["auroc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ranked right
    assert s["auprc"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision at each positive: 1/1, 2/3
    assert s["auprc_baseline"] == 0.5
    assert s["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert s["confusion_matrix"] == [[1, 1], [1, 1]]
    assert s["threshold"] == 0.5
    # a lower threshold turns the 0.4 positive into a TP
    s2 = score(y, p, classes=["neg", "pos"], threshold=0.35)
    assert s2["sensitivity"] == 1.0 and s2["specificity"] == 0.5 and s2["accuracy"] == 0.75


def test_binary_equals_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(0.35 * y + rng.random(300) * 0.65, 0, 1)
    proba = np.column_stack([1 - p1, p1])
    t = 0.42
    s = score(y, proba, classes=["a", "b"], threshold=t)
    pred = (p1 >= t).astype(int)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert s["auroc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert s["auprc"] == pytest.approx(skm.average_precision_score(y, p1))
    assert s["auprc_baseline"] == pytest.approx(y.mean())
    assert s["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
    assert s["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert s["brier"] == pytest.approx(skm.brier_score_loss(y, p1))
    assert s["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred)
    assert s["per_class"]["b"] == pytest.approx({"precision": prec[1], "recall": rec[1], "f1": f1[1], "support": sup[1]})
    roc = np.array(curves(y, proba, classes=["a", "b"], max_points=10_000)["b"]["roc"])
    assert trapezoid(roc[:, 1], roc[:, 0]) == pytest.approx(skm.roc_auc_score(y, p1), abs=1e-4)
    # 1-D scores mean p(classes[1])
    assert score(y, p1, classes=["a", "b"], threshold=t)["auroc"] == s["auroc"]


@pytest.mark.skipif(version_tuple(sklearn.__version__) < (1, 7),
                    reason="sklearn < 1.7: brier_score_loss has no multiclass form (featpipe itself needs 1.6)")
def test_three_class_equals_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y]
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    s = score(y, P, classes=["x", "y", "z"])
    pred = P.argmax(1)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert s["auroc"] == pytest.approx(skm.roc_auc_score(y, P, multi_class="ovr", average="macro"))
    assert s["auprc"] == pytest.approx(skm.average_precision_score(label_binarize(y, classes=[0, 1, 2]), P, average="macro"))
    assert s["brier"] == pytest.approx(skm.brier_score_loss(y, P, scale_by_half=False))
    assert s["brier"] == pytest.approx(np.mean(np.sum((P - np.eye(3)[y]) ** 2, axis=1)))
    assert s["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert math.isnan(s["sensitivity"]) and math.isnan(s["threshold"])
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred)
    assert [s["per_class"][c]["recall"] for c in "xyz"] == pytest.approx(rec.tolist())
    with pytest.raises(ValueError, match="binary"):
        score(y, P, classes=["x", "y", "z"], threshold=0.5)
    assert set(curves(y, P, classes=["x", "y", "z"])) == {"x", "y", "z"}



def test_one_vs_rest_curves_of_many_classes_are_each_class_binary_curve():
    """With many classes (issue 21: 1,000+) each class's ROC and PR points are those of the binary task
    "this class or not" on its own score column, ties included; a class without test images has none."""
    rng = np.random.default_rng(3)
    n_classes, n = 40, 400
    y = rng.integers(0, n_classes - 1, n)  # the last class has no image
    P = rng.dirichlet(np.ones(n_classes), n)
    P[: n // 4] = np.round(P[: n // 4], 2)  # tied scores
    names = [f"c{i}" for i in range(n_classes)]
    out = curves(y, P, classes=names, max_points=50)
    assert set(out) == set(names[:-1])
    for c in (0, 17, n_classes - 2):
        binary = curves((y == c).astype(int), np.c_[1 - P[:, c], P[:, c]], classes=["rest", "this"], max_points=50)
        assert out[names[c]] == binary["this"]
        fpr, tpr, _ = skm.roc_curve(y == c, P[:, c], drop_intermediate=False)
        assert out[names[c]]["roc"][-1] == [1.0, 1.0] and len(out[names[c]]["roc"]) <= 50 < len(fpr)

def test_undefined_metric_is_nan_not_zero():
    s = score(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]), classes=["n", "p"])
    assert math.isnan(s["auroc"]) and math.isnan(s["specificity"])
    assert s["sensitivity"] == pytest.approx(2 / 3)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        score([0, 1], np.ones((2, 3)) / 3, classes=["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        score([0, 2], np.full((2, 2), 0.5), classes=["a", "b"])


def test_choose_threshold_maximises_balanced_accuracy_on_the_given_set():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    s = np.clip(0.25 * y + 0.2 + rng.random(120) * 0.5, 0, 1)
    t = choose_threshold(y, s)
    best = max(skm.balanced_accuracy_score(y, (s >= c).astype(int)) for c in np.unique(s))
    assert skm.balanced_accuracy_score(y, (s >= t).astype(int)) == pytest.approx(best)
    assert not np.any(s == t)  # a midpoint between scores, not one of them
    # shifted scores: the threshold follows the scores it was chosen on
    assert choose_threshold(y, np.clip(s - 0.15, 0, 1)) < t
    assert choose_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.5  # one class: no information
    assert predict_labels(np.array([0.3, 0.6]), n_classes=2, threshold=0.55).tolist() == [0, 1]


def test_t_interval_covers_known_mean_about_95_percent():
    rng = np.random.default_rng(4)
    true_mean, hits, reps = 0.8, 0, 2000
    for _ in range(reps):
        s = summarize(rng.normal(true_mean, 0.05, size=10))
        hits += s["ci_low"] <= true_mean <= s["ci_high"]
    assert 0.93 <= hits / reps <= 0.97
    s = summarize([0.8, 0.9, float("nan"), 0.85])
    assert s["n"] == 3 and s["spread"] == pytest.approx(0.1) and s["min"] == 0.8 and s["max"] == 0.9
    assert s["std"] == pytest.approx(np.std([0.8, 0.9, 0.85], ddof=1))
    one = summarize([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["ci_low"]) and math.isnan(one["std"])


def test_patient_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(5)
    n_pat = 40
    y_pat = rng.integers(0, 2, n_pat)
    p_pat = np.clip(0.3 * y_pat + rng.random(n_pat) * 0.7, 0, 1)
    reps = 8  # every patient contributes 8 identical images: they carry one patient's worth of information
    y, p = np.repeat(y_pat, reps), np.repeat(p_pat, reps)
    patients = np.repeat([f"p{i}" for i in range(n_pat)], reps)
    by_patient = bootstrap_ci(y, p, classes=["n", "p"], patients=patients, n_boot=300, seed=0, metrics=["accuracy", "auroc"])
    by_image = bootstrap_ci(y, p, classes=["n", "p"], patients=np.arange(y.size).astype(str), n_boot=300, seed=0,
                            metrics=["accuracy", "auroc"])
    width = lambda d, m: d[m]["high"] - d[m]["low"]
    assert width(by_patient, "accuracy") > 2 * width(by_image, "accuracy")
    point = score(y, p, classes=["n", "p"])["accuracy"]
    assert by_patient["accuracy"]["low"] <= point <= by_patient["accuracy"]["high"]
    again = bootstrap_ci(y, p, classes=["n", "p"], patients=patients, n_boot=300, seed=0, metrics=["accuracy", "auroc"])
    assert again == by_patient  # seeded


def test_clinical_grade_flag_uses_params():
    c = ClinicalParams()
    acc = {"mean": 0.93, "std": 0.02, "ci_low": 0.91, "n": 5}
    good = {"n_seeds": 5, "accuracy": acc, "auroc": {"mean": 0.97, "ci_low": 0.96},
            "sensitivity": {"mean": 0.9}, "specificity": {"mean": 0.9}}
    assert clinical_grade(good, n_classes=2, params=c)
    assert not clinical_grade(good | {"accuracy": acc | {"std": 0.06}}, n_classes=2, params=c)
    assert not clinical_grade(good | {"auroc": {"mean": 0.97, "ci_low": 0.94}}, n_classes=2, params=c)  # lower bound, not mean
    mid = good | {"accuracy": acc | {"mean": 0.88, "ci_low": 0.87}}
    assert not clinical_grade(mid, n_classes=2, params=c) and clinical_grade(mid, n_classes=3, params=c)
    assert not clinical_grade(good | {"auroc": {"mean": float("nan")}}, n_classes=2, params=c)
    assert not clinical_grade(good | {"n_seeds": 4}, n_classes=2, params=c)


def test_brier_binary_matches_sklearn_scaling():
    y, p = np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4])
    assert brier(y, p, n_classes=2) == pytest.approx(skm.brier_score_loss(y, p))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fast_scores_used_by_bootstrap_equal_score(n_classes):
    from featpipe.evaluation.metrics import SUMMARY_METRICS, fast_scores

    rng = np.random.default_rng(6)
    y = rng.integers(0, n_classes, 150)
    logits = rng.normal(size=(150, n_classes)) + np.eye(n_classes)[y]
    logits[:20] = logits[20:40]  # ties in the scores
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    thr = 0.45 if n_classes == 2 else None
    full = score(y, P, classes=[str(i) for i in range(n_classes)], threshold=thr)
    fast = fast_scores(y, P, n_classes=n_classes, threshold=thr, metrics=SUMMARY_METRICS)
    for m in SUMMARY_METRICS:
        if math.isnan(full[m]):
            assert math.isnan(fast[m])
        else:
            assert fast[m] == pytest.approx(full[m], abs=1e-12), m
