"""Any classifier's val and test outputs -> one results row, its predictions and its curves.

:func:`record_run` is the one place where a run becomes a row of ``results/runs.csv``, for the frozen
heads (:func:`featpipe.fewshot.fit.fit_run`) and for fine-tuning (:func:`featpipe.finetune.run.run_job`)
alike:

- **leakage**: the training ids must not be among the val or test ids (:func:`check_disjoint`);
- **threshold**: binary tasks predict ``p(classes[1]) >= threshold`` with the threshold chosen on the **val**
  outputs (:func:`featpipe.evaluation.metrics.choose_threshold`; 0.5 without val images); no threshold for
  more than two classes;
- **scores**: every metric of :func:`featpipe.evaluation.metrics.score` on test, and the ``val_<metric>``
  columns (what model selection uses) on val, at that threshold;
- **degenerate**: a run whose **val** outputs are mostly tied across classes or put the other classes' images
  into one class is flagged, with the reason (:func:`featpipe.evaluation.metrics.degenerate`, relative to val's
  class shares); test outputs are never looked at, so selection never depends on test. A run without val
  outputs is not judged. Flagged runs stay in the table;
- **Brier** only for calibrated outputs (``calibrated``; NaN for the SVC and prototype heads, whose outputs are
  monotone scores), likewise the **expected calibration error** ``ece`` / ``val_ece`` (top-label, 15 equal-width
  bins: :mod:`featpipe.evaluation.calibration`); classes absent from val or test are named in ``val_absent`` / ``test_absent``;
- **row**: the key columns, provenance (``ids_sha256``, ``n_*``), metrics, ``val_policy``, the caller's own
  columns, the confusion matrix, ``run_id``, per-class precision/recall/F1 and ``model_path`` ("" until
  the caller saves a model);
- **predictions**: per image ``split, id, label, p[<class>]...`` (:func:`prediction_frame`), and ROC/PR
  points of test (:func:`featpipe.evaluation.metrics.curves`);
- **sidecar**: the fields that both kinds of saved model record about the run (dataset, classes,
  backbone, weights, split and manifest hashes, shots, seed, threshold, training ids, featpipe version).

Every row says which test set it was scored on: ``test_set = internal`` (the study's test split). A saved model
scored on an external set (``featpipe evaluate-external``) becomes :func:`record_external` of its internal row:
``test_set = external:<name>``, its own ``run_id``, the test columns replaced, everything else kept.

Test labels are used for scoring and nothing else. :func:`featpipe.evaluation.table.write_records`
writes what this returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.names import proba_column
from featpipe.core.versions import __version__
from featpipe.data.manifest import ids_sha256
from featpipe.evaluation.calibration import ece
from featpipe.evaluation.metrics import SCALAR_METRICS, choose_threshold, curves, degenerate, score
from featpipe.evaluation.table import INTERNAL, run_id


@dataclass(frozen=True)
class Outputs:
    """One split's outputs of a classifier: image ids, their labels and the class probabilities (N, C)."""

    ids: Sequence[str]
    labels: np.ndarray
    proba: np.ndarray | None  # None: nothing scored on this split

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RunRecord:
    """What :func:`record_run` makes of one run."""

    row: dict  # one results-table row
    predictions: pd.DataFrame  # per-image val and test outputs (written beside runs.csv)
    curves: dict | None  # ROC/PR points of test (None: not asked for)
    threshold: float | None  # the val-chosen binary threshold (None for more than two classes)
    sidecar: dict  # the run's fields that every saved model's sidecar records


def check_disjoint(train_ids: Sequence[str], *held_out: Sequence[str]) -> None:
    """DataError when a training id is also among the ``held_out`` (val, test) ids: a corrupt splits file."""
    leaked = set(train_ids) & set().union(*held_out)
    if leaked:
        raise DataError(f"{len(leaked)} k-shot training ids are also in val/test (e.g. {min(leaked)!r}): "
                        "the splits file is corrupt; rerun 'featpipe prepare'")


