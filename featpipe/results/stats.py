"""Statistics over runs: the interval of a configuration's mean over seeds, the clinical-grade check, the patient
bootstrap.

Across seeds (:func:`summarize`): mean, sample std (ddof=1), min, max, spread, and the **headline interval**
(``ci_low``, ``ci_high``) that covers both seed luck and test-sampling luck, with its two components beside it
(``seed_low``/``seed_high``, ``test_low``/``test_high``) and the effective number of test units ``n_eff``; the
method is in :mod:`featpipe.results.intervals`. :func:`seed_summary` is the one way a column of the runs table
is summarised across seeds (the table's summaries, ``metrics.json``, the report and its plots all call it).
From the table alone the test units are the images the metric counts (:func:`metric_units`: all test images,
the positives for sensitivity, the smallest class for AUROC ...); given the per-image predictions and the
patients (the report), the test-sampling variance is computed clustered by patient
(:func:`featpipe.results.testvar.sampling_variance`) and the units are patients.

For test sampling of one run, :class:`PatientResampler` draws **patients** with replacement (all their images
together) from a seeded generator; :func:`bootstrap_ci` gives percentile intervals of one run's metrics
from it, and :func:`featpipe.results.compare.bootstrap_interval` of paired differences.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.evaluation.metrics import SUMMARY_METRICS, as_proba, fast_scores
from featpipe.results.intervals import difference_interval, interval

# (runs of one configuration, metric) -> (test-sampling variance of the mean over seeds, test units) or None
Sampling = Callable[[pd.DataFrame, str], "tuple[float | None, float] | None"]


def summarize(values: Iterable[float], *, confidence: float = 0.95, bounds: tuple[float, float] | None = (0.0, 1.0),
              n_units: float | None = None, test_var: float | None = None) -> dict:
    """mean, std (ddof=1), the headline interval and its components, min, max, spread, n, n_eff (NaNs dropped).

    With ``bounds`` (default [0, 1]) the interval is :func:`featpipe.results.intervals.interval` on ``n_units``
    test units (None: unknown, the seed term alone) with ``test_var``; ``bounds=None`` gives the interval of a
    mean difference (:func:`featpipe.results.intervals.difference_interval`)."""
    vals = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if bounds is None:
        d = difference_interval(vals, test_var=test_var, confidence=confidence)
        v = np.asarray(vals, dtype=float)
        return d | {"std": float(v.std(ddof=1)) if v.size > 1 else math.nan}
    return interval(vals, n_units=n_units if n_units is not None else math.nan, test_var=test_var,
                    confidence=confidence, bounds=bounds)


def metric_bounds(metric: str, n_classes: int = 2) -> tuple[float, float]:
    """The range of ``metric`` (every reported metric is bounded; ``val_`` columns as their test metric)."""
    metric = metric[4:] if metric.startswith("val_") else metric
    if metric == "brier" and n_classes > 2:
        return (0.0, 2.0)
    return (0.0, 1.0)


def n_classes_of(g: pd.DataFrame) -> int:
    """The number of classes of the runs ``g`` (column ``n_classes``; else 2 when they report sensitivity)."""
    if "n_classes" in g.columns and g["n_classes"].notna().any():
        return int(g["n_classes"].dropna().iloc[0])
    return 2 if ("sensitivity" in g.columns and g["sensitivity"].notna().any()) else 3


def class_counts(g: pd.DataFrame, test: bool = True) -> np.ndarray | None:
    """Test images per class of the runs ``g`` (row sums of the first ``confusion_matrix``); None if unknown."""
    if not test or "confusion_matrix" not in g.columns:
        return None
    for c in g["confusion_matrix"].dropna():
        try:
            return np.array(_row_sums(c))
        except (TypeError, ValueError):
            continue
    return None


@functools.lru_cache(maxsize=32)
def _row_sums(matrix: str) -> tuple[float, ...]:
    """Row sums of one ``confusion_matrix`` JSON text, parsed once (a summary asks once per metric: with 1,000
    classes the matrix is a million numbers)."""
    return tuple(np.asarray(json.loads(matrix), dtype=float).sum(axis=1).tolist())


def metric_units(metric: str, counts: np.ndarray | None, total: float) -> float:
    """How many test units ``metric`` is measured on, from the units per class ``counts`` (or ``total``):
    sensitivity / specificity the positives / negatives; AUROC and AUPRC the smallest class; balanced
    accuracy and macro F1 ``C^2 / sum(1 / n_c)`` (their variance at equal recalls); others every unit."""
    metric = metric[4:] if metric.startswith("val_") else metric
    if counts is None or not counts.size:
        return total
    if metric in ("sensitivity", "specificity"):
        return float(counts[1 if metric == "sensitivity" else 0]) if counts.size == 2 else math.nan
    if metric in ("auroc", "auprc"):
        return float(counts.min())
    if metric in ("balanced_accuracy", "macro_f1"):
        c = counts[counts > 0]
        return float(c.size ** 2 / np.sum(1.0 / c)) if c.size else math.nan
    return float(total) if math.isfinite(total) else float(counts.sum())


def seed_summary(g: pd.DataFrame, metric: str, *, n_classes: int | None = None, sampling: Sampling | None = None,
                 sizes: dict | None = None) -> dict:
    """:func:`summarize` of column ``metric`` over the runs ``g`` (one configuration, one row per seed) within the
    metric's bounds. ``sampling(g, metric)`` may give (test-sampling variance, test units) from the predictions;
    otherwise the units are the images the metric counts (:func:`metric_units`) and the variance is left to
    :func:`featpipe.results.intervals.effective_n`. Val columns count val images. ``sizes``: ``split_sizes(g)``,
    for a caller that summarises many metrics of the same runs (computed here otherwise)."""
    n_classes = n_classes_of(g) if n_classes is None else n_classes
    sizes = split_sizes(g) if sizes is None else sizes
    val = metric.startswith("val_")
    got = sampling(g, metric) if sampling is not None and not val else None
    if got is not None:
        test_var, units = got
    else:
        total = sizes["n_val" if val else "n_test"]
        test_var, units = None, metric_units(metric, None if val else sizes["test_counts"], float(total))
    out = summarize(g[metric].astype(float), bounds=metric_bounds(metric, n_classes), n_units=units, test_var=test_var)
    return out | {"n_test": float(sizes["n_test"]), "units": "patients" if got is not None else "images",
                  "n_units": float(units)}


def split_sizes(g: pd.DataFrame) -> dict:
    """What :func:`seed_summary` counts the units of the runs ``g`` from: the median ``n_val`` and ``n_test``
    (NaN where the column is absent) and the test images per class (:func:`class_counts`)."""
    out = {col: pd.to_numeric(g[col], errors="coerce").median() if col in g.columns else math.nan
           for col in ("n_val", "n_test")}
    return out | {"test_counts": class_counts(g, test=True)}


def clinical_check(summary: Mapping[str, Mapping[str, float]], *, n_classes: int, params,
                   chosen_on_val: bool | None = True) -> list[str]:
    """The conditions of the "clinical-grade" flag that a configuration FAILS (empty list: it passes).

    Conditions: at least ``params.min_seeds`` seeds; the **lower bound of the headline interval** (seed luck and
    test-sampling luck together, :mod:`featpipe.results.intervals`) of accuracy >= ``min_accuracy_binary``
    (2 classes) or ``min_accuracy_multiclass`` and of AUROC >= ``min_auroc``; std of accuracy across seeds <
    ``max_std``; binary tasks: mean sensitivity >= ``min_sensitivity`` and mean specificity >=
    ``min_specificity``; the configuration was chosen on val (``chosen_on_val``; None = not judged here).
    A missing/NaN value fails its condition. The lower bounds name the test size they rest on: a perfect score on
    20 test images has an accuracy lower bound of 0.81 and cannot pass.
    """
    acc, auc = summary.get("accuracy", {}), summary.get("auroc", {})
    need = params.min_accuracy_binary if n_classes == 2 else params.min_accuracy_multiclass
    nan = math.nan
    n = int(summary.get("n_seeds", acc.get("n", 0)) or 0)
    failed = []
    if n < params.min_seeds:
        failed.append(f"{n} seeds (needs >= {params.min_seeds})")
    for name, s, floor in (("accuracy", acc, need), ("AUROC", auc, params.min_auroc)):
        lo = s.get("ci_low", nan)
        if not lo >= floor:
            failed.append(f"{name} interval lower bound {lo:.3f} < {floor:.2f} ({test_size(s)})" if math.isfinite(lo)
                          else f"{name} interval undefined")
    std = acc.get("std", nan)
    if not std < params.max_std:
        failed.append(f"accuracy std {std:.3f} >= {params.max_std:.2f}" if math.isfinite(std) else "accuracy std undefined")
    if n_classes == 2:
        for m, floor in (("sensitivity", params.min_sensitivity), ("specificity", params.min_specificity)):
            v = summary.get(m, {}).get("mean", nan)
            if not v >= floor:
                failed.append(f"mean {m} {v:.3f} < {floor:.2f}" if math.isfinite(v) else f"{m} undefined")
    if chosen_on_val is False:
        failed.append("not the configuration chosen on val")
    return failed


def test_size(s: Mapping) -> str:
    """"on N test images" (plus "(P patients)" when the interval counted patients) for a :func:`seed_summary`."""
    n, u = s.get("n_test", math.nan), s.get("n_units", math.nan)
    if not isinstance(n, (int, float)) or not math.isfinite(n):
        return "test size unknown"
    pat = (f" ({u:.0f} patients)" if s.get("units") == "patients" and isinstance(u, (int, float)) and math.isfinite(u)
           else "")
    return f"on {n:.0f} test images{pat}"


def clinical_grade(summary: Mapping[str, Mapping[str, float]], *, n_classes: int, params,
                   chosen_on_val: bool | None = True) -> bool:
    """True when :func:`clinical_check` finds no failed condition."""
    return not clinical_check(summary, n_classes=n_classes, params=params, chosen_on_val=chosen_on_val)


def published_check(summary: Mapping[str, Mapping[str, float]], *, n_classes: int, params) -> list[str]:
    """The failed conditions of the source study's own clinical-grade rule (``clinical.rule: published``):
    **mean** accuracy >= ``min_accuracy_binary`` (2 classes) or ``min_accuracy_multiclass``, std of accuracy
    across seeds < ``max_std``, **mean** AUROC >= ``min_auroc``. No interval, seed count, sensitivity,
    specificity or selection condition (featpipe's rule, :func:`clinical_check`, adds them)."""
    acc, auc = summary.get("accuracy", {}), summary.get("auroc", {})
    need = params.min_accuracy_binary if n_classes == 2 else params.min_accuracy_multiclass
    failed = []
    for name, value, ok, text in (
            ("accuracy", acc.get("mean", math.nan), lambda v: v >= need, f"< {need:.2f}"),
            ("accuracy std", acc.get("std", math.nan), lambda v: v < params.max_std, f">= {params.max_std:.2f}"),
            ("AUROC", auc.get("mean", math.nan), lambda v: v >= params.min_auroc, f"< {params.min_auroc:.2f}")):
        if not math.isfinite(value):
            failed.append(f"{name} undefined")
        elif not ok(value):
            failed.append(f"{'mean ' if 'std' not in name else ''}{name} {value:.3f} {text}")
    return failed


def clinical_failures(summary: Mapping[str, Mapping[str, float]], *, n_classes: int, params,
                      chosen_on_val: bool | None = True) -> list[str]:
    """The failed conditions under the rule ``params.rule`` names: ``featpipe`` (:func:`clinical_check`) or
    ``published`` (:func:`published_check`)."""
    if getattr(params, "rule", "featpipe") == "published":
        return published_check(summary, n_classes=n_classes, params=params)
    return clinical_check(summary, n_classes=n_classes, params=params, chosen_on_val=chosen_on_val)


RULE_NAMES = {"featpipe": "featpipe's rule", "published": "the published study's rule"}


# --------------------------------------------------------------------------- patient bootstrap


class PatientResampler:
    """Resamples of images by patient: ``n`` patients drawn with replacement (``n`` = number of patients)
    from ``numpy.random.default_rng(seed)``, each drawn patient's images together (in image order), in draw
    order. The images are grouped by patient once, so a resample costs O(images), not O(images x patients)."""

    def __init__(self, patients: Sequence[str]):
        _, inv = np.unique(np.asarray(patients).astype(str), return_inverse=True)
        self._size = np.bincount(inv)
        self.n_patients = int(self._size.size)
        self._rows = np.argsort(inv, kind="stable")  # image indices, grouped by patient
        self._start = np.cumsum(self._size) - self._size

    def take(self, pick: np.ndarray) -> np.ndarray:
        """The image indices of the patients ``pick`` (patient numbers, repeats allowed), concatenated."""
        size = self._size[pick]
        ends = np.cumsum(size)
        if not ends.size:
            return np.zeros(0, dtype=np.int64)
        return self._rows[np.arange(ends[-1]) - np.repeat(ends - size - self._start[pick], size)]

    def draws(self, n_boot: int, seed: int) -> Iterator[np.ndarray]:
        """``n_boot`` resamples (index arrays into the images) from ``default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        for _ in range(n_boot):
            yield self.take(rng.integers(0, self.n_patients, self.n_patients))


def bootstrap_ci(
    y_true, proba, *, classes: Sequence[str], patients: Sequence[str], threshold: float | None = None,
    n_boot: int = 1000, seed: int = 0, metrics: Sequence[str] = SUMMARY_METRICS, confidence: float = 0.95,
) -> dict:
    """Percentile intervals from resampling test **patients** with replacement (all their images go
    together; :class:`PatientResampler` with ``seed``). Returns {metric: {"low", "high", "n_valid"}}.
    Resamples where a metric is undefined (e.g. one class only) are left out of that metric."""
    y = np.asarray(y_true).astype(np.int64)
    p = as_proba(proba, len(classes))
    if np.asarray(patients).shape[0] != y.shape[0]:
        raise ValueError("one patient id per test image is needed")
    draws = {m: [] for m in metrics}
    for idx in PatientResampler(patients).draws(n_boot, seed):
        s = fast_scores(y[idx], p[idx], n_classes=len(classes), threshold=threshold, metrics=metrics)
        for m in metrics:
            if not math.isnan(s[m]):
                draws[m].append(s[m])
    a = (1 - confidence) / 2
    out = {}
    for m, vals in draws.items():
        if vals:
            lo, hi = np.quantile(vals, [a, 1 - a])
            out[m] = {"low": float(lo), "high": float(hi), "n_valid": len(vals)}
        else:
            out[m] = {"low": math.nan, "high": math.nan, "n_valid": 0}
    return out
