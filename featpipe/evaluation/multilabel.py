"""A multi-label run's val and test outputs -> one results row (the multi-label twin of
:func:`featpipe.evaluation.record.record_run`).

Each label is its own binary decision (one-vs-rest), scored only on the images whose label is known (an ignored
-1 or blank is left out of that label, never counted as negative):

- **threshold per label**, chosen on the **val** images of the split's ``val_policy`` by Youden's J
  (:func:`featpipe.evaluation.metrics.choose_threshold`; 0.5 when val holds one class of that label);
- **per label** on test (and on val): ``auroc[<label>]``, ``auprc[<label>]`` (average precision),
  ``sensitivity[<label>]`` (also as ``recall[<label>]``), ``specificity[<label>]``, ``precision[<label>]``,
  ``f1[<label>]`` at that
  threshold, ``threshold[<label>]``, ``prevalence[<label>]``;
- **macro** in the usual columns, the mean over the labels where the metric is defined on the split (AUROC and
  AP need both classes: a label with one class there is left out and named in ``test_absent`` / ``val_absent``; a
  label without a fitted head is left out of every mean and named in ``unfit_labels``):
  ``auroc`` = macro AUROC, ``auprc`` = mAP (mean average precision), ``auprc_baseline`` = mean prevalence,
  ``sensitivity``, ``specificity``, ``balanced_accuracy``, ``accuracy`` (per-label accuracy: 1 - Hamming loss
  over known cells), ``macro_f1``, ``brier`` (calibrated heads only); ``threshold`` is NaN (one per label);
- a label without a fitted head (no positives, or no negatives, in the k-shot set) is a named entry in
  ``unfit_labels`` with NaN scores, not an error; the run is ``degenerate`` only when no label has a head.

Per-image outputs (:func:`multilabel_predictions`, written by the predictions writer of
:mod:`featpipe.evaluation.table`): ``split``, ``id``, ``label`` (the image's positive labels, "; "-joined),
``y[<label>]`` (1 / 0 / -1 unknown) and ``p[<label>]`` (NaN: no head) per label.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.core.names import proba_column
from featpipe.core.versions import __version__
from featpipe.data.manifest import ids_sha256
from featpipe.evaluation.metrics import SCALAR_METRICS, choose_threshold, fast_scores, predict_labels
from featpipe.evaluation.record import RunRecord, check_disjoint
from featpipe.evaluation.table import run_id

PER_LABEL = ("auroc", "auprc", "sensitivity", "specificity", "precision", "recall", "f1", "accuracy", "balanced_accuracy",
             "brier", "prevalence")
# per-label columns of runs.csv (+ threshold, prevalence); recall = sensitivity, under the per-class table's name
REPORTED = ("auroc", "auprc", "sensitivity", "specificity", "precision", "recall", "f1")
NAN = float("nan")


def unfit_reason(y: np.ndarray) -> str:
    """Why a label with k-shot labels ``y`` (1 / 0 / -1 unknown) gets no head: "no positives in the k-shot set",
    "no negatives ...", both; "" when it has both classes (the frozen heads and fine-tuning share this rule)."""
    missing = [w for w, v in (("positives", 1), ("negatives", 0)) if not (np.asarray(y) == v).any()]
    return f"no {' and no '.join(missing)} in the k-shot set" if missing else ""


def label_scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Scores of one label: ``y`` 1 / 0 / -1 (unknown, left out), ``p`` its probability (NaN: no head)."""
    known = y >= 0
    y, p = y[known].astype(np.int64), p[known]
    out = dict.fromkeys(PER_LABEL, NAN)
    out["prevalence"] = float(y.mean()) if y.size else NAN
    if not y.size or np.isnan(p).any():
        return out
    two = np.column_stack([1 - p, p])
    s = fast_scores(y, two, n_classes=2, threshold=threshold,
                    metrics=("accuracy", "sensitivity", "specificity", "auroc", "auprc", "brier"))
    pred = predict_labels(two, n_classes=2, threshold=threshold)
    tp, fp = int(((pred == 1) & (y == 1)).sum()), int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    out |= s | {"precision": tp / (tp + fp) if tp + fp else NAN,
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else NAN}
    out["recall"] = out["sensitivity"]
    if np.unique(y).size < 2:  # one class on this split: ranking and class-wise rates are undefined
        out |= {"auroc": NAN, "auprc": NAN, "balanced_accuracy": NAN}
    else:
        out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
    return out


def _macro(per: Mapping[str, dict], metric: str) -> float:
    vals = [v[metric] for v in per.values() if not math.isnan(v[metric])]
    return float(np.mean(vals)) if vals else NAN


def _split_scores(Y: np.ndarray, P: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]) -> dict:
    return {n: label_scores(Y[:, j], P[:, j], thresholds[j]) for j, n in enumerate(labels)}


def _one_class(Y: np.ndarray, labels: Sequence[str]) -> str:
    """The labels with only one class (or no known image) among ``Y`` ("; "-joined)."""
    return "; ".join(n for j, n in enumerate(labels) if np.unique(Y[Y[:, j] >= 0, j]).size < 2)


def macro_row(per: Mapping[str, dict], *, calibrated: bool) -> dict:
    """The usual metric columns of a multi-label split (macro over its scorable labels)."""
    row = {m: _macro(per, m) for m in ("accuracy", "balanced_accuracy", "auroc", "auprc", "sensitivity",
                                       "specificity")}
    row |= {"macro_f1": _macro(per, "f1"), "auprc_baseline": _macro(per, "prevalence"), "threshold": NAN,
            "brier": _macro(per, "brier") if calibrated else NAN}
    return row


