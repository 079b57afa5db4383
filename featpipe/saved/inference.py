"""A loaded model applied to images held in memory or given by path (the Python API's :func:`predict_images`):
decoded as the cache decodes files (:func:`featpipe.imaging.memory.to_pixels`), then

the one loader's :meth:`featpipe.saved.load.LoadedModel.predict_proba` (a head: the backbone at the precision
its features were computed in, then the fitted pipeline; a fine-tuned model: its own test pass).

The decision is the run's own: ``p(classes[1]) >= threshold`` (chosen on val) for two classes, else the most
probable class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from featpipe.core.names import proba_column
from featpipe.evaluation.metrics import predict_labels
from featpipe.imaging.memory import as_list, image_label, to_pixels
from featpipe.saved.load import LoadedModel, load_model


def loaded(model, *, device: str = "cpu") -> LoadedModel:
    """``model`` itself when already loaded, else :func:`featpipe.saved.load.load_model` of the path."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, device=device)
    raise TypeError(f"expected a saved model's path or load_model(...)'s result, got {type(model).__name__}")


def predict_proba(model, images, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, C)`` (columns in ``model.classes`` order) of ``images`` (paths, PIL images,
    arrays, as :func:`featpipe.features.embed.embed` takes them) under a saved model (path or loaded): decoded
    as the cache decodes files, then :meth:`LoadedModel.predict_proba` (the one loader's path)."""
    m = loaded(model)
    items = as_list(images)
    pixels = [to_pixels(im, size=m.decoding, name=image_label(im, i)) for i, im in enumerate(items)]
    return np.asarray(m.predict_proba(pixels, batch_size=batch_size), dtype=np.float64)


def predict_images(model, images, *, batch_size: int = 32) -> pd.DataFrame:
    """A table of ``image`` (its path, or ``<memory:i>``), ``predicted`` (class name, by the run's decision
    rule) and ``p[<class>]`` per class, one row per image in the order given."""
    m = loaded(model)
    items = as_list(images)
    proba = predict_proba(m, items, batch_size=batch_size)
    classes = m.classes
    pred = predict_labels(proba, n_classes=len(classes), threshold=m.threshold)
    table = pd.DataFrame({"image": [image_label(im, i) for i, im in enumerate(items)],
                          "predicted": [classes[i] for i in pred]})
    for j, c in enumerate(classes):
        table[proba_column(c)] = proba[:, j]
    return table
