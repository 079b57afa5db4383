"""Calibration: ECE against a hand computation, temperature scaling (lower val NLL, same ranks), and
`heads.calibrate: temperature` through `featpipe fit` (recorded in the row, Brier/ECE then reported)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from conftest import fit_tiny_project
from featpipe.cli.main import main
from featpipe.data.manifest import read_manifest
from featpipe.evaluation.calibration import apply_temperature, ece, ece_terms, fit_temperature, nll, reliability
from featpipe.evaluation.table import read_predictions
from featpipe.features.cache import read_features
from featpipe.heads.io import load_head
from featpipe.results.ece_interval import ece_interval
from featpipe.results.predictions import TestPredictions
from test_fit import fit_cli, write_fixture


def test_ece_equals_a_hand_computation():
    # binary p(class 1); confidence = max(p, 1 - p): 0.9, 0.9, 0.6, 0.7, 0.95; bin = ceil(confidence * 15) - 1
    p1 = np.array([0.9, 0.1, 0.6, 0.3, 0.95])
    y = np.array([1, 1, 0, 0, 1])
    # confidence (max prob), prediction (arg-max), correct:
    # 0.9 -> 1 ok; 0.9 -> 0 wrong; 0.6 -> 1 wrong; 0.7 -> 0 ok; 0.95 -> 1 ok
    # 15 bins: 0.9 -> bin 13 (0.8667, 0.9333]; 0.6 -> bin 8 (0.5333, 0.6]; 0.7 -> bin 10 (0.6667, 0.7333];
    # 0.95 -> bin 14 (0.9333, 1]
    # bin 13: 2 images, acc 0.5, conf 0.9 -> |0.5 - 0.9| * 2/5 = 0.16
    # bin 8: 1 image, acc 0, conf 0.6 -> 0.6 / 5 = 0.12;  bin 10: acc 1, conf 0.7 -> 0.3 / 5 = 0.06
    # bin 14: acc 1, conf 0.95 -> 0.05 / 5 = 0.01
    assert ece(y, p1) == pytest.approx(0.16 + 0.12 + 0.06 + 0.01, abs=1e-12)
    r = reliability(y, np.column_stack([1 - p1, p1]))
    assert r["count"].sum() == 5 and r["count"][13] == 2 and r["accuracy"][13] == 0.5
    assert len(r["edges"]) == 16 and np.isnan(r["accuracy"][0])
    assert ece(y, np.column_stack([1 - y, y]).astype(float)) == 0.0  # certain and right: perfectly calibrated


@pytest.mark.parametrize("n_classes", [2, 3])
def test_temperature_lowers_val_nll_and_never_changes_ranks(n_classes):
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, 200)
    logits = rng.normal(size=(200, n_classes)) + 1.5 * np.eye(n_classes)[y]
    over = np.exp(6 * logits) / np.exp(6 * logits).sum(1, keepdims=True)  # over-confident scores
    t = fit_temperature(y, over)
    cal = apply_temperature(over, t)
    assert t > 1.5  # softens an over-confident model
    assert nll(y, cal) < nll(y, over) - 0.1
    assert ece(y, cal) < ece(y, over)
    assert np.array_equal(cal.argmax(1), over.argmax(1))
    if n_classes == 2:  # every image keeps its rank: AUROC / AUPRC unchanged
        assert np.array_equal(rankdata(cal[:, 1]), rankdata(over[:, 1]))
    np.testing.assert_allclose(cal.sum(1), 1.0)


def test_fit_with_temperature_scaling_records_it_and_keeps_the_ranking(tmp_path):
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n  bootstrap: 0\n")
    write_fixture(tmp_path)
    assert fit_cli(tmp_path, "--head", "svc", "--shots", "10", "--seeds", "0") == 0
    assert fit_cli(tmp_path, "--head", "svc", "--shots", "10", "--seeds", "0", "-S", "heads.calibrate=temperature") == 0
    runs = pd.read_csv(tmp_path / "results/runs.csv").set_index("calibration")
    assert len(runs) == 2  # the calibrated configuration is its own row (calibrate is in head_params)
    plain, cal = runs.loc["none"], runs.loc["temperature"]
    assert np.isnan(plain["temperature"]) and not plain["calibrated"] and np.isnan(plain["ece"])
    assert np.isfinite(cal["temperature"]) and cal["calibrated"] and 0 <= cal["ece"] <= 1 and np.isfinite(cal["brier"])
    assert json.loads(cal["head_params"])["calibrate"] == "temperature"
    for m in ("auroc", "auprc", "accuracy", "sensitivity", "specificity"):  # ranks and val threshold move together
        assert cal[m] == pytest.approx(plain[m]), m
    meta = json.loads(pd.Series([cal["model_path"]]).map(lambda p: open(p[:-6] + ".json").read())[0])
    assert meta["temperature"] == pytest.approx(cal["temperature"])


def with_counts(root, fx) -> dict:
    """The fixture's splits.json plus the counts `featpipe prepare` writes (the report's data section shows them)."""
    splits = fx["splits"]
    label = dict(zip(fx["ids"], fx["y"]))
    splits["counts"] = {p: {c: int(sum(label[i] == j for i in splits[p])) for j, c in enumerate(splits["classes"])}
                        for p in ("train", "val", "test")}
    splits["patients"] = {p: len(splits[p]) for p in ("train", "val", "test")}
    (root / "data/splits.json").write_text(json.dumps(splits))
    return fx


def test_report_has_the_calibration_section_and_a_reliability_diagram(tmp_path):
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n  bootstrap: 0\n")
    with_counts(tmp_path, write_fixture(tmp_path))
    for head in ("logistic", "svc"):
        for k in ("2", "5"):
            assert fit_cli(tmp_path, "--head", head, "--shots", k, "--seeds", "0", "1") == 0
    assert fit_cli(tmp_path, "--head", "svc", "--shots", "5", "--seeds", "0", "1", "-S", "heads.calibrate=temperature") == 0
    out = tmp_path / "reports/report.html"
    assert main(["report", "--manifest", str(tmp_path / "data/manifest.csv"), "--splits", str(tmp_path / "data/splits.json"),
                 "--results", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "--params", str(tmp_path / "none.yaml")]) == 0
    html = out.read_text()
    section = html.split("<h2>Calibration</h2>", 1)[1].split("</section>", 1)[0]
    assert "15 equal-width confidence bins" in section and "reliability diagrams at 5 shots" in section
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    logistic5 = runs[(runs["head"] == "logistic") & (runs["shots"] == 5)]
    assert f"{logistic5['ece'].mean():.3f}" in section  # the table shows the runs' mean ECE ...
    preds = TestPredictions(tmp_path / "results", pd.DataFrame({"id": [], "patient_id": []}), ["normal", "pneumonia"])
    iv = ece_interval(preds, logistic5["run_id"].astype(str).tolist())
    assert iv["ci_low"] < iv["ci_high"] and f"[{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]" in section  # ... its interval
    assert "95% percentile bootstrap of the mean test ECE over seeds" in section
    assert section.count("<tr>") == 1 + 3  # header + logistic k2, logistic k5, temperature-scaled svc k5
    assert "temperature" in section and (tmp_path / "reports/plots/reliability.png").is_file()
    assert "Shots count <b>images</b>" in html  # the report states the shot unit (split.shot_unit)


def test_predict_applies_the_saved_heads_temperature(tmp_path, monkeypatch, capsys):
    """prepare -> extract (tiny_cnn) -> fit svc with heads.calibrate=temperature -> predict on the test images:
    the probabilities are the head's own, tempered by the T fitted on val and saved beside it."""
    fit_tiny_project(tmp_path, monkeypatch)
    assert main(["fit", "--head", "svc", "--shots", "5", "--seeds", "0", "-S", "heads.calibrate=temperature"]) == 0
    model = next(Path("models").glob("tiny_cnn-svc-k5-s0-*.skops"))
    head = load_head(model)
    t = head.meta["temperature"]
    row = pd.read_csv("results/runs.csv").query("head == 'svc'").iloc[0]
    assert t == pytest.approx(row["temperature"]) and abs(t - 1.0) > 0.05  # a temperature that changes the scores
    ids = json.loads(Path("data/splits.json").read_text())["test"]
    manifest = read_manifest("data/manifest.csv").set_index("id")
    assert main(["predict", "--model", str(model), "--out", "pred.csv", *manifest.loc[ids, "path"]]) == 0
    pred = pd.read_csv("pred.csv")
    raw = head.pipeline.predict_proba(read_features(next(Path("cache/demo").glob("tiny_cnn*.h5"))).select(ids).features)
    cols = [f"p[{c}]" for c in head.meta["classes"]]
    np.testing.assert_allclose(pred[cols].to_numpy(), apply_temperature(raw, t), atol=1e-5)
    assert np.abs(pred[cols].to_numpy() - raw).max() > 1e-3  # ... not the untempered scores


