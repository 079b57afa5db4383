"""Scoring: the one function that turns (labels, class probabilities) into every reported number.

Used by the classical heads (:mod:`featpipe.fewshot.fit`) and by fine-tuning alike, so both report the same
metrics computed the same way.

Conventions
-----------
- ``proba`` is ``(N, C)`` with columns in the order of ``classes`` (label ``i`` is ``classes[i]``);
  for a binary task a 1-D array is read as the probability of ``classes[1]``.
- Binary tasks: ``classes[1]`` is the positive class. Predictions are ``p(classes[1]) >= threshold``;
  the threshold is chosen on the **validation** split with :func:`choose_threshold` (never on test)
  and passed in. ``threshold=None`` means 0.5.
  Sensitivity and specificity are reported at that threshold.
- More than two classes: prediction is the arg-max; no threshold (reported as NaN).
- AUROC: one-vs-rest macro for more than two classes. AUPRC is average precision (macro over
  classes for more than two); ``auprc_baseline`` is what a random ranking scores (the positive
  prevalence; for more than two classes the mean class prevalence).
- Brier score: binary ``mean((p_pos - y)^2)`` (scikit-learn's ``brier_score_loss``); more than two
  classes: mean over images of the sum over classes of squared errors against the one-hot label.
- A metric that is undefined on the data (AUROC when test holds a single class) is NaN, never 0.

Across seeds (:func:`summarize`): mean, sample std (ddof=1), a 95% interval for the mean over seeds,
min, max and spread (max - min). Every metric here is bounded (in [0, 1]; a multi-class Brier score in
[0, 2]), so the interval is a **logit-t interval**: values are mapped to the logit scale (clipped
half an image inside the bounds, ``0.5 / n`` of the range for n scored images; ``1e-3`` when n is unknown), a Student-t interval for their mean is taken there
(``m +- t_{0.975, n-1} * s / sqrt(n)``) and mapped back. It never leaves the bounds, and for values far
from them it equals the plain t-interval. It treats seeds as independent draws of the k-shot subset, so it
describes the mean over subsets on this one test split; it says nothing about test sampling. For that,
:func:`bootstrap_ci` gives percentile intervals from resampling **patients** (all their images together)
from the test set, with a seeded generator.

A run is **degenerate** (:func:`degenerate`) when most of its scores are one tied value or it predicts one
class for at least 95% of the images: its numbers describe a constant, not a classifier.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

SCALAR_METRICS = (
    "accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "auprc_baseline",
    "sensitivity", "specificity", "threshold", "brier",
)
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "sensitivity", "specificity", "brier")


def _as_proba(proba, n_classes: int) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        if n_classes != 2:
            raise ValueError(f"1-D scores need a binary task, got {n_classes} classes")
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"proba must be (N, {n_classes}) for classes of length {n_classes}, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba holds NaN or infinite values")
    return p


def predict_labels(proba, *, n_classes: int, threshold: float | None = None) -> np.ndarray:
    """Labels from probabilities: binary ``p1 >= threshold`` (0.5 when None), else arg-max."""
    p = _as_proba(proba, n_classes)
    if n_classes == 2:
        return (p[:, 1] >= (0.5 if threshold is None else float(threshold))).astype(np.int64)
    if threshold is not None:
        raise ValueError("a decision threshold applies to binary tasks only")
    return p.argmax(axis=1).astype(np.int64)


def choose_threshold(y_val, proba_val) -> float:
    """Threshold on ``p(classes[1])`` maximising Youden's J (= balanced accuracy) on the **validation** set.

    Candidates are midpoints between consecutive distinct scores (plus the ends), so the threshold
    separates the val scores rather than sitting on one; ties go to the candidate nearest 0.5.
    A val set with a single class gives no information: 0.5 is returned.
    """
    y = np.asarray(y_val).astype(np.int64)
    s = _as_proba(proba_val, 2)[:, 1]
    if y.size == 0 or np.unique(y).size < 2:
        return 0.5
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-9], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1e-9]]) if u.size > 1 else np.array([u[0]])
    pos = s[y == 1]
    neg = s[y == 0]
    # sensitivity(t) = P(pos >= t), specificity(t) = P(neg < t), computed for all candidates at once
    sens = 1.0 - np.searchsorted(np.sort(pos), cands, side="left") / pos.size
    spec = np.searchsorted(np.sort(neg), cands, side="left") / neg.size
    j = sens + spec - 1.0
    best = np.flatnonzero(j >= j.max() - 1e-12)
    pick = best[np.argmin(np.abs(cands[best] - 0.5))]
    return float(cands[pick])


def brier(y_true, proba, *, n_classes: int) -> float:
    y = np.asarray(y_true).astype(np.int64)
    p = _as_proba(proba, n_classes)
    if n_classes == 2:
        return float(np.mean((p[:, 1] - (y == 1)) ** 2))
    onehot = np.eye(n_classes)[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def score(y_true, proba, *, classes: Sequence[str], threshold: float | None = None, detail: bool = True) -> dict:
    """Every metric of one run.

    Returns a dict of floats under the names in :data:`SCALAR_METRICS` plus ``n``; with ``detail``
    also ``per_class`` ({class: {precision, recall, f1, support}}) and ``confusion_matrix``
    (list of rows; row = true class, column = predicted, in ``classes`` order).
    Computed in numpy (scikit-learn's input validation cost more than the metrics themselves in a
    sweep); the tests check every value against scikit-learn's own functions.
    """
    classes = list(classes)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError("scoring needs at least two classes")
    y = np.asarray(y_true).astype(np.int64)
    p = _as_proba(proba, n_classes)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} rows of probabilities")
    if y.size == 0:
        raise ValueError("no images to score")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    if n_classes == 2 and threshold is None:
        threshold = 0.5
    out: dict = {"n": int(y.size)}
    out.update(fast_scores(y, p, n_classes=n_classes, threshold=threshold,
                           metrics=("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc",
                                    "sensitivity", "specificity", "brier")))
    out["auprc_baseline"] = float(np.mean(y == 1)) if n_classes == 2 else float(np.mean(np.bincount(y, minlength=n_classes) / y.size))
    out["threshold"] = float(threshold) if n_classes == 2 else math.nan
    if detail:
        pred = predict_labels(p, n_classes=n_classes, threshold=threshold)
        cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
        prec = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        rec = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
        out["per_class"] = {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        }
        out["confusion_matrix"] = cm.tolist()
    return out


def curves(y_true, proba, *, classes: Sequence[str], max_points: int = 200) -> dict:
    """ROC and PR curve points (binary: positive class; else one-vs-rest per class), thinned for reports."""
    classes = list(classes)
    y = np.asarray(y_true).astype(np.int64)
    p = _as_proba(proba, len(classes))
    cols = [1] if len(classes) == 2 else range(len(classes))
    out = {}
    for c in cols:
        pos = y == c
        n_pos = int(pos.sum())
        if n_pos == 0 or n_pos == pos.size:
            continue
        order = np.argsort(-p[:, c], kind="mergesort")
        s_sorted = p[order, c]
        last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
        tps = np.cumsum(pos[order])[last].astype(float)
        fps = last + 1 - tps
        fpr, tpr = np.r_[0.0, fps / (pos.size - n_pos)], np.r_[0.0, tps / n_pos]
        precision, recall = np.r_[1.0, tps / (tps + fps)], np.r_[0.0, tps / n_pos]
        out[classes[c]] = {"roc": _thin(fpr, tpr, max_points), "pr": _thin(recall, precision, max_points)}
    return out


def _thin(x: np.ndarray, y: np.ndarray, n: int) -> list[list[float]]:
    idx = np.unique(np.linspace(0, len(x) - 1, min(n, len(x))).round().astype(int))
    return [[round(float(x[i]), 5), round(float(y[i]), 5)] for i in idx]


# --------------------------------------------------------------------------- across seeds


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
    """The range of ``metric`` (every reported metric is bounded)."""
    if metric == "brier" and n_classes > 2:
        return (0.0, 2.0)
    return (0.0, 1.0)


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


# --------------------------------------------------------------------------- degenerate runs

DEGENERATE_TIED = 0.5  # share of images with one identical score
DEGENERATE_ONE_CLASS = 0.95  # share of images predicted as one class


def degenerate(proba, *, n_classes: int, threshold: float | None = None) -> str:
    """Why the scores ``proba`` describe a constant rather than a classifier ("" when they do not):
    more than half the images share one identical score vector (e.g. an RBF kernel that underflowed
    to 0.5), or one class is predicted for >= 95% of the images."""
    p = _as_proba(proba, n_classes)
    if p.shape[0] == 0:
        return ""
    _, counts = np.unique(p, axis=0, return_counts=True)
    tied = counts.max() / p.shape[0]
    if tied > DEGENERATE_TIED:
        return f"{tied:.0%} of scores tied"
    pred = predict_labels(p, n_classes=n_classes, threshold=threshold if n_classes == 2 else None)
    share = np.bincount(pred, minlength=n_classes).max() / pred.size
    if share >= DEGENERATE_ONE_CLASS:
        return f"one class predicted for {share:.0%}"
    return ""


# --------------------------------------------------------------------------- one run, bootstrap


def _auc(pos: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted half (= roc_auc_score)."""
    from scipy.stats import rankdata

    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = rankdata(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ap(pos: np.ndarray, s: np.ndarray) -> float:
    """Average precision over distinct thresholds (= average_precision_score)."""
    n_pos = int(pos.sum())
    if n_pos == 0 or n_pos == pos.size:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_sorted, hits = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(hits)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fast_scores(y: np.ndarray, p: np.ndarray, *, n_classes: int, threshold: float | None,
                metrics: Sequence[str]) -> dict:
    """The scalar metrics of :func:`score` computed in numpy (same values; used by the bootstrap)."""
    pred = predict_labels(p, n_classes=n_classes, threshold=threshold if n_classes == 2 else None)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    out = {}
    for m in metrics:
        if m == "accuracy":
            out[m] = float(tp.sum() / y.size)
        elif m == "balanced_accuracy":
            out[m] = float(np.mean(tp[support > 0] / support[support > 0]))
        elif m == "macro_f1":
            den = support + predicted
            out[m] = float(np.mean(np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)))
        elif m == "sensitivity":
            out[m] = float(tp[1] / support[1]) if n_classes == 2 and support[1] else math.nan
        elif m == "specificity":
            out[m] = float(tp[0] / support[0]) if n_classes == 2 and support[0] else math.nan
        elif m == "auroc":
            cols = [1] if n_classes == 2 else range(n_classes)
            aucs = [_auc(y == c, p[:, c]) for c in cols]
            out[m] = float(np.mean(aucs))
        elif m == "auprc":
            cols = [1] if n_classes == 2 else range(n_classes)
            out[m] = float(np.mean([_ap(y == c, p[:, c]) for c in cols]))
        elif m == "brier":
            out[m] = brier(y, p, n_classes=n_classes)
        else:
            raise ValueError(f"unknown metric {m!r} for the bootstrap")
    return out



def bootstrap_ci(
    y_true, proba, *, classes: Sequence[str], patients: Sequence[str], threshold: float | None = None,
    n_boot: int = 1000, seed: int = 0, metrics: Sequence[str] = SUMMARY_METRICS, confidence: float = 0.95,
) -> dict:
    """Percentile intervals from resampling test **patients** with replacement (all their images go
    together), using ``numpy.random.default_rng(seed)``. Returns {metric: {"low", "high", "n_valid"}}.
    Resamples where a metric is undefined (e.g. one class only) are left out of that metric."""
    y = np.asarray(y_true).astype(np.int64)
    p = _as_proba(proba, len(classes))
    pats = np.asarray(patients).astype(str)
    if pats.shape[0] != y.shape[0]:
        raise ValueError("one patient id per test image is needed")
    uniq, inv = np.unique(pats, return_inverse=True)
    groups = [np.flatnonzero(inv == g) for g in range(uniq.size)]
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in metrics}
    for _ in range(n_boot):
        pick = rng.integers(0, uniq.size, uniq.size)
        idx = np.concatenate([groups[g] for g in pick])
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
