"""Grad-CAM per label of a multi-label fine-tuned network (sidecar ``task: multilabel``).

Each test image is scored with a sigmoid per label; each label's decision is ``p >= `` that label's threshold chosen
on val (``thresholds`` in the sidecar). Per label, up to ``per_outcome`` images of each outcome TP, FP and FN (of
the images whose label is known; seeded draw) are explained with Grad-CAM of **that label's logit**, so one grid
shows what drives each label. Outcomes are named ``<label>:TP`` etc.; labels without a head (``unfit_labels``:
no positives or negatives in the k-shot set) are left out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from featpipe.backbones.modelinput import normalise
from featpipe.core.errors import DataError
from featpipe.data.splits import load_splits
from featpipe.explain.gradcam import feature_model, gradcam, layer_grid, logits
from featpipe.explain.render import Example, write_run
from featpipe.explain.sources import ImageSource
from featpipe.saved.load import LoadedModel

OUTCOMES = ("TP", "FP", "FN")


def pick_per_label(Y: np.ndarray, proba: np.ndarray, thresholds: list[float], labels: list[str], *,
                   per_outcome: int, seed: int) -> list[tuple[int, int, str]]:
    """[(image index, label index, outcome)]: per label, up to ``per_outcome`` known images of each of TP, FP, FN."""
    rng = np.random.default_rng(seed)
    out = []
    for j, _ in enumerate(labels):
        known = Y[:, j] >= 0
        pred = proba[:, j] >= thresholds[j]
        cells = {"TP": known & pred & (Y[:, j] == 1), "FP": known & pred & (Y[:, j] == 0),
                 "FN": known & ~pred & (Y[:, j] == 1)}
        for name in OUTCOMES:
            idx = np.flatnonzero(cells[name])
            if idx.size > per_outcome:
                idx = np.sort(rng.choice(idx, size=per_outcome, replace=False))
            out += [(int(i), j, name) for i in idx]
    return out


def label_source(source: ImageSource, splits: str | Path, label: str) -> ImageSource:
    """The test images of a multi-label task's per-label head (sidecar ``label``): labelled 1 / 0 for ``label``
    (its column of the splits' label matrix), the images where it is unknown left out."""
    sp = load_splits(splits)
    if label not in sp.labels:
        raise DataError(f"the model is the head of label {label!r}, which {splits} does not have: re-run 'featpipe prepare'")
    y = sp.label_matrix(source.refs)[:, sp.labels.index(label)].astype(np.int64)
    keep = np.flatnonzero(y >= 0)
    rows = source.cache_rows[keep] if source.cache_rows is not None else None
    return replace(source, refs=[source.refs[i] for i in keep], labels=y[keep],
                   paths=[source.paths[i] for i in keep], cache_rows=rows)


def explain_labels(ex: LoadedModel, source: ImageSource, *, splits: str | Path, out_dir: str | Path,
                   per_outcome: int, seed: int, layer: str | None, model_path: str | Path) -> dict:
    """Render the per-label Grad-CAM of ``ex`` on the test images of ``source``. Unlike the single-label run, the
    test images are held in memory at once (every label picks among all of them)."""
    at, pixels = source.read(np.arange(len(source.refs)))
    ids = [source.refs[i] for i in at]
    x = normalise(pixels, ex.preprocess)
    labels = list(ex.classes)
    model = ex.torch_module()
    proba = torch.sigmoid(logits(model, x, runtime=ex.runtime).double()).numpy()
    Y = load_splits(splits).label_matrix(ids)
    thr = ex.meta.get("thresholds") or {}
    thresholds = [float(thr.get(n, 0.5)) for n in labels]
    unfit = {p.split(": ", 1)[0] for p in str(ex.meta.get("unfit_labels", "")).split("; ") if p}
    picks = [p for p in pick_per_label(Y, proba, thresholds, labels, per_outcome=per_outcome, seed=seed)
             if labels[p[1]] not in unfit]
    if not picks:
        raise DataError(f"{model_path}: no test image is a TP, FP or FN of any label: nothing to explain")
    idx = np.array([i for i, _, _ in picks])
    maps = gradcam(model, x[idx], [j for _, j, _ in picks], layer=layer, runtime=ex.runtime)
    word = {1: "positive", 0: "negative"}
    examples = [Example(id=ids[i], outcome=f"{labels[j]}:{o}", true=f"{labels[j]} {word[int(Y[i, j])]}",
                        pred=f"{labels[j]} {'positive' if o != 'FN' else 'negative'}",
                        p_pred=float(proba[i, j] if o != "FN" else 1 - proba[i, j]),
                        p_true=float(proba[i, j] if Y[i, j] == 1 else 1 - proba[i, j]), target=labels[j])
                for i, j, o in picks]
    fm = feature_model(model)
    grid = layer_grid(model, x[:1], layer=layer, runtime=ex.runtime)
    counts: dict[str, int] = {}
    for _, j, o in picks:
        counts[f"{labels[j]}:{o}"] = counts.get(f"{labels[j]}:{o}", 0) + 1
    info = {"model": str(model_path), "kind": ex.kind, "task": "multilabel", "backbone": fm.spec.name,
            "layer": layer or fm.gradcam_layer, "grid": list(grid), "input_size": int(ex.preprocess.input_size),
            "classes": labels, "thresholds": dict(zip(labels, thresholds)), "threshold": None,
            "per_outcome": per_outcome, "seed": seed, "n_images": int(len(ids)), "outcomes": counts,
            "rejects": list(source.rejects)}
    return write_run(out_dir, ex.run, [pixels[i] for i in idx], maps, examples, info=info)
