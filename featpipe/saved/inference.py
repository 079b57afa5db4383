"""A loaded model applied to images held in memory or given by path (the Python API's :func:`predict_images`):
decoded as the cache decodes files (:func:`featpipe.imaging.memory.to_pixels`), then

- a saved head: embedded by :func:`featpipe.features.embed.embed` (extraction's path, at the precision the
  head's features were computed in) and classified by the fitted pipeline's ``predict_proba``;
- a fine-tuned model: :func:`featpipe.finetune.checkpoint.predict_files` on the decoded pixels.

The decision is the run's own: ``p(classes[1]) >= threshold`` (chosen on val) for two classes, else the most
probable class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from featpipe.backbones.modelinput import decode_size, same_channels
from featpipe.evaluation.metrics import predict_labels
from featpipe.features.embed import embed
from featpipe.finetune.checkpoint import predict_files
from featpipe.finetune.data import ArrayImages
from featpipe.imaging.memory import as_list, image_label, to_pixels
from featpipe.saved.models import LoadedModel, load_model


def loaded(model, *, device: str = "cpu") -> LoadedModel:
    """``model`` itself when already loaded, else :func:`featpipe.saved.models.load_model` of the path."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, device=device)
    raise TypeError(f"expected a saved model's path or load_model(...)'s result, got {type(model).__name__}")


def _device(m: LoadedModel) -> str:
    p = next(m.features.parameters(), None)
    return str(p.device) if p is not None else "cpu"


def predict_proba(model, images, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, C)`` (columns in ``model.classes`` order) of ``images`` (paths, PIL images,
    arrays, as :func:`featpipe.features.embed.embed` takes them) under a saved model (path or loaded)."""
    m = loaded(model)
    items = as_list(images)
    if m.kind == "head":
        X = embed(m.features, items, batch_size=batch_size, device=_device(m),
                  precision=m.meta.get("precision") or "fp32")
        return np.asarray(m.pipeline.predict_proba(X), dtype=np.float64)
    size = decode_size(m.preprocess)
    pixels = same_channels([to_pixels(im, size=size, name=image_label(im, i)) for i, im in enumerate(items)])
    keys = [str(i) for i in range(len(items))]
    return np.asarray(predict_files(m.model, m.meta, keys, batch_size=batch_size, device=_device(m),
                                    images=ArrayImages(keys, pixels)), dtype=np.float64)


def predict_images(model, images, *, batch_size: int = 32) -> pd.DataFrame:
    """A table of ``image`` (its path, or ``<memory:i>``), ``predicted`` (class name, by the run's decision
    rule) and ``p(<class>)`` per class, one row per image in the order given."""
    m = loaded(model)
    items = as_list(images)
    proba = predict_proba(m, items, batch_size=batch_size)
    classes = m.classes
    pred = predict_labels(proba, n_classes=len(classes), threshold=m.threshold)
    table = pd.DataFrame({"image": [image_label(im, i) for i, im in enumerate(items)],
                          "predicted": [classes[i] for i in pred]})
    for j, c in enumerate(classes):
        table[f"p({c})"] = proba[:, j]
    return table
