"""Zero-shot (k = 0) against the trained heads in ``featpipe compare``: an **unpaired** comparison.

A zero-shot configuration's runs are its prompt sets (``seed`` = the set's index in the prompts file); a trained
configuration's runs are its seeds (k-shot subsets). Prompt set i and seed i share nothing, so pairing them by
index would be arbitrary: the two sides are two independent samples of runs, scored on the **same test images**.
Per trained configuration at k > 0 and zero-shot configuration (``pairing`` = :data:`PAIRING`):

- ``mean_diff`` = mean over A's seeds - mean over B's prompt sets (``n_seeds`` = A's seeds, ``n_b`` = B's sets);
- ``seed_ci_low/high``: Welch's t interval, ``se^2 = s_A^2 / n_A + s_B^2 / n_B`` with Welch-Satterthwaite degrees of
  freedom (a side with one run adds no variance: the interval is then conditional on that run);
- ``ci_low/high``: that interval widened by the test-sampling variance the two sides share (the same test
  patients), from the kept predictions (:func:`shared_test_variance`), added in quadrature as for paired rows;
- ``p_value``: an exact two-sample permutation test of the difference of means (every split of the pooled runs
  into groups of sizes ``n_A`` and ``n_B``; more than :data:`EXACT_SPLITS` splits: ``R`` seeded random ones,
  ``(b + 1) / (R + 1)``); its smallest attainable value (:func:`smallest_p`) feeds ``min_p_holm``.

Zero-shot configurations among themselves (k = 0) stay paired by prompt set: the same index is the same prompts.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from featpipe.results.testvar import cluster_variance, seed_influences

PAIRING = "unpaired: seeds vs prompt sets"
EXACT_SPLITS = 20_000


def welch(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
          test_var: float | None = None) -> dict:
    """``{"mean", "seed_low", "seed_high", "ci_low", "ci_high"}`` of mean(a) - mean(b), two independent samples."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"mean": float(a.mean() - b.mean()) if a.size and b.size else math.nan}
    out |= dict.fromkeys(("seed_low", "seed_high", "ci_low", "ci_high"), math.nan)
    va = a.var(ddof=1) / a.size if a.size > 1 else 0.0
    vb = b.var(ddof=1) / b.size if b.size > 1 else 0.0
    if not (a.size and b.size) or a.size + b.size < 3 or va + vb == 0:
        return out
    parts = [v * v / (n - 1) for v, n in ((va, a.size), (vb, b.size)) if n > 1]
    df = (va + vb) ** 2 / sum(parts)
    q = 0.5 + confidence / 2
    t, z = float(stats.t.ppf(q, df)), float(stats.norm.ppf(q))
    seed_half = t * math.sqrt(va + vb)
    vt = test_var if test_var is not None and math.isfinite(test_var) and test_var > 0 else 0.0
    half = math.sqrt(seed_half ** 2 + z * z * vt)
    out["seed_low"], out["seed_high"] = out["mean"] - seed_half, out["mean"] + seed_half
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def permutation_p(a: Sequence[float], b: Sequence[float], *, seed: int = 0, n_random: int = 10_000) -> float:
    """Two-sided two-sample permutation p of mean(a) - mean(b): exact over every split of the pooled values
    when there are at most :data:`EXACT_SPLITS`, else ``(b + 1) / (R + 1)`` over ``R`` seeded random splits."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not (a.size and b.size):
        return math.nan
    pooled, n, total = np.r_[a, b], a.size, float(np.r_[a, b].sum())
    obs = abs(a.mean() - b.mean())

    def diff(sum_a):
        return np.abs(sum_a / n - (total - sum_a) / b.size)

    if math.comb(pooled.size, n) <= EXACT_SPLITS:
        sums = np.array([pooled[list(c)].sum() for c in itertools.combinations(range(pooled.size), n)])
        return float(np.mean(diff(sums) >= obs - 1e-12))
    rng = np.random.default_rng(seed)
    sums = np.array([pooled[rng.permutation(pooled.size)[:n]].sum() for _ in range(n_random)])
    return (int(np.sum(diff(sums) >= obs - 1e-12)) + 1) / (n_random + 1)


def smallest_p(n_a: int, n_b: int, n_random: int = 10_000) -> float:
    """The smallest p :func:`permutation_p` can give for groups of ``n_a`` and ``n_b`` runs (two-sided: the most
    extreme split and, for equal groups, its mirror)."""
    if n_a <= 0 or n_b <= 0:
        return math.nan
    splits = math.comb(n_a + n_b, n_a)
    if splits > EXACT_SPLITS:
        return 1.0 / (n_random + 1)
    return (2.0 if n_a == n_b else 1.0) / splits


def shared_test_variance(metric: str, runs_a: Sequence[tuple], runs_b: Sequence[tuple], patients, *,
                         n_classes: int) -> float | None:
    """The test-sampling variance of mean(A) - mean(B) that the runs share (the same test patients), without
    each run's own part (already in the Welch term): ``V(mean psi_A - mean psi_B) - V(d_A) / n_A - V(d_B) / n_B``
    with ``V(d)`` a side's between-run part of the influence variance, at least 0. None without a linearisation."""
    pa = seed_influences(metric, runs_a, n_classes=n_classes)
    pb = seed_influences(metric, runs_b, n_classes=n_classes)
    if not pa or not pb:
        return None
    if any(np.isnan(x).any() for x in pa + pb):
        return math.nan
    total = cluster_variance(np.mean(pa, axis=0) - np.mean(pb, axis=0), patients)

    def own(psis):  # V(d) / n: the runs' own parts in the variance of their mean
        n = len(psis)
        if n < 2:
            return 0.0
        v_mean = cluster_variance(np.mean(psis, axis=0), patients)
        v_each = float(np.mean([cluster_variance(x, patients) for x in psis]))
        return max(0.0, (v_each - v_mean) * n / (n - 1)) / n

    return max(0.0, total - own(pa) - own(pb))
