"""An interval for a configuration's mean test ECE (expected calibration error, :mod:`featpipe.evaluation.calibration`).

ECE is not a proportion, so the binomial-style intervals of the other metrics do not apply. Its interval is a
**two-level percentile bootstrap** of the mean ECE over seeds: each draw resamples the seeds (runs) with
replacement and, independently, the test units (patients where the manifest names them, else images) with
replacement, and recomputes every drawn run's ECE on the drawn test units; the interval is the 2.5 and 97.5
percentiles of :data:`ECE_BOOT` draws (``default_rng(seed)``, deterministic). It covers both kinds of luck, as the
headline interval does: which images were labelled and which patients were tested. The point estimate is the
mean of the runs' own ECEs (runs.csv's ``ece``). ECE is biased upwards on few images (empty and thin bins);
the bootstrap does not remove that bias.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from featpipe.evaluation.calibration import ECE_BINS, ece_terms
from featpipe.results.predictions import TestPredictions
from featpipe.results.stats import PatientResampler

ECE_BOOT = 1000


def method(units: str, n_boot: int = ECE_BOOT) -> str:
    """The one line that states how the interval was made."""
    return (f"95% percentile bootstrap of the mean test ECE over seeds ({ECE_BINS} bins): seeds and test {units} "
            f"resampled with replacement, {n_boot} draws")


def ece_interval(preds: TestPredictions, run_ids: Sequence[str], *, n_boot: int = ECE_BOOT, seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "seeds", "units", "method"}`` for the runs ``run_ids`` of one configuration
    (their test predictions through ``preds``); ``{}`` when none has predictions."""
    got = preds.aligned(list(map(str, run_ids)))
    if got is None:
        return {}
    scored, patients = got
    units = "patients" if np.unique(patients).size < len(patients) else "images"
    terms = [ece_terms(y, p) for y, p, _ in scored]
    n = len(patients)
    point = float(np.mean([np.abs(np.bincount(b, weights=t, minlength=ECE_BINS)).sum() / n for b, t in terms]))
    rng = np.random.default_rng(seed + 1)  # the seeds' draws; the patients' use default_rng(seed)
    # each run's bins offset by its row: one bincount per draw sums every drawn run's bins, each in the order of
    # the drawn units, as a bincount per run would
    bins = np.stack([b for b, _ in terms]) + (np.arange(len(terms)) * ECE_BINS)[:, None]
    weights = np.stack([t for _, t in terms])
    stats = []
    for idx in PatientResampler(patients).draws(n_boot, seed):
        pick = rng.integers(0, len(terms), len(terms))
        if idx.size:
            runs = np.unique(pick)  # each drawn run's ECE on these units, once (runs are drawn with repeats)
            sums = np.bincount(bins[runs][:, idx].ravel(), weights=weights[runs][:, idx].ravel(),
                               minlength=len(terms) * ECE_BINS).reshape(len(terms), ECE_BINS)[runs]
            drawn = dict(zip(runs.tolist(), (np.abs(sums).sum(axis=1) / idx.size).tolist()))
            stats.append(np.mean([drawn[i] for i in pick.tolist()]))
    lo, hi = np.quantile(stats, [0.025, 0.975]) if stats else (math.nan, math.nan)
    return {"mean": point, "ci_low": float(lo), "ci_high": float(hi), "seeds": len(terms), "units": units,
            "method": method(units, n_boot)}
