"""``featpipe compare``: is configuration A better than B at k shots, and by how much?

Every configuration sees the same k-shot subset for a given seed (the splits file fixes it), so two
configurations are compared **paired by seed**: per shot count and metric, the differences
``A(seed) - B(seed)`` over the seeds both have give

- ``mean_diff`` and a 95% Student-t interval of the mean difference (``ci_low``, ``ci_high``);
- ``p_value``: an exact two-sided paired permutation test (all ``2^n`` sign flips of the differences;
  10,000 seeded random flips past 16 seeds): how often a mean difference at least this large arises
  when the labels A/B are exchangeable within each seed. With 5 seeds the smallest possible p is 1/16;
- ``p_holm``: Holm's step-down correction over the family (every row of the same metric in the file).

For **chosen pairs** (per shot count the configuration chosen on val against the runner-up on val, plus
``compare.pairs``), a paired **patient-level bootstrap** over the test images adds the test-sampling
interval of the same mean difference (``boot_ci_low``, ``boot_ci_high``): patients are resampled with
replacement (all their images together) and both configurations are re-scored on the same resample,
from their saved predictions. The seed interval says how much the answer depends on which images were
labelled; the bootstrap interval how much on which patients happened to be in the test split.

Rows come from the current split only (:func:`featpipe.results.summary.current_split`); rows of degenerate runs
are compared like any other but flagged (``degenerate_a``, ``degenerate_b``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write
from featpipe.core.names import proba_column
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from featpipe.evaluation.metrics import fast_scores
from featpipe.evaluation.table import RUNS_CSV, read_predictions, read_runs
from featpipe.params.config import METRIC_NAMES
from featpipe.results.stats import PatientResampler, summarize
from featpipe.results.summary import LOWER_IS_BETTER, config_labels, current_split, degenerate_flags, select_best

COLUMNS = ["shots", "config_a", "config_b", "metric", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm",
           "boot_ci_low", "boot_ci_high", "degenerate_a", "degenerate_b"]
COMPARISONS_CSV = "comparisons.csv"


def permutation_p(diffs: Sequence[float], *, seed: int = 0, n_random: int = 10_000) -> float:
    """Two-sided paired permutation (sign-flip) p-value of the mean of ``diffs``."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return math.nan
    obs = abs(d.mean())
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, n))
    means = np.abs(signs @ d) / n
    return float(np.mean(means >= obs - 1e-12))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN), monotone and capped at 1."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = order.size, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _table(runs: pd.DataFrame) -> pd.DataFrame:
    t = runs.copy()
    t["config"] = config_labels(t).to_numpy()
    t["degenerate_flag"] = degenerate_flags(t).to_numpy()
    t["shots"] = t["shots"].astype(int)
    t["seed"] = t["seed"].astype(int)
    return t


def seed_comparisons(runs: pd.DataFrame, *, metrics: Sequence[str], reference: str | None = None,
                     seed: int = 0) -> pd.DataFrame:
    """Every pair (or every configuration against ``reference``) per shot count and metric, paired by seed."""
    t = _table(runs)
    if reference is not None and reference not in set(t["config"]):
        raise DataError(f"compare.reference {reference!r} is not a configuration of the table "
                        f"(have: {', '.join(sorted(set(t['config']))[:6])} ...)")
    rows = []
    for metric in metrics:
        if metric not in t.columns:
            raise DataError(f"metric {metric!r} is not a column of runs.csv")
        for k, g in t.groupby("shots", sort=True):
            wide = g.pivot_table(index="seed", columns="config", values=metric, aggfunc="first")
            degen = g.groupby("config")["degenerate_flag"].any()
            configs = sorted(wide.columns)
            pairs = ([(reference, c) for c in configs if c != reference] if reference is not None and reference in configs
                     else list(itertools.combinations(configs, 2)))
            for a, b in pairs:
                both = wide[[a, b]].dropna()
                d = (both[a] - both[b]).to_numpy(dtype=float)
                s = summarize(d, bounds=None)
                rows.append({"shots": int(k), "config_a": a, "config_b": b, "metric": metric, "n_seeds": int(d.size),
                             "mean_diff": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                             "p_value": permutation_p(d, seed=seed), "boot_ci_low": math.nan, "boot_ci_high": math.nan,
                             "degenerate_a": bool(degen.get(a, False)), "degenerate_b": bool(degen.get(b, False))})
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "p_holm"])
    out["p_holm"] = np.nan
    for metric, idx in out.groupby("metric").groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_numpy())
    return out[COLUMNS]


# --------------------------------------------------------------------------- patient bootstrap


class TestPredictions:
    """Test-split predictions of runs, aligned on one id order, with patient groups for resampling."""

    def __init__(self, results_dir: str | Path | pd.DataFrame, manifest: pd.DataFrame, classes: Sequence[str]):
        self.frame = results_dir if isinstance(results_dir, pd.DataFrame) else None  # predictions held in memory
        self.results_dir = None if self.frame is not None else Path(results_dir)
        self.classes = list(classes)
        self.patient = dict(zip(manifest["id"].astype(str), manifest["patient_id"].astype(str)))

    def load(self, run_ids: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float | None, np.ndarray]]:
        """{run_id: (ids, labels, proba (N, C), threshold)} of the test rows; runs without a file are left out."""
        run_ids = [str(r) for r in run_ids]
        df = (self.frame[self.frame["run_id"].astype(str).isin(run_ids)] if self.frame is not None
              else read_predictions(self.results_dir, run_ids))
        out = {}
        cols = [proba_column(c) for c in self.classes]
        for rid, g in df[df["split"] == "test"].groupby("run_id", sort=False):
            g = g.sort_values("id", kind="stable")
            thr = g["threshold"].iloc[0]
            thr = float(thr) if len(self.classes) == 2 and np.isfinite(thr) else None
            out[str(rid)] = (g["id"].to_numpy(str), g["label"].to_numpy(np.int64), g[cols].to_numpy(float), thr)
        return out

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
    a = [loaded[r] for r in runs_a if r in loaded]
    b = [loaded[r] for r in (runs_b or []) if r in loaded]
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


