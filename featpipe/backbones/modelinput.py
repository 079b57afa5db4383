"""Model input: the one owner of "decoded pixels -> network input" and of the decoded forms a backbone reads.

A backbone's :class:`featpipe.backbones.spec.Preprocess` (the one type of preprocessing; a saved model's
sidecar record is parsed into one by :meth:`~featpipe.backbones.spec.Preprocess.from_dict` where it is read)
decides everything; nothing here knows a backbone by name:

- **decoded form**: the image is decoded to ``resize_size`` with the ``interpolation`` filter (shorter side
  resized to it, centre crop to a square, :func:`featpipe.imaging.decode.decode`): that is the decoded cache
  every stage reads (``cache/<dataset>/decoded-<resize_size>.h5`` for bilinear,
  ``decoded-<resize_size>-<filter>.h5`` for another filter; :func:`decode_key`);
- **crop**: centre crop to ``input_size`` (offsets rounded as torchvision's ``CenterCrop``);
- **channels**: 3, grayscale replicated;
- **normalisation**: scaled to [0, 1], then ``(x - mean) / std``.

Functions that take a ``backbone`` accept a registered name, a :class:`~featpipe.backbones.spec.BackboneSpec`
or a :class:`~featpipe.backbones.spec.Preprocess`, resolved to its Preprocess by :func:`preprocess_of` (the
one place). :func:`ensure_decoded` is the one function that makes sure the decoded caches exist for a set of
backbones (used by ``prepare``, ``decode``, ``extract``, ``finetune`` and ``gradcam``): missing or stale
rows are decoded, valid ones reused, and a cache that is already current is not touched.
:func:`first_pass` is ``prepare``'s hook that verifies the images and fills those caches in one decode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featpipe.backbones.registry import get
from featpipe.backbones.weights import local_preprocess
from featpipe.backbones.spec import BackboneSpec, Preprocess
from featpipe.decoded.build import BuildResult, build
from featpipe.decoded.cache import DecodeOptions, decoded_path
from featpipe.imaging.base import DEFAULT_MAX_PIXELS, ImageRejected, Resize, as_resize, crop_offset
from featpipe.imaging.decode import decode
from featpipe.params.config import Params, configured_backbones


def preprocess_of(backbone: str | BackboneSpec | Preprocess) -> Preprocess:
    """The :class:`~featpipe.backbones.spec.Preprocess` of a backbone given by name or spec (a Preprocess is
    its own)."""
    if isinstance(backbone, Preprocess):
        return backbone
    if isinstance(backbone, (str, BackboneSpec)):
        return get(backbone).preprocess
    raise TypeError(f"expected a backbone name, a BackboneSpec or a Preprocess, got {type(backbone).__name__} "
                    "(parse a recorded preprocessing with Preprocess.from_dict)")


def decode_key(backbone: str | BackboneSpec | Preprocess) -> Resize:
    """The decoded form a backbone reads: ``resize_size`` with its interpolation (the key of its decoded cache)."""
    return preprocess_of(backbone).decoding


def decode_keys(backbones: Iterable) -> list[Resize]:
    """The decoded forms a set of backbones (names, specs or Preprocess) reads, sorted (size, then filter)."""
    return sorted({decode_key(b) for b in backbones})


def centre_crop(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 ``(n, S, S, C)`` decoded at :func:`decode_key` -> ``(n, input_size, input_size, C)`` (offsets rounded
    as the reference does: :func:`featpipe.imaging.base.crop_offset`)."""
    size = int(pre.input_size)
    h, w = pixels.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"decoded images of {h}x{w} px are smaller than the model input {size} px")
    top, left = crop_offset(h - size, pre.resize_mode), crop_offset(w - size, pre.resize_mode)
    return np.ascontiguousarray(pixels[:, top:top + size, left:left + size])


def normalise(images_uint8, pre: Preprocess):
    """uint8 ``(n, H, W, C)`` (array or tensor) -> float32 ``(n, pre.channels, H, W)`` with the spec's mean/std."""
    return to_tensor_batch(images_uint8, pre.mean, pre.std, channels=pre.channels)


def model_input(pixels: np.ndarray, pre: Preprocess):
    """Decoded pixels uint8 ``(n, S, S, C)`` -> the network input: centre crop, ``pre.channels``, normalised."""
    return normalise(centre_crop(np.asarray(pixels), pre), pre)


