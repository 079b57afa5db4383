"""Decoding one image reference to pixels: :func:`probe` (validate) and :func:`decode` (to uint8).

An image reference is a file path (PNG, JPEG, TIFF, ... via Pillow, :mod:`featpipe.imaging.pil`; ``.dcm``
via pydicom, :mod:`featpipe.imaging.dicom`) or an npz reference ``"<file.npz>#<array>/<index>"``
(:mod:`featpipe.imaging.npz`). This module picks the backend; what they share (reject reasons, 8-bit
scaling, the finishing steps 4 and 5) is :mod:`featpipe.imaging.base`.

Decoding, in this order:

1. open (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set: a truncated file is an error, ``"truncated"``);
   JPEGs much larger than the target use reduced-scale DCT decoding (``Image.draft``) when ``draft``;
2. EXIF orientation applied (``ImageOps.exif_transpose``);
3. to 8 bits: 16/32-bit integer images (``I;16``, ``I``) are scaled by their bit depth, the smallest of
   8, 10, 12, 14, 16 bits that holds the image's maximum (never clipped at 255); float images and
   negative values by their actual range; RGBA and LA composited on black; palette, CMYK, YCbCr to RGB;
   DICOM: modality LUT (rescale slope/intercept), then VOI LUT or window, then MONOCHROME1 inverted,
   then scaled by the output range of the window (or the LUT's bit depth, or the actual range);
4. resize: the shorter side to ``size`` (the longer one to ``int(size * long / short)``, as torchvision's
   ``Resize(size)``) with Pillow's antialiased filter named by the :class:`~featpipe.imaging.base.Resize`
   (``Image.resize(..., BILINEAR)`` by default, ``BICUBIC`` or ``LANCZOS`` when asked; no reducing_gap), then a
   center crop to ``size x size`` (offsets rounded as torchvision's ``CenterCrop``):
   :func:`~featpipe.imaging.base.resize_method` names it in the decoded cache;
5. channels: ``channels=None`` gives the natural number: 1 for grayscale, and 1 for an RGB image whose
   three channels are equal after step 4 (lossless: replicating it gives the same pixels), else 3.

:data:`~featpipe.imaging.base.DECODER_VERSION` changes whenever these semantics change, so that caches are rebuilt.
"""

from __future__ import annotations

import hashlib

import numpy as np

from featpipe.core.fileio import file_sha256

from featpipe.imaging.base import (
    DEFAULT_DRAFT,
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    Resize,
    as_resize,
    check_file,
    finish,
)
from featpipe.imaging.dicom import dicom_to_uint8, is_dicom
from featpipe.imaging.npz import npz_slice, npz_to_uint8, split_ref
from featpipe.imaging.pil import header_size, pil_pixels


def probe(path: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height), upright (after EXIF orientation), of a fully decoded image; else :class:`ImageRejected`."""
    return decode_sizes(path, (), draft=False, max_pixels=max_pixels)[1]


def image_size(path: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height), upright, from the header alone (files already known to decode); npz/DICOM: :func:`probe`."""
    ref = str(path)
    if split_ref(ref)[1] is not None or is_dicom(ref):
        return probe(ref, max_pixels=max_pixels)
    check_file(ref)
    return header_size(ref, max_pixels=max_pixels)


def _decoded(ref: str, sizes: tuple[Resize, ...], *, draft: bool, max_pixels: int,
             channels=None) -> tuple[dict, tuple[int, int]]:
    """Decode (once per JPEG draft scale), orient, convert to 8 bits, then finish (steps 4-5) for each form."""
    file, array, index = split_ref(ref)
    if array is not None:
        px = npz_to_uint8(ref, file, array, index)
    else:
        check_file(ref)
        if not is_dicom(ref):
            return pil_pixels(ref, sizes, draft=draft, max_pixels=max_pixels, channels=channels)
        px = dicom_to_uint8(ref, max_pixels)
    if px.shape[0] * px.shape[1] > max_pixels:
        raise ImageRejected("too large", ref)
    return {s: finish(px, s, channels) for s in sizes}, (int(px.shape[1]), int(px.shape[0]))


def content_sha256(ref: str) -> str:
    """The sha256 the manifest records for an image reference: of the file's bytes, or (npz) of the image array."""
    file, array, index = split_ref(str(ref))
    if array is None:
        try:
            return file_sha256(ref)
        except FileNotFoundError:
            raise ImageRejected("missing", ref) from None
        except OSError:
            raise ImageRejected("unreadable", ref) from None
    return hashlib.sha256(np.ascontiguousarray(npz_slice(ref, file, array, index)).tobytes()).hexdigest()


def decode_sizes(ref: str, sizes, *, draft: bool = DEFAULT_DRAFT, max_pixels: int = DEFAULT_MAX_PIXELS,
                 sha256: str | None = None) -> tuple[dict, tuple[int, int]]:
    """One image decoded once for several forms: ``({key: uint8 (size, size, C)}, upright (width, height))``
    with natural channels (as :func:`decode` with ``channels=None``); each key of ``sizes`` is a size (bilinear)
    or a :class:`~featpipe.imaging.base.Resize` (size and filter), and keys the result as given. With
    ``draft``, JPEG sizes that need different DCT scales get one decode each; a truncated file is still an error.
    With ``sha256`` (the manifest's), the content is hashed first (:func:`content_sha256`) and a difference
    is :class:`ImageRejected` ``"changed since prepare"``."""
    if any(not isinstance(s, Resize) and int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be positive, got {list(sizes)}")
    if sha256 is not None and content_sha256(ref) != sha256:
        raise ImageRejected("changed since prepare", str(ref))
    keys = {s: as_resize(s) for s in sizes}
    pixels, dims = _decoded(str(ref), tuple(sorted(set(keys.values()))), draft=draft, max_pixels=max_pixels)
    return {s: pixels[r] for s, r in keys.items()}, dims


def decode(
    ref: str,
    *,
    size: int | Resize,
    channels: int | None = None,
    draft: bool = DEFAULT_DRAFT,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    interpolation: str | None = None,
) -> np.ndarray:
    """One image reference -> uint8 ``(size, size, C)``. ``size``: a decoded form (:class:`Resize`: size, filter
    and mode) or a plain size, resized with ``interpolation`` (bilinear by default) in the default mode;
    C = ``channels``, or natural (1 gray, 3 colour)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    form = as_resize(size)
    if interpolation is not None:
        form = Resize(form.size, interpolation, form.mode, form.align)
    return _decoded(str(ref), (form,), draft=draft, max_pixels=max_pixels, channels=channels)[0][form]


__all__ = ["content_sha256", "decode", "decode_sizes", "image_size", "probe"]
