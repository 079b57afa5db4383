"""Where fine-tuning images come from, and how a batch of uint8 pixels becomes a model input.

An image source maps manifest ids to uint8 ``(n, H, W, C)`` pixels:

- :class:`CachedImages`: the decoded-image cache (``featpipe.decoded.cache.DecodedImages``); 50 epochs
  decode nothing. This is what ``featpipe finetune`` uses.
- :class:`DecodingImages`: decodes every image on every read (``featpipe.imaging.decode.decode``); the
  benchmark's baseline, and nothing else.
- :class:`ArrayImages`: pixels already in memory (tests, notebooks).

Model inputs come from :mod:`featpipe.backbones.modelinput` (centre crop, channels, the backbone's own mean/std), the
owner extraction uses too, so fine-tuned and frozen pipelines see identical pixels at eval time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from featpipe.backbones.modelinput import model_input, normalise
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import DataError
from featpipe.decoded.cache import DecodedImages
from featpipe.finetune.augment import Augment, augment_batch
from featpipe.imaging.base import DEFAULT_DRAFT, Resize, as_resize
from featpipe.imaging.decode import decode


class ImageSource(Protocol):
    def read(self, ids: Sequence[str]) -> np.ndarray:  # uint8 (n, H, W, C)
        ...


class CachedImages:
    """Pixels from the decoded-image cache at ``path`` (opened lazily by the reader)."""

    def __init__(self, path):
        self.path = path
        self.reader = DecodedImages(path)

    def read(self, ids: Sequence[str]) -> np.ndarray:
        idx = np.asarray(self.reader.index_of(list(ids)))
        return np.asarray(self.reader.read(idx))


class DecodingImages:
    """Decodes each image from its manifest path on every read (slow on purpose: the baseline)."""

    def __init__(self, refs: Mapping[str, str], *, size: int | Resize, channels: int | None = None,
                 draft: bool = DEFAULT_DRAFT):
        self.refs, self.form, self.channels, self.draft = dict(refs), as_resize(size), channels, draft

    def read(self, ids: Sequence[str]) -> np.ndarray:
        imgs = [decode(self.refs[i], size=self.form,
                       channels=self.channels, draft=self.draft) for i in ids]
        if len({im.shape[-1] for im in imgs}) > 1:  # grey and colour in one batch: grey replicated
            imgs = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in imgs]
        return np.stack(imgs)


class ArrayImages:
    """Pixels held in memory: ``images`` uint8 ``(N, H, W, C)`` (or ``(N, H, W)``) in the order of ``ids``."""

    def __init__(self, ids: Sequence[str], images: np.ndarray):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError("ArrayImages needs uint8 pixels")
        self.images = images[..., None] if images.ndim == 3 else images
        self.pos = {str(i): n for n, i in enumerate(ids)}
        if len(self.pos) != len(self.images):
            raise ValueError("one unique id per image is needed")

    def read(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return self.images[[self.pos[str(i)] for i in ids]]
        except KeyError as exc:
            raise DataError(f"image id {exc.args[0]!r} is not in the image source") from None


@dataclass(frozen=True)
class Prep:
    """Model input of a fine-tuning run: the backbone's :class:`~featpipe.backbones.spec.Preprocess`
    (``size x size`` = its ``input_size``, normalised with its ``mean``/``std``)."""

    preprocess: Preprocess

    @property
    def size(self) -> int:
        return int(self.preprocess.input_size)

    @classmethod
    def from_preprocess(cls, pre: Preprocess | Mapping) -> Prep:
        """From a Preprocess, or a checkpoint sidecar's ``preprocess`` record (parsed by
        :meth:`~featpipe.backbones.spec.Preprocess.from_dict`)."""
        return cls(pre if isinstance(pre, Preprocess) else Preprocess.from_dict(pre))


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def normalize(t: torch.Tensor, prep: Prep) -> torch.Tensor:
    """uint8 ``(n, C, H, W)`` -> float32 ``(n, 3, H, W)`` through :func:`featpipe.backbones.modelinput.normalise`."""
    return normalise(t.permute(0, 2, 3, 1), prep.preprocess)


def eval_batch(images: np.ndarray, prep: Prep) -> torch.Tensor:
    """Validation/test input: no augmentation; the decoded image centre-cropped as extraction does."""
    return model_input(images, prep.preprocess)


def train_batch(images: np.ndarray, prep: Prep, *, aug: Augment | None, g: torch.Generator) -> torch.Tensor:
    """Training input: augmented (all draws from ``g``) when ``aug`` is given."""
    if aug is None:
        return eval_batch(images, prep)
    return normalize(augment_batch(_nchw(images), size=prep.size, aug=aug, g=g), prep)


@dataclass(frozen=True)
class Labeled:
    """Manifest ids with their integer labels."""

    ids: tuple[str, ...]
    labels: np.ndarray

    @classmethod
    def of(cls, ids: Sequence[str], label_of: Mapping[str, int]) -> Labeled:
        missing = [i for i in ids if i not in label_of]
        if missing:
            raise DataError(f"{len(missing)} split ids are not in the manifest (first: {missing[0]}); "
                            "re-run featpipe prepare")
        return cls(tuple(map(str, ids)), np.asarray([int(label_of[i]) for i in ids], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)