def multilabel_predictions(labels: Sequence[str], val_ids, Yv: np.ndarray, Pv: np.ndarray, test_ids, Yt: np.ndarray,
                           Pt: np.ndarray) -> pd.DataFrame:
    """The per-image frame of a multi-label run (see the module text): val rows, then test rows."""
    parts = []
    for split, ids, Y, P in (("val", val_ids, Yv, Pv), ("test", test_ids, Yt, Pt)):
        df = pd.DataFrame({"split": split, "id": [str(i) for i in ids],
                           "label": ["; ".join(n for n, v in zip(labels, y) if v == 1) for y in Y]})
        for j, n in enumerate(labels):
            df[label_column(n)] = np.asarray(Y[:, j], dtype=np.int64)
            df[proba_column(n)] = np.asarray(P[:, j], dtype=np.float64)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def label_column(label: str) -> str:
    """The predictions-file column of one label's known value (1 / 0 / -1 unknown)."""
    return f"y[{label}]"


def record_multilabel(key: Mapping, *, labels: Sequence[str], train_ids: Sequence[str],
                      val: tuple[Sequence[str], np.ndarray, np.ndarray],
                      test: tuple[Sequence[str], np.ndarray, np.ndarray], val_policy: str, manifest_sha256: str,
                      unfit: Mapping[str, str], columns: Mapping | None = None, calibrated: bool = True) -> RunRecord:
    """The row (see the module text) of one multi-label run; ``val``/``test`` are (ids, Y (N, L) 1/0/-1,
    P (N, L) probabilities, NaN columns for labels without a head); ``unfit`` {label: why it has no head}."""
    labels = list(labels)
    (val_ids, Yv, Pv), (test_ids, Yt, Pt) = val, test
    check_disjoint(train_ids, val_ids, test_ids)
    thresholds = []
    for j in range(len(labels)):
        known = Yv[:, j] >= 0
        ok = known.any() and not np.isnan(Pv[known, j]).any()
        thresholds.append(choose_threshold(Yv[known, j], Pv[known, j]) if ok else 0.5)
    pt, pv = _split_scores(Yt, Pt, labels, thresholds), _split_scores(Yv, Pv, labels, thresholds)
    sv = macro_row(pv, calibrated=calibrated) if len(val_ids) else {}
    why = "no label has a head: " + "; ".join(f"{n}: {w}" for n, w in unfit.items()) if len(unfit) == len(labels) else ""
    row = {**key, "ids_sha256": ids_sha256(train_ids), "n_classes": 2, "n_train": len(train_ids),
           "n_val": len(val_ids), "n_test": len(test_ids), "degenerate": bool(why), "degenerate_reason": why,
           **macro_row(pt, calibrated=calibrated),
           **{f"val_{k}": sv.get(k, NAN) for k in SCALAR_METRICS if k != "threshold"},
           "val_policy": val_policy, "calibrated": bool(calibrated), "task": "multilabel", "n_labels": len(labels),
           "labels": "; ".join(labels), "unfit_labels": "; ".join(f"{n}: {w}" for n, w in unfit.items()),
           "val_absent": _one_class(Yv, labels) if len(val_ids) else "", "test_absent": _one_class(Yt, labels),
           **(columns or {})}
    row["run_id"] = run_id(row)
    for j, n in enumerate(labels):
        for m in REPORTED:
            row[f"{m}[{n}]"] = pt[n][m]
            row[f"val_{m}[{n}]"] = pv[n][m] if len(val_ids) else NAN
        row[f"threshold[{n}]"] = thresholds[j]
        row[f"prevalence[{n}]"] = pt[n]["prevalence"]
    row["model_path"] = ""
    sidecar = {"dataset": key["dataset"], "labels": labels, "backbone": key["backbone"], "weights": key["weights"],
               "weights_id": key["weights_id"], "split_sha256": key["split_sha256"], "manifest_sha256": manifest_sha256,
               "shots": int(key["shots"]), "seed": int(key["seed"]), "thresholds": dict(zip(labels, thresholds)),
               "train_ids": list(train_ids), "featpipe_version": __version__}
    return RunRecord(row, multilabel_predictions(labels, val_ids, Yv, Pv, test_ids, Yt, Pt), None, None, sidecar)


def record_multilabel_external(row: Mapping, *, labels: Sequence[str], test: tuple[Sequence[str], np.ndarray, np.ndarray],
                               test_set: str) -> RunRecord:
    """A multi-label run's saved model(s) scored on an external test set (the twin of
    :func:`featpipe.evaluation.record.record_external`): the run's own row with every test column replaced by the
    scores on ``test`` = (ids, Y (N, L) 1 / 0 / -1, P (N, L), NaN: no head) at the row's val-chosen
    ``threshold[<label>]``, ``test_set`` making its ``run_id`` its own; its predictions frame has test rows only."""
    labels = list(labels)
    ids, Y, P = test
    thresholds = [float(row.get(f"threshold[{n}]", 0.5)) for n in labels]
    per = _split_scores(Y, P, labels, thresholds)
    out = {k: v for k, v in row.items() if not any(k.startswith(f"{m}[") for m in (*REPORTED, "prevalence"))}
    out |= macro_row(per, calibrated=bool(row.get("calibrated", True)))
    out |= {"n_test": len(ids), "test_set": test_set, "test_absent": _one_class(Y, labels)}
    for j, n in enumerate(labels):
        for m in REPORTED:
            out[f"{m}[{n}]"] = per[n][m]
        out[f"threshold[{n}]"], out[f"prevalence[{n}]"] = thresholds[j], per[n]["prevalence"]
    out["run_id"] = run_id(out)
    empty = np.zeros((0, len(labels)))
    return RunRecord(out, multilabel_predictions(labels, [], empty, empty, ids, Y, P), None, None, {})
