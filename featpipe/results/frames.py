"""Summaries and comparisons of a runs table held in memory (the Python API's :func:`summarize` and
:func:`compare`), computed by the same functions as ``results/metrics.json``
(:func:`featpipe.results.summary.summarize_runs`) and ``featpipe compare``
(:func:`featpipe.results.compare.compare_runs`); settings are keywords of the ``compare`` and ``clinical``
sections of ``params.yaml``, validated as the file is."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from featpipe.evaluation.metrics import SUMMARY_METRICS
from featpipe.params.config import ClinicalParams, CompareParams, ReportParams, build
from featpipe.results.compare import compare_runs
from featpipe.results.predictions import TestPredictions
from featpipe.results.summary import summarize_runs

_STATS = ("ci_low", "ci_high", "seed_low", "seed_high", "test_low", "test_high", "std")


def summarize(runs: pd.DataFrame, *, metric: str = ReportParams.metric, metrics: Sequence[str] = SUMMARY_METRICS,
              **clinical) -> pd.DataFrame:
    """One row per configuration (dataset/backbone/head/k, across seeds): for each test metric its mean over
    seeds (column ``<metric>``), ``<metric>_ci_low``/``_ci_high`` (the 95% interval of ``metrics.json``: seed and
    test-sampling luck, test units = images), its parts ``_seed_low``/``_seed_high``/``_test_low``/``_test_high``
    and ``_std``; the val means (``val_<metric>``), ``n_seeds``, ``n_degenerate``, ``chosen_on_val`` (best mean
    ``val_<metric>`` at its k) and ``clinical_grade`` (``clinical`` keywords: the ``clinical`` section, e.g.
    ``min_auroc=0.9``)."""
    settings = build(ClinicalParams, clinical, "clinical")
    summary = summarize_runs(runs, clinical=settings, select_metric=metric, metrics=metrics)
    rows = []
    for name, e in summary.items():
        row = {"config": name, "shots": e["shots"], "n_seeds": e["n_seeds"], "n_degenerate": e["n_degenerate"],
               "chosen_on_val": e["chosen_on_val"], "clinical_grade": e["clinical_grade"]}
        for m in metrics:
            if m in e:
                row[m] = e[m]["mean"]
                row.update({f"{m}_{s}": e[m][s] for s in _STATS})
        row.update({f"val_{m}": e[f"val_{m}"]["mean"] for m in metrics if f"val_{m}" in e})
        rows.append(row)
    return pd.DataFrame(rows)


def compare(runs: pd.DataFrame, predictions: pd.DataFrame | None = None, *, metric: str = ReportParams.metric,
            **settings) -> pd.DataFrame:
    """Paired comparisons of the configurations in ``runs`` (the columns of ``comparisons.csv``): per k and
    metric, the val-chosen configuration against each other one (or all against ``reference``): the mean
    difference over the seeds both have, its interval, the exact permutation p and Holm's correction within the
    family; with ``predictions`` (from ``evaluate_fewshot``) the interval adds the test-sampling variance and the
    chosen pairs get the patient-level bootstrap (patients from its ``patient_id`` column, else one per image).
    ``settings``: the ``compare`` section's keys (``metrics``, ``reference``, ``bootstrap``, ``pairs``,
    ``seed``); ``metric``: what "chosen on val" means (``report.metric``)."""
    c = build(CompareParams, settings, "compare")
    preds = None
    if predictions is not None and len(predictions):
        classes = [col[2:-1] for col in predictions.columns if col.startswith("p[") and col.endswith("]")]
        ids = predictions["id"].astype(str)
        patients = predictions["patient_id"].astype(str) if "patient_id" in predictions.columns else ids
        manifest = pd.DataFrame({"id": ids, "patient_id": patients}).drop_duplicates("id")
        preds = TestPredictions(predictions, manifest, classes)
    return compare_runs(runs, preds, settings=c, select_metric=metric)
