"""Subgroup metrics of one run's test predictions: per sex, age band, view, ... (``report.subgroups``).

The groups come from manifest columns (a CSV source's ``data.csv.metadata``, carried by ``prepare``); ``age_band``
bins ``report.age_column`` at ``report.age_bands`` (``[lo, hi)``; an age that is not a number, e.g. "50+", or lies
outside the edges is "unknown"). A missing value is the group "unknown".

Per group: ``n`` test images, ``positives``, ``prevalence`` (of ``classes[1]``), and AUROC, accuracy, sensitivity
and specificity at the run's own (val-chosen) threshold, each computed by
:func:`featpipe.evaluation.metrics.fast_scores` (the same values as :func:`~featpipe.evaluation.metrics.score`).
Intervals (95%):

- accuracy, sensitivity, specificity: proportions on ``n`` / the positives / the negatives of the group, the
  Agresti-Coull interval of :func:`featpipe.results.intervals.interval` (the test-sampling interval: right at small
  n, never of zero width at 0 or 1);
- AUROC: percentile bootstrap, resampling the test images (with :class:`~featpipe.results.stats.PatientResampler`:
  by patient when patients are given, one unit per image otherwise); each group's AUROC read off the same resample;
- the **worst-group gap** per attribute and metric: ``metric(best group) - metric(worst group)`` with the two groups
  named on the observed data, and the percentile interval of that difference over the same (paired) resamples.

A group with fewer than ``min_size`` test images is listed with ``status = "too few"`` and no number; it takes no
part in the gap. An attribute with fewer than two scored groups has no gap.

A multi-label run (:func:`multilabel_subgroups`): per group ``n``, AUROC per label and macro AUROC, each with its
percentile bootstrap interval over the same resamples of patients (same resampler, ``n_boot`` and seed), and the
worst-group gap of macro AUROC with its paired interval; "too few" as above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.evaluation.metrics import as_proba, fast_scores
from featpipe.evaluation.multilabel import label_scores
from featpipe.results.intervals import interval
from featpipe.results.stats import PatientResampler

AGE_BAND = "age_band"
UNKNOWN = "unknown"
TOO_FEW = "too few"
METRICS = ("auroc", "accuracy", "sensitivity", "specificity")
PROPORTIONS = {"accuracy": None, "sensitivity": 1, "specificity": 0}  # metric -> the class its units are (None: all)
GAP_METRICS = ("auroc", "accuracy")  # the metrics with a worst-group gap (AUROC's interval is bootstrapped too)


@dataclass(frozen=True)
class SubgroupSettings:
    columns: tuple[str, ...]
    age_column: str = "age"
    age_bands: tuple[float, ...] = (0.0, 18.0, 40.0, 65.0, 120.0)
    min_size: int = 20
    n_boot: int = 1000
    seed: int = 0

    @classmethod
    def from_params(cls, report, seed: int = 0) -> SubgroupSettings:
        return cls(tuple(report.subgroups), report.age_column, tuple(report.age_bands), report.min_subgroup,
                   report.subgroup_bootstrap, seed)


def _edge(x: float) -> str:
    return f"{x:g}"


def age_bands(values: Sequence, edges: Sequence[float]) -> list[str]:
    """``[lo, hi)`` band labels of ages (text or numbers); not a number or outside the edges: "unknown"."""
    out = []
    for v in values:
        try:
            a = float(str(v).strip())
        except ValueError:
            a = math.nan
        i = int(np.searchsorted(edges, a, side="right")) - 1 if math.isfinite(a) else -1
        out.append(f"[{_edge(edges[i])}, {_edge(edges[i + 1])})" if 0 <= i < len(edges) - 1 else UNKNOWN)
    return out


def group_labels(manifest: pd.DataFrame, ids: Sequence[str], settings: SubgroupSettings) -> dict[str, list[str]]:
    """{attribute: the group of each of ``ids``} from the manifest's metadata columns (``age_band`` derived)."""
    m = manifest.set_index(manifest["id"].astype(str))
    ids = [str(i) for i in ids]
    out = {}
    for col in settings.columns:
        source = settings.age_column if col == AGE_BAND else col
        if source not in m.columns:
            raise DataError(f"report.subgroups: the manifest has no column '{source}': list it in data.csv.metadata "
                            "(or evaluate.external[...].csv.metadata) and rerun 'featpipe prepare'")
        raw = m[source].reindex(ids).fillna("").astype(str).str.strip()
        out[col] = age_bands(raw, settings.age_bands) if col == AGE_BAND else [v or UNKNOWN for v in raw]
    return out


