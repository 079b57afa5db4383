"""Embeddings of images given in memory or by path (the Python API's :func:`embed`), computed as extraction
computes the feature cache: decoded by :func:`featpipe.imaging.memory.to_pixels` to the backbone's decoded
form (size and filter), centre-cropped and normalised by :func:`featpipe.backbones.modelinput.model_input`, and run through
the model by :func:`featpipe.features.batches.embed_batch` with extraction's device, precision and memory
layout. With the same backbone, weights, layer and precision, the embedding of a file equals its row in
the feature cache."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from featpipe.backbones.create import Backbone, create_backbone
from featpipe.backbones.modelinput import model_input, same_channels
from featpipe.core.runtime import Runtime
from featpipe.features.batches import embed_batch
from featpipe.imaging.base import DEFAULT_DRAFT
from featpipe.imaging.memory import as_list, image_label, to_pixels


def _feature_model(backbone) -> Any:
    if isinstance(backbone, str):
        backbone = create_backbone(backbone)
    return backbone.model if isinstance(backbone, Backbone) else backbone


def _runtime(model, device: str, precision: str) -> Runtime:
    """Extraction's runtime for ``model`` (device, precision, channels_last where its family runs faster so),
    with the model moved and laid out for it in place."""
    rt = Runtime.resolve(device, precision, traits=model.spec.traits)
    rt.prepare(model)
    return rt


def embed(backbone, images, *, batch_size: int = 32, device: str = "auto", precision: str = "auto",
          draft: bool = DEFAULT_DRAFT) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of ``images`` with ``backbone``'s own preprocessing.

    ``backbone``: a :class:`~featpipe.backbones.create.Backbone` (from ``create_backbone``), its ``model``, or
    a registered name (built with its default weights). ``images``: file paths, PIL images, numpy arrays
    ``(H, W[, C])`` (any numeric dtype, scaled as an npz image of a manifest is), a list mixing them, or one
    numpy batch ``(N, H, W[, C])``. ``device`` (auto, cpu, cuda, cuda:N, mps) and ``precision`` (auto, bf16,
    fp32) as ``extract.device`` / ``extract.precision``; the model is moved to the device in place. An image
    that cannot be decoded raises :class:`~featpipe.imaging.decode.ImageRejected` naming it."""
    model = _feature_model(backbone)
    items = as_list(images)
    dim = int(model.embed_dim)
    if not items:
        return np.zeros((0, dim), dtype=np.float32)
    rt = _runtime(model, device, precision)
    pre = model.spec.preprocess
    out = []
    for start in range(0, len(items), batch_size):
        chunk: Sequence = items[start:start + batch_size]
        pixels = [to_pixels(im, size=pre.decoding, draft=draft, name=image_label(im, start + i)) for i, im in enumerate(chunk)]
        x = model_input(same_channels(pixels), pre)
        out.append(embed_batch(model, x, runtime=rt))
    return np.concatenate(out).astype(np.float32, copy=False)
