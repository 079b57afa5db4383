"""Statistics over runs: the seed interval, the clinical-grade check, the patient bootstrap.

Across seeds (:func:`summarize`): mean, sample std (ddof=1), a 95% interval for the mean over seeds,
min, max and spread (max - min). Every metric here is bounded (in [0, 1]; a multi-class Brier score in
[0, 2]), so the interval is a **logit-t interval**: values are mapped to the logit scale (clipped
half an image inside the bounds, ``0.5 / n`` of the range for n scored images; ``1e-3`` when n is unknown), a
Student-t interval for their mean is taken there (``m +- t_{0.975, n-1} * s / sqrt(n)``) and mapped back. It
never leaves the bounds, and for values far from them it equals the plain t-interval. It treats seeds as
independent draws of the k-shot subset, so it describes the mean over subsets on this one test split; it says
nothing about test sampling. :func:`seed_summary` is the one way a column of the runs table is summarised
across seeds (the table's summaries, ``metrics.json`` and the report's plots all call it).

For test sampling, :class:`PatientResampler` draws **patients** with replacement (all their images
together) from a seeded generator; :func:`bootstrap_ci` gives percentile intervals of one run's metrics
from it, and :func:`featpipe.results.compare.bootstrap_interval` of paired differences.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.evaluation.metrics import SUMMARY_METRICS, as_proba, fast_scores


def summarize(values: Iterable[float], *, confidence: float = 0.95, bounds: tuple[float, float] | None = (0.0, 1.0),
              eps: float = 1e-3) -> dict:
    """mean, std (ddof=1), the interval for the mean over seeds, min, max, spread, n (NaNs dropped).

    With ``bounds`` (default [0, 1]) the interval is the logit-t interval described in the module
    docstring and stays inside the bounds; ``bounds=None`` gives the plain Student-t interval
    (for unbounded quantities such as paired differences)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {k: math.nan for k in ("mean", "std", "ci_low", "ci_high", "min", "max", "spread")} | {"n": 0}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    lo = hi = math.nan
    if n > 1:
        t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
        if bounds is None:
            half = t * std / math.sqrt(n)
            lo, hi = mean - half, mean + half
        else:
            lo, hi = _logit_t(v, t, bounds, eps)
    return {"mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "min": float(v.min()),
            "max": float(v.max()), "spread": float(v.max() - v.min()), "n": n}


def _logit_t(v: np.ndarray, t: float, bounds: tuple[float, float], eps: float) -> tuple[float, float]:
    """t-interval of the mean on the logit scale of ``(v - a) / (b - a)`` (clipped to [eps, 1 - eps]),
    mapped back to [a, b]."""
    from scipy.special import expit, logit

    a, b = float(bounds[0]), float(bounds[1])
    u = np.clip((v - a) / (b - a), eps, 1 - eps)
    z = logit(u)
    m, s = float(z.mean()), float(z.std(ddof=1))
    half = t * s / math.sqrt(v.size)
    lo, hi = expit(m - half), expit(m + half)
    if s == 0.0:  # every seed gave the same value: the interval is that value
        lo = hi = float(np.clip((v[0] - a) / (b - a), 0, 1))
    return a + (b - a) * float(lo), a + (b - a) * float(hi)


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


def half_image(g: pd.DataFrame, col: str) -> float:
    """0.5 / (images scored): how far inside [0, 1] the logit-t interval clips values at a bound."""
    n = pd.to_numeric(g[col], errors="coerce").median() if col in g.columns else math.nan
    return 0.5 / float(n) if np.isfinite(n) and n > 0 else 1e-3


def seed_summary(g: pd.DataFrame, metric: str, *, n_classes: int | None = None) -> dict:
    """:func:`summarize` of column ``metric`` over the runs ``g`` (one configuration, one row per seed):
    logit-t interval within the metric's bounds, clipped half an image inside them (val images for a
    ``val_`` column, test images otherwise)."""
    n_classes = n_classes_of(g) if n_classes is None else n_classes
    eps = half_image(g, "n_val" if metric.startswith("val_") else "n_test")
    return summarize(g[metric].astype(float), bounds=metric_bounds(metric, n_classes), eps=eps)


def clinical_check(summary: Mapping[str, Mapping[str, float]], *, n_classes: int, params,
                   chosen_on_val: bool | None = True) -> list[str]:
    """The conditions of the "clinical-grade" flag that a configuration FAILS (empty list: it passes).

    Conditions: at least ``params.min_seeds`` seeds; the **lower bound** of the seed interval of
    accuracy >= ``min_accuracy_binary`` (2 classes) or ``min_accuracy_multiclass`` and of AUROC >=
    ``min_auroc``; std of accuracy across seeds < ``max_std``; binary tasks: mean sensitivity >=
    ``min_sensitivity`` and mean specificity >= ``min_specificity``; the configuration was chosen on
    val (``chosen_on_val``; None = not judged here). A missing/NaN value fails its condition.
    """
    acc, auc = summary.get("accuracy", {}), summary.get("auroc", {})
    need = params.min_accuracy_binary if n_classes == 2 else params.min_accuracy_multiclass
    nan = math.nan
    n = int(summary.get("n_seeds", acc.get("n", 0)) or 0)
    failed = []
    if n < params.min_seeds:
        failed.append(f"{n} seeds (needs >= {params.min_seeds})")
    lo = acc.get("ci_low", nan)
    if not lo >= need:
        failed.append(f"accuracy CI lower bound {lo:.3f} < {need:.2f}" if math.isfinite(lo) else "accuracy CI undefined")
    lo = auc.get("ci_low", nan)
    if not lo >= params.min_auroc:
        failed.append(f"AUROC CI lower bound {lo:.3f} < {params.min_auroc:.2f}" if math.isfinite(lo) else "AUROC CI undefined")
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
