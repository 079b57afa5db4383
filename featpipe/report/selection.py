"""The report's answers: the configuration chosen on val per shot count (reported on test with the headline
interval for seed luck and test-sampling luck together, its two components beside it), paired comparisons, and
degenerate runs (greyed out)."""

from __future__ import annotations

import html

import pandas as pd

from featpipe.core.names import config_name
from featpipe.report.html import percent as _f, table
from featpipe.report.plots import METRIC_LABELS
from featpipe.results.summary import config_labels, degenerate_flags, per_class_summary, select_best, summarize_runs


def _budget(sel: pd.DataFrame) -> str:
    """"k-shot + val = total" labelled images of the runs ``sel`` (medians over seeds)."""
    if not {"n_train", "n_val"} <= set(sel.columns) or sel.empty:
        return "–"
    tr, va = int(pd.to_numeric(sel["n_train"]).median()), int(pd.to_numeric(sel["n_val"]).median())
    return f"{tr} + {va} = {tr + va}"


def _iv(s: dict, lo: str, hi: str) -> str:
    return f"[{_f(s.get(lo))}, {_f(s.get(hi))}]"


def summarize(runs: pd.DataFrame, *, params, preds=None) -> tuple[dict, dict[int, str]]:
    """(every configuration's summary, {shots: name chosen on val}) of ``runs``, once for the whole report.
    ``preds`` (:class:`featpipe.results.predictions.TestPredictions`): test-sampling variance by patient for the
    chosen configurations."""
    metric = params.report.metric
    summary = summarize_runs(runs, clinical=params.clinical, select_metric=metric,
                             sampling=preds.sampling if preds is not None else None)
    return summary, select_best(summary, metric)


def best_configurations(runs: pd.DataFrame, summary: dict, chosen: dict[int, str], *, params) -> tuple[str, list[dict]]:
    """(HTML, [{"shots", "config", "run_ids", "entry"}]) of the configuration chosen on ``val_<report.metric>``
    per shot count among those without degenerate runs (:func:`summarize`), reported on test; ``entry`` is the
    configuration's summary."""
    metric = params.report.metric
    original = runs
    runs = runs.assign(config=config_labels(runs).to_numpy())
    label = METRIC_LABELS.get(metric, metric)
    rows, best, notes = [], [], []
    for k in sorted({int(x) for x in runs["shots"]}):
        name = chosen.get(k)
        if name is None:
            rows.append([k, "none: every configuration has a degenerate run or no val metric"] + ["–"] * 11)
            continue
        e = summary[name]
        sel = runs[(runs["config"] == e["config"]) & (runs["shots"].astype(int) == k)].sort_values("seed")
        ids = sel["run_id"].astype(str).tolist() if "run_id" in sel.columns else []
        t, v = e.get(metric, {}), e.get(f"val_{metric}", {})
        flag = f"yes ({e['test_size']})" if e["clinical_grade"] else "no: " + "; ".join(e["clinical_failed"])
        if e.get("selection_note"):
            notes.append(e["selection_note"])
        rows.append([_subset_cell(k, e), e["config"], _budget(sel), _f(v.get("mean")), f"{_f(t.get('mean'))} ± {_f(t.get('std'))}",
                     _iv(t, "ci_low", "ci_high"), _iv(t, "seed_low", "seed_high"), _iv(t, "test_low", "test_high"),
                     _f(e.get("accuracy", {}).get("mean")), _f(e.get("auroc", {}).get("mean"), pct=False),
                     f"{e['n_seeds']} prompt sets" if k == 0 else e["n_seeds"], _f(e.get("sensitivity", {}).get("mean")) + " / " + _f(e.get("specificity", {}).get("mean")),
                     flag])
        best.append({"shots": k, "config": e["config"], "run_ids": ids, "entry": e})
    head = ["shots", "chosen on val", "labelled images per run (k-shot + val)", f"val {label} (%)", f"test {label} (mean ± std, %)",
            "95% interval (seeds + test patients)", "seed part", "test-sampling part", "test accuracy (%)",
            "test AUROC", "seeds", "sens / spec (%)", f"clinical-grade ({params.clinical.rule} rule)"]
    c = params.clinical
    text = (f"<p>The configuration of each row is <b>chosen on val</b> (best mean val {html.escape(label)} among "
            "configurations without a degenerate run) and <b>reported on test</b>; test numbers played no part in "
            "the choice. The <b>95% interval</b> covers both kinds of luck: which images were labelled (the spread "
            "over seeds) and which patients happened to be tested (the test-sampling variance the seeds share, "
            "patients resampled, with an Agresti-Coull floor so that a perfect score on few images is not certain). "
            "Beside it, its two parts alone: the <i>seed part</i> (the mean over k-shot subsets on this test split) "
            "and the <i>test-sampling part</i>.</p>"
            + clinical_rule_text(c))
    text += "".join(f"<p class=\"note\">{html.escape(n)}.</p>" for n in notes)
    return table(head, rows, attrs=' id="best-configurations"') + text + per_class_section(original, summary, metric), best



