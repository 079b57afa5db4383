"""featpipe compare: paired by seed, exact permutation p, Holm, patient bootstrap from the predictions files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_fit import write_fixture

from featpipe.cli.main import main
from featpipe.results.compare import holm, permutation_p, seed_comparisons


def test_permutation_p_and_holm_hand_made():
    assert permutation_p([0.1, 0.2, 0.05, 0.3, 0.15]) == pytest.approx(2 / 32)  # all positive: the two extreme signings
    assert permutation_p([0.1, -0.1]) == 1.0
    assert permutation_p([0.3, 0.2, -0.01, 0.25, 0.1]) == pytest.approx(4 / 32)
    # Holm: sorted p * (m - rank), running max, capped at 1
    assert holm([0.01, 0.04, 0.03, float("nan")]).round(6)[:3].tolist() == [0.03, 0.06, 0.06]
    assert np.isnan(holm([0.01, float("nan")])[1])


def test_seed_comparisons_are_paired_by_seed():
    rows = []
    for seed in range(5):
        for head, base in (("a", 0.8), ("b", 0.7)):
            # seed effects are shared (the same k-shot subset): paired differences are exactly 0.1
            rows.append({"dataset": "d", "backbone": "bb", "weights": "default", "weights_id": "w", "layer": "",
                         "head": head, "head_params": "{}", "shots": 5, "seed": seed, "split_sha256": "s",
                         "auroc": base + 0.05 * seed, "degenerate": False})
    rows.append(rows[0] | {"seed": 9, "head": "a"})  # a seed only A has: not paired
    out = seed_comparisons(pd.DataFrame(rows), metrics=["auroc"])
    assert list(out.columns[:10]) == ["shots", "config_a", "config_b", "metric", "n_seeds", "mean_diff", "ci_low",
                                      "ci_high", "p_value", "p_holm"]
    r = out.iloc[0]
    assert (r["config_a"], r["config_b"], r["n_seeds"]) == ("bb/a", "bb/b", 5)
    assert r["mean_diff"] == pytest.approx(0.1) and r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
    assert r["p_value"] == pytest.approx(1 / 16) and r["p_holm"] == pytest.approx(1 / 16)


def test_compare_cli_writes_comparisons_with_a_patient_bootstrap(tmp_path, capsys):
    write_fixture(tmp_path, seeds=(0, 1, 2, 3, 4), shots=(2, 5))
    (tmp_path / "p.yaml").write_text("fit: {n_jobs: 1}\ncompare: {bootstrap: 200, metrics: [auroc]}\n"
                                     "report: {metric: auroc}\n")
    base = ["--splits", str(tmp_path / "data/splits.json"), "--params", str(tmp_path / "p.yaml")]
    for head in ("logistic", "prototype", "svc"):
        assert main(["sweep", *base, "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "results"),
                     "--models", str(tmp_path / "models"), "--backbones", "toy", "--heads", head]) == 0
    capsys.readouterr()
    assert main(["compare", *base, "--results", str(tmp_path / "results"),
                 "--manifest", str(tmp_path / "data/manifest.csv")]) == 0
    assert "paired comparisons" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "results/comparisons.csv")
    assert len(table) == 2 * 3  # 2 shot counts x 3 pairs
    assert (table["n_seeds"] == 5).all() and table["p_holm"].ge(table["p_value"]).all()
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    for r in table.to_dict("records"):  # mean_diff is the mean of the per-seed test differences
        a = runs[(runs["head"] == r["config_a"].split("/")[-1]) & (runs["shots"] == r["shots"])].sort_values("seed")
        b = runs[(runs["head"] == r["config_b"].split("/")[-1]) & (runs["shots"] == r["shots"])].sort_values("seed")
        assert r["mean_diff"] == pytest.approx((a["auroc"].to_numpy() - b["auroc"].to_numpy()).mean(), abs=1e-6)
    boot = table.dropna(subset=["boot_ci_low"])
    assert len(boot) == 2  # per shot count: the val-chosen configuration vs the runner-up on val
    assert ((boot["boot_ci_low"] <= boot["mean_diff"] + 1e-9) & (boot["mean_diff"] <= boot["boot_ci_high"] + 1e-9)).all()
