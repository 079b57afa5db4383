"""``featpipe compare``: is configuration A better than B at k shots, and by how much?

Every configuration sees the same k-shot subset for a given seed (the splits file fixes it), so two
configurations are compared **paired by seed**. **Which comparisons** (the family): per shot count, the
configuration chosen on val (best mean ``val_<report.metric>`` among those without a degenerate run) against
each other one, or, with ``compare.reference``, every configuration against that one. Per comparison and metric,
the differences ``A(seed) - B(seed)`` over the seeds both have give

- ``mean_diff`` and its 95% interval (``ci_low``, ``ci_high``) for **both kinds of luck**: the seed spread of
  the differences and the test-sampling variance of the paired difference that the seeds share (patients
  resampled, from the kept predictions; :func:`featpipe.results.intervals.difference_interval`); the seed-only
  interval beside it (``seed_ci_low``, ``seed_ci_high``). Without predictions files ``ci_*`` equal ``seed_ci_*``;
- ``p_value``: an exact two-sided paired permutation test (all ``2^n`` sign flips of the differences; past 16
  seeds ``R = 10,000`` seeded random flips and ``p = (b + 1) / (R + 1)``, never 0);
- ``p_holm``: Holm's step-down correction over the family of that shot count and metric (``family`` rows);
  ``min_p_holm``: the smallest Holm-adjusted p that ``n_seeds`` paired seeds can reach in that family
  (``family x 2 / 2^n``). Where it is above 0.05 no difference can be significant, whatever its size.

For **chosen pairs** (per shot count the configuration chosen on val against the runner-up on val, plus
``compare.pairs``), a paired **patient-level bootstrap** over the test images adds the percentile interval of the
same mean difference over test-patient resamples (``boot_ci_low``, ``boot_ci_high``).

**Zero-shot** configurations (k = 0: their runs are prompt sets, not seeds) are set against the trained ones at
every k > 0 **unpaired** (``pairing``; :mod:`featpipe.results.unpaired`: Welch interval, two-sample permutation
test; prompt set i and seed i share nothing), in the same Holm family as the paired rows of that k.

Rows come from the current split only (:func:`featpipe.results.summary.current_split`); rows of degenerate runs
are compared like any other but flagged (``degenerate_a``, ``degenerate_b``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from featpipe.evaluation.table import RUNS_CSV, read_runs
from featpipe.results import unpaired
from featpipe.results.predictions import TestPredictions, bootstrap_interval
from featpipe.results.stats import summarize
from featpipe.results.summary import (
    FALLBACK_METRIC,
    LOWER_IS_BETTER,
    config_labels,
    current_split,
    degenerate_flags,
    select_best,
)
from featpipe.params.study import METRIC_NAMES

COLUMNS = ["shots", "config_a", "config_b", "metric", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm",
           "seed_ci_low", "seed_ci_high", "family", "min_p_holm", "boot_ci_low", "boot_ci_high", "degenerate_a",
           "degenerate_b", "pairing", "n_b"]  # pairing: seeds | unpaired (zero-shot: B's runs are prompt sets, n_b)
COMPARISONS_CSV = "comparisons.csv"
EXACT_UP_TO = 16  # seeds: all 2^n sign flips; more: random flips


def permutation_p(diffs: Sequence[float], *, seed: int = 0, n_random: int = 10_000) -> float:
    """Two-sided paired permutation (sign-flip) p-value of the mean of ``diffs``: exact over all ``2^n`` flips
    up to 16 values, else ``(b + 1) / (R + 1)`` over ``R = n_random`` seeded random flips (``b`` as extreme)."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return math.nan
    obs = abs(d.mean())
    if n <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return float(np.mean(np.abs(signs @ d) / n >= obs - 1e-12))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, n))
    b = int(np.sum(np.abs(signs @ d) / n >= obs - 1e-12))
    return (b + 1) / (n_random + 1)


def smallest_p(n_seeds: int, n_random: int = 10_000) -> float:
    """The smallest two-sided p :func:`permutation_p` can give for ``n_seeds`` paired seeds."""
    if n_seeds <= 0:
        return math.nan
    return 2.0 / 2 ** n_seeds if n_seeds <= EXACT_UP_TO else 1.0 / (n_random + 1)


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


