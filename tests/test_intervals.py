"""The headline interval (seed luck + test-sampling luck), its parts, and the clinical flag that rests on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featpipe.evaluation.metrics import fast_scores
from featpipe.params.config import ClinicalParams
from featpipe.results.intervals import interval
from featpipe.results.stats import PatientResampler, clinical_check, seed_summary, summarize
from featpipe.results.summary import summarize_runs
from featpipe.results.testvar import cluster_variance, sampling_variance


def test_interval_contains_its_estimate_at_the_ceiling_and_has_width_on_a_finite_test_set():
    # the example: ten seeds at 468/468 and one at 467/468 (logit-t gave [0.9987, 0.9990] for mean 0.9998)
    v = [1.0] * 10 + [467 / 468]
    s = summarize(v, n_units=468)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["ci_low"] <= min(v) and s["ci_high"] == 1.0
    assert s["seed_low"] <= s["mean"] <= s["seed_high"] and s["test_low"] <= s["mean"] <= s["test_high"]
    # the headline is never narrower than either part
    assert s["ci_low"] <= min(s["seed_low"], s["test_low"]) + 1e-12
    same = summarize([1.0] * 5, n_units=20)
    assert same["ci_high"] == 1.0 and 0.75 < same["ci_low"] < 0.85  # 20 images scored perfectly: about [0.80, 1]
    assert summarize([1.0] * 5, n_units=200)["ci_low"] > same["ci_low"]  # more test images, narrower
    # far from the bounds with many units and a wide seed spread: the Student-t interval over seeds
    wide = [0.55, 0.7, 0.62, 0.8, 0.66]
    from scipy import stats

    half = stats.t.ppf(0.975, 4) * np.std(wide, ddof=1) / np.sqrt(5)
    s = summarize(wide, n_units=10**9)
    assert s["ci_low"] == pytest.approx(np.mean(wide) - half, abs=1e-6)
    assert s["ci_high"] == pytest.approx(np.mean(wide) + half, abs=1e-6)


def _runs_on_one_test_set(n_patients=60, per=3, seeds=5, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_patients) % n_classes, per)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per)
    hard = np.repeat(rng.normal(size=n_patients), per)  # shared by every seed: test-sampling luck
    runs = []
    for _ in range(seeds):
        logits = rng.normal(size=(y.size, n_classes)) * 0.8
        logits[np.arange(y.size), y] += 1.2 + 0.8 * hard
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        runs.append((y, p, 0.5 if n_classes == 2 else None))
    return y, patients, runs


@pytest.mark.parametrize("metric, n_classes", [("accuracy", 2), ("auroc", 2), ("balanced_accuracy", 2),
                                               ("macro_f1", 3), ("auroc", 3), ("brier", 2)])
def test_test_variance_of_the_mean_over_seeds_equals_the_patient_bootstrap(metric, n_classes):
    y, patients, runs = _runs_on_one_test_set(n_classes=n_classes)
    full = sampling_variance(metric, runs[:1], patients, n_classes=n_classes)  # one run: all of its variance
    boot = [fast_scores(y[i], runs[0][1][i], n_classes=n_classes, threshold=runs[0][2], metrics=(metric,))[metric]
            for i in PatientResampler(patients).draws(3000, 1)]
    assert full == pytest.approx(np.var(boot), rel=0.12)


def test_cluster_variance_equals_statsmodels_cluster_robust_variance_of_a_mean():
    import statsmodels.api as sm

    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 3)
    x = (rng.random(groups.size) < 0.8 + 0.1 * np.repeat(rng.normal(size=40), 3)).astype(float)
    fit = sm.OLS(x, np.ones((x.size, 1))).fit(cov_type="cluster", cov_kwds={"groups": groups})
    assert cluster_variance((x - x.mean()) / x.size, groups.astype(str)) == pytest.approx(fit.bse[0] ** 2, rel=1e-10)


def test_shared_test_variance_leaves_out_what_the_seed_spread_already_holds():
    y, patients, runs = _runs_on_one_test_set(seeds=8)
    shared = sampling_variance("accuracy", runs, patients, n_classes=2)
    one = sampling_variance("accuracy", runs[:1], patients, n_classes=2)
    assert 0 < shared < one
    # identical seeds share everything: the shared part is the whole variance of one run
    assert sampling_variance("accuracy", [runs[0]] * 4, patients, n_classes=2) == pytest.approx(one)


def _perfect_rows(n_test: int, seeds: int = 5) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "d", "backbone": "bb", "weights": "default", "weights_id": "w", "layer": "",
                          "head": "h", "head_params": "{}", "shots": 5, "seed": s, "split_sha256": "s", "n_classes": 2,
                          "n_test": n_test, "accuracy": 1.0, "auroc": 1.0, "sensitivity": 1.0, "specificity": 1.0,
                          "val_macro_f1": 0.9, "macro_f1": 1.0, "degenerate": False,
                          "confusion_matrix": f"[[{n_test // 2},0],[0,{n_test - n_test // 2}]]"} for s in range(seeds)])


def test_clinical_grade_states_the_test_size_and_cannot_pass_on_20_images():
    c = ClinicalParams()
    small = summarize_runs(_perfect_rows(20), clinical=c, select_metric="macro_f1")["d/bb/h/k5"]
    assert small["chosen_on_val"] and not small["clinical_grade"]
    assert any("accuracy interval lower bound" in f and "on 20 test images" in f for f in small["clinical_failed"])
    assert any(f.startswith("AUROC interval lower bound") for f in small["clinical_failed"])  # 10 per class
    big = summarize_runs(_perfect_rows(468), clinical=c, select_metric="macro_f1")["d/bb/h/k5"]
    assert big["clinical_grade"] and big["test_size"].startswith("on 468 test images")
    assert clinical_check(big, n_classes=2, params=c) == []


def test_seed_summary_uses_the_patients_when_predictions_are_given():
    y, patients, runs = _runs_on_one_test_set(seeds=5)
    rows = pd.DataFrame({"accuracy": [fast_scores(yy, p, n_classes=2, threshold=t, metrics=("accuracy",))["accuracy"]
                                      for yy, p, t in runs], "n_test": y.size, "n_classes": 2})
    shared = sampling_variance("accuracy", runs, patients, n_classes=2)
    by_image = seed_summary(rows, "accuracy")
    by_patient = seed_summary(rows, "accuracy", sampling=lambda g, m: (shared, 60.0))
    assert by_patient["units"] == "patients" and by_image["units"] == "images"
    direct = interval(rows["accuracy"], n_units=60.0, test_var=shared)
    assert by_patient["ci_low"] == direct["ci_low"] and by_patient["ci_high"] == direct["ci_high"]
    assert by_patient["ci_low"] <= by_patient["mean"] <= by_patient["ci_high"]
