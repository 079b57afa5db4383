"""Subgroup metrics: numbers equal scikit-learn on each subgroup's slice, the too-few rule, the worst-group gap's
interval against a reference bootstrap, age bands, and metadata columns carried from a CSV into the manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from featpipe.core.errors import DataError
from featpipe.data.manifest import build_manifest
from featpipe.data.sources import scan_csv
from featpipe.params.config import CsvParams
from featpipe.results.intervals import interval
from featpipe.results.subgroups import (
    TOO_FEW,
    SubgroupSettings,
    age_bands,
    group_labels,
    multilabel_subgroups,
    subgroup_metrics,
)


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sex = rng.choice(["F", "M"], n)
    view = np.where(np.arange(n) < 12, "LAT", rng.choice(["AP", "PA"], n))  # LAT: 12 images, below min_size
    noise = np.where(sex == "F", 0.15, 0.35)  # the model is worse on M
    p = np.clip(0.5 * y + 0.25 + rng.normal(0, 1, n) * noise, 0, 1)
    return y, p, {"sex": sex, "view": view}


def test_numbers_equal_sklearn_on_each_slice():
    y, p, groups = _data()
    tab, _ = subgroup_metrics(y, p, groups, threshold=0.47, settings=SubgroupSettings(("sex", "view"), min_size=20,
                                                                                      n_boot=20))
    scored = tab[tab["status"] == "scored"]
    assert len(scored) == 4  # F, M, AP, PA
    for r in scored.to_dict("records"):
        m = groups[r["attribute"]] == r["group"]
        yy, pp = y[m], p[m]
        yhat = (pp >= 0.47).astype(int)
        assert r["n"] == m.sum() and r["positives"] == yy.sum() and r["prevalence"] == pytest.approx(yy.mean())
        assert r["auroc"] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
        assert r["accuracy"] == pytest.approx(accuracy_score(yy, yhat), abs=1e-12)
        assert r["sensitivity"] == pytest.approx(recall_score(yy, yhat, pos_label=1), abs=1e-12)
        assert r["specificity"] == pytest.approx(recall_score(yy, yhat, pos_label=0), abs=1e-12)
        # proportions: the Agresti-Coull test-sampling interval on the group's (positive / negative) images
        ref = interval([r["sensitivity"]], n_units=float(yy.sum()))
        assert (r["sensitivity_low"], r["sensitivity_high"]) == (ref["test_low"], ref["test_high"])
        assert r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"]


def test_groups_below_the_minimum_are_too_few_and_leave_the_gap_alone():
    y, p, groups = _data()
    tab, gaps = subgroup_metrics(y, p, groups, threshold=0.5, settings=SubgroupSettings(("view",), min_size=20,
                                                                                        n_boot=20))
    lat = tab[tab["group"] == "LAT"].iloc[0]
    assert lat["status"] == TOO_FEW and lat["n"] == 12 and np.isnan(lat["auroc"]) and np.isnan(lat["accuracy"])
    assert "LAT" not in set(gaps["worst_group"]) | set(gaps["best_group"])
    tab2, _ = subgroup_metrics(y, p, groups, threshold=0.5, settings=SubgroupSettings(("view",), min_size=12,
                                                                                          n_boot=20))
    assert tab2[tab2["group"] == "LAT"].iloc[0]["status"] == "scored"
    one = {"view": np.where(groups["view"] == "AP", "AP", "other")}
    _, none = subgroup_metrics(y, p, one, threshold=0.5, settings=SubgroupSettings(("view",), min_size=10_000, n_boot=5))
    assert none.empty  # no scored group: no gap


def test_gap_interval_equals_a_reference_bootstrap():
    y, p, groups = _data(n=200, seed=3)
    units = [f"{i:05d}" for i in range(y.size)]  # one unit per image, sorted as numbered
    settings = SubgroupSettings(("sex",), min_size=20, n_boot=300, seed=7)
    tab, gaps = subgroup_metrics(y, p, groups, threshold=0.5, settings=settings, patients=units)
    g = gaps[(gaps["attribute"] == "sex") & (gaps["metric"] == "auroc")].iloc[0]
    worst, best = g["worst_group"], g["best_group"]
    assert worst == "M" and best == "F"
    sex = groups["sex"]
    rng = np.random.default_rng(7)
    diffs, f_auc = [], []
    for _ in range(300):
        idx = rng.integers(0, y.size, y.size)
        a = {s: roc_auc_score(y[idx][sex[idx] == s], p[idx][sex[idx] == s]) for s in ("F", "M")}
        diffs.append(a[best] - a[worst])
        f_auc.append(a["F"])
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert (g["gap_low"], g["gap_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    f = tab[tab["group"] == "F"].iloc[0]
    assert f["auroc_low"] == pytest.approx(np.quantile(f_auc, 0.025), abs=1e-12)
    assert g["gap"] == pytest.approx(f["auroc"] - tab[tab["group"] == "M"].iloc[0]["auroc"])


def test_gap_interval_covers_the_true_gap_in_a_small_simulation():
    """Two groups whose true accuracies are 0.9 and 0.7 (gap 0.2): the 95% interval covers 0.2 in most studies."""
    hits = 0
    for s in range(40):
        rng = np.random.default_rng(100 + s)
        n = 160
        grp = np.repeat(["a", "b"], n // 2)
        y = rng.integers(0, 2, n)
        correct = rng.random(n) < np.where(grp == "a", 0.9, 0.7)
        p = np.where(correct, y, 1 - y).astype(float) * 0.8 + 0.1
        _, gaps = subgroup_metrics(y, p, {"g": grp}, threshold=0.5,
                                   settings=SubgroupSettings(("g",), min_size=20, n_boot=100, seed=s))
        g = gaps[gaps["metric"] == "accuracy"].iloc[0]
        sign = 1 if g["best_group"] == "a" else -1
        hits += g["gap_low"] <= sign * 0.2 <= g["gap_high"]
    assert hits >= 34  # 95% nominal; 34 of 40 leaves room for simulation noise (P(X < 34) ~ 0.7% at 0.95)


def _multilabel_data(n=240, seed=0):
    """Three labels (unknown cells -1) and a label without a head (NaN); the model is worse on sex M; view LAT holds
    12 images (below min_size); two images per patient."""
    rng = np.random.default_rng(seed)
    Y = rng.integers(0, 2, (n, 4))
    Y[rng.random((n, 4)) < 0.2] = -1
    sex = rng.choice(["F", "M"], n)
    view = np.where(np.arange(n) < 12, "LAT", rng.choice(["AP", "PA"], n))
    noise = np.where(sex == "F", 0.15, 0.35)[:, None]
    P = np.clip(0.5 * (Y == 1) + 0.25 + rng.normal(0, 1, (n, 4)) * noise, 0, 1)
    P[:, 3] = np.nan  # no head for the last label
    patients = [f"{i // 2:05d}" for i in range(n)]
    return Y, P, {"sex": sex, "view": view}, patients


def _reference_macro(Y, P, rows):
    """Per-label AUROC (scikit-learn) on ``rows`` where the label is known, and their mean over the labels scored."""
    per = []
    for j in range(Y.shape[1]):
        y, p = Y[rows, j], P[rows, j]
        k = y >= 0
        per.append(roc_auc_score(y[k], p[k]) if len(np.unique(y[k])) == 2 and np.isfinite(p[k]).all() else np.nan)
    per = np.asarray(per)
    return (per[np.isfinite(per)].mean() if np.isfinite(per).any() else np.nan), per


def test_multilabel_intervals_and_gap_equal_a_reference_patient_bootstrap():
    """Macro and per-label AUROC intervals of each group and the macro-AUROC gap's paired interval equal a bootstrap
    written here over the same resamples (patients drawn with default_rng(seed), both images of a drawn patient);
    the too-few group LAT is listed with no number and takes no part in the gap."""
    Y, P, groups, patients = _multilabel_data()
    labels = ["a", "b", "c", "d"]
    settings = SubgroupSettings(("sex", "view"), min_size=20, n_boot=200, seed=5)
    tab, gaps = multilabel_subgroups(Y, P, labels, groups, settings=settings, patients=patients)
    rng = np.random.default_rng(5)
    boot = {(a, v): [] for a, v in [("sex", "F"), ("sex", "M"), ("view", "AP"), ("view", "PA")]}
    for _ in range(200):
        pick = rng.integers(0, 120, 120)
        idx = np.ravel(np.column_stack([2 * pick, 2 * pick + 1]))
        for a, v in list(boot):
            macro, per = _reference_macro(Y, P, idx[groups[a][idx] == v])
            boot[(a, v)].append(np.r_[macro, per])
    boot = {c: np.asarray(b) for c, b in boot.items()}
    for (a, v), b in boot.items():
        r = tab[(tab["attribute"] == a) & (tab["group"] == v)].iloc[0]
        assert r["status"] == "scored"
        assert r["auroc"] == pytest.approx(_reference_macro(Y, P, np.flatnonzero(groups[a] == v))[0], abs=1e-12)
        for col, values in [("auroc", b[:, 0]), *[(f"auroc[{n}]", b[:, j + 1]) for j, n in enumerate(labels)]]:
            v_ok = values[np.isfinite(values)]
            if not v_ok.size:  # label d: no head, no interval
                assert np.isnan(r[f"{col}_low"]) and np.isnan(r[f"{col}_high"])
                continue
            lo, hi = np.quantile(v_ok, [0.025, 0.975])
            assert (r[f"{col}_low"], r[f"{col}_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    lat = tab[tab["group"] == "LAT"].iloc[0]
    assert lat["status"] == TOO_FEW and lat["n"] == 12 and np.isnan(lat["auroc"]) and np.isnan(lat["auroc_low"])
    assert list(gaps["metric"]) == ["auroc", "auroc"] and list(gaps["attribute"]) == ["sex", "view"]
    for g in gaps.to_dict("records"):
        assert "LAT" not in (g["worst_group"], g["best_group"])
        best, worst = boot[(g["attribute"], g["best_group"])][:, 0], boot[(g["attribute"], g["worst_group"])][:, 0]
        diff = (best - worst)[np.isfinite(best - worst)]
        lo, hi = np.quantile(diff, [0.025, 0.975])
        assert (g["gap_low"], g["gap_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
        rows = tab.set_index(["attribute", "group"])
        assert g["gap"] == pytest.approx(rows.loc[(g["attribute"], g["best_group"]), "auroc"]
                                         - rows.loc[(g["attribute"], g["worst_group"]), "auroc"])
    sex = gaps[gaps["attribute"] == "sex"].iloc[0]
    assert (sex["worst_group"], sex["best_group"]) == ("M", "F") and sex["gap_low"] > 0  # the model is worse on M


def test_age_bands_and_unknowns():
    assert age_bands(["33", "50+", "", "17", "65", "119.5", "130", 40], [0, 18, 40, 65, 120]) == [
        "[18, 40)", "unknown", "unknown", "[0, 18)", "[65, 120)", "[65, 120)", "unknown", "[40, 65)"]
    man = pd.DataFrame({"id": ["a", "b", "c"], "age": ["70", "", "12"], "sex": ["F", "", "M"]})
    got = group_labels(man, ["c", "a", "b"], SubgroupSettings(("sex", "age_band")))
    assert got == {"sex": ["M", "F", "unknown"], "age_band": ["[0, 18)", "[65, 120)", "unknown"]}
    with pytest.raises(DataError, match="no column 'view': list it in data.csv.metadata"):
        group_labels(man, ["a"], SubgroupSettings(("view",)))


def test_csv_metadata_columns_reach_the_manifest(figure1_dir):
    cfg = CsvParams(root=str(figure1_dir / "images"), path_col="patientid", label_col="finding",
                    metadata=("sex", "age", "view"))
    records = scan_csv(figure1_dir / "metadata.csv", cfg)
    man = build_manifest(records, max_pixels=100_000_000, verify=False, workers=1).manifest
    assert list(man.columns[-3:]) == ["sex", "age", "view"]
    row = man[man["id"] == "COVID-00001.jpg"].iloc[0]
    assert (row["sex"], row["age"], row["view"]) == ("M", "33", "AP erect")
    with pytest.raises(DataError, match="no column 'ward' \\(from data.csv.metadata\\)"):
        scan_csv(figure1_dir / "metadata.csv", CsvParams(root=str(figure1_dir / "images"), path_col="patientid",
                                                         label_col="finding", metadata=("ward",)))
