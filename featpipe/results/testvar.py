"""Test-sampling variance of a mean over seeds, from the per-image predictions, clustered by patient.

Every seed of a configuration is scored on the same test images, so resampling test patients moves all seeds
together. :func:`sampling_variance` gives the variance of the mean over seeds of a metric under resampling of
test **patients** (all their images together), the part that every seed shares, by linearisation: each image gets its influence ``psi_i`` on
the metric (averaged over seeds), the influences are summed per patient, and ``V = P / (P - 1) * sum_p
(sum_{i in p} psi_i)^2`` (the cluster-robust "sandwich" variance; equal, to first order, to the variance of
the patient bootstrap, at no resampling cost). Influences:

- accuracy, sensitivity, specificity, Brier: a mean over the images it counts, ``psi_i = (x_i - mean) / N``;
- balanced accuracy: the mean of per-class recalls, each a mean over that class;
- macro F1: per class ``F = 2 TP / (n_c + predicted_c)``, linearised as a ratio;
- AUROC: DeLong's placement values (per positive, the share of negatives it outranks, ties half; per
  negative likewise), one-vs-rest per class and averaged for more than two classes (Obuchowski's clustered
  form of DeLong's variance).

AUPRC has no linearisation here: :func:`sampling_variance` returns None for it and the caller uses the
unit count (:func:`featpipe.results.intervals.effective_n`). A paired difference of two configurations
(``featpipe compare``) uses the difference of their influences.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from featpipe.evaluation.metrics import as_proba, predict_labels

LINEARISED = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "sensitivity", "specificity", "brier")


def cluster_variance(psi: np.ndarray, patients: Sequence[str] | np.ndarray) -> float:
    """``P / (P - 1) * sum_p (sum_{i in p} psi_i - mean)^2`` over the ``P`` patients (NaN for fewer than 2)."""
    _, inv = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    sums = np.bincount(inv, weights=np.asarray(psi, dtype=float))
    n = sums.size
    if n < 2:
        return float("nan")
    sums = sums - sums.mean()
    return float(n / (n - 1) * np.sum(sums * sums))


def _placements(pos: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per image: positives -> share of negatives scored below (ties half); negatives -> share of positives
    scored above (ties half). NaN everywhere when one side is empty."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(s.size, np.nan)
    r_all = rankdata(s)
    out = np.empty(s.size)
    r_pos = rankdata(s[pos])
    out[pos] = (r_all[pos] - r_pos) / n_neg  # negatives below (ties half) among all ranks
    r_neg = rankdata(s[~pos])
    out[~pos] = 1.0 - (r_all[~pos] - r_neg) / n_pos  # positives above
    return out


def _auroc_psi(y: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    cols = [1] if n_classes == 2 else range(n_classes)
    psi = np.zeros(y.size)
    for c in cols:
        pos = y == c
        v = _placements(pos, p[:, c])
        if np.isnan(v).any():
            return np.full(y.size, np.nan)
        auc = v[pos].mean()
        psi += np.where(pos, (v - auc) / pos.sum(), (v - auc) / (~pos).sum())
    return psi / len(cols)


def _recall_psi(y: np.ndarray, correct: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    psi = np.zeros(y.size)
    for c in classes:
        sel = y == c
        if sel.any():
            psi[sel] += (correct[sel] - correct[sel].mean()) / sel.sum()
    return psi / max(len(classes), 1)


def _f1_psi(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    psi = np.zeros(y.size)
    for c in range(n_classes):
        num = 2.0 * ((y == c) & (pred == c))
        den = (y == c).astype(float) + (pred == c)
        if den.sum() > 0:
            f = num.sum() / den.sum()
            psi += (num - f * den) / den.sum()
    return psi / n_classes


def influence(metric: str, y: np.ndarray, p: np.ndarray, *, n_classes: int, threshold: float | None) -> np.ndarray | None:
    """Per-image influence ``psi_i`` of one run's ``metric`` (sum over images = 0; None: not linearised)."""
    if metric not in LINEARISED:
        return None
    if metric == "auroc":
        return _auroc_psi(y, p, n_classes)
    if metric == "brier":
        b = ((p[:, 1] - (y == 1)) ** 2 if n_classes == 2 else np.sum((p - np.eye(n_classes)[y]) ** 2, axis=1))
        return (b - b.mean()) / y.size
    pred = predict_labels(p, n_classes=n_classes, threshold=threshold if n_classes == 2 else None)
    correct = (pred == y).astype(float)
    if metric == "accuracy":
        return (correct - correct.mean()) / y.size
    if metric == "sensitivity" or metric == "specificity":
        if n_classes != 2:
            return None
        return _recall_psi(y, correct, [1 if metric == "sensitivity" else 0])
    if metric == "balanced_accuracy":
        return _recall_psi(y, correct, [c for c in range(n_classes) if (y == c).any()])
    return _f1_psi(y, pred, n_classes)


def seed_influences(metric: str, runs: Sequence[tuple], *, n_classes: int) -> list[np.ndarray] | None:
    """The influence of each of ``runs`` ((labels, proba, threshold) on the same images, same order)."""
    psis = []
    for y, p, thr in runs:
        psi = influence(metric, np.asarray(y, dtype=np.int64), as_proba(p, n_classes), n_classes=n_classes,
                        threshold=thr)
        if psi is None:
            return None
        psis.append(psi)
    return psis


def sampling_variance(metric: str, runs: Sequence[tuple], patients: Sequence[str], *, n_classes: int,
                      against: Sequence[tuple] | None = None) -> float | None:
    """The **shared** test-sampling variance of the mean over ``runs`` of ``metric`` (of the paired difference
    mean(runs) - mean(against) when ``against`` is given, run i against run i); None when the metric has no
    linearisation.

    With per-seed influences ``psi_s = e + d_s`` (``e`` shared by every seed, ``d_s`` the seed's own), the
    variance of the mean's influence is ``V(e) + V(d) / n`` and each seed's own is ``V(e) + V(d)``; the seeds'
    own parts already show in their spread (the seed term of :func:`featpipe.results.intervals.interval`), so
    this returns ``V(e) = (n V(mean) - mean_s V_s) / (n - 1)``, at least 0 (for one run: its variance)."""
    psis = seed_influences(metric, runs, n_classes=n_classes)
    if psis is None or not psis:
        return None
    if against is not None:
        other = seed_influences(metric, against, n_classes=n_classes)
        if other is None or len(other) != len(psis):
            return None
        psis = [a - b for a, b in zip(psis, other)]
    if any(np.isnan(x).any() for x in psis):
        return float("nan")
    n = len(psis)
    v_mean = cluster_variance(np.mean(psis, axis=0), patients)
    if n == 1:
        return v_mean
    v_each = float(np.mean([cluster_variance(x, patients) for x in psis]))
    return max(0.0, (n * v_mean - v_each) / (n - 1))
