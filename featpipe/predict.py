"""Classify image files with a saved model: decode, classify (:meth:`featpipe.saved.load.LoadedModel.predict_proba`),
write per-image class probabilities.

The model is loaded by :func:`featpipe.saved.load.load_model`: a head's backbone is rebuilt from what its
sidecar records and checked against it (weights identity, layer, preprocessing, embedding size) before any
image is read, so a head never runs on features it was not fitted on. Images go through the same decoder and
centre crop as extraction, on the same :class:`~featpipe.core.runtime.Runtime` (precision, memory format,
autocast) the training features were computed with, so ``predict`` on the images of the manifest reproduces
the cached embeddings, and the scores the head gives them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from featpipe.backbones.modelinput import decode_files
from featpipe.core.errors import DataError, FeatpipeError
from featpipe.core.fileio import atomic_write
from featpipe.core.names import proba_column
from featpipe.evaluation.metrics import predict_labels
from featpipe.data.sources import _walk, image_reject
from featpipe.saved.load import load_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".webp")


@dataclass
class Prediction:
    table: pd.DataFrame  # path, predicted, p(<class>) per class
    classes: list
    threshold: float | None
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    rejects_path: Path | None = None

    def summary(self) -> str:
        counts = self.table["predicted"].value_counts()
        parts = ", ".join(f"{c}: {int(counts.get(c, 0))}" for c in self.classes)
        thr = f" (threshold {self.threshold:.3f} on p[{self.classes[1]}], chosen on val)" if self.threshold is not None else ""
        rej = ""
        if len(self.rejects):
            where = f", listed in {self.rejects_path}" if self.rejects_path is not None else ""
            rej = f"; {len(self.rejects)} file(s) rejected and not classified{where}"
        return f"{len(self.table)} images classified{thr}: {parts}{rej}"


def image_files(inputs: Sequence[str | Path]) -> tuple[list[str], list[dict]]:
    """Files named, plus the files found (recursively, sorted) in folders named; and the rejects: paths that do
    not exist, hidden files and folders, unreadable folders, special files and non-images (by extension
    and DICOM content), each with its reason."""
    out: list[str] = []
    rejects: list[dict] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, skipped = _walk(p)
            rejects += [{"path": str(q), "reason": why} for q, why in skipped]
            for q in files:
                why = image_reject(q)
                if why is None:
                    out.append(str(q))
                else:
                    rejects.append({"path": str(q), "reason": why})
        elif p.exists() or p.is_symlink():
            why = image_reject(p)
            if why is None:
                out.append(str(p))
            else:
                rejects.append({"path": str(p), "reason": why})
        else:
            rejects.append({"path": str(p), "reason": "missing"})
    return list(dict.fromkeys(out)), rejects  # a file named twice is classified once


CHUNK = 256  # images decoded and classified at a time (flat memory on large folders)


def predict(model_path: str | Path, inputs: Sequence[str | Path], *, out_csv: str | Path | None = None,
            device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None,
            progress: Callable[[str], None] | None = None) -> Prediction:
    """Class probabilities for every image in ``inputs`` (files or folders); writes ``out_csv`` when given.

    ``model_path`` is a saved head (``.skops``, applied to the recorded backbone's embeddings) or a fine-tuned
    model (``.safetensors`` or its ``.json`` sidecar). Files that cannot be read as images are skipped and listed,
    with the reason, in ``<out_csv stem>.rejects.csv``; the others are classified. ``progress(line)`` is called
    once the model is loaded and after every batch of ``batch_size`` images (a plain line with the count and
    the seconds elapsed)."""
    t0 = time.perf_counter()
    say = progress or (lambda line: None)
    model = load_model(model_path, device=device)  # a device that cannot be used: one line, before any image
    classes = model.classes
    if not classes:
        raise FeatpipeError(f"{model_path}: the sidecar records no class names; refit or retrain the model")
    refs, rejects = image_files(inputs)
    say(f"model loaded ({time.perf_counter() - t0:.1f} s); {len(refs)} image file(s) to classify")
    done, probas = [], []
    for s in range(0, len(refs), CHUNK):
        ok, pixels, bad = decode_files(refs[s:s + CHUNK], model.decoding, max_pixels=max_pixels)
        rejects += bad
        for b in range(0, len(ok), batch_size):
            probas.append(model.predict_proba(pixels[b:b + batch_size], batch_size=batch_size))
            done += ok[b:b + batch_size]
            say(f"{len(done)}/{len(refs)} images classified"
                + (f", {len(rejects)} rejected" if rejects else "") + f" ({time.perf_counter() - t0:.1f} s)")
    rej = pd.DataFrame(rejects, columns=["path", "reason"])
    rej_path = None
    if out_csv is not None and len(rej):
        rej_path = Path(out_csv).with_name(Path(out_csv).stem + ".rejects.csv")
        atomic_write(rej_path, rej.to_csv(index=False, lineterminator="\n"))
    if not done:
        first = f" (first: {rejects[0]['path']}: {rejects[0]['reason']})" if rejects else ""
        raise DataError(f"no images could be classified in the given paths{first}")
    proba = np.concatenate(probas)
    threshold = model.threshold
    if model.multilabel:  # each label at its own val threshold; predicted = the labels called positive
        thr = model.meta.get("thresholds") or {}
        hit = proba >= np.array([float(thr.get(c, 0.5)) for c in classes])
        table = pd.DataFrame({"path": done, "predicted": ["; ".join(c for c, h in zip(classes, r) if h) for r in hit]})
    else:
        pred = predict_labels(proba, n_classes=len(classes), threshold=threshold)
        table = pd.DataFrame({"path": done, "predicted": [classes[i] for i in pred]})
    for i, c in enumerate(classes):
        table[proba_column(c)] = proba[:, i]
    if out_csv is not None:
        atomic_write(out_csv, table.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return Prediction(table, classes, threshold, rej, rej_path)
