"""Decoding one image reference to pixels: :func:`probe` (validate) and :func:`decode` (to uint8).

An image reference is a file path (PNG, JPEG, TIFF, ... via Pillow; ``.dcm`` via pydicom) or an npz
reference ``"<file.npz>#<array>/<index>"``.

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
   ``Resize(size)``) with Pillow's antialiased bilinear filter (``Image.resize(..., BILINEAR)``, no
   reducing_gap), then a center crop to ``size x size``
   (offsets rounded as torchvision's ``CenterCrop``): :data:`RESIZE_METHOD`;
5. channels: ``channels=None`` gives the natural number: 1 for grayscale, and 1 for an RGB image whose
   three channels are equal after step 4 (lossless: replicating it gives the same pixels), else 3.

:data:`DECODER_VERSION` changes whenever these semantics change, so that caches are rebuilt.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from featpipe.core.errors import DataError

RESIZE_METHOD = "shorter-side:pil-bilinear-antialias;center-crop"  # recorded in the decoded cache
DECODER_VERSION = "1"  # bump when decoding semantics change
DEFAULT_MAX_PIXELS = 100_000_000
# JPEG draft (DCT scaling by 1/2, 1/4 or 1/8) asks for DRAFT_FACTOR x the target, so the antialiased
# resize still does the last >= 2x of the reduction: on the 55 real radiographs at 224 this gave a mean
# abs difference to the full decode of <= 2 grey levels per image (median 0) at half the decode time;
# drafting straight to the target was 4x faster but up to 3.2 grey levels off.
DRAFT_FACTOR = 2

REASONS = ("zero bytes", "not an image", "truncated", "unreadable", "unsupported mode", "too large", "missing")

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr"}


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


# --------------------------------------------------------------------------- references


def split_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``"x.npz#train_images/12"`` -> ``("x.npz", "train_images", 12)``; a plain path -> ``(path, None, None)``."""
    ref = str(ref)
    if "#" in ref:
        file, _, inner = ref.rpartition("#")
        if file.lower().endswith(".npz") and "/" in inner:
            array, _, index = inner.rpartition("/")
            try:
                return file, array, int(index)
            except ValueError:
                pass
    return ref, None, None


@functools.lru_cache(maxsize=8)
def _npz_array(file: str, array: str, mtime_ns: int, nbytes: int) -> np.ndarray:
    with np.load(file, allow_pickle=False) as z:
        if array not in z.files:
            raise ImageRejected("missing", f"{file}#{array}")
        return z[array]


def _npz_slice(ref: str, file: str, array: str, index: int) -> np.ndarray:
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise ImageRejected("missing", ref) from None
    if st.st_size == 0:
        raise ImageRejected("zero bytes", ref)
    try:
        arr = _npz_array(os.path.abspath(file), array, st.st_mtime_ns, st.st_size)
    except ImageRejected:
        raise ImageRejected("missing", ref) from None
    except (ValueError, OSError, EOFError) as exc:
        reason = "not an image" if "pickle" not in str(exc) else "unsupported mode"
        raise ImageRejected(reason, ref) from None
    if not 0 <= index < len(arr):
        raise ImageRejected("missing", ref)
    img = arr[index]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (3, 4))):
        raise ImageRejected("unsupported mode", ref)
    if img.dtype.kind not in "uif" and img.dtype != bool:
        raise ImageRejected("unsupported mode", ref)
    return img


# --------------------------------------------------------------------------- opening


def _check_file(ref: str) -> None:
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


def _is_dicom(ref: str) -> bool:
    if ref.lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(ref, "rb") as fh:
            head = fh.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def _open_pil(ref: str, max_pixels: int) -> Image.Image:
    """Open (header only) with decompression bombs and odd files turned into :class:`ImageRejected`."""
    with warnings.catch_warnings():
        # Our own limit (max_pixels) is the authority; Pillow's error (> 2x its limit) still applies.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(ref)
        except Image.DecompressionBombError:
            raise ImageRejected("too large", ref) from None
        except UnidentifiedImageError:
            raise ImageRejected("not an image", ref) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejected(_load_reason(exc), ref) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageRejected("too large", ref)
    if im.mode not in _GRAY_MODES | _COLOUR_MODES:
        im.close()
        raise ImageRejected("unsupported mode", ref)
    return im


