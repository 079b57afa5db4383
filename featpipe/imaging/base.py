"""What every imaging backend shares: the reject reasons (:class:`ImageRejected`), the decoder's identity,
the conversion of any numeric pixels to 8 bits, and the finishing steps (resize with the filter a
:class:`Resize` names, centre crop, channels) that turn a backend's 8-bit pixels into the decoded image
(see :mod:`featpipe.imaging.decode`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from featpipe.core.errors import DataError

# The resampling filters a resize may use (Pillow's, antialiased when reducing).
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}
DEFAULT_INTERPOLATION = "bilinear"
DECODER_VERSION = "1"  # bump when decoding semantics change


def resize_method(interpolation: str = DEFAULT_INTERPOLATION) -> str:
    """How images are resized with ``interpolation``, as the decoded cache records it (names the filter)."""
    if interpolation not in FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r} (choose from {', '.join(FILTERS)})")
    return f"shorter-side:pil-{interpolation}-antialias;center-crop"


RESIZE_METHOD = resize_method()  # the default (bilinear) resize, recorded in the decoded cache


@dataclass(frozen=True, order=True)
class Resize:
    """One decoded form of an image: shorter side to ``size`` with the ``interpolation`` filter, centre crop
    to ``size x size``. Wherever a decoded form is named, a plain ``int`` size means ``Resize(size)`` (bilinear,
    :func:`as_resize`)."""

    size: int
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self):
        if int(self.size) < 1:
            raise ValueError(f"sizes must be positive, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        resize_method(self.interpolation)  # a known filter

    @property
    def label(self) -> str:
        """``"<size>"`` for bilinear (the original name of every decoded cache), else ``"<size>-<filter>"``."""
        return str(self.size) if self.interpolation == DEFAULT_INTERPOLATION else f"{self.size}-{self.interpolation}"

    @property
    def method(self) -> str:
        """:func:`resize_method` of this filter (what the decoded cache records)."""
        return resize_method(self.interpolation)


def as_resize(key: int | Resize) -> Resize:
    """A decoded form named by a :class:`Resize` or by a plain size (bilinear)."""
    return key if isinstance(key, Resize) else Resize(int(key))
DEFAULT_MAX_PIXELS = 100_000_000

REASONS = ("zero bytes", "not an image", "truncated", "unreadable", "unsupported mode", "too large", "missing",
           "changed since prepare")


class ImageRejected(DataError):
    """An image that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, ref: str = ""):
        if reason not in REASONS:  # pragma: no cover - programming error
            raise ValueError(f"unknown reject reason {reason!r}")
        self.reason = reason
        self.ref = ref
        super().__init__(f"{ref}: {reason}" if ref else reason)

    def __reduce__(self):  # survives the trip back from a worker process
        return (type(self), (self.reason, self.ref))


def check_file(ref: str) -> None:
    """A regular, non-empty file; else :class:`ImageRejected` (missing, unreadable, not an image, zero bytes)."""
    try:
        st = os.stat(ref)
    except FileNotFoundError:
        raise ImageRejected("missing", ref) from None
    except OSError:
        raise ImageRejected("unreadable", ref) from None
    if not os.path.isfile(ref):
        raise ImageRejected("not an image", ref)
    if st.st_size == 0:
        raise ImageRejected("zero bytes", ref)


# --------------------------------------------------------------------------- to 8 bits


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer data by bit depth (8..16 bits, from the maximum), other data by its actual range."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if arr.dtype.kind in "ui" and lo >= 0 and hi <= 65535:
        bits = 8 if hi <= 255 else min(b for b in (10, 12, 14, 16) if hi <= 2**b - 1)
        out = a * (255.0 / (2**bits - 1))
    elif hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros_like(a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def composite_black(arr: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with alpha last -> (H, W, C) composited on black."""
    color = arr[..., :-1].astype(np.uint16)
    alpha = arr[..., -1:].astype(np.uint16)
    return ((color * alpha + 127) // 255).astype(np.uint8)


# --------------------------------------------------------------------------- finishing


def array_to_uint8(img: np.ndarray) -> np.ndarray:
    """An array image (H, W) / (H, W, 3|4) of any numeric dtype -> uint8, alpha composited on black."""
    out = scale_to_uint8(img)
    if out.ndim == 3 and out.shape[-1] == 4:
        out = composite_black(out)
    return out


def resize_crop(im: Image.Image, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> Image.Image:
    """Shorter side to ``size`` (Pillow's antialiased ``interpolation`` filter), then center crop ``size x size``."""
    w, h = im.size
    if w <= h:
        ow, oh = size, max(size, int(size * h / w))
    else:
        ow, oh = max(size, int(size * w / h)), size
    if (ow, oh) != (w, h):
        im = im.resize((ow, oh), FILTERS[interpolation])
    top = round((oh - size) / 2.0)
    left = round((ow - size) / 2.0)
    if (ow, oh) != (size, size):
        im = im.crop((left, top, left + size, top + size))
    return im


def finish(pixels: Image.Image | np.ndarray, resize: int | Resize, channels: int | None) -> np.ndarray:
    """Source pixels -> uint8 ``(size, size, C)`` (resize, centre crop, channels: see :mod:`featpipe.imaging.decode`)."""
    resize = as_resize(resize)
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if im.mode == "RGB" and channels == 1:
        im = im.convert("L")
    out = np.asarray(resize_crop(im, resize.size, resize.interpolation))
    if out.ndim == 2:
        out = out[..., None]
    elif channels is None and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2]):
        out = out[..., :1]
    if channels == 3 and out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)