def config_entries(runs: pd.DataFrame, metric: str) -> dict[str, dict]:
    """{"<config>|k<shots>": {"config", "shots", "n_degenerate", "val_<metric>": {"mean"}}} for
    :func:`featpipe.results.summary.select_best` (``runs`` has a ``config`` column)."""
    out = {}
    col = f"val_{metric}"
    for (cfg, k), g in runs.groupby(["config", "shots"], sort=True):
        v = g[col].astype(float).mean() if col in g.columns else math.nan
        out[f"{cfg}|k{int(k)}"] = {"config": cfg, "shots": int(k), "n_degenerate": int(degenerate_flags(g).sum()),
                                   col: {"mean": float(v)}}
    return out


def chosen_pairs(entries: Mapping[str, Mapping], metric: str, extra: Sequence[str] = ()) -> set[tuple[int, str, str]]:
    """(shots, A, B): per shot count the configuration chosen on val against the runner-up on val, plus
    ``extra`` pairs ("A vs B", at every shot count)."""
    out = set()
    for k, name in select_best(entries, metric).items():
        rest = {n: e for n, e in entries.items() if e["shots"] == k and n != name}
        second = select_best(rest, metric).get(k)
        if second:
            out.add((k, entries[name]["config"], entries[second]["config"]))
    for text in extra:
        a, sep, b = text.partition(" vs ")
        if not sep:
            raise DataError(f"compare.pairs entry {text!r} must look like 'A vs B'")
        for k in {e["shots"] for e in entries.values()}:
            out.add((k, a.strip(), b.strip()))
    return out


def run_ids(runs: pd.DataFrame, config: str, shots: int, seeds: Sequence[int]) -> list[str]:
    g = runs[(runs["config"] == config) & (runs["shots"].astype(int) == shots)].set_index("seed")
    return [str(g.loc[s, "run_id"]) for s in seeds if s in g.index]


def compare_runs(runs: pd.DataFrame, preds: TestPredictions | None, *, settings, select_metric: str) -> pd.DataFrame:
    """The comparisons table of ``runs`` (one split's rows): paired seed comparisons, plus the patient
    bootstrap of the chosen pairs from ``preds`` when ``settings.bootstrap > 0`` (``settings``: the
    ``compare`` parameters; ``select_metric``: ``report.metric``, what "chosen on val" means)."""
    c = settings
    table = seed_comparisons(runs, metrics=list(c.metrics), reference=c.reference, seed=c.seed)
    runs = runs.assign(config=config_labels(runs).to_numpy(), seed=runs["seed"].astype(int))
    if c.bootstrap > 0 and "run_id" in runs.columns and preds is not None:
        for k, a, b in sorted(chosen_pairs(config_entries(runs, select_metric), select_metric, c.pairs)):
            seeds = sorted(set(runs.loc[(runs["config"] == a) & (runs["shots"] == k), "seed"])
                           & set(runs.loc[(runs["config"] == b) & (runs["shots"] == k), "seed"]))
            for metric in (m for m in c.metrics if m in METRIC_NAMES):  # per-class metrics: seed comparison only
                lo, hi = bootstrap_interval(preds, run_ids(runs, a, k, seeds), run_ids(runs, b, k, seeds),
                                            metric=metric, n_boot=c.bootstrap, seed=c.seed)
                sel = (table["shots"] == k) & (table["metric"] == metric)
                fwd = sel & (table["config_a"] == a) & (table["config_b"] == b)
                rev = sel & (table["config_a"] == b) & (table["config_b"] == a)
                table.loc[fwd, ["boot_ci_low", "boot_ci_high"]] = [lo, hi]
                table.loc[rev, ["boot_ci_low", "boot_ci_high"]] = [-hi, -lo]
    return table


def compare(results_dir: str | Path, *, splits_path: str | Path, manifest_path: str | Path, params,
            out: str | Path | None = None) -> pd.DataFrame:
    """Write ``<results_dir>/comparisons.csv`` (or ``out``) for the current split's rows; returns it."""
    splits = load_splits(splits_path)
    runs, _ = current_split(read_runs(Path(results_dir) / RUNS_CSV), splits.sha256)
    if runs.empty:
        raise DataError(f"{Path(results_dir) / RUNS_CSV} has no runs of the current split: run fit/sweep first")
    preds = (TestPredictions(results_dir, read_manifest(manifest_path), splits.classes)
             if params.compare.bootstrap > 0 else None)
    table = compare_runs(runs, preds, settings=params.compare, select_metric=params.report.metric)
    path = Path(out) if out else Path(results_dir) / COMPARISONS_CSV
    atomic_write(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    return table


def verdict(row: Mapping, alpha: float = 0.05) -> str:
    """One phrase answering "is A better than B?" for a comparisons row."""
    p = row.get("p_holm", math.nan)
    d = row.get("mean_diff", math.nan)
    if not np.isfinite(d) or not np.isfinite(p):
        return "not enough paired seeds"
    better = d < 0 if row.get("metric") in LOWER_IS_BETTER else d > 0
    if p < alpha:
        return f"{'A' if better else 'B'} better (Holm p = {p:.3g})"
    return f"no detectable difference (Holm p = {p:.2g})"
