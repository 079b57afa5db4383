"""Model input: the one owner of "decoded pixels -> network input" and of the decoded sizes a backbone reads.

A backbone's preprocessing spec (:class:`featpipe.backbones.registry.Preprocess`, or the ``preprocess``
dict a saved model's sidecar records) decides everything; nothing here knows a backbone by name:

- **decode size**: the image is decoded to ``resize_size`` (shorter side resized to it, centre crop to a
  square, :func:`featpipe.imaging.decode.decode`): that is the decoded cache every stage reads
  (``cache/<dataset>/decoded-<resize_size>.h5``);
- **crop**: centre crop to ``input_size`` (offsets rounded as torchvision's ``CenterCrop``);
- **channels**: 3, grayscale replicated;
- **normalisation**: scaled to [0, 1], then ``(x - mean) / std``.

:func:`ensure_decoded` is the one function that makes sure the decoded caches exist for a set of
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
from featpipe.decoded.build import BuildResult, build
from featpipe.decoded.cache import DecodeOptions, decoded_path
from featpipe.imaging.base import DEFAULT_MAX_PIXELS, ImageRejected
from featpipe.imaging.decode import decode
from featpipe.params.config import Params, configured_backbones


def _get(pre, key: str):
    if isinstance(pre, str):
        import json

        pre = json.loads(pre)
    return pre[key] if isinstance(pre, Mapping) else getattr(pre, key)


def preprocess_of(backbone) -> object:
    """The preprocessing spec of a backbone (name or spec); a Preprocess or a sidecar dict is returned as is."""
    if isinstance(backbone, (str,)) or hasattr(backbone, "preprocess"):
        return get(backbone).preprocess
    return backbone


def decode_size(pre) -> int:
    """The size images are decoded to for this spec: ``resize_size`` (``input_size`` when none is given)."""
    resize = _get(pre, "resize_size") if _has(pre, "resize_size") else None
    return int(resize or _get(pre, "input_size"))


def _has(pre, key: str) -> bool:
    return key in pre if isinstance(pre, Mapping) else hasattr(pre, key)


def decode_sizes(backbones: Iterable) -> list[int]:
    """The decoded sizes a set of backbones (names, specs or preprocessing specs) reads, sorted."""
    return sorted({decode_size(preprocess_of(b)) for b in backbones})


def centre_crop(pixels: np.ndarray, pre) -> np.ndarray:
    """uint8 ``(n, S, S, C)`` decoded at :func:`decode_size` -> ``(n, input_size, input_size, C)``."""
    size = int(_get(pre, "input_size"))
    h, w = pixels.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"decoded images of {h}x{w} px are smaller than the model input {size} px")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.ascontiguousarray(pixels[:, top:top + size, left:left + size])


def normalise(images_uint8, pre, channels: int = 3):
    """uint8 ``(n, H, W, C)`` (array or tensor) -> float32 ``(n, channels, H, W)`` with the spec's mean/std."""
    return to_tensor_batch(images_uint8, tuple(_get(pre, "mean")), tuple(_get(pre, "std")), channels=channels)


def model_input(pixels: np.ndarray, pre):
    """Decoded pixels uint8 ``(n, S, S, C)`` -> the network input: centre crop, 3 channels, normalised."""
    return normalise(centre_crop(np.asarray(pixels), pre), pre)


def to_tensor_batch(images_uint8, mean: Sequence[float], std: Sequence[float], channels: int = 3):
    """uint8 ``(n, H, W, C)`` -> normalised float32 ``(n, channels, H, W)``; 1 channel replicated to 3."""
    import torch

    x = torch.as_tensor(np.asarray(images_uint8) if not isinstance(images_uint8, torch.Tensor) else images_uint8)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 (n, H, W, C) images, got {tuple(x.shape)} {x.dtype}")
    c = x.shape[-1]
    if c == 1 and channels == 3:
        x = x.expand(-1, -1, -1, 3)
    elif c != channels:
        raise ValueError(f"cannot turn {c}-channel images into {channels} channels")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each")
    x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def decode_files(refs: Sequence[str], size: int, *, max_pixels: int | None = None
                 ) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """Images that are not in a manifest (``predict``, ``gradcam --images``), decoded at ``size`` as the cache
    decodes them; a file that cannot be decoded is a reject (path, reason), never fatal. ``max_pixels``: larger
    images are rejected ("too large"). Returns (decoded refs, their pixels, rejects)."""
    ok, pixels, rejects = [], [], []
    for r in refs:
        try:
            pixels.append(decode(r, size=size, max_pixels=max_pixels or DEFAULT_MAX_PIXELS))
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
                   paths: Mapping[int, Path] | None = None) -> BuildResult:
    """Make the decoded cache of every size ``backbones`` read current for ``manifest``, in one pass.

    ``backbones``: names, specs or preprocessing specs. ``rejects=True`` (prepare): undecodable images are
    returned in ``result.rejects`` and left out of the caches instead of being an error. ``paths``
    overrides the file of a size (sharded extraction)."""
    targets = {s: decoded_path(cache_dir, dataset, s) for s in decode_sizes(backbones)}
    targets.update({int(s): Path(p) for s, p in (paths or {}).items() if int(s) in targets})
    return build(manifest, targets, options=options, rejects=rejects)


class FirstPass:
    """``prepare``'s first pass, the ``decode`` hook of :func:`featpipe.data.manifest.build_manifest`: the
    candidate rows (id, path, sha256) are verified and the decoded caches of ``backbones`` filled by one
    decode per image (:func:`ensure_decoded` with ``rejects=True``). Called with the candidates, returns
    (rejects: reason by id, upright (width, height) by id); then ``figures`` holds what it did
    (decoded, sizes, seconds)."""

    def __init__(self, backbones: Sequence, *, cache_dir: str | Path, dataset: str, options: DecodeOptions):
        self.backbones, self.cache_dir, self.dataset, self.options = list(backbones), cache_dir, dataset, options
        self.figures: dict | None = None

    def __call__(self, candidates: pd.DataFrame) -> tuple[dict, dict]:
        res = ensure_decoded(candidates, self.backbones, cache_dir=self.cache_dir, dataset=self.dataset,
                             options=self.options, rejects=True)
        self.figures = {"decoded": res.decoded, "sizes": sorted(res.paths), "seconds": res.seconds}
        return res.rejects, res.dims


def first_pass(params: Params, *, cache_dir: str | Path, progress: bool = True) -> FirstPass | None:
    """The first pass for the configured backbones (:func:`featpipe.params.config.configured_backbones`)
    writing their decoded caches under ``cache_dir``; None when no backbone is configured (nothing to cache:
    ``prepare`` verifies by a plain decode)."""
    backbones = configured_backbones(params)
    if not backbones:
        return None
    return FirstPass(backbones, cache_dir=cache_dir, dataset=params.data.name,
                     options=DecodeOptions.from_params(params, progress=progress))