def _load_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if any(s in text for s in ("truncated", "broken data stream", "premature end", "end of file",
                               "not enough data", "buffer is not large enough", "-5 while decompressing")):
        return "truncated"
    if isinstance(exc, EOFError):
        return "truncated"
    return "unreadable"


def _load(im: Image.Image, ref: str) -> None:
    _refuse_truncated_loading()
    try:
        im.load()
    except Image.DecompressionBombError:
        raise ImageRejected("too large", ref) from None
    except Exception as exc:  # noqa: BLE001 - codec errors vary
        raise ImageRejected(_load_reason(exc), ref) from None


def _refuse_truncated_loading() -> None:
    """Pillow's global ``LOAD_TRUNCATED_IMAGES`` would turn truncated files into silently grey images."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process (set by other code); "
            "featpipe will not decode truncated images silently: set it back to False"
        )


_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _orientation(im: Image.Image, *, header: bool = False) -> int:
    """EXIF orientation; ``header``: from what was read so far (Pillow's PNG ``getexif`` decodes the image)."""
    try:
        if header and im.format == "PNG":
            exif = Image.Exif()
            exif.load(im.info.get("exif") or b"")
            return int(exif.get(0x0112, 1) or 1)
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1


# --------------------------------------------------------------------------- probe


def probe(path: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height), upright (after EXIF orientation), of a fully decoded image; else :class:`ImageRejected`."""
    return decode_sizes(path, (), draft=False, max_pixels=max_pixels)[1]


def image_size(path: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height), upright, from the header alone (files already known to decode); npz/DICOM: :func:`probe`."""
    ref = str(path)
    if split_ref(ref)[1] is not None or _is_dicom(ref):
        return probe(ref, max_pixels=max_pixels)
    _check_file(ref)
    with _open_pil(ref, max_pixels) as im:
        w, h = im.size
        return (h, w) if _orientation(im, header=True) in _ROTATED else (w, h)


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


def _composite_black(arr: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with alpha last -> (H, W, C) composited on black."""
    color = arr[..., :-1].astype(np.uint16)
    alpha = arr[..., -1:].astype(np.uint16)
    return ((color * alpha + 127) // 255).astype(np.uint8)


def _pil_to_uint8(im: Image.Image, ref: str) -> Image.Image | np.ndarray:
    """Loaded PIL image -> (H, W) or (H, W, 3) uint8; an L or RGB image is returned as is (no copy)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return scale_to_uint8(np.asarray(im))
    if mode in ("LA", "La"):
        return _composite_black(np.asarray(im.convert("LA")))[..., 0]
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return _composite_black(np.asarray(im.convert("RGBA")))
    if mode in ("P", "CMYK", "YCbCr", "RGBX"):
        return np.asarray(im.convert("RGB"))
    raise ImageRejected("unsupported mode", ref)


def _array_to_uint8(img: np.ndarray) -> np.ndarray:
    """An npz slice (H, W) / (H, W, 3|4) of any numeric dtype -> uint8, alpha composited on black."""
    out = scale_to_uint8(img)
    if out.ndim == 3 and out.shape[-1] == 4:
        out = _composite_black(out)
    return out


# --------------------------------------------------------------------------- decode


def resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (antialiased bilinear), then center crop ``size x size``."""
    w, h = im.size
    if w <= h:
        ow, oh = size, max(size, int(size * h / w))
    else:
        ow, oh = max(size, int(size * w / h)), size
    if (ow, oh) != (w, h):
        im = im.resize((ow, oh), Image.Resampling.BILINEAR)
    top = round((oh - size) / 2.0)
    left = round((ow - size) / 2.0)
    if (ow, oh) != (size, size):
        im = im.crop((left, top, left + size, top + size))
    return im


def _pil_pixels(ref: str, sizes, *, draft: bool, max_pixels: int, channels) -> tuple[dict, tuple[int, int]]:
    """Each size's pixels (sizes whose JPEG draft scale is the same share one decode; other formats: one
    decode for all) and the upright (width, height) of the file."""
    with _open_pil(ref, max_pixels) as im:  # header only (no EXIF here: Pillow loads a PNG to find it)
        w, h = im.size
        jpeg = draft and im.format == "JPEG"
        mode = im.mode if im.mode in ("L", "RGB") else None
    dims = (w, h)
    requests: dict[int, list[int]] = {}
    for s in sizes or (0,):
        requests.setdefault(DRAFT_FACTOR * s if jpeg and s and min(w, h) >= 2 * DRAFT_FACTOR * s else 0, []).append(s)
    by_scale: dict[tuple[int, int], dict] = {}
    out = {}
    for req, group in requests.items():
        with _open_pil(ref, max_pixels) as im:
            if req:
                im.draft(mode, (req, req))
            if im.size not in by_scale:
                _load(im, ref)
                turn = _orientation(im)
                dims = (h, w) if turn in _ROTATED else (w, h)
                source = _pil_to_uint8(ImageOps.exif_transpose(im) if turn != 1 else im, ref)  # finished while the file is open (no copy of L/RGB)
                by_scale[im.size] = {s: _finish(source, s, channels) for s in sizes if s}
            out.update({s: by_scale[im.size][s] for s in group if s})
    return out, dims


def _decoded(ref: str, sizes, *, draft: bool, max_pixels: int, channels=None) -> tuple[dict, tuple[int, int]]:
    """Decode (once per JPEG draft scale), orient, convert to 8 bits, then :func:`_finish` for each size."""
    file, array, index = split_ref(ref)
    if array is not None:
        px = _array_to_uint8(_npz_slice(ref, file, array, index))
    else:
        _check_file(ref)
        if not _is_dicom(ref):
            return _pil_pixels(ref, sizes, draft=draft, max_pixels=max_pixels, channels=channels)
        from featpipe.imaging.dicom import dicom_to_uint8

        px = dicom_to_uint8(ref, max_pixels)
    if px.shape[0] * px.shape[1] > max_pixels:
        raise ImageRejected("too large", ref)
    return {s: _finish(px, s, channels) for s in sizes}, (int(px.shape[1]), int(px.shape[0]))


def _finish(pixels: Image.Image | np.ndarray, size: int, channels: int | None) -> np.ndarray:
    """Source pixels -> uint8 ``(size, size, C)`` (resize, centre crop, channels: see the module doc)."""
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if im.mode == "RGB" and channels == 1:
        im = im.convert("L")
    out = np.asarray(resize_crop(im, size))
    if out.ndim == 2:
        out = out[..., None]
    elif channels is None and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2]):
        out = out[..., :1]
    if channels == 3 and out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def decode_sizes(ref: str, sizes, *, draft: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """One image decoded once for several sizes: ``({size: uint8 (size, size, C)}, upright (width, height))``
    with natural channels (as :func:`decode` with ``channels=None``). With ``draft``, JPEG sizes that need
    different DCT scales get one decode each; a truncated file is still an error."""
    if any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be positive, got {list(sizes)}")
    return _decoded(str(ref), tuple(sorted({int(s) for s in sizes})), draft=draft, max_pixels=max_pixels)


def decode(
    ref: str,
    *,
    size: int,
    channels: int | None = None,
    draft: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """One image reference -> uint8 ``(size, size, C)``; C = ``channels``, or natural (1 gray, 3 colour)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return _decoded(str(ref), (int(size),), draft=draft, max_pixels=max_pixels, channels=channels)[0][int(size)]


__all__ = [
    "DECODER_VERSION",
    "DEFAULT_MAX_PIXELS",
    "DRAFT_FACTOR",
    "REASONS",
    "RESIZE_METHOD",
    "ImageRejected",
    "decode",
    "decode_sizes",
    "image_size",
    "probe",
    "resize_crop",
    "scale_to_uint8",
    "split_ref",
]
