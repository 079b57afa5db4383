"""featpipe compare: paired by seed, exact permutation p, Holm, patient bootstrap from the predictions files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_fit import write_fixture

from featpipe.cli.main import main
from featpipe.results.compare import holm, permutation_p, seed_comparisons, smallest_p, verdict


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
    out = capsys.readouterr().out
    assert "paired comparisons" in out
    table = pd.read_csv(tmp_path / "results/comparisons.csv")
    listed = [ln for ln in out.splitlines() if ln.startswith("  k=")]
    assert len(listed) == (table["p_holm"] < 0.05).sum()  # the significant ones only; --verbose lists them all
    assert main(["compare", *base, "--results", str(tmp_path / "results"), "--verbose",
                 "--manifest", str(tmp_path / "data/manifest.csv")]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  k=")]) == len(table) == 4
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    # the family the report states: per shot count, the configuration chosen on val against each other one
    assert len(table) == 2 * 2 and (table["family"] == 2).all()
    for k, g in table.groupby("shots"):
        val = runs[runs["shots"] == k].groupby("head")["val_auroc"].mean()
        assert set(g["config_a"]) == {f"toy+random/{val.idxmax()}"}  # label: backbone+weights/head
    assert (table["n_seeds"] == 5).all() and table["p_holm"].ge(table["p_value"]).all()
    assert np.allclose(table["min_p_holm"], 2 * 2 / 2 ** 5)
    # the headline interval adds the test-sampling part to the seed interval: never narrower
    assert ((table["ci_low"] <= table["seed_ci_low"] + 1e-12) & (table["ci_high"] >= table["seed_ci_high"] - 1e-12)).all()
    assert ((table["ci_high"] - table["ci_low"]) > (table["seed_ci_high"] - table["seed_ci_low"]) + 1e-6).any()
    for r in table.to_dict("records"):  # mean_diff is the mean of the per-seed test differences
        a = runs[(runs["head"] == r["config_a"].split("/")[-1]) & (runs["shots"] == r["shots"])].sort_values("seed")
        b = runs[(runs["head"] == r["config_b"].split("/")[-1]) & (runs["shots"] == r["shots"])].sort_values("seed")
        assert r["mean_diff"] == pytest.approx((a["auroc"].to_numpy() - b["auroc"].to_numpy()).mean(), abs=1e-6)
    boot = table.dropna(subset=["boot_ci_low"])
    assert len(boot) == 2  # per shot count: the val-chosen configuration vs the runner-up on val
    assert ((boot["boot_ci_low"] <= boot["mean_diff"] + 1e-9) & (boot["mean_diff"] <= boot["boot_ci_high"] + 1e-9)).all()


def test_holm_matches_statsmodels_and_monte_carlo_p_is_never_zero():
    from statsmodels.stats.multitest import multipletests
    p = np.array([0.001, 0.04, 0.03, 0.2, 0.011])
    assert np.allclose(holm(p), multipletests(p, method="holm")[1])
    d = np.full(20, 0.1)  # 20 seeds, all better: no random flip is as extreme except the all-plus/all-minus ones
    assert permutation_p(d, n_random=999) == 1 / 1000 and permutation_p(d) == 1 / 10_001
    assert smallest_p(5) == 2 / 32 and smallest_p(20, n_random=999) == 1 / 1000


def _rows(n_configs: int, seeds: int, gap: float) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        for j in range(n_configs):
            rows.append({"dataset": "d", "backbone": "bb", "weights": "default", "weights_id": "w", "layer": "",
                         "head": f"h{j}", "head_params": "{}", "shots": 5, "seed": seed, "split_sha256": "s",
                         "macro_f1": 0.6 - gap * (j > 0) + 0.01 * ((seed * 7 + j) % 5), "val_macro_f1": 0.7 - 0.1 * j,
                         "degenerate": False})
    return pd.DataFrame(rows)


def test_family_is_the_chosen_configuration_against_each_other_and_small_families_can_reject():
    runs = _rows(4, 10, 0.2)  # h0 chosen on val; 0.20 better on all 10 seeds
    t = seed_comparisons(runs, metrics=["macro_f1"], chosen={5: "bb/h0"})
    assert len(t) == 3 and set(t["config_a"]) == {"bb/h0"} and (t["family"] == 3).all()
    assert np.allclose(t["p_value"], 2 / 2 ** 10) and np.allclose(t["p_holm"], 3 * 2 / 2 ** 10)
    assert all(verdict(r).startswith("A better") for r in t.to_dict("records"))
    # every pair of 4 configurations is a family of 6 at each k; with 5 seeds nothing can reach 0.05 in it
    t5 = seed_comparisons(_rows(4, 5, 0.2), metrics=["macro_f1"])
    assert len(t5) == 6 and (t5["min_p_holm"] == min(1.0, 6 * 2 / 32)).all()
    assert all(verdict(r).startswith("cannot be significant with 5 seeds") for r in t5.to_dict("records"))


def _zs_rows(trained, zeroshot, *, shots=5):
    """runs of a trained head 'bb/lr' at ``shots`` (one value per seed) and a zero-shot 'bb/zeroshot' (k = 0, one
    value per prompt set)."""
    base = {"dataset": "d", "backbone": "bb", "weights": "default", "weights_id": "w", "layer": "", "head_params": "{}",
            "split_sha256": "s", "degenerate": False}
    rows = [base | {"head": "lr", "shots": shots, "seed": i, "auroc": v, "val_auroc": v} for i, v in enumerate(trained)]
    rows += [base | {"head": "zeroshot", "shots": 0, "seed": i, "auroc": v, "val_auroc": v}
             for i, v in enumerate(zeroshot)]
    return pd.DataFrame(rows)


def test_zeroshot_is_compared_with_trained_heads_unpaired():
    from itertools import combinations

    from scipy import stats

    from featpipe.results.unpaired import PAIRING, smallest_p as unpaired_smallest_p

    trained, zero = [0.81, 0.86, 0.78, 0.90, 0.84], [0.70, 0.74, 0.66]
    t = seed_comparisons(_zs_rows(trained, zero), metrics=["auroc"], chosen={5: "bb/lr", 0: "bb/zeroshot"})
    r = t[t["pairing"] == PAIRING].iloc[0]
    assert (r["shots"], r["config_a"], r["config_b"], r["n_seeds"], r["n_b"]) == (5, "bb/lr", "bb/zeroshot", 5, 3)
    assert r["mean_diff"] == pytest.approx(np.mean(trained) - np.mean(zero))
    # Welch's interval, as scipy computes it
    ci = stats.ttest_ind(trained, zero, equal_var=False).confidence_interval(0.95)
    assert (r["seed_ci_low"], r["seed_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # exact two-sample permutation p over the 56 splits of the 8 runs, by hand
    pooled, obs = np.r_[trained, zero], abs(np.mean(trained) - np.mean(zero))
    diffs = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean()) for c in combinations(range(8), 5)]
    assert r["p_value"] == pytest.approx(np.mean(np.array(diffs) >= obs - 1e-12)) == pytest.approx(1 / 56)
    assert r["min_p_holm"] == pytest.approx(1 / 56) and unpaired_smallest_p(3, 3) == pytest.approx(2 / 20)
    # never paired by index: prompt set i is not seed i, so renumbering the prompt sets changes nothing
    again = seed_comparisons(_zs_rows(trained, zero[::-1]), metrics=["auroc"], chosen={5: "bb/lr", 0: "bb/zeroshot"})
    cols = ["mean_diff", "seed_ci_low", "seed_ci_high", "p_value"]
    assert np.allclose(again[again["pairing"] == PAIRING][cols].to_numpy(float), t[t["pairing"] == PAIRING][cols].to_numpy(float))
    assert (t.loc[t["pairing"] != PAIRING, "pairing"] == "seeds").all()
    # one prompt set: its interval is conditional on it (Welch with the trained side's variance only)
    one = seed_comparisons(_zs_rows(trained, [0.7]), metrics=["auroc"], chosen={5: "bb/lr", 0: "bb/zeroshot"}).iloc[0]
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(trained) - 0.7, scale=np.std(trained, ddof=1) / np.sqrt(5))
    assert (one["seed_ci_low"], one["seed_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["ci_low"] > 0 and verdict(r) == "A better (Holm p = 0.0179)"  # 1/56, the interval excludes 0
    few = seed_comparisons(_zs_rows(trained[:2], zero[:2]), metrics=["auroc"], chosen={5: "bb/lr", 0: "bb/zeroshot"})
    assert verdict(few[few["pairing"] == PAIRING].iloc[0]).startswith("cannot be significant with 2 seeds against "
                                                                      "2 prompt sets (smallest attainable Holm p 0.33")
