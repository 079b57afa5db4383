"""Calibration: expected calibration error, the reliability diagram's bins, and temperature scaling on val.

- **ECE** (:func:`ece`): top-label calibration error over :data:`ECE_BINS` (15) equal-width confidence bins
  ``(0, 1/15], (1/15, 2/15], ..., (14/15, 1]`` (a confidence of exactly 0 goes to the first bin): the confidence
  of an image is its largest class probability, it is correct when that class (the arg-max) is its label, and
  ``ECE = sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|``. The arg-max, not the val
  threshold: ECE judges the probabilities themselves.
- **Reliability diagram** (:func:`reliability`): per bin its count, accuracy and mean confidence.
- **Temperature scaling** (:func:`fit_temperature`, :func:`apply_temperature`): the log-probabilities divided
  by one scalar T, then softmax again; T minimises the val negative log-likelihood (bounded search over
  ``log T`` in ``[log 0.01, log 100]``, deterministic). Arg-max never changes; with two classes
  ``p(class 1)`` is a monotone function of the original, so every image's rank (AUROC, AUPRC) is unchanged.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
T_BOUNDS = (0.01, 100.0)
_TINY = 1e-300


def _as_proba(proba) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    return np.column_stack([1.0 - p, p]) if p.ndim == 1 else p


def _bin_of(conf: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)


def ece_terms(labels, proba, *, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(bin of each image, correct - confidence of each image): :func:`ece` of any subset ``idx`` of the images
    (repeats allowed) is ``sum(|bincount(bin[idx], weights=terms[idx])|) / len(idx)`` (a bootstrap's fast path)."""
    p = _as_proba(proba)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(labels, dtype=np.int64)).astype(np.float64)
    return _bin_of(conf, bins), correct - conf


def reliability(labels, proba, *, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: ``edges`` (bins + 1), ``count``, ``accuracy`` and ``confidence`` (NaN
    where a bin is empty)."""
    p = _as_proba(proba)
    y = np.asarray(labels, dtype=np.int64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = _bin_of(conf, bins)
    count = np.bincount(b, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(b, weights=correct, minlength=bins) / count
        mean_conf = np.bincount(b, weights=conf, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count.astype(np.int64), "accuracy": acc,
            "confidence": mean_conf}


def ece(labels, proba, *, bins: int = ECE_BINS) -> float:
    """Expected calibration error (top-label, ``bins`` equal-width bins; NaN without images)."""
    if len(labels) == 0:
        return float("nan")
    r = reliability(labels, proba, bins=bins)
    full = r["count"] > 0
    w = r["count"][full] / r["count"].sum()
    return float(np.sum(w * np.abs(r["accuracy"][full] - r["confidence"][full])))


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` per row (columns as given; a 1-D ``p(class 1)`` comes back as (N, 2))."""
    z = np.log(np.maximum(_as_proba(proba), _TINY)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(labels, proba) -> float:
    """Mean negative log-likelihood of the labels under ``proba``."""
    p = _as_proba(proba)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _TINY))))


def fit_temperature(labels, proba) -> float:
    """The T in :data:`T_BOUNDS` minimising the NLL of ``labels`` under :func:`apply_temperature` (val outputs)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        raise ValueError("temperature scaling needs val images (split.val_policy and the val split)")
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(lambda t: nll(labels, apply_temperature(proba, np.exp(t))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    # never worse than no scaling (the bounded search can stop in a flat region)
    return t if nll(labels, apply_temperature(proba, t)) <= nll(labels, proba) else 1.0