def _scores(y, p, threshold, n_classes) -> dict:
    return fast_scores(y, p, n_classes=n_classes, threshold=threshold, metrics=METRICS)


def _proportion_ci(value: float, units: int) -> tuple[float, float]:
    if not units or not math.isfinite(value):
        return math.nan, math.nan
    s = interval([value], n_units=float(units))
    return s["test_low"], s["test_high"]


def subgroup_metrics(labels, proba, groups: Mapping[str, Sequence[str]], *, threshold: float | None,
                     settings: SubgroupSettings, patients: Sequence[str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-group table, worst-group gaps) of one run's test outputs; see the module docstring."""
    y = np.asarray(labels).astype(np.int64)
    n_classes = 2 if np.asarray(proba).ndim == 1 else np.asarray(proba).shape[1]
    p = as_proba(proba, n_classes)
    g = {a: np.asarray(v, dtype=object) for a, v in groups.items()}
    cells = [(a, v) for a in g for v in sorted(set(g[a]))]
    rows, scored = [], []
    for a, v in cells:
        mask = g[a] == v
        n, pos = int(mask.sum()), int((y[mask] == 1).sum())
        row = {"attribute": a, "group": v, "n": n, "positives": pos, "prevalence": pos / n if n else math.nan}
        if n < settings.min_size:
            rows.append(row | {"status": TOO_FEW})
            continue
        s = _scores(y[mask], p[mask], threshold, n_classes)
        row |= {"status": "scored", **s}
        for m, cls in PROPORTIONS.items():
            units = n if cls is None else int((y[mask] == cls).sum())
            row[f"{m}_low"], row[f"{m}_high"] = _proportion_ci(s[m], units)
        rows.append(row)
        scored.append((a, v))
    table = pd.DataFrame(rows)
    boot = _bootstrap(y, p, g, scored, threshold, n_classes, settings, patients)
    for i, r in table.iterrows():
        if r["status"] == "scored":
            lo, hi = _percentile(boot[(r["attribute"], r["group"])]["auroc"])
            table.loc[i, ["auroc_low", "auroc_high"]] = [lo, hi]
    return table, _gaps(table, boot)


def _bootstrap(y, p, g, scored, threshold, n_classes, settings: SubgroupSettings, patients) -> dict:
    """{(attribute, group): {gap metric: values over the resamples}} from one shared stream of resamples."""
    units = np.asarray(patients).astype(str) if patients is not None else np.arange(y.size).astype(str)
    draws = {c: {m: [] for m in GAP_METRICS} for c in scored}
    for idx in PatientResampler(units).draws(settings.n_boot, settings.seed):
        for a, v in scored:
            sel = idx[g[a][idx] == v]
            s = (fast_scores(y[sel], p[sel], n_classes=n_classes, threshold=threshold, metrics=GAP_METRICS)
                 if sel.size else dict.fromkeys(GAP_METRICS, math.nan))
            for m in GAP_METRICS:
                draws[(a, v)][m].append(s[m])
    return {c: {m: np.asarray(x, dtype=float) for m, x in d.items()} for c, d in draws.items()}


def _percentile(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not v.size:
        return math.nan, math.nan
    q = (1 - confidence) / 2
    lo, hi = np.quantile(v, [q, 1 - q])
    return float(lo), float(hi)


def _gaps(table: pd.DataFrame, boot: dict, metrics: Sequence[str] = GAP_METRICS) -> pd.DataFrame:
    """Per attribute and gap metric: best - worst scored group, with its paired percentile interval."""
    rows = []
    if table.empty or "status" not in table.columns:
        return pd.DataFrame(rows)
    for a, t in table[table["status"] == "scored"].groupby("attribute", sort=False):
        for m in metrics:
            t2 = t[np.isfinite(t[m].astype(float))]
            if len(t2) < 2:
                continue
            worst, best = t2.loc[t2[m].astype(float).idxmin()], t2.loc[t2[m].astype(float).idxmax()]
            diff = boot[(a, best["group"])][m] - boot[(a, worst["group"])][m]
            lo, hi = _percentile(diff)
            rows.append({"attribute": a, "metric": m, "worst_group": worst["group"], "best_group": best["group"],
                         "gap": float(best[m] - worst[m]), "gap_low": lo, "gap_high": hi,
                         "n_valid": int(np.isfinite(diff).sum())})
    return pd.DataFrame(rows)


def _label_aurocs(Y: np.ndarray, P: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """AUROC of each label on the images ``rows`` (repeats allowed) where that label is known; NaN where they hold
    one class of it or the label has no head (the ``auroc`` of :func:`featpipe.evaluation.multilabel.label_scores`)."""
    out = np.full(Y.shape[1], math.nan)
    for j in range(Y.shape[1]):
        y, p = Y[rows, j], P[rows, j]
        k = y >= 0
        if k.any() and not np.isnan(p[k]).any():
            out[j] = fast_scores(y[k].astype(np.int64), np.column_stack([1 - p[k], p[k]]), n_classes=2,
                                 threshold=0.5, metrics=("auroc",))["auroc"]
    return out


def _macro_auroc(per: np.ndarray) -> float:
    return float(np.mean(per[np.isfinite(per)])) if np.isfinite(per).any() else math.nan


def _multilabel_bootstrap(Y, P, labels, g, scored, settings: SubgroupSettings, patients) -> dict:
    """{(attribute, group): {"auroc": macro AUROC, "auroc[<label>]": ...: values over the resamples}}, every group
    read off the same resamples (:class:`PatientResampler`, ``settings.seed``) as :func:`_bootstrap`."""
    units = np.asarray(patients).astype(str) if patients is not None else np.arange(Y.shape[0]).astype(str)
    draws = {c: [] for c in scored}
    for idx in PatientResampler(units).draws(settings.n_boot, settings.seed):
        for a, v in scored:
            per = _label_aurocs(Y, P, idx[g[a][idx] == v])
            draws[(a, v)].append(np.r_[_macro_auroc(per), per])
    out = {}
    for c, d in draws.items():
        m = np.asarray(d, dtype=float).reshape(-1, len(labels) + 1)
        out[c] = {"auroc": m[:, 0], **{f"auroc[{n}]": m[:, j + 1] for j, n in enumerate(labels)}}
    return out


def multilabel_subgroups(Y, P, labels: Sequence[str], groups: Mapping[str, Sequence[str]], *,
                         settings: SubgroupSettings, patients: Sequence[str] | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-group table, worst-group gaps) of a multi-label run's test outputs (``Y`` (N, L) 1 / 0 / -1 unknown,
    ``P`` (N, L), NaN: no head). Per group: ``n`` test images, ``auroc[<label>]`` on the group's images where that
    label is known (NaN where the group holds one class of it or the label has no head;
    :func:`featpipe.evaluation.multilabel.label_scores`), ``auroc`` = macro AUROC (mean over the labels scored in
    the group) and ``labels_scored``. A group below ``settings.min_size`` images is ``status = "too few"`` with no
    number and no part in the gap.

    Intervals (95%, percentile bootstrap over the same resamples of patients as :func:`subgroup_metrics`: same
    resampler, ``settings.n_boot`` and ``settings.seed``): ``auroc_low/high`` of the macro AUROC (in a resample, the
    mean over the labels with both classes known in the group there) and ``auroc[<label>]_low/high``. Gaps: per
    attribute, the macro AUROC of the best minus the worst scored group, with the percentile interval of the paired
    difference over those resamples."""
    Y, P = np.asarray(Y), np.asarray(P, dtype=float)
    g = {a: np.asarray(v, dtype=object) for a, v in groups.items()}
    rows, scored = [], []
    for a in g:
        for v in sorted(set(g[a])):
            mask = g[a] == v
            row = {"attribute": a, "group": v, "n": int(mask.sum())}
            if row["n"] < settings.min_size:
                rows.append(row | {"status": TOO_FEW})
                continue
            per = {n: label_scores(Y[mask, j], P[mask, j], 0.5)["auroc"] for j, n in enumerate(labels)}
            ok = [x for x in per.values() if math.isfinite(x)]
            rows.append(row | {"status": "scored", "auroc": float(np.mean(ok)) if ok else math.nan,
                               "labels_scored": len(ok), **{f"auroc[{n}]": x for n, x in per.items()}})
            scored.append((a, v))
    boot = _multilabel_bootstrap(Y, P, list(labels), g, scored, settings, patients)
    for r in rows:
        for m, values in boot.get((r["attribute"], r["group"]), {}).items():
            r[f"{m}_low"], r[f"{m}_high"] = _percentile(values)
    table = pd.DataFrame(rows)
    return table, _gaps(table, boot, metrics=("auroc",))