def to_tensor_batch(images_uint8, mean: Sequence[float], std: Sequence[float], channels: int = 3):
    """uint8 ``(n, H, W, C)`` -> normalised float32 ``(n, channels, H, W)``; 1 channel replicated to 3, 3 channels
    averaged to 1 (as torchxrayvision's reference turns a colour image to one channel)."""
    import torch

    x = torch.as_tensor(np.asarray(images_uint8) if not isinstance(images_uint8, torch.Tensor) else images_uint8)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 (n, H, W, C) images, got {tuple(x.shape)} {x.dtype}")
    c = x.shape[-1]
    if c == 1 and channels == 3:
        x = x.expand(-1, -1, -1, 3)
    elif c != channels and not (c == 3 and channels == 1):
        raise ValueError(f"cannot turn {c}-channel images into {channels} channels")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each")
    x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def decode_files(refs: Sequence[str], size: int | Resize, *, max_pixels: int | None = None
                 ) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """Images that are not in a manifest (``predict``, ``gradcam --images``), decoded to ``size`` (a decoded
    form: :func:`decode_key`, or a plain size, bilinear) as the cache decodes them; a file that cannot be decoded
    is a reject (path, reason), never fatal. ``max_pixels``: larger images are rejected ("too large").
    Returns (decoded refs, their pixels, rejects)."""
    form = as_resize(size)
    ok, pixels, rejects = [], [], []
    for r in refs:
        try:
            pixels.append(decode(r, size=form,
                                 max_pixels=max_pixels or DEFAULT_MAX_PIXELS))
            ok.append(r)
        except ImageRejected as exc:
            rejects.append({"path": r, "reason": exc.reason})
    return ok, pixels, rejects


def same_channels(pixels: Sequence[np.ndarray]) -> np.ndarray:
    """Stack decoded images; a mixed grey/colour batch has its grey images replicated (lossless), as the cache."""
    if len({im.shape[-1] for im in pixels}) > 1:
        pixels = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in pixels]
    return np.stack(pixels)


def ensure_decoded(manifest: pd.DataFrame, backbones: Iterable, *, cache_dir: str | Path, dataset: str,
                   options: DecodeOptions = DecodeOptions(), rejects: bool = False,
                   paths: Mapping[Resize, Path] | None = None) -> BuildResult:
    """Make the decoded cache of every decoded form ``backbones`` read current for ``manifest``, in one pass;
    the result's ``paths`` and ``stats`` are keyed by :func:`decode_key`.

    ``backbones``: names, specs or Preprocess. ``rejects=True`` (prepare): undecodable images are
    returned in ``result.rejects`` and left out of the caches instead of being an error. ``paths``
    overrides the file of a decoded form (sharded extraction)."""
    targets = {k: decoded_path(cache_dir, dataset, k) for k in decode_keys(backbones)}
    targets.update({k: Path(p) for k, p in (paths or {}).items() if k in targets})
    return build(manifest, targets, options=options, rejects=rejects)


class FirstPass:
    """``prepare``'s first pass, the ``decode`` hook of :func:`featpipe.data.manifest.build_manifest`: the
    candidate rows (id, path, sha256) are verified and the decoded caches of ``backbones`` filled by one
    decode per image (:func:`ensure_decoded` with ``rejects=True``). Called with the candidates, returns
    (rejects: reason by id, upright (width, height) by id); then ``figures`` holds what it did
    (decoded, sizes: the decoded forms' labels, e.g. ``["256", "518-bicubic"]``, seconds)."""

    def __init__(self, backbones: Sequence, *, cache_dir: str | Path, dataset: str, options: DecodeOptions):
        self.backbones, self.cache_dir, self.dataset, self.options = list(backbones), cache_dir, dataset, options
        self.figures: dict | None = None

    def __call__(self, candidates: pd.DataFrame) -> tuple[dict, dict]:
        res = ensure_decoded(candidates, self.backbones, cache_dir=self.cache_dir, dataset=self.dataset,
                             options=self.options, rejects=True)
        self.figures = {"decoded": res.decoded, "sizes": [k.label for k in sorted(res.paths)], "seconds": res.seconds}
        return res.rejects, res.dims


def first_pass(params: Params, *, cache_dir: str | Path, progress: bool = True) -> FirstPass | None:
    """The first pass for the configured backbones (:func:`featpipe.params.config.configured_backbones`)
    writing their decoded caches under ``cache_dir``; None when no backbone is configured (nothing to cache:
    ``prepare`` verifies by a plain decode)."""
    weights = {name: params.extract.weights for name in params.extract.backbones}
    weights.update({name: params.finetune.weights for name in params.finetune.backbones if name not in weights})
    weights.update({a.backbone: a.weights or params.finetune.weights for a in params.finetune.arms
                    if a.backbone not in weights})
    backbones = [local_preprocess(get(name), weights.get(name, "default")) for name in configured_backbones(params)]
    if not backbones:
        return None
    return FirstPass(backbones, cache_dir=cache_dir, dataset=params.data.name,
                     options=DecodeOptions.from_params(params, progress=progress))
