"""The report of a real small study (7 classes, 4 heads, 2 shot counts, 3 seeds): a one-screen summary first,
every configuration x k in one sortable table, comparisons collapsed to the ones that matter, one ROC panel per
class, titles that wrap; every number checked against runs.csv, summary.json and the figures' own data."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from featpipe.evaluation.table import read_predictions
from featpipe.report import plots
from tests.report_fixtures import study  # noqa: F401 (the session's study fixture)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def test_the_summary_comes_first_and_answers_with_the_chosen_configuration_and_its_numbers(study):
    t, runs = study["tables"], study["runs"]
    assert t.sections[0] == "summary"
    rows = t.tables["summary-best"]["rows"]
    best = {r[0]: r for r in t.tables["best-configurations"]["rows"]}
    assert [int(r[0]) for r in rows] == [2, 4]
    for r in rows:
        k, config, mean, interval = int(r[0]), r[1], r[2], r[3]
        assert config == study["metrics"][f"k{k}"]["chosen"]  # the choice metrics.json records
        sel = runs[(runs["config"] == config) & (runs["shots"] == k)]
        assert len(sel) == 3 and mean == pct(sel["macro_f1"].mean())  # the mean over seeds of runs.csv
        assert r[4] == "3" and r[5] == "no"
        val = runs[runs["shots"] == k].groupby("config")["val_macro_f1"].mean().sort_values(ascending=False)
        assert val.index[0] == config and r[6].startswith(f"{val.index[1]}: ")  # the runner-up on val, named
        # the best-configuration table's row: the same configuration, mean and headline interval
        assert best[str(k)][1] == config and best[str(k)][4].startswith(f"{mean} ± ") and best[str(k)][5] == interval
    summary = study["html"].split('id="summary"')[1].split("</section>")[0]
    assert "7 classes" in summary and "images train 56, val 14, test 28" in summary
    assert "featpipe</b>'s rule" in summary and "<code>val_macro_f1</code>" in summary
    assert "Capped shots:</b> none" in summary
    assert "no comparison can be significant with 3 seeds" in summary  # 3 seeds: the smallest Holm p is 0.75


def test_all_configurations_table_has_one_row_per_configuration_and_k_with_the_table_numbers(study):
    runs, summary = study["runs"], study["summary"]
    t = study["tables"].tables["all-configurations"]
    assert len(t["rows"]) == runs.groupby(["config", "shots"]).ngroups == 4 * 2
    assert 'class="sortable"' in study["html"].split('id="all-configurations"')[0][-40:]
    means = runs.groupby(["config", "shots"])["macro_f1"].mean()
    chosen = {(v["chosen"], int(k[1:])) for k, v in study["metrics"].items() if re.fullmatch(r"k\d+", k)}
    for r, v, cls in zip(t["rows"], t["values"], t["classes"]):
        config, k = r[0], int(r[1])
        assert r[4] == pct(means[(config, k)]) and float(v[4]) == pytest.approx(means[(config, k)], abs=1e-5)
        assert (r[-1] == "yes") == ((config, k) in chosen) and (cls == "chosen") == ((config, k) in chosen)
        if (config, k) not in chosen:  # the chosen rows add test-patient sampling; the others are summary.json's
            e = summary[f"demo/{config}/k{k}"]["macro_f1"]
            assert r[6] == f"[{pct(e['ci_low'])}, {pct(e['ci_high'])}]"


def test_comparisons_show_the_runner_up_and_differences_and_collapse_the_rest(study):
    t = study["tables"].tables
    comp = pd.read_csv(study["root"] / "results/comparisons.csv")
    comp = comp[comp["metric"] == "macro_f1"]
    shown, rest = t["comparisons-shown"]["rows"], t.get("comparisons-rest", {"rows": []})["rows"]
    assert len(shown) + len(rest) == len(comp)
    assert f"{len(rest)} more comparisons, none with a detectable difference" in study["html"]
    assert all("better (Holm" not in r[-1] for r in rest)
    runs = study["runs"]
    for k in (2, 4):  # per k: the chosen one against the runner-up on val, always shown
        val = runs[runs["shots"] == k].groupby("config")["val_macro_f1"].mean().sort_values(ascending=False)
        assert any(int(r[0]) == k and r[2] == val.index[1] for r in shown)
        others = [r for r in shown if int(r[0]) == k and r[2] != val.index[1]]
        assert all("better (Holm" in r[-1] for r in others)  # any other shown row found a difference


def test_the_learning_curve_draws_the_all_configurations_table(study):
    """The figure's data equals the table: each line's y-values are the table's test means of its configuration."""
    t = study["tables"].tables["all-configurations"]
    table = {}
    for r, v in zip(t["rows"], t["values"]):
        table.setdefault(r[0], {})[int(r[1])] = float(v[4])
    fig = plots.learning_curve(study["runs"].drop(columns="config"), "macro_f1")
    lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert sorted(ln.get_label() for ln in lines) == sorted(table)
    for ln in lines:
        xs = [int(x) for x in ln.get_xdata()]
        assert np.allclose(ln.get_ydata(), [table[ln.get_label()][x] for x in xs], atol=1e-5)


def test_the_seven_class_roc_section_is_one_panel_per_class_and_a_per_class_auroc_table(study):
    root, runs = study["root"], study["runs"]
    auroc = study["tables"].tables["auroc-best"]
    classes = [f"finding{i}" for i in range(1, 7)]
    assert sorted(r[0] for r in auroc["rows"]) == sorted(["normal", *classes])
    config = study["metrics"]["k4"]["chosen"]
    ids = runs[(runs["config"] == config) & (runs["shots"] == 4)]["run_id"].astype(str).tolist()
    pred = read_predictions(root / "results", ids)
    pred = pred[pred["split"] == "test"]
    names = ["normal", *classes]
    for r in auroc["rows"]:  # the table's AUROC is each seed's one-vs-rest AUROC of the predictions, averaged
        c = names.index(r[0])
        per_seed = [roc_auc_score(g["label"] == c, g[f"p[{r[0]}]"]) for _, g in pred.groupby("run_id")]
        assert r[1] == "3" and float(r[2]) == pytest.approx(np.mean(per_seed), abs=6e-4)
    assert (root / "reports/plots/roc_pr_best.png").is_file()


def test_long_names_wrap_in_figure_titles_and_long_params_fold_in_tables(study):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    name = "medsiglip-448@0123456789abcdef0123456789abcdef01234567/logistic#ffee0011 " * 2
    curves = [{"normal": {"roc": [[0, 0], [0.5, 1], [1, 1]], "pr": [[0, 1], [1, 0.5]]}}]
    for fig in (plots.roc_pr(curves, title=name), plots.roc_pr_per_class(curves * 2, title=name),
                plots.confusion([[1, 0], [0, 1]], ["a", "b"], title=name)):
        renderer = FigureCanvasAgg(fig).get_renderer()
        texts = [fig._suptitle] if fig._suptitle is not None else [ax.title for ax in fig.axes]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width + 1, text.get_text()  # inside the figure
    legend = study["html"].split('id="legend"')[1].split("</section>")[0]
    assert '<details><summary>{&quot;cv_folds&quot;' in legend  # the knn head params JSON, folded
