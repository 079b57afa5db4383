"""The degenerate flag: judged on val only, relative to val's class shares; ties across classes, not saturation."""

from __future__ import annotations

import numpy as np

from featpipe.evaluation.metrics import degenerate
from featpipe.evaluation.record import Outputs, record_run

KEY = {"dataset": "d", "backbone": "b", "weights": "w", "weights_id": "w", "layer": "", "head": "h",
       "head_params": "{}", "shots": 5, "seed": 0, "split_sha256": "s"}


def test_a_perfect_run_at_low_prevalence_is_not_flagged_and_a_constant_one_is():
    y = np.r_[np.ones(30, int), np.zeros(970, int)]  # 3% positives
    perfect = np.r_[np.linspace(0.8, 0.9, 30), np.linspace(0.05, 0.3, 970)]
    assert degenerate(perfect, n_classes=2, threshold=0.5, labels=y) == ""
    assert "one class" in degenerate(perfect, n_classes=2, threshold=0.5)  # blind to the class shares: flagged
    constant_ish = np.linspace(0.01, 0.2, 1000)  # every image below the threshold
    assert "class 0 predicted for 100%" in degenerate(constant_ish, n_classes=2, threshold=0.5, labels=y)


def test_saturated_probabilities_of_a_perfect_run_are_not_ties():
    y = np.r_[np.ones(60, int), np.zeros(40, int)]
    p = np.where(y == 1, 1.0, np.linspace(0.0, 0.3, 100))  # 60% of scores exactly 1.0, all positives
    assert degenerate(p, n_classes=2, threshold=0.5, labels=y) == ""
    mixed = np.r_[np.full(70, 0.5), np.linspace(0.1, 0.9, 30)]  # an underflowed kernel: one value, both classes
    assert "tied across classes" in degenerate(mixed, n_classes=2, threshold=0.5,
                                               labels=np.arange(100) % 2)
    noisy = np.full(100, 0.5) + np.arange(100) * 1e-13  # differences below numerical noise are ties
    assert "tied" in degenerate(noisy, n_classes=2, threshold=0.5, labels=np.arange(100) % 2)


def test_the_flag_never_reads_test_outputs():
    rng = np.random.default_rng(0)
    yv = np.arange(40) % 2
    pv = np.clip(0.3 + 0.4 * yv + 0.1 * rng.normal(size=40), 0, 1)
    yt = np.arange(60) % 2
    outs = []
    for test_p in (np.full(60, 0.99), np.clip(0.3 + 0.4 * yt, 0, 1), np.zeros(60)):  # one class, fine, one class
        for labels in (yt, 1 - yt):
            rec = record_run(KEY, classes=["a", "b"], train_ids=["t0", "t1"],
                             val=Outputs([f"v{i}" for i in range(40)], yv, pv),
                             test=Outputs([f"x{i}" for i in range(60)], labels, test_p),
                             val_policy="full", manifest_sha256="m")
            outs.append((rec.row["degenerate"], rec.row["degenerate_reason"], rec.threshold))
    assert len(set(outs)) == 1 and outs[0][0] is False
    bad = record_run(KEY, classes=["a", "b"], train_ids=["t0", "t1"], val=Outputs([f"v{i}" for i in range(40)], yv,
                     np.full(40, 0.5)), test=Outputs([f"x{i}" for i in range(60)], yt, np.clip(0.3 + 0.4 * yt, 0, 1)),
                     val_policy="full", manifest_sha256="m")
    assert bad.row["degenerate"] and bad.row["degenerate_reason"].startswith("val: ")


def test_a_class_missing_from_val_is_named_and_selection_falls_back_to_val_accuracy_with_a_line():
    import pandas as pd

    from featpipe.params.config import ClinicalParams
    from featpipe.results.summary import format_summary, select_best, summarize_runs

    rng = np.random.default_rng(1)
    yv = np.arange(30) % 2  # val holds classes 0 and 1 only
    yt = np.arange(45) % 3
    pv, pt = rng.dirichlet(np.ones(3), 30), rng.dirichlet(np.ones(3), 45)
    pv[np.arange(30), yv] += 1.0
    rec = record_run(KEY, classes=["a", "b", "c"], train_ids=["t0", "t1", "t2"],
                     val=Outputs([f"v{i}" for i in range(30)], yv, pv / pv.sum(1, keepdims=True)),
                     test=Outputs([f"x{i}" for i in range(45)], yt, pt), val_policy="full", manifest_sha256="m")
    r = rec.row
    assert r["val_absent"] == "c" and r["test_absent"] == ""
    assert np.isfinite(r["val_auroc"])  # macro over the classes val holds, not NaN
    rows = []
    for head, acc in (("h1", 0.7), ("h2", 0.8)):
        for seed in range(3):
            rows.append({**KEY, "head": head, "seed": seed, "n_classes": 3, "val_auroc": np.nan,
                         "val_accuracy": acc + 0.01 * seed, "auroc": 0.9, "accuracy": 0.5, "degenerate": False})
    summary = summarize_runs(pd.DataFrame(rows), clinical=ClinicalParams(), select_metric="auroc")
    assert select_best(summary, "auroc") == {5: "d/b+w/h2/k5"}
    assert "chosen on val_accuracy instead" in summary["d/b+w/h2/k5"]["selection_note"]
    assert "note: k = 5: val_auroc is undefined" in format_summary(summary)


def test_a_matched_one_shot_val_pair_in_the_wrong_order_keeps_the_heads_boundary_and_is_not_flagged():
    from featpipe.evaluation.metrics import choose_threshold

    assert choose_threshold([0, 1], [0.7, 0.3]) == 0.5  # no threshold beats chance on val: the head's own boundary
    assert choose_threshold([0, 1], [0.3, 0.7]) == 0.5  # ordered: the midpoint (0.5 here too)
    assert choose_threshold([0, 1], [0.1, 0.3]) == 0.2
    # two val images, one wrong: one error is not "a constant"
    assert degenerate(np.array([0.7, 0.9]), n_classes=2, threshold=0.5, labels=np.array([0, 1])) == ""