def record_run(key: Mapping, *, classes: Sequence[str], train_ids: Sequence[str], val: Outputs, test: Outputs,
               val_policy: str, manifest_sha256: str, columns: Mapping | None = None,
               with_curves: bool = True, calibrated: bool = True) -> RunRecord:
    """The results row, predictions, curves, threshold and sidecar fields of one run.

    ``key`` holds the key columns of :data:`featpipe.evaluation.table.KEY_COLUMNS` (as the caller writes
    them: ``head_params`` a canonical string or a dict); ``columns`` are the caller's own columns (placed
    after ``val_policy``). ``calibrated=False`` (outputs that are monotone scores, not fitted probabilities: the
    SVC's sigmoid of its decision values, the prototype's softmax at a fixed temperature) leaves ``brier`` and
    ``val_brier`` (and ``ece``, ``val_ece``) NaN: their value would depend on an arbitrary scale. Classes absent from val or test are named
    in ``val_absent`` / ``test_absent``."""
    classes = list(classes)
    check_disjoint(train_ids, val.ids, test.ids)
    threshold = _threshold(val, n_classes=len(classes))
    s = score(test.labels, test.proba, classes=classes, threshold=threshold)
    sv = score(val.labels, val.proba, classes=classes, threshold=threshold) if _scored(val) else {}
    why = _degenerate(val, n_classes=len(classes), threshold=threshold)
    if not calibrated:
        s["brier"] = float("nan")
        if sv:
            sv["brier"] = float("nan")
    row = {
        **key, "ids_sha256": ids_sha256(train_ids), "n_classes": len(classes),
        "n_train": len(train_ids), "n_val": len(val), "n_test": len(test),
        "degenerate": bool(why), "degenerate_reason": why,
        **{k: v for k, v in s.items() if k not in ("per_class", "confusion_matrix", "n")},
        **{f"val_{k}": sv.get(k, float("nan")) for k in SCALAR_METRICS if k != "threshold"},
        "ece": ece(test.labels, test.proba) if calibrated and _scored(test) else float("nan"),
        "val_ece": ece(val.labels, val.proba) if calibrated and _scored(val) else float("nan"),
        "val_policy": val_policy, "calibrated": bool(calibrated), "test_set": INTERNAL,
        "val_absent": _absent(val, classes), "test_absent": _absent(test, classes), **(columns or {}),
        "confusion_matrix": json.dumps(s["confusion_matrix"], separators=(",", ":")),
    }
    row["run_id"] = run_id(row)
    for name, pc in s["per_class"].items():  # per class on test, and on val (report.metric: f1[<class>])
        for m in ("precision", "recall", "f1"):
            row[f"{m}[{name}]"] = pc[m]
            row[f"val_{m}[{name}]"] = sv["per_class"][name][m] if sv else float("nan")
    row["model_path"] = ""
    sidecar = {"dataset": key["dataset"], "classes": classes, "backbone": key["backbone"], "weights": key["weights"],
               "weights_id": key["weights_id"], "split_sha256": key["split_sha256"],
               "manifest_sha256": manifest_sha256, "shots": int(key["shots"]), "seed": int(key["seed"]),
               "threshold": threshold, "train_ids": list(train_ids), "featpipe_version": __version__}
    frame = prediction_frame(classes, val=(val.ids, val.labels, val.proba), test=(test.ids, test.labels, test.proba))
    return RunRecord(row, frame, curves(test.labels, test.proba, classes=classes) if with_curves else None,
                     threshold, sidecar)


def record_external(row: Mapping, *, classes: Sequence[str], test: Outputs, test_set: str,
                    with_curves: bool = True) -> RunRecord:
    """The row, predictions and curves of a run's saved model scored on an external test set.

    ``row`` is the run's own (internal) row: its key, training provenance, degenerate flag and ``val_`` columns are
    kept (the model and its val-chosen threshold are the same), every test column is replaced by the scores on
    ``test`` at the row's ``threshold`` with the same :func:`featpipe.evaluation.metrics.score`, and ``test_set``
    (``external:<name>``) makes its ``run_id`` its own."""
    classes = list(classes)
    thr = row.get("threshold")
    threshold = None if len(classes) != 2 or thr is None or not np.isfinite(float(thr)) else float(thr)
    s = score(test.labels, test.proba, classes=classes, threshold=threshold)
    calibrated = bool(row.get("calibrated", True))
    out = {k: v for k, v in row.items() if not k.startswith(("precision[", "recall[", "f1["))}
    out |= {k: v for k, v in s.items() if k not in ("per_class", "confusion_matrix", "n")}
    out |= {"n_test": len(test), "test_set": test_set, "test_absent": _absent(test, classes),
            "ece": ece(test.labels, test.proba) if calibrated and _scored(test) else float("nan"),
            "confusion_matrix": json.dumps(s["confusion_matrix"], separators=(",", ":"))}
    if not calibrated:
        out["brier"] = float("nan")
    for name, pc in s["per_class"].items():
        for m in ("precision", "recall", "f1"):
            out[f"{m}[{name}]"] = pc[m]
    out["run_id"] = run_id(out)
    frame = prediction_frame(classes, test=(test.ids, test.labels, test.proba))
    return RunRecord(out, frame, curves(test.labels, test.proba, classes=classes) if with_curves else None,
                     threshold, {})


def _absent(o: Outputs, classes: Sequence[str]) -> str:
    """The classes with no image among the outputs ``o`` ("; "-joined, "" when every class is there)."""
    if not len(o):
        return ""
    present = set(np.asarray(o.labels).astype(np.int64).tolist())
    return "; ".join(c for i, c in enumerate(classes) if i not in present)


def _scored(o: Outputs) -> bool:
    return o.proba is not None and len(o) > 0


def _threshold(val: Outputs, *, n_classes: int) -> float | None:
    """Binary: chosen on val (0.5 without val outputs); more than two classes: None (arg-max)."""
    if n_classes != 2:
        return None
    return choose_threshold(val.labels, val.proba) if _scored(val) else 0.5


def _degenerate(val: Outputs, *, n_classes: int, threshold: float | None) -> str:
    """Why the run describes a constant, judged on val ("val: ..."; "" when it does not or has no val outputs)."""
    if not _scored(val):
        return ""
    w = degenerate(val.proba, n_classes=n_classes, threshold=threshold, labels=val.labels)
    return f"val: {w}" if w else ""


def prediction_frame(classes: Sequence[str], **parts) -> pd.DataFrame:
    """Per-image outputs: ``split, id, label, p[<class>]...`` for each ``name=(ids, labels, proba)``."""
    split, ids, labels, probas = [], [], [], []
    for name, (part_ids, y, proba) in parts.items():
        if proba is None or not len(part_ids):
            continue
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim == 1:
            p = np.column_stack([1 - p, p])
        split += [name] * len(part_ids)
        ids += list(part_ids)
        labels.append(np.asarray(y, dtype=np.int64))
        probas.append(p)
    if not split:
        return pd.DataFrame(columns=["split", "id", "label"])
    p = np.concatenate(probas) if len(probas) > 1 else probas[0]
    cols = {"split": split, "id": ids, "label": np.concatenate(labels)}
    cols.update({proba_column(c): p[:, j] for j, c in enumerate(classes)})  # one frame, not a column per insert
    return pd.DataFrame(cols)
