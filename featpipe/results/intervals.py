"""Intervals for a configuration's mean over seeds: seed luck, test-sampling luck, and both together.

A configuration is run with ``n`` seeds (``n`` k-shot subsets) and scored on **one** test split. Its reported
number is the plain mean over seeds ``m``. Two kinds of luck move ``m``:

- **seed luck** (which images were labelled): the sample variance of the per-seed values over ``n``,
  ``V_seed = s^2 / n``, with ``n - 1`` degrees of freedom;
- **test-sampling luck** (which patients happened to be tested): shared by every seed, so it does not shrink
  with ``n``. It is ``V_test``, the variance of ``m`` over resamples of test **patients** that all seeds share
  (their own parts are in their spread), computed from the per-image predictions by linearisation
  (:func:`featpipe.results.testvar.sampling_variance`, clustered by patient) and expressed as an *effective
  number of test units* ``n_eff = m (1 - m) / V_test`` (a proportion measured on ``n_eff`` independent units
  has that variance; at most ``n x`` the units). At 0 or 1, where no variance can be seen, and when the
  predictions are not at hand, ``n_eff`` is the number of units the metric is measured on (:func:`effective_n`).

**The headline interval** (``ci_low``, ``ci_high``) covers the mean over both (the expected metric of a
newly drawn k-shot subset on a newly drawn test population) with an **Agresti-Coull-type** form: the test
term is the variance of the shrunk proportion ``p~ = (n_eff m + z^2/2) / (n_eff + z^2)``, ``p~ (1 - p~) /
(n_eff + z^2)``, so that identical seeds at 1.0 on 20 images still give the width of 20 images (``[0.81,
1]``); the half-width is ``sqrt(t_{n-1}^2 V_seed + t_{u-1}^2 V_test)`` for ``u`` test units (each component at
its own quantile, so the interval is never narrower than either component's), and the interval runs from ``min(m, p~) - half`` to
``max(m, p~) + half``, clipped to the metric's bounds. It always contains ``m``; with many units and a wide seed spread it is the
plain Student-t interval over seeds.

Beside it: the **seed interval** (``seed_low``, ``seed_high``: the same form, with the test term of the
``n x n_eff`` pooled scored units instead, so that it describes the mean over subsets on *this* test split and
is never of zero width on a finite test set) and the **test-sampling interval** (``test_low``, ``test_high``:
the Agresti-Coull interval of ``n_eff`` units alone).

Paired differences (``featpipe compare``) are unbounded: :func:`difference_interval` gives ``mean +-
sqrt(t_{n-1}^2 s^2 / n + z^2 V_test)`` with the test variance of the difference.

``benchmarks/bench_coverage.py`` measures how often these intervals cover the truth in simulated studies
(results in ``benchmarks/results/coverage.md``).
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np

NAN_KEYS = ("mean", "std", "ci_low", "ci_high", "seed_low", "seed_high", "test_low", "test_high", "min", "max",
            "spread", "n_eff")


def _clean(values: Iterable[float]) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return v[np.isfinite(v)]


@functools.lru_cache(maxsize=4096)
def _quantiles(confidence: float, df: float) -> tuple[float, float]:
    """(z, t_df) two-sided quantiles of ``confidence``; ``df = inf`` gives t = z (memoised: a summary of a sweep
    asks for the same few thousands of times)."""
    from scipy import stats

    q = 0.5 + confidence / 2
    z = float(stats.norm.ppf(q))
    return z, (z if not math.isfinite(df) else float(stats.t.ppf(q, df)))


def effective_n(mean: float, test_var: float | None, n_units: float, cap: float = math.inf) -> float:
    """Effective number of independent test units: ``mean (1 - mean) / test_var`` on the unit scale, at most
    ``cap``; ``n_units`` when the test variance is unknown (None/NaN) or the mean sits at 0 or 1 (where no
    variance is seen, the units the metric counts are the floor). ``n_units`` is what the metric counts (images,
    or the positives for sensitivity; patients where known); ``cap``: ``n_seeds x n_units`` (seeds that share no
    error measure the mean on that many units)."""
    n_units = float(n_units) if n_units and math.isfinite(n_units) and n_units > 0 else math.nan
    if test_var is None or not math.isfinite(test_var) or not 0.0 < mean < 1.0:
        return n_units
    n = mean * (1.0 - mean) / test_var if test_var > 0 else math.inf
    return float(max(1.0, min(n, cap)))


def _ac(mean: float, n_eff: float, z: float) -> tuple[float, float]:
    """(shrunk centre p~, its variance) of an Agresti-Coull interval on ``n_eff`` units."""
    nt = n_eff + z * z
    p = (n_eff * mean + z * z / 2.0) / nt
    return p, p * (1.0 - p) / nt


def _half(v_seed: float, n_seeds: int, v_test: float, confidence: float, test_df: float = math.inf) -> float:
    """``sqrt(t_{n-1}^2 v_seed + t_{test_df}^2 v_test)``: each component at its own quantile, added in quadrature
    (never narrower than either component's own interval)."""
    _, t = _quantiles(confidence, max(n_seeds - 1, 1))
    _, tt = _quantiles(confidence, test_df)
    return math.sqrt(t * t * v_seed + tt * tt * v_test)


def _test_df(n_units: float) -> float:
    """Degrees of freedom of the test term: units - 1 (a variance estimated from that many patients)."""
    return max(n_units - 1.0, 1.0) if math.isfinite(n_units) else math.inf


def _combined(mean: float, v_seed: float, n_seeds: int, n_eff: float, z: float, confidence: float,
              n_units: float) -> tuple[float, float]:
    """``[min(m, p~) - half, max(m, p~) + half]`` on the unit scale (:func:`_half`, Agresti-Coull test term)."""
    p, v_test = (mean, 0.0) if not math.isfinite(n_eff) else _ac(mean, n_eff, z)
    half = _half(v_seed, n_seeds, v_test, confidence, _test_df(n_units))
    return max(0.0, min(mean, p) - half), min(1.0, max(mean, p) + half)


def interval(values: Iterable[float], *, n_units: float, test_var: float | None = None, confidence: float = 0.95,
             bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Mean over seeds with the headline interval (both kinds of luck) and its two components.

    ``values``: one metric per seed (NaN dropped); ``n_units``: how many test units the metric is measured on
    (see :func:`effective_n`); ``test_var``: test-sampling variance of the mean over seeds (in the metric's
    units; None when unknown). Returns ``mean, std, ci_low, ci_high, seed_low, seed_high, test_low, test_high,
    min, max, spread, n, n_eff`` (intervals NaN where undefined: the seed parts need two seeds)."""
    v = _clean(values)
    n = int(v.size)
    out = dict.fromkeys(NAN_KEYS, math.nan) | {"n": n}
    if n == 0:
        return out
    a, b = float(bounds[0]), float(bounds[1])
    u = np.clip((v - a) / (b - a), 0.0, 1.0)
    m = float(u.mean())
    scale = b - a
    tv = None if test_var is None or not math.isfinite(test_var) else test_var / scale ** 2
    n_eff = effective_n(m, tv, n_units, cap=n * n_units if n_units and math.isfinite(n_units) else math.inf)
    z, _ = _quantiles(confidence, math.inf)
    out |= {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "spread": float(v.max() - v.min()),
            "n_eff": n_eff}
    if math.isfinite(n_eff):
        p, vt = _ac(m, n_eff, z)
        half = _half(0.0, 2, vt, confidence, _test_df(float(n_units)))
        out["test_low"], out["test_high"] = a + scale * max(0.0, min(m, p) - half), a + scale * min(1.0, max(m, p) + half)
    if n < 2:
        return out
    s2 = float(u.var(ddof=1))
    out["std"] = float(v.std(ddof=1))
    lo, hi = _combined(m, s2 / n, n, n_eff, z, confidence, float(n_units))
    out["ci_low"], out["ci_high"] = a + scale * lo, a + scale * hi
    lo, hi = _combined(m, s2 / n, n, n * n_eff, z, confidence, n * float(n_units))
    out["seed_low"], out["seed_high"] = a + scale * lo, a + scale * hi
    return out


def difference_interval(diffs: Iterable[float], *, test_var: float | None = None, confidence: float = 0.95) -> dict:
    """Mean of paired per-seed differences with ``mean +- sqrt(t^2 s^2/n + z^2 test_var)`` (``ci_low, ci_high``;
    ``test_var`` None: seed luck only) and the seed-only t-interval (``seed_low, seed_high``)."""
    d = _clean(diffs)
    n = int(d.size)
    out = {"mean": float(d.mean()) if n else math.nan, "n": n}
    out |= dict.fromkeys(("ci_low", "ci_high", "seed_low", "seed_high"), math.nan)
    if n < 2:
        return out
    vs = float(d.var(ddof=1)) / n
    vt = test_var if test_var is not None and math.isfinite(test_var) and test_var > 0 else 0.0
    seed_half, half = _half(vs, n, 0.0, confidence), _half(vs, n, vt, confidence)
    out["seed_low"], out["seed_high"] = out["mean"] - seed_half, out["mean"] + seed_half
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out
