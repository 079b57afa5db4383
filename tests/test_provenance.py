"""Numbers that cannot mislead: results tied to their split, predictions kept, val metrics and selection,
degenerate runs flagged, the pool scaler, bounded intervals, the stricter clinical flag."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from test_fit import fit_cli, write_cache, write_fixture

from featpipe.params.config import ClinicalParams, load_params
from featpipe.evaluation.metrics import SCALAR_METRICS, degenerate
from featpipe.results.stats import clinical_check, summarize


@pytest.fixture
def project(tmp_path):
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n")
    write_fixture(tmp_path, seeds=(0, 1, 2, 3, 4))
    return tmp_path


def test_rows_of_an_old_split_are_set_aside_never_pooled(project, capsys):
    assert fit_cli(project, "--head", "logistic", "--shots", "5") == 0
    splits = json.loads((project / "data/splits.json").read_text())
    old_sha = pd.read_csv(project / "results/runs.csv")["split_sha256"].iloc[0]
    # another split: re-drawn k-shot subsets (what re-running prepare with other split params gives)
    for s in splits["fewshot"]:
        for k in splits["fewshot"][s]:
            splits["fewshot"][s][k] = sorted(splits["fewshot"][s][k][::-1])
    splits["params"] = {"seed": 1}
    (project / "data/splits.json").write_text(json.dumps(splits))
    capsys.readouterr()
    assert fit_cli(project, "--head", "logistic", "--shots", "5", "--seeds", "0", "1") == 0
    out = capsys.readouterr().out
    table = pd.read_csv(project / "results/runs.csv")
    assert len(table) == 7 and table["split_sha256"].nunique() == 2  # the old rows are kept, not replaced
    summary = json.loads((project / "results/summary.json").read_text())
    entry = summary["toyset/toy+random/logistic/k5"]
    assert entry["n_seeds"] == 2 and entry["accuracy"]["n"] == 2  # not 5, not pooled
    new = table[table["split_sha256"] != old_sha]
    assert entry["accuracy"]["mean"] == pytest.approx(new["accuracy"].mean())
    assert summary["_provenance"]["set_aside"] == 5 and summary["_provenance"]["runs"] == 2
    assert "5 run(s) of another split set aside" in out
    assert re.search(r"toyset/toy\+random/logistic/k5 +2  ", out)  # its summary row: 2 seeds


def test_predictions_files_hold_every_val_and_test_image_and_reproduce_the_row(project):
    import featpipe
    from featpipe.evaluation.table import prediction_files, read_predictions

    assert fit_cli(project, "--head", "svc", "--shots", "10", "--seeds", "0", "1") == 0
    table = pd.read_csv(project / "results/runs.csv", dtype={"run_id": str})
    files = prediction_files(project / "results")
    assert set(files) == set(table["run_id"]) and len(set(files.values())) == 1  # one run log for the command
    for row in table.to_dict("records"):
        pred = read_predictions(project / "results", [row["run_id"]])
        assert list(pred.columns) == ["run_id", "split", "id", "label", "p[normal]", "p[pneumonia]", "threshold"]
        test, val = pred[pred["split"] == "test"], pred[pred["split"] == "val"]
        assert len(test) == row["n_test"] == 60 and len(val) == row["n_val"] == 30
        assert np.allclose(test[["p[normal]", "p[pneumonia]"]].sum(axis=1), 1.0)
        assert skm.roc_auc_score(test["label"], test["p[pneumonia]"]) == pytest.approx(row["auroc"], abs=1e-6)
        pred_lab = (test["p[pneumonia]"] >= row["threshold"]).astype(int)
        assert skm.accuracy_score(test["label"], pred_lab) == pytest.approx(row["accuracy"], abs=1e-6)
        # val_<metric> for every test metric, scored on the val rows at the same threshold
        for m in SCALAR_METRICS:
            if m != "threshold":
                assert f"val_{m}" in row, m
        assert skm.roc_auc_score(val["label"], val["p[pneumonia]"]) == pytest.approx(row["val_auroc"], abs=1e-6)
        vlab = (val["p[pneumonia]"] >= row["threshold"]).astype(int)
        assert skm.balanced_accuracy_score(val["label"], vlab) == pytest.approx(row["val_balanced_accuracy"], abs=1e-6)
    # the public API reads them too (documented)
    assert len(featpipe.read_predictions(project / "results", table["run_id"][:1])) == 90


def test_best_configuration_is_chosen_on_val_not_test():
    from featpipe.results.summary import select_best, summarize_runs

    rows = []
    for seed in range(5):
        # A: better on test, worse on val; B: better on val. C: best on val but has a degenerate run.
        for head, test, val, degen in (("a", 0.9, 0.6, False), ("b", 0.7, 0.8, False), ("c", 0.5, 0.95, seed == 3)):
            rows.append({"dataset": "d", "backbone": "bb", "weights": "default", "weights_id": "w", "layer": "",
                         "head": head, "head_params": "{}", "shots": 5, "seed": seed, "split_sha256": "s",
                         "macro_f1": test + 0.01 * seed, "val_macro_f1": val + 0.01 * seed, "accuracy": test,
                         "degenerate": degen, "n_classes": 2})
    summary = summarize_runs(pd.DataFrame(rows), clinical=ClinicalParams(), split_sha256="s", select_metric="macro_f1")
    assert select_best(summary, "macro_f1") == {5: "d/bb/b/k5"}
    assert summary["d/bb/b/k5"]["chosen_on_val"] and not summary["d/bb/a/k5"]["chosen_on_val"]
    assert summary["d/bb/c/k5"]["n_degenerate"] == 1  # never best, whatever its val score


def test_intervals_of_bounded_metrics_stay_in_0_1():
    # the published examples: t over 5 seeds gave AUROC [0.679, 1.001] and specificity [-0.331, 0.756]
    auroc = [1.0, 0.97, 0.72, 0.93, 1.0]
    spec = [0.0, 0.9, 0.05, 0.1, 0.07]
    from scipy import stats

    t = stats.t.ppf(0.975, 4)
    assert np.mean(auroc) + t * np.std(auroc, ddof=1) / math.sqrt(5) > 1.0  # the plain t-interval leaves [0, 1]
    for values in (auroc, spec, [1.0] * 5, [0.0, 0.0, 0.5], [0.99, 1.0]):
        s = summarize(values)
        assert 0.0 <= s["ci_low"] <= s["ci_high"] <= 1.0, (values, s)
    assert summarize([1.0] * 5)["ci_low"] == 1.0  # no spread and no test size given: no width
    assert summarize([1.0] * 5, n_units=468)["ci_low"] < 1.0  # a finite test set: never zero width
    assert summarize([0.3, 1.4, 0.9], bounds=(0.0, 2.0))["ci_high"] <= 2.0  # multi-class Brier
    s = summarize([-0.2, 0.1, 0.05], bounds=None)  # paired differences: plain t, may be negative
    assert s["ci_low"] < 0


def test_degenerate_scores_are_flagged():
    tied = np.r_[np.full(80, 0.5), np.linspace(0.1, 0.9, 20)]
    assert "tied" in degenerate(tied, n_classes=2, threshold=0.5)
    one_class = np.linspace(0.6, 0.9, 100)
    assert "one class" in degenerate(one_class, n_classes=2, threshold=0.5)
    fine = np.linspace(0.05, 0.95, 100)
    assert degenerate(fine, n_classes=2, threshold=0.5) == ""


def _k1_fixture(root: Path) -> None:
    """Two k=1 training images that agree on most features (up to 1e-3): a scaler fitted on them blows those up."""
    rng = np.random.default_rng(0)
    D, n = 64, 200
    y = np.arange(n) % 2
    X = rng.normal(size=(n, D)) + np.outer(2 * y - 1, np.r_[1.5, np.zeros(D - 1)])
    ids = [f"{p}/{i}" for p, m in (("train", 120), ("val", 40), ("test", 40)) for i in range(m)]
    X[1, 2:] = X[0, 2:] + 1e-3 * rng.normal(size=D - 2)  # train/0 (class 0) and train/1 (class 1): the 1-shot set
    splits = {"format": 1, "dataset": "toyset", "classes": ["normal", "pneumonia"], "manifest_sha256": "m" * 64,
              "params": {}, "train": ids[:120], "val": ids[120:160], "test": ids[160:],
              "fewshot": {"0": {"1": ["train/0", "train/1"]}}, "capped": {}, "excluded": []}
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "splits.json").write_text(json.dumps(splits))
    write_cache(root / "cache" / "toyset" / "toy.h5", ids, X, y)


@pytest.mark.parametrize("scaler, flagged", [("kshot", True), ("pool", False)])
def test_k1_rbf_svc_is_flagged_with_a_kshot_scaler_and_fixed_by_the_pool_scaler(tmp_path, capsys, scaler, flagged):
    _k1_fixture(tmp_path)
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n")
    assert fit_cli(tmp_path, "--head", "svc", "--shots", "1", "--seeds", "0", "-S", f"heads.scaler={scaler}") == 0
    out = capsys.readouterr().out
    row = pd.read_csv(tmp_path / "results/runs.csv").iloc[0]
    assert bool(row["degenerate"]) is flagged
    assert ("is degenerate" in out) is flagged
    if flagged:
        assert "tied" in row["degenerate_reason"]
        summary = json.loads((tmp_path / "results/summary.json").read_text())
        assert summary["toyset/toy+random/svc/k1"]["n_degenerate"] == 1 and not summary["toyset/toy+random/svc/k1"]["chosen_on_val"]
    else:
        assert row["auroc"] > 0.75


def test_pool_scaler_is_fitted_on_the_train_split_without_labels(project):
    from featpipe.results.stages import fit
    from featpipe.heads.io import load_head

    fx = write_fixture(project, seeds=(0,))
    train = [i for i, k in enumerate(fx["ids"]) if k.startswith("train/")]
    for scaler in ("pool", "center", "none", "kshot"):
        params = load_params(None, ["fit.n_jobs=1", f"heads.scaler={scaler}"])
        (run,), _ = fit(project / "data/splits.json", head="prototype", shots=2, seeds=[0], params=params, backbone="toy",
                        cache_dir=project / "cache", results_dir=project / "results", models_dir=project / "models")
        head = load_head(run.row["model_path"])
        step = head.pipeline.steps[0][1]
        assert json.loads(run.row["head_params"])["scaler"] == scaler
        if scaler == "none":
            assert step == "passthrough"
        elif scaler == "kshot":
            k = [fx["ids"].index(i) for i in head.meta["train_ids"]]
            assert len(k) == 4 and np.allclose(step.mean_, fx["X"][k].mean(0), atol=1e-5)
        else:
            assert np.allclose(step.mean_, fx["X"][train].mean(0), atol=1e-5)  # 40 unlabelled train rows
            if scaler == "pool":
                assert np.allclose(step.scale_, fx["X"][train].std(0), rtol=1e-4)
            else:
                assert step.scale_ is None  # centring only (CL2N with the prototype's cosine)
            assert run.row["scaler_ids_sha256"]
    # four scalers -> four configurations (head_params differ), none replaced another
    assert len(pd.read_csv(project / "results/runs.csv")) == 4


def test_stricter_clinical_flag_names_each_failed_condition():
    c = ClinicalParams()
    two_seeds = {"n_seeds": 2, "accuracy": summarize([0.86, 0.99]), "auroc": summarize([0.97, 0.99]),
                 "sensitivity": {"mean": 0.95}, "specificity": {"mean": 0.9}}
    failed = clinical_check(two_seeds, n_classes=2, params=c)
    assert any("2 seeds" in f for f in failed) and any("accuracy interval lower bound" in f for f in failed)
    good = {"n_seeds": 5, "accuracy": summarize([0.95, 0.96, 0.95, 0.97, 0.96]),
            "auroc": summarize([0.98, 0.99, 0.985, 0.99, 0.98]), "sensitivity": {"mean": 0.95}, "specificity": {"mean": 0.93}}
    assert clinical_check(good, n_classes=2, params=c) == []
    assert clinical_check(good, n_classes=2, params=c, chosen_on_val=False) == ["not the configuration chosen on val"]
    low_spec = good | {"specificity": {"mean": 0.6}}
    assert clinical_check(low_spec, n_classes=2, params=c) == ["mean specificity 0.600 < 0.80"]
