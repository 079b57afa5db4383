"""The report's per-label section of a multi-label task (``multilabel`` in ``splits.json``).

- the labels, their uncertain/blank policy and positives / negatives / unknown per split;
- the k-shot sampling rule and the achieved positives / negatives per label (min-max over seeds), capping stated;
- per shot count, the configuration chosen on val (the same choice as the "Best configuration" table): per label
  the test AUROC, average precision, sensitivity and specificity at the label's val threshold (mean and 95%
  interval, seeds and test sampling: :func:`featpipe.results.stats.summarize` on that label's known test images,
  positives for sensitivity, negatives for specificity, the smaller class for AUROC/AP; the macro row on the mean
  of those over labels), the test prevalence, and labels without a
  head (no positives or negatives in the k-shot set) or with one class on test named; macro AUROC and mAP last;
- per-label test AUROC of every configuration at the largest shot count (mean over seeds), to compare them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from featpipe.evaluation.metrics import curves
from featpipe.report.html import table
from featpipe.results.stats import metric_units, summarize
from featpipe.results.summary import config_labels

METRICS = (("auroc", "AUROC"), ("auprc", "AP"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def _units(raw: dict, metric: str, labels: Sequence[str]) -> float:
    """Test units a label's ``metric`` is measured on (its known test images: positives for sensitivity, negatives
    for specificity, the smaller class for AUROC/AP: :func:`featpipe.results.stats.metric_units`); for the macro
    value the mean of that over the labels where it is defined."""
    counts = raw["multilabel"]["counts"]["test"]
    units = [metric_units(metric, np.array([counts[n][1], counts[n][0]], dtype=float), counts[n][0] + counts[n][1])
             for n in labels]
    units = [u for u in units if np.isfinite(u) and u > 0]
    return float(np.mean(units)) if units else math.nan


def _mean_ci(g: pd.DataFrame, col: str, units: float) -> str:
    if col not in g.columns or not g[col].notna().any():
        return "–"
    s = summarize(g[col].astype(float), n_units=units)
    lo, hi = s.get("ci_low", math.nan), s.get("ci_high", math.nan)
    ci = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{s['mean']:.3f}{ci}"


def _notes(g: pd.DataFrame, label: str) -> str:
    out = []
    for col, words in (("unfit_labels", "no head in {n} of {t} seeds ({why})"),
                       ("test_absent", "one class on test")):
        hits = [str(v) for v in g.get(col, pd.Series(dtype=str)).fillna("") if label in _names(str(v))]
        if hits and col == "unfit_labels":
            why = next(p.split(": ", 1)[1] for p in hits[0].split("; ") if p.startswith(f"{label}: "))
            out.append(words.format(n=len(hits), t=len(g), why=why))
        elif hits:
            out.append(words)
    return "; ".join(out)


def _names(cell: str) -> set[str]:
    return {p.split(": ", 1)[0] for p in cell.split("; ") if p}


def _data_part(raw: dict) -> str:
    ml = raw["multilabel"]
    labels = ml["labels"]
    rules = sorted({f"-1 = {p['uncertain']}, blank = {p['blank']}" for p in ml["policy"].values()})
    rows = [[n, *[f"{ml['counts'][part][n][0]} / {ml['counts'][part][n][1]} / {ml['counts'][part][n][2]}"
                  for part in ("train", "val", "test")], ml["policy"][n]["uncertain"], ml["policy"][n]["blank"]]
            for n in labels]
    out = [f"<p>A multi-label task: {len(labels)} labels, each its own one-vs-rest head on the shared features, its "
           f"own threshold chosen on val, and scored only on the images where it is known (policies: "
           f"{html.escape('; '.join(rules))}; unknown = left out of that label, never a negative).</p>",
           table(["label", "train pos / neg / unknown", "val", "test", "-1 read as", "blank read as"], rows),
           f"<p>k-shot sets: {html.escape(ml.get('rule', ''))}; grouped by patient (dealt one image per patient per "
           "round), seeded. Achieved positives / negatives per label (min-max over seeds):</p>"]
    ks = sorted({int(k) for per in ml["achieved"].values() for k in per})
    seeds = list(ml["achieved"])
    head = ["label", *[f"k={k}" for k in ks]]
    body = []
    for n in labels:
        cells = []
        for k in ks:
            pos = [ml["achieved"][s][str(k)][n][0] for s in seeds]
            neg = [ml["achieved"][s][str(k)][n][1] for s in seeds]
            cells.append(f"{_range(pos)} / {_range(neg)}" + (" (capped)" if n in ml.get("capped", {}).get(str(k), {})
                                                             else ""))
        body.append([n, *cells])
    return "".join(out) + table(head, body)


def _range(v: Sequence[int]) -> str:
    return f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"


def _chosen_table(runs: pd.DataFrame, raw: dict, labels: list[str], b: dict) -> str:
    g = runs[runs["run_id"].astype(str).isin(b["run_ids"])] if "run_id" in runs.columns else runs.iloc[:0]
    if g.empty:
        return ""
    rows = []
    for n in labels:
        prev = g.get(f"prevalence[{n}]", pd.Series(dtype=float)).astype(float)
        rows.append([n, f"{prev.mean():.3f}" if prev.notna().any() else "–",
                     *[_mean_ci(g, f"{m}[{n}]", _units(raw, m, [n])) for m, _ in METRICS], _notes(g, n)])
    macro = [_mean_ci(g, m, _units(raw, m, labels)) for m, _ in METRICS]
    rows.append(["macro (mean over the labels where defined)", "–", macro[0], macro[1] + " (mAP)", *macro[2:], ""])
    return (f"<h3>{html.escape(b['config'])}, {b['shots']} shots ({len(g)} seeds, test)</h3>"
            + table(["label", "test prevalence", *[f"{w} (mean [95% interval])" for _, w in METRICS], "note"],
                    rows))


def _all_configs(runs: pd.DataFrame, labels: list[str]) -> str:
    top = int(runs["shots"].astype(int).max())
    g = runs[runs["shots"].astype(int) == top].assign(config=config_labels(runs[runs["shots"].astype(int) == top])
                                                      .to_numpy())
    configs = sorted(g["config"].unique())
    rows = []
    for n in [*labels, "macro"]:
        col = "auroc" if n == "macro" else f"auroc[{n}]"
        rows.append([n, *[(lambda v: f"{v.mean():.3f}" if v.notna().any() else "–")(
            g.loc[g["config"] == c, col].astype(float)) for c in configs]])
    return (f"<h3>Test AUROC per label of every configuration at {top} shots (mean over seeds)</h3>"
            + table(["label", *configs], rows))


def multilabel_section(runs: pd.DataFrame, raw: dict, best: list[dict]) -> str:
    """The HTML of the per-label section (see the module text); ``best``: the val-chosen configurations
    (``{"shots", "config", "run_ids"}``, as :func:`featpipe.report.selection.best_configurations` returns)."""
    labels = list(raw["multilabel"]["labels"])
    out = [_data_part(raw)]
    for b in sorted(best, key=lambda b: b["shots"]):
        out.append(_chosen_table(runs, raw, labels, b))
    out.append(_all_configs(runs, labels))
    return "".join(out)


def label_curves(pred: pd.DataFrame) -> list[dict]:
    """Per run of ``pred`` (test rows of multi-label predictions files, in run order): {label: ROC and PR points}
    (:func:`featpipe.evaluation.metrics.curves` of that label's binary decision) on the images where the label is
    known and has a head; a label with one class there has no curve. Runs without any curve are left out."""
    labels = [c[2:-1] for c in pred.columns if c.startswith("y[") and c.endswith("]")]
    out = []
    for _, g in pred.groupby("run_id", sort=False):
        cur: dict = {}
        for n in labels:
            y, p = g[f"y[{n}]"].to_numpy(np.int64), g[f"p[{n}]"].to_numpy(float)
            k = (y >= 0) & np.isfinite(p)
            cur |= curves(y[k], np.column_stack([1 - p[k], p[k]]), classes=[f"no {n}", n])
        if cur:
            out.append(cur)
    return out
