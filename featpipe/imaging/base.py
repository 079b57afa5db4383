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
from featpipe.params.config import DecodeParams

# The resampling filters a resize may use (Pillow's, antialiased when reducing).
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}
DEFAULT_INTERPOLATION = "bilinear"
# How the image is brought to a square: ``shorter`` (shorter side to the size, centre crop with offsets rounded:
# torchvision's Resize + CenterCrop, timm's and most CNN references), ``shorter-floor`` (the same with offsets
# rounded down: Hugging Face image processors' center_crop, e.g. RAD-DINO's), or ``square`` (the whole image
# resized to size x size, aspect ratio not kept: the SigLIP / MedSigLIP image processor; nothing is cut off).
RESIZE_MODES = ("shorter", "shorter-floor", "square")
DEFAULT_MODE = "shorter"
DECODER_VERSION = "1"  # bump when decoding semantics change
DEFAULT_DRAFT = DecodeParams.draft  # JPEG reduced-scale decoding: the configured default (params.config.DecodeParams)


def resize_method(interpolation: str = DEFAULT_INTERPOLATION, mode: str = DEFAULT_MODE) -> str:
    """How images are resized with ``interpolation`` in ``mode``, as the decoded cache records it."""
    if interpolation not in FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r} (choose from {', '.join(FILTERS)})")
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r} (choose from {', '.join(RESIZE_MODES)})")
    if mode == "square":
        return f"whole-image:pil-{interpolation}-antialias"
    return f"shorter-side:pil-{interpolation}-antialias;center-crop" + ("-floor" if mode == "shorter-floor" else "")


def crop_steps_agree(size: int, crop: int, mode: str = DEFAULT_MODE) -> bool:
    """Whether a centre crop to ``size`` then one to ``crop`` always equals one centre crop to ``crop``: with
    offsets rounded down when ``size - crop`` is even; rounded half to even (torchvision) when it is a multiple of 4."""
    extra = size - crop
    return extra == 0 or mode == "square" or extra % (4 if mode == "shorter" else 2) == 0


def crop_offset(extra: int, mode: str = DEFAULT_MODE) -> int:
    """Offset of a centre crop that leaves ``extra`` pixels: rounded half to even as torchvision's ``CenterCrop``
    (``shorter``), rounded down as Hugging Face's ``center_crop`` (every other mode)."""
    return int(round(extra / 2.0)) if mode == "shorter" else extra // 2


RESIZE_METHOD = resize_method()  # the default (bilinear) resize, recorded in the decoded cache


@dataclass(frozen=True, order=True)
class Resize:
    """One decoded form of an image: ``size x size`` pixels made with the ``interpolation`` filter in ``mode``
    (``shorter``: shorter side to ``size``, centre crop; ``square``: the whole image to ``size x size``).
    Wherever a decoded form is named, a plain ``int`` size means ``Resize(size)`` (bilinear, shorter side,
    :func:`as_resize`)."""

    size: int
    interpolation: str = DEFAULT_INTERPOLATION
    mode: str = DEFAULT_MODE
    # the centre crop a later step takes from this square (0: none needed): the square's offsets are then chosen so
    # that its centre crop of ``align`` px is exactly the reference's one centre crop of the resized image
    # (two rounded offsets differ from one by a pixel unless the difference suits the rounding: crop_steps_agree)
    align: int = 0

    def __post_init__(self):
        if int(self.size) < 1:
            raise ValueError(f"sizes must be positive, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        resize_method(self.interpolation, self.mode)  # a known filter and mode
        if not 0 <= int(self.align) <= self.size:
            raise ValueError(f"align must be between 0 and the size {self.size}, got {self.align!r}")

    @property
    def label(self) -> str:
        """``"<size>"`` for bilinear shorter-side (the original name of every decoded cache), else with
        ``-<filter>`` and/or the mode appended (``"518-bicubic"``, ``"518-bicubic-floor"``, ``"448-square"``)."""
        out = str(self.size)
        if self.interpolation != DEFAULT_INTERPOLATION:
            out += f"-{self.interpolation}"
        out += "" if self.mode == DEFAULT_MODE else f"-{self.mode.removeprefix('shorter-')}"
        return out + (f"-a{self.align}" if self.align else "")

    @property
    def method(self) -> str:
        """:func:`resize_method` of this filter and mode (what the decoded cache records)."""
        return resize_method(self.interpolation, self.mode) + (f";aligned-to-{self.align}" if self.align else "")


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


def resize_crop(im: Image.Image, size: int, interpolation: str = DEFAULT_INTERPOLATION,
                mode: str = DEFAULT_MODE, align: int = 0) -> Image.Image:
    """Shorter side to ``size`` (Pillow's antialiased ``interpolation`` filter), then center crop ``size x size``
    (``align``: see :class:`Resize`); ``mode="square"``: the whole image to ``size x size`` (as Hugging Face image
    processors resize to a ``{"height", "width"}`` size)."""
    w, h = im.size
    if mode == "square":
        return im if (w, h) == (size, size) else im.resize((size, size), FILTERS[interpolation])
    if w <= h:
        ow, oh = size, max(size, int(size * h / w))
    else:
        ow, oh = max(size, int(size * w / h)), size
    if (ow, oh) != (w, h):
        im = im.resize((ow, oh), FILTERS[interpolation])
    if align:
        inner = crop_offset(size - align, mode)
        top, left = crop_offset(oh - align, mode) - inner, crop_offset(ow - align, mode) - inner
    else:
        top, left = crop_offset(oh - size, mode), crop_offset(ow - size, mode)
    if (ow, oh) != (size, size):
        im = im.crop((left, top, left + size, top + size))
    return im


def finish(pixels: Image.Image | np.ndarray, resize: int | Resize, channels: int | None) -> np.ndarray:
    """Source pixels -> uint8 ``(size, size, C)`` (resize, centre crop, channels: see :mod:`featpipe.imaging.decode`)."""
    resize = as_resize(resize)
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if im.mode == "RGB" and channels == 1:
        im = im.convert("L")
    out = np.asarray(resize_crop(im, resize.size, resize.interpolation, resize.mode, resize.align))
    if out.ndim == 2:
        out = out[..., None]
    elif channels is None and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2]):
        out = out[..., :1]
    if channels == 3 and out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)