def test_ece_terms_give_the_ece_of_any_resample():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 80)
    p = rng.dirichlet(np.ones(3), 80)
    b, t = ece_terms(y, p)
    for idx in (np.arange(80), rng.integers(0, 80, 80), np.array([5, 5, 7])):
        fast = np.abs(np.bincount(b[idx], weights=t[idx], minlength=15)).sum() / idx.size
        assert fast == pytest.approx(ece(y[idx], p[idx]), abs=1e-12)


def test_metrics_json_gives_the_chosen_heads_ece_with_a_bootstrap_interval(tmp_path):
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n  bootstrap: 0\n")
    write_fixture(tmp_path)
    assert fit_cli(tmp_path, "--head", "logistic", "--shots", "5", "--seeds", "0", "1", "2") == 0
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    head = json.loads((tmp_path / "results/metrics.json").read_text())
    got = head["k5"]["ece"]
    assert got["mean"] == pytest.approx(runs["ece"].mean(), abs=1e-12)  # the runs' own ECEs
    assert got["ci_low"] < got["mean"] < got["ci_high"] <= 1 and got["seeds"] == 3
    assert head["ece_interval"]["units"] == "images"  # the method once for the file, not once per shot count
    assert "seeds and test images resampled with replacement, 1000 draws" in head["ece_interval"]["method"]
    # by hand: the same two-level bootstrap (seeds and test images), the same generators
    preds = read_predictions(tmp_path / "results", runs["run_id"].astype(str))
    preds = preds[preds["split"] == "test"]
    per_run = [g.sort_values("id") for _, g in preds.groupby("run_id", sort=False)]
    order = {r: i for i, r in enumerate(runs["run_id"].astype(str))}
    per_run.sort(key=lambda g: order[str(g["run_id"].iloc[0])])
    ys = [g["label"].to_numpy(int) for g in per_run]
    ps = [g[["p[normal]", "p[pneumonia]"]].to_numpy(float) for g in per_run]
    n, draws, pick_rng, idx_rng = len(ys[0]), [], np.random.default_rng(1), np.random.default_rng(0)
    for _ in range(1000):
        idx = idx_rng.integers(0, n, n)  # metrics.json has no manifest: each test image is its own unit
        pick = pick_rng.integers(0, 3, 3)
        draws.append(np.mean([ece(ys[i][idx], ps[i][idx]) for i in pick]))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))
