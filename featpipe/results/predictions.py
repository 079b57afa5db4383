"""Test-split predictions of runs, read from the predictions files: the test-sampling side of the statistics.

:class:`TestPredictions` aligns the kept test predictions of runs on one id order with their patients, and gives

- :meth:`TestPredictions.sampling`: the shared test-sampling variance of a configuration's mean over seeds and its
  test units (patients), for :func:`featpipe.results.stats.seed_summary` (the headline interval);
- :meth:`TestPredictions.pair_variance`: the same for a paired difference of two configurations (``compare``);
- :func:`bootstrap_interval`: percentile interval over patient resamples (the report's test-sampling column of
  paired differences, ``compare.bootstrap``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.names import proba_column
from featpipe.evaluation.metrics import fast_scores
from featpipe.evaluation.table import read_predictions
from featpipe.results.stats import PatientResampler, metric_units
from featpipe.results.testvar import sampling_variance


class TestPredictions:
    """Test-split predictions of runs, aligned on one id order, with patient groups for resampling."""

    def __init__(self, results_dir: str | Path | pd.DataFrame, manifest: pd.DataFrame, classes: Sequence[str]):
        self.frame = results_dir if isinstance(results_dir, pd.DataFrame) else None  # predictions held in memory
        self.results_dir = None if self.frame is not None else Path(results_dir)
        self.classes = list(classes)
        self.patient = dict(zip(manifest["id"].astype(str), manifest["patient_id"].astype(str)))
        self._cache: dict = {}

    def load(self, run_ids: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float | None]]:
        """{run_id: (ids, labels, proba (N, C), threshold)} of the test rows; runs without a file are left out.
        Each run's file is read once per object; files without the classes' ``p[<class>]`` columns (multi-label
        runs) are left out."""
        run_ids = [str(r) for r in run_ids]
        todo = [r for r in run_ids if r not in self._cache]
        if todo:
            df = (self.frame[self.frame["run_id"].astype(str).isin(todo)] if self.frame is not None
                  else read_predictions(self.results_dir, todo))
            cols = [proba_column(c) for c in self.classes]
            if not set(cols) <= set(df.columns):  # a multi-label run's file (p[<label>] per label): no class columns
                df = df.iloc[:0]
            for rid, g in df[df["split"] == "test"].groupby("run_id", sort=False):
                g = g.sort_values("id", kind="stable")
                thr = g["threshold"].iloc[0]
                thr = float(thr) if len(self.classes) == 2 and np.isfinite(thr) else None
                self._cache[str(rid)] = (g["id"].to_numpy(str), g["label"].to_numpy(np.int64), g[cols].to_numpy(float),
                                         thr)
            for r in todo:
                self._cache.setdefault(r, None)
        return {r: self._cache[r] for r in run_ids if self._cache.get(r) is not None}

    def aligned(self, run_ids: Sequence[str]) -> tuple[list, np.ndarray] | None:
        """([(labels, proba, threshold) per run], patients) of the runs that have predictions, on one id order;
        None when none has. DataError when they were scored on different images."""
        loaded = self.load(run_ids)
        runs = [loaded[r] for r in map(str, run_ids) if r in loaded]
        if not runs:
            return None
        ids = runs[0][0]
        if any(len(x[0]) != len(ids) or np.any(x[0] != ids) for x in runs):
            raise DataError("runs compared on different test images: are they of the same split?")
        return [(y, p, thr) for _, y, p, thr in runs], np.asarray([self.patient.get(i, i) for i in ids])

    def units(self, metric: str, labels: np.ndarray, patients: np.ndarray) -> float:
        """Test patients ``metric`` counts (:func:`featpipe.results.stats.metric_units` over patients per class)."""
        counts = np.asarray([np.unique(patients[labels == c]).size for c in range(len(self.classes))], dtype=float)
        return metric_units(metric, counts, float(np.unique(patients).size))

    def sampling(self, runs: pd.DataFrame, metric: str) -> tuple[float | None, float] | None:
        """(shared test-sampling variance of the mean over the runs' ``metric``, test patients it counts), or None
        when the runs have no predictions files (the caller falls back to image counts)."""
        got = self.aligned(runs["run_id"].astype(str).tolist()) if "run_id" in runs.columns else None
        if got is None:
            return None
        scored, patients = got
        var = sampling_variance(metric, scored, patients, n_classes=len(self.classes))
        return var, self.units(metric, scored[0][0], patients)

    def pair_variance(self, runs_a: Sequence[str], runs_b: Sequence[str], metric: str) -> float | None:
        """Shared test-sampling variance of mean(A) - mean(B) over paired runs (same seeds, same order)."""
        a, b = self.aligned(runs_a), self.aligned(runs_b)
        if a is None or b is None or len(a[0]) != len(runs_a) or len(b[0]) != len(runs_b):
            return None
        return sampling_variance(metric, a[0], a[1], n_classes=len(self.classes), against=b[0])

    def resampler(self, ids: np.ndarray) -> PatientResampler:
        """The patient resampler of the images ``ids`` (an id missing from the manifest is its own patient)."""
        return PatientResampler([self.patient.get(i, i) for i in ids])


def _mean_metric(runs: list, idx: np.ndarray, metric: str, n_classes: int) -> float:
    vals = [fast_scores(y[idx], p[idx], n_classes=n_classes, threshold=thr, metrics=(metric,))[metric]
            for _, y, p, thr in runs]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def bootstrap_interval(preds: TestPredictions, runs_a: list[str], runs_b: list[str] | None, *, metric: str,
                       n_boot: int, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval, over patient resamples of the test split, of the mean over seeds of ``metric``
    for the runs ``runs_a`` (or of the paired difference mean(A) - mean(B) when ``runs_b`` is given)."""
    loaded = preds.load([*runs_a, *(runs_b or [])])
    missing = [r for r in [*runs_a, *(runs_b or [])] if r not in loaded]
    if missing:  # an interval over fewer seeds, no longer paired, would be reported as if it were not
        where = f"{preds.results_dir}/predictions" if preds.results_dir is not None else "the predictions given"
        raise DataError(f"{len(missing)} compared run(s) have no test predictions in {where} (first run_id "
                        f"{missing[0]}): re-run them (fit, sweep or finetune), or set compare.bootstrap=0")
    a = [loaded[r] for r in runs_a]
    b = [loaded[r] for r in (runs_b or [])]
    if not a or (runs_b is not None and not b) or n_boot <= 0:
        return math.nan, math.nan
    ids = a[0][0]
    if any(len(x[0]) != len(ids) or np.any(x[0] != ids) for x in a + b):
        raise DataError("runs compared on different test images: are they of the same split?")
    n_classes = len(preds.classes)
    stats = []
    for idx in preds.resampler(ids).draws(n_boot, seed):
        v = _mean_metric(a, idx, metric, n_classes)
        if runs_b is not None:
            v -= _mean_metric(b, idx, metric, n_classes)
        if not math.isnan(v):
            stats.append(v)
    if not stats:
        return math.nan, math.nan
    lo, hi = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)
