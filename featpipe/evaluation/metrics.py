"""Scoring: the one function that turns (labels, class probabilities) into every reported number.

Used, through :func:`featpipe.evaluation.record.record_run`, by the classical heads and by fine-tuning alike,
so both report the same metrics computed the same way. Statistics over runs (seed intervals, the patient
bootstrap) are in :mod:`featpipe.results.stats`.

Conventions
-----------
- ``proba`` is ``(N, C)`` with columns in the order of ``classes`` (label ``i`` is ``classes[i]``);
  for a binary task a 1-D array is read as the probability of ``classes[1]``.
- Binary tasks: ``classes[1]`` is the positive class. Predictions are ``p(classes[1]) >= threshold`` (a score
  within numerical noise, :data:`ON_THRESHOLD`, of the threshold counts as on it);
  the threshold is chosen on the **validation** split with :func:`choose_threshold` (never on test)
  and passed in. ``threshold=None`` means 0.5.
  Sensitivity and specificity are reported at that threshold.
- More than two classes: prediction is the arg-max; no threshold (reported as NaN).
- AUROC: one-vs-rest macro for more than two classes, over the classes present in the scored split (a class
  with no image there is left out of the mean and named in the row's ``val_absent`` / ``test_absent``; NaN
  only when no class is scorable). AUPRC is average precision (macro over classes for more than two, likewise); ``auprc_baseline`` is what a random ranking scores (the positive
  prevalence; for more than two classes the mean class prevalence).
- Brier score: binary ``mean((p_pos - y)^2)`` (scikit-learn's ``brier_score_loss``); more than two
  classes: mean over images of the sum over classes of squared errors against the one-hot label.
- A metric that is undefined on the data (AUROC when test holds a single class) is NaN, never 0.

A run is **degenerate** (:func:`degenerate`, judged on **val** only) when most of its val scores are one tied
value across classes, or it predicts one class for at least 95% of the val images of the other classes: its
numbers describe a constant, not a classifier.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

SCALAR_METRICS = (
    "accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "auprc_baseline",
    "sensitivity", "specificity", "threshold", "brier",
)
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "sensitivity", "specificity", "brier")


def as_proba(proba, n_classes: int) -> np.ndarray:
    """``proba`` as a finite (N, n_classes) float64 array (a 1-D binary score becomes two columns)."""
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


SCORE_TOL = 1e-9  # val scores closer than this are one value (numerical noise) for thresholds and ties
ON_THRESHOLD = SCORE_TOL / 4  # a score this close to the threshold counts as on it (a val score is >= SCORE_TOL / 2 away)


def predict_labels(proba, *, n_classes: int, threshold: float | None = None) -> np.ndarray:
    """Labels from probabilities: binary ``p1 >= threshold - ON_THRESHOLD`` (0.5 when None: a score on the
    threshold, or within :data:`ON_THRESHOLD` of it, is positive), else arg-max (top probabilities within
    ``ON_THRESHOLD`` of each other: the first class in ``classes`` order), so a class never hinges on a
    difference below numerical noise."""
    p = as_proba(proba, n_classes)
    if n_classes == 2:
        return (p[:, 1] >= (0.5 if threshold is None else float(threshold)) - ON_THRESHOLD).astype(np.int64)
    if threshold is not None:
        raise ValueError("a decision threshold applies to binary tasks only")
    return np.argmax(p >= p.max(axis=1, keepdims=True) - ON_THRESHOLD, axis=1).astype(np.int64)


def score_gaps(s) -> tuple[np.ndarray, np.ndarray]:
    """(below, above): the pairs of adjacent distinct values of the scores ``s`` that are at least
    :data:`SCORE_TOL` apart; values closer than that (rounding noise) are one value and never split."""
    u = np.unique(np.asarray(s, dtype=np.float64))
    big = np.flatnonzero(np.diff(u) >= SCORE_TOL)
    return u[big], u[big + 1]


def choose_threshold(y_val, proba_val) -> float:
    """Threshold on ``p(classes[1])`` maximising Youden's J (= balanced accuracy) on the **validation** set.

    Candidates are midpoints between adjacent distinct val scores (:func:`score_gaps`: scores closer than
    :data:`SCORE_TOL` count as one, so a threshold never splits values that differ only by rounding noise), plus
    one below the lowest and one above the highest score (half-way to 0 and to 1, at least ``SCORE_TOL`` away).
    Ties in J go to the candidate nearest 0.5, then to the lower one. Prediction is ``p >= threshold``; as the
    threshold lies half a gap (>= ``SCORE_TOL / 2``) from every val score, no val image sits on it.
    A val set that gives no information returns 0.5 (the head's own decision boundary): a single class, or no
    threshold doing better than chance (best J <= 0, e.g. a matched 1-shot val pair scored in the wrong order,
    where any threshold would put every image in one class).
    """
    y = np.asarray(y_val).astype(np.int64)
    s = as_proba(proba_val, 2)[:, 1]
    if y.size == 0 or np.unique(y).size < 2:
        return 0.5
    below, above = score_gaps(s)
    lo, hi = float(s.min()), float(s.max())
    low = min(lo / 2.0, lo - SCORE_TOL)
    high = max((hi + 1.0) / 2.0, hi + SCORE_TOL)
    cands = np.concatenate([[low], (below + above) / 2.0, [high]])
    pos = s[y == 1]
    neg = s[y == 0]
    # sensitivity(t) = P(pos >= t), specificity(t) = P(neg < t), computed for all candidates at once
    sens = 1.0 - np.searchsorted(np.sort(pos), cands, side="left") / pos.size
    spec = np.searchsorted(np.sort(neg), cands, side="left") / neg.size
    j = sens + spec - 1.0
    if j.max() <= 1e-12:
        return 0.5
    best = np.flatnonzero(j >= j.max() - 1e-12)
    pick = best[np.argmin(np.abs(cands[best] - 0.5))]  # argmin: the first (lowest) of equally near candidates
    return float(cands[pick])


def brier(y_true, proba, *, n_classes: int) -> float:
    y = np.asarray(y_true).astype(np.int64)
    p = as_proba(proba, n_classes)
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
    p = as_proba(proba, n_classes)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} rows of probabilities")
    if y.size == 0:
        raise ValueError("no images to score")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    if n_classes == 2 and threshold is None:
        threshold = 0.5
    out: dict = {"n": int(y.size)}
    out.update(fast_scores(y, p, n_classes=n_classes, threshold=threshold, absent="skip",
                           metrics=("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc",
                                    "sensitivity", "specificity", "brier")))
    out["auprc_baseline"] = float(np.mean(y == 1)) if n_classes == 2 else float(np.mean(np.bincount(y, minlength=n_classes) / y.size))
    out["threshold"] = float(threshold) if n_classes == 2 else math.nan
    if detail:
        pred = predict_labels(p, n_classes=n_classes, threshold=threshold)
        cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
        prec = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        rec = np.where(support > 0, tp / np.maximum(support, 1), np.nan)  # no image of the class: undefined
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
    p = as_proba(proba, len(classes))
    cols = [1] if len(classes) == 2 else range(len(classes))
    by_class = np.ascontiguousarray(p.T)  # one row per class: contiguous scores (1,000+ classes)
    counts = np.bincount(y[(y >= 0) & (y < len(classes))], minlength=len(classes))
    out = {}
    for c in cols:
        n_pos = int(counts[c])
        if n_pos == 0 or n_pos == y.size:
            continue
        pos = y == c
        order = np.argsort(-by_class[c], kind="mergesort")
        s_sorted = by_class[c][order]
        last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
        tps = np.cumsum(pos[order])[last].astype(float)
        fps = last + 1 - tps
        fpr, tpr = np.r_[0.0, fps / (pos.size - n_pos)], np.r_[0.0, tps / n_pos]
        precision, recall = np.r_[1.0, tps / (tps + fps)], np.r_[0.0, tps / n_pos]
        out[classes[c]] = {"roc": _thin(fpr, tpr, max_points), "pr": _thin(recall, precision, max_points)}
    return out


def _thin(x: np.ndarray, y: np.ndarray, n: int) -> list[list[float]]:
    idx = _thin_index(len(x), n)
    return [[round(a, 5), round(b, 5)] for a, b in zip(x[idx].tolist(), y[idx].tolist())]  # Python floats: fast



@functools.lru_cache(maxsize=256)
def _thin_index(length: int, n: int) -> np.ndarray:
    """The at most ``n`` evenly spaced indices :func:`_thin` keeps of ``length`` points (the same for every
    class of a run: computed once)."""
    idx = np.unique(np.linspace(0, length - 1, min(n, length)).round().astype(int))
    idx.flags.writeable = False
    return idx

# --------------------------------------------------------------------------- degenerate runs

DEGENERATE_TIED = 0.5  # share of images with one score (within SCORE_TOL) holding more than one class
DEGENERATE_ONE_CLASS = 0.95  # share of the other classes' images predicted as one class
DEGENERATE_MIN_OTHERS = 10  # fewer images of the other classes: one error would be "all of them"; not judged


def _largest_tie(p: np.ndarray) -> np.ndarray:
    """Indices of the largest group of images whose score vectors are equal within :data:`SCORE_TOL`."""
    key = p[:, 1] if p.shape[1] == 2 else p[:, 0]
    order = np.argsort(key, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(key[order]) >= SCORE_TOL) + 1, key.size]
    runs = np.diff(starts)
    i = int(np.argmax(runs))
    group = order[starts[i]:starts[i + 1]]
    if p.shape[1] > 2:  # other columns equal too
        first = p[group[0]]
        group = group[np.all(np.abs(p[group] - first) < SCORE_TOL, axis=1)]
    return group


def degenerate(proba, *, n_classes: int, threshold: float | None = None, labels=None) -> str:
    """Why the scores ``proba`` describe a constant rather than a classifier ("" when they do not). Called on the
    **val** outputs only (:func:`featpipe.evaluation.record.record_run`), so a flag never looks at test.

    - **tied**: more than half the images share one score (equal within :data:`SCORE_TOL`, e.g. an RBF kernel
      that underflowed) *and*, with ``labels``, that group holds more than one class: a perfect classifier whose
      probabilities saturate at 1.0 for every positive ties only images of one class and is not flagged;
    - **one class**: relative to the class shares: with ``labels``, the run predicts one class for >= 95% of the
      images of the *other* classes (a perfect classifier at 3% prevalence predicts the majority class for 97%
      of images and is not flagged; a constant one is), judged only where the other classes have at least
      :data:`DEGENERATE_MIN_OTHERS` images (a matched 1-shot val of two images: one error is not "a constant");
      without labels, >= 95% of all images.
    Predictions come from the scores and the threshold (:func:`predict_labels`), never from rounded values."""
    p = as_proba(proba, n_classes)
    if p.shape[0] == 0:
        return ""
    y = None if labels is None else np.asarray(labels).astype(np.int64)
    group = _largest_tie(p)
    tied = group.size / p.shape[0]
    if tied > DEGENERATE_TIED and (y is None or np.unique(y[group]).size > 1):
        return f"{tied:.0%} of scores tied" + (" across classes" if y is not None else "")
    pred = predict_labels(p, n_classes=n_classes, threshold=threshold if n_classes == 2 else None)
    if y is None:
        share = np.bincount(pred, minlength=n_classes).max() / pred.size
        return f"one class predicted for {share:.0%}" if share >= DEGENERATE_ONE_CLASS else ""
    for c in range(n_classes):
        others = y != c
        if others.sum() >= DEGENERATE_MIN_OTHERS:
            share = float(np.mean(pred[others] == c))
            if share >= DEGENERATE_ONE_CLASS:
                return f"class {c} predicted for {share:.0%} of the other classes' images"
    return ""


# --------------------------------------------------------------------------- fast scores (the bootstrap's)


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


def _macro(values: list[float], absent: str) -> float:
    v = np.asarray(values, dtype=float)
    if absent == "skip":
        return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan
    return float(v.mean())


def fast_scores(y: np.ndarray, p: np.ndarray, *, n_classes: int, threshold: float | None,
                metrics: Sequence[str], absent: str = "nan") -> dict:
    """The scalar metrics of :func:`score` computed in numpy (same values; used by the bootstrap).

    ``absent``: how a multi-class AUROC/AUPRC treats a class with no image: ``"nan"`` (the bootstrap leaves that
    resample out) or ``"skip"`` (macro over the classes present; :func:`score`)."""
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
            out[m] = _macro([_auc(y == c, p[:, c]) for c in cols], absent)
        elif m == "auprc":
            cols = [1] if n_classes == 2 else range(n_classes)
            out[m] = _macro([_ap(y == c, p[:, c]) for c in cols], absent)
        elif m == "brier":
            out[m] = brier(y, p, n_classes=n_classes)
        else:
            raise ValueError(f"unknown metric {m!r} for the bootstrap")
    return out