def _pairs(configs: list[str], k: int, *, reference: str | None, chosen: Mapping[int, str] | None) -> list:
    if reference is not None:
        return [(reference, c) for c in configs if c != reference] if reference in configs else []
    if chosen is not None:
        a = chosen.get(k)
        return [(a, c) for c in configs if c != a] if a in configs else []
    return list(itertools.combinations(configs, 2))


def seed_comparisons(runs: pd.DataFrame, *, metrics: Sequence[str], reference: str | None = None,
                     chosen: Mapping[int, str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Per shot count and metric, paired by seed: every configuration against ``reference``, else the
    configuration ``chosen[k]`` against each other one (a shot count without a choice has no rows), else
    (neither given) every pair. Holm over each (shot count, metric) family. Seed intervals only
    (:func:`compare_runs` adds the test-sampling part)."""
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
            for a, b in _pairs(sorted(wide.columns), int(k), reference=reference, chosen=chosen):
                both = wide[[a, b]].dropna()
                d = (both[a] - both[b]).to_numpy(dtype=float)
                s = summarize(d, bounds=None)
                rows.append({"shots": int(k), "config_a": a, "config_b": b, "metric": metric, "n_seeds": int(d.size),
                             "mean_diff": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                             "seed_ci_low": s["seed_low"], "seed_ci_high": s["seed_high"],
                             "p_value": permutation_p(d, seed=seed), "boot_ci_low": math.nan, "boot_ci_high": math.nan,
                             "degenerate_a": bool(degen.get(a, False)), "degenerate_b": bool(degen.get(b, False))})
        rows += _zeroshot_rows(t, metric, reference=reference, chosen=chosen, seed=seed)
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "family", "min_p_holm")])
    out["p_holm"], out["family"], out["min_p_holm"] = np.nan, 0, np.nan
    out["pairing"] = out["pairing"].astype(object).fillna("seeds")
    floor = [unpaired.smallest_p(int(n), int(m)) if how == unpaired.PAIRING else smallest_p(int(n))
             for n, m, how in zip(out["n_seeds"], out["n_b"].fillna(0), out["pairing"])]
    for idx in out.groupby(["metric", "shots"]).groups.values():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_numpy())
        out.loc[idx, "family"] = len(idx)
        out.loc[idx, "min_p_holm"] = [min(1.0, len(idx) * floor[out.index.get_loc(i)]) for i in idx]
    out = out[COLUMNS]
    out.attrs["notes"] = seed_gaps(runs)  # the seeds left out of the pairing, and why: what compare and report print
    return out


def _zeroshot_rows(t: pd.DataFrame, metric: str, *, reference: str | None, chosen: Mapping[int, str] | None,
                   seed: int) -> list[dict]:
    """Trained configurations at each k > 0 against the zero-shot configurations (k = 0), unpaired
    (:mod:`featpipe.results.unpaired`): ``chosen[k]`` against each zero-shot one, every configuration against a
    zero-shot ``reference`` (or a trained ``reference`` against each zero-shot one), else every pair."""
    zero = t[t["shots"] == 0]
    if zero.empty or metric not in t.columns:
        return []
    zconfigs = sorted(set(zero["config"]))
    rows = []
    for k, g in t[t["shots"] > 0].groupby("shots", sort=True):
        trained = sorted(set(g["config"]))
        if reference in zconfigs:
            pairs = [(a, reference) for a in trained]
        elif reference is not None:
            pairs = [(reference, z) for z in zconfigs] if reference in trained else []
        elif chosen is not None:
            pairs = [(chosen[int(k)], z) for z in zconfigs] if chosen.get(int(k)) in trained else []
        else:
            pairs = [(a, z) for a in trained for z in zconfigs]
        for a, b in pairs:
            va = g.loc[g["config"] == a, metric].astype(float).to_numpy()
            vb = zero.loc[zero["config"] == b, metric].astype(float).to_numpy()
            w = unpaired.welch(va, vb)
            rows.append({"shots": int(k), "config_a": a, "config_b": b, "metric": metric,
                         "n_seeds": int(np.isfinite(va).sum()), "n_b": int(np.isfinite(vb).sum()),
                         "pairing": unpaired.PAIRING, "mean_diff": w["mean"], "ci_low": w["ci_low"],
                         "ci_high": w["ci_high"], "seed_ci_low": w["seed_low"], "seed_ci_high": w["seed_high"],
                         "p_value": unpaired.permutation_p(va, vb, seed=seed), "boot_ci_low": math.nan,
                         "boot_ci_high": math.nan, "degenerate_a": bool(g.loc[g["config"] == a, "degenerate_flag"].any()),
                         "degenerate_b": bool(zero.loc[zero["config"] == b, "degenerate_flag"].any())})
    return rows


def config_entries(runs: pd.DataFrame, metric: str) -> dict[str, dict]:
    """{"<config>|k<shots>": {"config", "shots", "n_degenerate", "val_<metric>": {"mean"}}} for
    :func:`featpipe.results.summary.select_best` (``runs`` has a ``config`` column)."""
    out = {}
    for (cfg, k), g in runs.groupby(["config", "shots"], sort=True):
        e = {"config": cfg, "shots": int(k), "n_degenerate": int(degenerate_flags(g).sum())}
        for col in {f"val_{metric}", f"val_{FALLBACK_METRIC}"}:  # the fallback when val_<metric> is undefined
            e[col] = {"mean": float(g[col].astype(float).mean()) if col in g.columns else math.nan}
        out[f"{cfg}|k{int(k)}"] = e
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
    """The comparisons table of ``runs`` (one split's rows): per shot count the val-chosen configuration (by
    ``select_metric``, i.e. ``report.metric``) against each other one, or every one against ``compare.reference``
    (``settings``: the ``compare`` parameters); with ``preds`` the intervals add the shared test-sampling
    variance, and the chosen pairs get the patient bootstrap when ``settings.bootstrap > 0``."""
    c = settings
    runs = runs.assign(config=config_labels(runs).to_numpy(), seed=runs["seed"].astype(int))
    entries = config_entries(runs, select_metric)
    chosen = {k: entries[name]["config"] for k, name in select_best(entries, select_metric).items()}
    table = seed_comparisons(runs, metrics=list(c.metrics), reference=c.reference, chosen=chosen, seed=c.seed)
    if preds is None or "run_id" not in runs.columns:
        return table
    for i, r in table.iterrows():
        if r["pairing"] == unpaired.PAIRING:
            _widen_unpaired(table, i, r, runs, preds)
            continue
        seeds = _paired_seeds(runs, r["config_a"], r["config_b"], int(r["shots"]))
        ids_a, ids_b = run_ids(runs, r["config_a"], r["shots"], seeds), run_ids(runs, r["config_b"], r["shots"], seeds)
        tv = preds.pair_variance(ids_a, ids_b, r["metric"])
        if tv is not None:
            d = runs.set_index(["config", "shots", "seed"])[r["metric"]]
            diffs = [d[(r["config_a"], r["shots"], s)] - d[(r["config_b"], r["shots"], s)] for s in seeds]
            s = summarize(diffs, bounds=None, test_var=tv)
            table.loc[i, ["ci_low", "ci_high"]] = [s["ci_low"], s["ci_high"]]
    if c.bootstrap > 0:
        for k, a, b in sorted(chosen_pairs(entries, select_metric, c.pairs)):
            seeds = _paired_seeds(runs, a, b, k)
            for metric in (m for m in c.metrics if m in METRIC_NAMES):  # per-class metrics: seed comparison only
                lo, hi = bootstrap_interval(preds, run_ids(runs, a, k, seeds), run_ids(runs, b, k, seeds),
                                            metric=metric, n_boot=c.bootstrap, seed=c.seed)
                sel = (table["shots"] == k) & (table["metric"] == metric)
                fwd = sel & (table["config_a"] == a) & (table["config_b"] == b)
                rev = sel & (table["config_a"] == b) & (table["config_b"] == a)
                table.loc[fwd, ["boot_ci_low", "boot_ci_high"]] = [lo, hi]
                table.loc[rev, ["boot_ci_low", "boot_ci_high"]] = [-hi, -lo]
    return table


def _widen_unpaired(table: pd.DataFrame, i, r, runs: pd.DataFrame, preds: TestPredictions) -> None:
    """An unpaired row's interval with the test-sampling variance both sides share (same test images)."""
    ids_a = runs.loc[(runs["config"] == r["config_a"]) & (runs["shots"] == r["shots"]), "run_id"].astype(str).tolist()
    ids_b = runs.loc[(runs["config"] == r["config_b"]) & (runs["shots"] == 0), "run_id"].astype(str).tolist()
    got = preds.aligned(ids_a + ids_b)
    if got is None or len(got[0]) != len(ids_a) + len(ids_b):
        return
    scored, patients = got
    tv = unpaired.shared_test_variance(r["metric"], scored[:len(ids_a)], scored[len(ids_a):], patients,
                                       n_classes=len(preds.classes))
    d = runs.set_index(["config", "shots"])[r["metric"]]
    w = unpaired.welch(d.loc[(r["config_a"], r["shots"])], d.loc[(r["config_b"], 0)], test_var=tv)
    table.loc[i, ["ci_low", "ci_high"]] = [w["ci_low"], w["ci_high"]]


def _paired_seeds(runs: pd.DataFrame, a: str, b: str, k: int) -> list[int]:
    return sorted(set(runs.loc[(runs["config"] == a) & (runs["shots"] == k), "seed"])
                  & set(runs.loc[(runs["config"] == b) & (runs["shots"] == k), "seed"]))


def compare(results_dir: str | Path, *, splits_path: str | Path, manifest_path: str | Path, params,
            out: str | Path | None = None) -> pd.DataFrame:
    """Write ``<results_dir>/comparisons.csv`` (or ``out``) for the current split's rows; returns it."""
    splits = load_splits(splits_path)
    runs, _ = current_split(read_runs(Path(results_dir) / RUNS_CSV), splits.sha256)
    if runs.empty:
        raise DataError(f"{Path(results_dir) / RUNS_CSV} has no runs of the current split: run fit/sweep first")
    # a multi-label task writes no predictions files (yet): its comparisons are paired by seed only
    preds = None if splits.labels else TestPredictions(results_dir, read_manifest(manifest_path), splits.classes)
    table = compare_runs(runs, preds, settings=params.compare, select_metric=params.report.metric)
    table.attrs["notes"] = seed_gaps(runs)
    path = Path(out) if out else Path(results_dir) / COMPARISONS_CSV
    atomic_write(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    return table


def seed_gaps(runs: pd.DataFrame, limit: int = 10) -> list[str]:
    """Lines naming the configurations that lack seeds others have at the same shot count: their comparisons
    are paired on the seeds both sides have (``n_seeds``), the others are left out, and this says which."""
    t = runs.assign(config=config_labels(runs).to_numpy(), seed=runs["seed"].astype(int))
    lines = []
    for k, g in t.groupby("shots", sort=True):
        every = set(g["seed"])
        for cfg, h in g.groupby("config", sort=True):
            lacking = sorted(every - set(h["seed"]))
            if lacking:
                lines.append(f"{cfg} at k={int(k)} has no run of seed(s) {', '.join(map(str, lacking))}: its "
                             "comparisons are paired on the seeds both sides have, those are left out")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def verdict(row: Mapping, alpha: float = 0.05) -> str:
    """One phrase answering "is A better than B?" for a comparisons row: better when the Holm p is below
    ``alpha`` **and** the interval (both kinds of luck) excludes 0; "cannot be significant with n seeds" when
    the family's smallest attainable Holm p is not below ``alpha``."""
    p = row.get("p_holm", math.nan)
    d = row.get("mean_diff", math.nan)
    n = int(row.get("n_seeds", 0) or 0)
    if not np.isfinite(d) or not np.isfinite(p):
        return "not enough paired seeds"
    floor = row.get("min_p_holm", math.nan)
    if np.isfinite(floor) and floor >= alpha:
        runs = (f"{n} seeds against {int(row['n_b'])} prompt sets" if row.get("pairing") == unpaired.PAIRING
                else f"{n} seeds")
        return (f"cannot be significant with {runs} (smallest attainable Holm p {floor:.2g} in a family of "
                f"{int(row.get('family', 0))})")
    better = d < 0 if row.get("metric") in LOWER_IS_BETTER else d > 0
    lo, hi = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    excludes = np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0)
    if p < alpha and excludes:
        return f"{'A' if better else 'B'} better (Holm p = {p:.3g})"
    if p < alpha:
        return f"no detectable difference: Holm p = {p:.3g} but the interval (seeds and test patients) includes 0"
    return f"no detectable difference (Holm p = {p:.2g})"
