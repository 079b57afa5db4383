"""The report's external-validation section: internal and external test sets side by side.

For the configuration chosen on val at each shot count (the internal val: an external set plays no part in any
choice), each metric's mean over seeds with its headline interval (:func:`featpipe.results.stats.seed_summary`,
test-sampling variance by patient from each test set's own predictions) on the study's test split and on every
external set of ``evaluate.external`` scored by ``featpipe evaluate-external`` (``results/external/<name>/``).
A multi-label study shows macro AUROC (``auroc``), mAP (``auprc``) and AUROC per label (``auroc[<label>]``), their
intervals from image counts (its predictions files hold no class columns).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from featpipe.core.errors import DataError
from featpipe.data.external import EXTERNAL_DIR, read_external
from featpipe.evaluation.table import EXTERNAL_RESULTS, RUNS_CSV, external_test_set, read_runs, run_id
from featpipe.report.html import table
from featpipe.results.predictions import TestPredictions
from featpipe.results.stats import seed_summary

METRICS = ("auroc", "accuracy", "sensitivity", "specificity")


def _cell(s: dict) -> str:
    m, lo, hi = s.get("mean", math.nan), s.get("ci_low", math.nan), s.get("ci_high", math.nan)
    if not math.isfinite(m):
        return "–"
    iv = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""
    return f"{m:.3f}{iv} (n={s.get('n_test', math.nan):.0f})"


def external_section(results: Path, runs: pd.DataFrame, best: list[dict], *, params, classes, internal_preds=None,
                     external_dir: Path = EXTERNAL_DIR) -> str:
    """HTML of the side-by-side table ("" when no external set has been scored)."""
    sets = {}
    for e in params.evaluate.external:
        folder = Path(results) / EXTERNAL_RESULTS.name / e.name
        if (folder / RUNS_CSV).is_file():
            try:
                preds = TestPredictions(folder, read_external(e.name, classes, base=external_dir), classes)
            except DataError:
                preds = None
            sets[e.name] = (read_runs(folder / RUNS_CSV), preds)
    if not sets or not best:
        return ""
    metrics = list(dict.fromkeys([params.report.metric, *METRICS]))
    if "labels" in runs.columns and (runs.get("task") == "multilabel").any():  # macro AUROC, mAP, AUROC per label
        labels = [n for n in str(runs["labels"].dropna().iloc[0]).split("; ") if n]
        metrics = list(dict.fromkeys([params.report.metric, "auroc", "auprc", *[f"auroc[{n}]" for n in labels]]))
    head = ["shots", "configuration (chosen on internal val)", "metric", "internal test"] + \
        [external_test_set(n) for n in sets]
    rows = []
    for b in best:
        sel = runs[runs["run_id"].astype(str).isin(b["run_ids"])]
        ext = {}
        for name, (tab, _) in sets.items():
            ids = {run_id({**r, "test_set": external_test_set(name)}) for r in sel.to_dict("records")}
            ext[name] = tab[tab["run_id"].astype(str).isin(ids)]
        for m in metrics:
            if m not in sel.columns:
                continue
            cells = [_cell(seed_summary(sel, m, sampling=internal_preds.sampling if internal_preds else None))]
            for name, (_, preds) in sets.items():
                e = ext[name]
                ok = len(e) and m in e.columns
                cells.append(_cell(seed_summary(e, m, sampling=preds.sampling if preds else None)) if ok else "not scored")
            rows.append([b["shots"], b["config"], m] + cells)
    text = ("<p>The same saved models (the configuration chosen on the study's val split at each shot count, every "
            "seed) scored on the study's own test split and on each external set (<code>featpipe evaluate-external"
            "</code>), at their own val-chosen thresholds, with the same metrics and the same 95% interval (seeds and "
            "test patients). An external set's patients and files are never in the study's splits (checked by "
            "sha256 and patient id).</p>")
    return text + table(head, rows)
