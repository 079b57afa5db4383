"""The report's answers: the configuration chosen on val per shot count (reported on test with the headline
interval for seed luck and test-sampling luck together, its two components beside it), paired comparisons, and
degenerate runs (greyed out)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from featpipe.core.names import config_name
from featpipe.report.html import table
from featpipe.report.plots import METRIC_LABELS
from featpipe.results.compare import COMPARISONS_CSV, seed_comparisons, seed_gaps, smallest_p, verdict
from featpipe.results.summary import config_labels, degenerate_flags, per_class_summary, select_best, summarize_runs


def _f(x, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def _budget(sel: pd.DataFrame) -> str:
    """"k-shot + val = total" labelled images of the runs ``sel`` (medians over seeds)."""
    if not {"n_train", "n_val"} <= set(sel.columns) or sel.empty:
        return "–"
    tr, va = int(pd.to_numeric(sel["n_train"]).median()), int(pd.to_numeric(sel["n_val"]).median())
    return f"{tr} + {va} = {tr + va}"


def _iv(s: dict, lo: str, hi: str) -> str:
    return f"[{_f(s.get(lo))}, {_f(s.get(hi))}]"


def best_configurations(runs: pd.DataFrame, *, params, n_classes: int, preds=None) -> tuple[str, list[dict]]:
    """(HTML, [{"shots", "config", "run_ids"}]) of the configuration chosen on ``val_<report.metric>`` per shot
    count among those without degenerate runs, reported on test. ``preds``
    (:class:`featpipe.results.predictions.TestPredictions`): test-sampling variance by patient."""
    metric = params.report.metric
    summary = summarize_runs(runs, clinical=params.clinical, select_metric=metric,
                             sampling=preds.sampling if preds is not None else None)
    chosen = select_best(summary, metric)
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
                     e["n_seeds"], _f(e.get("sensitivity", {}).get("mean")) + " / " + _f(e.get("specificity", {}).get("mean")),
                     flag])
        best.append({"shots": k, "config": e["config"], "run_ids": ids})
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
    return table(head, rows) + text + per_class_section(original, summary, metric), best



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


def comparison_section(comparisons: pd.DataFrame, best: list[dict], metric: str) -> str:
    """Per shot count: the val-chosen configuration against every other, on ``metric``."""
    if comparisons.empty:
        return "<p>No comparisons (fewer than two configurations per shot count).</p>"
    c = comparisons[comparisons["metric"] == metric]
    if c.empty:
        c = comparisons[comparisons["metric"] == comparisons["metric"].iloc[0]]
        metric = str(c["metric"].iloc[0])
    rows, classes = [], []
    for b in best:
        a = b["config"]
        sub = c[(c["shots"] == b["shots"]) & ((c["config_a"] == a) | (c["config_b"] == a))]
        for r in sub.sort_values("p_holm").to_dict("records"):
            flip = r["config_b"] == a
            other = r["config_a"] if flip else r["config_b"]
            s = -1 if flip else 1
            d, lo, hi = s * r["mean_diff"], (s * (r["ci_high"] if flip else r["ci_low"])), (s * (r["ci_low"] if flip else r["ci_high"]))
            blo, bhi = (s * r["boot_ci_high"], s * r["boot_ci_low"]) if flip else (r["boot_ci_low"], r["boot_ci_high"])
            v = verdict({**r, "mean_diff": d}).replace("A better", "chosen better").replace("B better", f"{other} better")
            slo, shi = ((s * r["seed_ci_high"], s * r["seed_ci_low"]) if flip else (r["seed_ci_low"], r["seed_ci_high"])) \
                if "seed_ci_low" in r else (math.nan, math.nan)
            rows.append([b["shots"], a, other, r["n_seeds"], f"{d:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                         "–" if not math.isfinite(slo) else f"[{slo:+.3f}, {shi:+.3f}]",
                         "–" if not math.isfinite(blo) else f"[{blo:+.3f}, {bhi:+.3f}]", f"{r['p_value']:.3g}",
                         f"{r['p_holm']:.3g}", v])
            classes.append("degenerate" if (r["degenerate_b"] if not flip else r["degenerate_a"]) else "")
    label = METRIC_LABELS.get(metric, metric)
    head = ["shots", "chosen on val (A)", "other (B)", "paired seeds", f"mean {label} A − B",
            "95% interval (seeds + test patients)", "seed part", "bootstrap (test patients)", "p (paired permutation)",
            "p (Holm)", "answer"]
    return (f"<p>Is the configuration chosen on val better than each other one at k shots? Differences in {html.escape(label)} "
            "are paired by seed (every configuration saw the same labelled images for a seed); p-values come from an exact "
            "paired permutation (sign-flip) test and are Holm-corrected within the <b>family stated here</b>: per shot "
            "count, the chosen configuration against each of the others (or every one against "
            "<code>compare.reference</code>). " + _floor_text(c) + " A difference is called only when the Holm p is "
            "below 0.05 and the 95% interval (seeds + test patients) excludes 0. Grey rows: B has degenerate runs.</p>"
            + "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in comparisons.attrs.get("notes", []))
            + table(head, rows, row_classes=classes))


def _floor_text(c: pd.DataFrame) -> str:
    """The smallest Holm p attainable per shot count (family size m, n seeds: m x 2 / 2^n)."""
    if c.empty:
        return ""
    parts = []
    for k, g in c.groupby("shots"):
        n, m = int(g["n_seeds"].max()), int(g["family"].max()) if "family" in g.columns else len(g)
        floor = min(1.0, m * smallest_p(n))
        parts.append(f"k = {k}: {m} comparison(s), {n} seeds, smallest attainable Holm p {floor:.3g}"
                     + (f" — <b>cannot be significant with {n} seeds</b>" if floor >= 0.05 else ""))
    return "Smallest attainable p with n seeds is 2 / 2^n; " + "; ".join(parts) + "."


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


def read_comparisons(results_dir: Path, runs: pd.DataFrame, params) -> pd.DataFrame:
    """``<results>/comparisons.csv`` when it was written for these runs (every configuration it names is one of
    them), else the seed comparisons computed now."""
    f = Path(results_dir) / COMPARISONS_CSV
    if f.is_file():
        t = pd.read_csv(f)
        if set(t["config_a"]) | set(t["config_b"]) <= set(config_labels(runs)):
            t.attrs["notes"] = seed_gaps(runs)  # seeds left out of the pairing (a CSV does not keep them)
            return t
    metric = params.report.metric
    summary = summarize_runs(runs, clinical=params.clinical, select_metric=metric)
    chosen = {k: summary[n]["config"] for k, n in select_best(summary, metric).items()}
    return seed_comparisons(runs, metrics=[metric], reference=params.compare.reference, chosen=chosen)