def clinical_rule_text(c) -> str:
    """The paragraph saying which clinical-grade rule the report applied (``clinical.rule``) and its terms."""
    if c.rule == "published":
        return (f"<p class=\"note\"><b>Clinical-grade: the published study's rule</b> (<code>clinical.rule: "
                f"published</code>): mean accuracy ≥ {c.min_accuracy_binary:.0%} (binary) or ≥ "
                f"{c.min_accuracy_multiclass:.0%} (multi-class), accuracy std across seeds < {c.max_std:.0%}, mean "
                f"AUROC ≥ {c.min_auroc}. It ignores the seed interval, the number of seeds, sensitivity, specificity "
                "and selection on val: featpipe's own rule (<code>clinical.rule: featpipe</code>, the default) is "
                "stricter. A failed row names the conditions it failed.</p>")
    return (f"<p class=\"note\"><b>Clinical-grade: featpipe's rule</b> (<code>clinical.rule: featpipe</code>; "
            f"<code>published</code> applies the source study's own): ≥ {c.min_seeds} seeds; the 95% interval's lower "
            f"bound of accuracy ≥ {c.min_accuracy_binary:.0%} (binary) or ≥ {c.min_accuracy_multiclass:.0%} (multi-class) "
            f"and of AUROC ≥ {c.min_auroc}; accuracy std across seeds < {c.max_std:.0%}; mean sensitivity ≥ "
            f"{c.min_sensitivity:.0%} and specificity ≥ {c.min_specificity:.0%} (binary); a configuration chosen on val. "
            "Each verdict names the test size it rests on (20 images scored perfectly give an accuracy lower bound of "
            "0.81: never clinical-grade at 0.90); a failed row names the conditions it failed.</p>")


def _subset_cell(k: int, e: dict) -> str:
    """The training subset of a best-configuration row: k, k capped to the class size, or a fraction."""
    if e.get("fraction") is not None:
        return f"{e['fraction']:g} of train ({k} images: {e.get('images_per_class', '')})"
    return f"{k} (capped {e['capped']})" if e.get("capped") else str(k)


def per_class_section(runs: pd.DataFrame, summary: dict, metric: str) -> str:
    """The val-chosen configurations' test precision, recall and F1 per class (mean and 95% seed interval)."""
    rows = per_class_summary(runs, summary, metric)
    if not rows:
        return ""
    cell = lambda s: f"{_f(s.get('mean'))} [{_f(s.get('ci_low'))}, {_f(s.get('ci_high'))}]"
    body = [[r["subset"], r["config"], r["class"], cell(r["precision"]), cell(r["recall"]), cell(r["f1"])] for r in rows]
    return ("<h3>Per class: precision, recall and F1 of the chosen configurations</h3><p class=\"note\">Test, % (mean "
            "[95% seed interval] over seeds).</p>"
            + table(["shots", "chosen on val", "class", "precision (%)", "recall (%)", "F1 (%)"], body))


def degenerate_section(runs: pd.DataFrame) -> str:
    bad = runs[degenerate_flags(runs).to_numpy()]
    if bad.empty:
        return ("<p>No run is degenerate (judged on val: none has most of its val scores tied across classes or puts "
                "≥ 95% of the other classes' val images into one class).</p>")
    rows = [["⚠", config_name(r, with_seed=True), r.get("degenerate_reason", "")] for r in bad.to_dict("records")]
    return (f"<p>{len(bad)} run(s) are degenerate, judged on <b>val</b> only (test never decides a flag or a choice): "
            "most of their val scores are one tied value across classes, or they put ≥ 95% of the other classes' val "
            "images into one class. Their metrics describe a constant, not a classifier; they stay in the table, and "
            "their configurations are never chosen as best (grey crosses in the per-seed plot).</p>"
            + table(["", "run", "why"], rows, row_classes=["degenerate"] * len(rows)))
