"""Classify images with a saved head: decode, embed with the recorded backbone/weights/layer/preprocessing,
apply the head, write per-image class probabilities.

The backbone is rebuilt from what the head's sidecar records and checked against it (weights identity,
layer, preprocessing, embedding size) before any image is read: a head never runs on features it was not
fitted on. Images go through the same decoder and centre crop as extraction, at the precision the
training features were computed in, so ``predict`` on the training images reproduces the scores the head
gives their cached features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError, FeatpipeError
from featpipe.heads.io import load_head
from featpipe.backbones.modelinput import decode_files, decode_size, same_channels

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
        thr = f" (threshold {self.threshold:.3f} on p({self.classes[1]}), chosen on val)" if self.threshold is not None else ""
        rej = ""
        if len(self.rejects):
            where = f", listed in {self.rejects_path}" if self.rejects_path is not None else ""
            rej = f"; {len(self.rejects)} file(s) rejected and not classified{where}"
        return f"{len(self.table)} images classified{thr}: {parts}{rej}"


def image_files(inputs: Sequence[str | Path]) -> tuple[list[str], list[dict]]:
    """Files named, plus the files found (recursively, sorted) in folders named; and the rejects: paths that do
    not exist, hidden files and folders, unreadable folders, special files and non-images (by extension
    and DICOM content), each with its reason."""
    from featpipe.data.sources import _walk, image_reject

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


def load_backbone(meta: dict, *, device: str = "cpu"):
    """The recorded backbone, rebuilt from the sidecar's weights request and checked against the head
    (:func:`featpipe.saved.models.rebuild_backbone`); returns (model, spec)."""
    from featpipe.saved.models import rebuild_backbone

    model = rebuild_backbone(meta, device=device)
    return model, model.spec


def embed_pixels(model, spec, pixels: Sequence[np.ndarray], *, precision: str = "fp32", batch_size: int = 32,
                 device: str = "cpu") -> np.ndarray:
    """Embeddings of decoded images (uint8 at the backbone's decode size), prepared by
    :func:`featpipe.backbones.modelinput.model_input` as extraction prepares them."""
    import torch

    from featpipe.backbones.modelinput import model_input

    pre = spec.preprocess
    feats = []
    with torch.inference_mode():
        for s in range(0, len(pixels), batch_size):
            x = model_input(same_channels(pixels[s:s + batch_size]), pre).to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                feats.append(model(x).float().cpu().numpy())
    return np.concatenate(feats).astype(np.float32)


CHUNK = 256  # images decoded and classified at a time (flat memory on large folders)


def predict(model_path: str | Path, inputs: Sequence[str | Path], *, out_csv: str | Path | None = None,
            device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None) -> Prediction:
    """Class probabilities for every image in ``inputs`` (files or folders); writes ``out_csv`` when given.

    ``model_path`` is a saved head (``.skops``, applied to the recorded backbone's embeddings) or a fine-tuned
    model (``.safetensors`` or its ``.json`` sidecar). Files that cannot be read as images are skipped and listed,
    with the reason, in ``<out_csv stem>.rejects.csv``; the others are classified."""
    from featpipe.features.extract import select_device

    device = str(select_device(device))  # a device that cannot be used: one line, before any work
    refs, rejects = image_files(inputs)
    classify, meta = _classifier(model_path, device=device, batch_size=batch_size)
    classes = list(meta.get("classes") or [])
    if not classes:
        raise FeatpipeError(f"{model_path}: the sidecar records no class names; refit or retrain the model")
    size = int(meta["resize_size"])
    done, probas = [], []
    for s in range(0, len(refs), CHUNK):
        ok, pixels, bad = decode_files(refs[s:s + CHUNK], size, max_pixels=max_pixels)
        rejects += bad
        if ok:
            done += ok
            probas.append(classify(ok, pixels))
    rej = pd.DataFrame(rejects, columns=["path", "reason"])
    rej_path = None
    if out_csv is not None and len(rej):
        from featpipe.core.fileio import atomic_write

        rej_path = Path(out_csv).with_name(Path(out_csv).stem + ".rejects.csv")
        atomic_write(rej_path, rej.to_csv(index=False, lineterminator="\n"))
    if not done:
        first = f" (first: {rejects[0]['path']}: {rejects[0]['reason']})" if rejects else ""
        raise DataError(f"no images could be classified in the given paths{first}")
    proba = np.concatenate(probas)
    threshold = meta.get("threshold") if len(classes) == 2 else None
    if threshold is not None:
        pred = (proba[:, 1] >= threshold).astype(int)
    else:
        pred = proba.argmax(1)
    table = pd.DataFrame({"path": done, "predicted": [classes[i] for i in pred]})
    for i, c in enumerate(classes):
        table[f"p({c})"] = proba[:, i]
    if out_csv is not None:
        from featpipe.core.fileio import atomic_write

        atomic_write(out_csv, table.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return Prediction(table, classes, threshold, rej, rej_path)


def _classifier(model_path: str | Path, *, device: str, batch_size: int):
    """``(classify(refs, pixels) -> proba, meta)`` for a saved head or a fine-tuned model; ``meta`` gains
    ``resize_size`` (the size images are decoded at)."""
    if Path(model_path).suffix in (".safetensors", ".json"):
        from featpipe.finetune.checkpoint import load_finetuned, predict_files
        from featpipe.finetune.data import ArrayImages

        net, meta = load_finetuned(model_path, device=device)

        def classify(refs, pixels):
            return predict_files(net, meta, refs, batch_size=batch_size, device=device,
                                 images=ArrayImages(refs, same_channels(pixels)))

        return classify, {**meta, "resize_size": decode_size(meta["preprocess"])}
    saved = load_head(model_path)
    meta = saved.meta
    model, spec = load_backbone(meta, device=device)

    def classify(refs, pixels):
        X = embed_pixels(model, spec, pixels, precision=meta.get("precision") or "fp32", batch_size=batch_size,
                         device=device)
        return saved.pipeline.predict_proba(X)

    return classify, {**meta, "resize_size": decode_size(spec.preprocess)}
