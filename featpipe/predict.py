"""Classify images with a saved head: decode, embed with the recorded backbone/weights/layer/preprocessing,
apply the head, write per-image class probabilities.

The backbone is rebuilt from what the head's sidecar records and checked against it (weights identity,
layer, preprocessing, embedding size) before any image is read: a head never runs on features it was not
fitted on. Images go through the same decoder and centre crop as extraction, at the precision the
training features were computed in, so ``predict`` on the training images reproduces the scores the head
gives their cached features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featpipe.errors import DataError, FeatpipeError
from featpipe.headio import check_compatible, load_head

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".webp")


@dataclass
class Prediction:
    table: pd.DataFrame  # path, predicted, p(<class>) per class
    classes: list
    threshold: float | None

    def summary(self) -> str:
        counts = self.table["predicted"].value_counts()
        parts = ", ".join(f"{c}: {int(counts.get(c, 0))}" for c in self.classes)
        thr = f" (threshold {self.threshold:.3f} on p({self.classes[1]}), chosen on val)" if self.threshold is not None else ""
        return f"{len(self.table)} images classified{thr}: {parts}"


def image_files(inputs: Sequence[str | Path]) -> list[str]:
    """Files named, plus image files found (recursively, sorted) in folders named."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(q) for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"{p} not found: pass image files or folders of images")
    if not out:
        raise DataError("no images found in the given paths")
    return out


def load_backbone(meta: dict, *, device: str = "cpu"):
    """The recorded backbone, checked against the head; returns (model, spec, layer)."""
    from featpipe.backbones import build, get

    spec = get(meta["backbone"])
    layer = spec.resolve_layer(meta.get("layer") or None)
    model = build(spec, weights=meta.get("weights_request") or "default", layer=layer)
    check_compatible(meta, {"backbone": spec.name, "weights_id": model.weights_id, "layer": layer or "",
                            "preprocess": spec.preprocess.to_dict(), "embedding_dim": model.embed_dim},
                     what="the backbone built for prediction")
    return model.to(device), spec


def embed(model, spec, refs: Sequence[str], *, precision: str = "fp32", batch_size: int = 32,
          device: str = "cpu") -> np.ndarray:
    """Embeddings of image references, decoded and cropped exactly as extraction does."""
    import torch

    from featpipe.decoded import to_tensor_batch
    from featpipe.imaging import decode

    pre = spec.preprocess
    off = int(round((pre.resize_size - pre.input_size) / 2.0))
    crop = slice(off, off + pre.input_size)
    feats = []
    with torch.inference_mode():
        for s in range(0, len(refs), batch_size):
            imgs = [decode(r, size=pre.resize_size)[crop, crop] for r in refs[s:s + batch_size]]
            if len({im.shape[-1] for im in imgs}) > 1:  # mixed gray/colour batch: gray replicated, as extraction
                imgs = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in imgs]
            x = to_tensor_batch(np.ascontiguousarray(np.stack(imgs)), pre.mean, pre.std, channels=3).to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                feats.append(model(x).float().cpu().numpy())
    return np.concatenate(feats).astype(np.float32)


def predict(model_path: str | Path, inputs: Sequence[str | Path], *, out_csv: str | Path | None = None,
            device: str = "cpu", batch_size: int = 32) -> Prediction:
    """Class probabilities for every image in ``inputs`` (files or folders); writes ``out_csv`` when given.

    ``model_path`` is a saved head (``.skops``, applied to the recorded backbone's embeddings) or a fine-tuned
    model (``.safetensors`` or its ``.json`` sidecar)."""
    from featpipe.extract import select_device

    device = str(select_device(device))  # a device that cannot be used: one line, before any work
    refs = image_files(inputs)
    if Path(model_path).suffix in (".safetensors", ".json"):
        from featpipe.finetune.checkpoint import load_finetuned, predict_files

        net, meta = load_finetuned(model_path, device=device)
        proba = predict_files(net, meta, refs, batch_size=batch_size, device=device)
    else:
        saved = load_head(model_path)
        meta = saved.meta
        model, spec = load_backbone(meta, device=device)
        X = embed(model, spec, refs, precision=meta.get("precision") or "fp32", batch_size=batch_size, device=device)
        proba = saved.pipeline.predict_proba(X)
    classes = list(meta.get("classes") or [])
    if not classes:
        raise FeatpipeError(f"{model_path}: the sidecar records no class names; refit or retrain the model")
    threshold = meta.get("threshold") if len(classes) == 2 else None
    if threshold is not None:
        pred = (proba[:, 1] >= threshold).astype(int)
    else:
        pred = proba.argmax(1)
    table = pd.DataFrame({"path": refs, "predicted": [classes[i] for i in pred]})
    for i, c in enumerate(classes):
        table[f"p({c})"] = proba[:, i]
    if out_csv is not None:
        from featpipe.fileio import atomic_write

        atomic_write(out_csv, table.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return Prediction(table, classes, threshold)
