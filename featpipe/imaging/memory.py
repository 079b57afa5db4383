"""Images held in memory (PIL images, numpy arrays) and file references -> uint8 pixels, decoded exactly as
the decoded cache decodes files (:mod:`featpipe.imaging.decode`), so that an image embedded from memory gets
the embedding its file gets in the feature cache.

- a ``str`` or :class:`~pathlib.Path` is a file reference (or ``"<file.npz>#<array>/<index>"``), decoded by
  :func:`featpipe.imaging.decode.decode`;
- a PIL image: EXIF orientation applied, then converted to 8 bits by its mode as a file of that mode is
  (16-bit by bit depth, alpha composited on black, palette/CMYK to RGB);
- a numpy array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of any numeric dtype: converted
  as an npz slice of a manifest is (uint8 as is; other integers by bit depth; floats by their actual range;
  alpha composited on black).

Then, for all of them, the shorter side is resized to ``size`` (with the filter a
:class:`~featpipe.imaging.base.Resize` names; bilinear for a plain size) and centre-cropped; channels are natural
(1 for grey, 3 for colour), as in the cache. A large JPEG given by path may be decoded at a reduced DCT
scale (``draft``, as the cache does); the same JPEG passed as an opened PIL image is decoded whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from featpipe.imaging.base import DEFAULT_DRAFT, DEFAULT_MAX_PIXELS, ImageRejected, Resize, array_to_uint8, as_resize, finish
from featpipe.imaging.decode import decode
from featpipe.imaging.pil import _load, _orientation, _pil_to_uint8


def image_label(image, index: int) -> str:
    """How an image is named in tables: its path, or ``<memory:i>`` for an in-memory image."""
    return str(image) if isinstance(image, (str, Path)) else f"<memory:{index}>"


def _pil_source(im: Image.Image, name: str) -> Image.Image | np.ndarray:
    _load(im, name)
    turn = _orientation(im)
    return _pil_to_uint8(ImageOps.exif_transpose(im) if turn != 1 else im, name)


def _array_source(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or min(a.shape[:2]) < 1:
        raise ValueError(f"{name}: an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: an image array must be numeric, got dtype {a.dtype}")
    return array_to_uint8(a)


def to_pixels(image, *, size: int | Resize, draft: bool = DEFAULT_DRAFT, max_pixels: int = DEFAULT_MAX_PIXELS,
              name: str = "image") -> np.ndarray:
    """One image (file reference, PIL image or array) -> uint8 ``(size, size, C)``, C natural (1 or 3);
    ``size``: a size (bilinear) or a :class:`~featpipe.imaging.base.Resize` (size and filter).

    A file that cannot be decoded raises :class:`~featpipe.imaging.decode.ImageRejected` (with its reason);
    an array of the wrong shape or dtype raises ``ValueError``; ``name`` names an in-memory image in errors."""
    form = as_resize(size)
    if isinstance(image, (str, Path)):
        return decode(str(image), size=form, draft=draft,
                      max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        source = _pil_source(image, name)
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        source = _array_source(np.asarray(image), name)
    else:
        raise TypeError(f"{name}: expected a file path, a PIL image or a numpy array, got {type(image).__name__}")
    h, w = (source.size[1], source.size[0]) if isinstance(source, Image.Image) else source.shape[:2]
    if h * w > max_pixels:
        raise ImageRejected("too large", name)
    return finish(source, form, None)


def as_list(images) -> list:
    """``images`` as a list of single images: one path or PIL image -> ``[it]``; a numpy array is a batch
    ``(N, H, W)`` or ``(N, H, W, C)``; any other iterable is a sequence of images."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"a numpy array of images is a batch (N, H, W) or (N, H, W, C), got shape "
                             f"{images.shape}; wrap a single image in a list")
        return list(images)
    return list(images)
