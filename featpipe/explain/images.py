"""Grad-CAM of a saved model on images held in memory or given by path (the Python API's
:func:`explain_images`): the images are decoded as the cache decodes files
(:func:`featpipe.imaging.memory.to_pixels`), centre-cropped and normalised with the model's preprocessing,
classified by the model's torch form with the run's decision rule, and explained for the predicted class
(or ``targets``) by :func:`featpipe.explain.gradcam.gradcam`, as ``featpipe gradcam`` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from featpipe.backbones.modelinput import centre_crop, normalise, same_channels
from featpipe.explain.gradcam import gradcam
from featpipe.explain.render import ALPHA, overlay
from featpipe.explain.run import predicted, probabilities
from featpipe.imaging.memory import as_list, image_label, to_pixels
from featpipe.saved.load import LoadedModel, load_model


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM maps of images under one model."""

    images: list[str]  # the image's path, or <memory:i>
    pixels: np.ndarray  # uint8 (N, S, S, C): the model's input (decoded, centre-cropped), before normalising
    cams: np.ndarray  # float32 (N, S, S) in [0, 1]
    proba: np.ndarray  # (N, C) class probabilities of the model's torch form
    predicted: np.ndarray  # (N,) class index by the run's decision rule
    targets: np.ndarray  # (N,) class index each map explains
    classes: list

    def overlay(self, i: int, alpha: float = ALPHA) -> np.ndarray:
        """RGB float (S, S, 3) in [0, 1] (for ``imshow``): image ``i`` with its map blended on as a heat map."""
        return overlay(self.pixels[i], self.cams[i], alpha)


def explain_images(model, images, *, targets: Optional[Sequence[int]] = None, layer: Optional[str] = None,
                   batch_size: int = 16) -> Explanation:
    """Grad-CAM maps of ``images`` (paths, PIL images, arrays) under ``model`` (a saved model's path or
    ``load_model(...)``'s result) for ``targets`` (class indices; default: each image's predicted class) at
    the backbone's registered Grad-CAM layer (or ``layer``, a module name in the backbone's network)."""
    m = model if isinstance(model, LoadedModel) else load_model(model, precision="fp32")  # Grad-CAM runs in fp32
    items = as_list(images)
    pre = m.preprocess
    pixels = centre_crop(same_channels([to_pixels(im, size=pre.decoding, name=image_label(im, i))
                                        for i, im in enumerate(items)]), pre)
    x = normalise(pixels, pre)
    proba = probabilities(m.torch_module(), x, batch_size=batch_size)
    pred = predicted(proba, m.threshold)
    tg = pred if targets is None else np.asarray(targets, dtype=np.int64)
    cams = gradcam(m.torch_module(), x, [int(t) for t in tg], layer=layer, batch_size=batch_size)
    return Explanation([image_label(im, i) for i, im in enumerate(items)], pixels, cams, proba, pred,
                       np.asarray(tg, dtype=np.int64), m.classes)
