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

from featpipe.errors import DataError

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


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1


# --------------------------------------------------------------------------- probe


def probe(path: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height), upright (after EXIF orientation), of a fully decoded image; else :class:`ImageRejected`."""
    ref = str(path)
    file, array, index = split_ref(ref)
    if array is not None:
        img = _npz_slice(ref, file, array, index)
        h, w = img.shape[:2]
        if w * h > max_pixels:
            raise ImageRejected("too large", ref)
        return int(w), int(h)
    _check_file(ref)
    if _is_dicom(ref):
        arr = _dicom_to_uint8(ref, max_pixels)
        return int(arr.shape[1]), int(arr.shape[0])
    with _open_pil(ref, max_pixels) as im:
        _load(im, ref)
        w, h = im.size
        if _orientation(im) in _ROTATED:
            w, h = h, w
        return int(w), int(h)


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


def _pil_to_uint8(im: Image.Image, ref: str) -> np.ndarray:
    """Loaded PIL image -> (H, W) or (H, W, 3) uint8."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im)
    if mode == "RGB":
        return np.asarray(im)
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


def _dicom_to_uint8(ref: str, max_pixels: int) -> np.ndarray:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageRejected("unreadable", ref) from None
    try:
        ds = pydicom.dcmread(ref)
    except InvalidDicomError:
        raise ImageRejected("not an image", ref) from None
    except (OSError, EOFError, ValueError, KeyError) as exc:
        raise ImageRejected("truncated" if isinstance(exc, EOFError) else "unreadable", ref) from None
    if "PixelData" not in ds:
        raise ImageRejected("not an image", ref)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise ImageRejected("too large", ref)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageRejected("unsupported mode", ref)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - codec errors vary
        text = str(exc).lower()
        short = any(s in text for s in ("length", "expected", "short", "truncat", "end of"))
        raise ImageRejected("truncated" if short else "unreadable", ref) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3 and arr.shape[-1] == 3:
            return scale_to_uint8(arr)  # pydicom converts YBR to RGB
        raise ImageRejected("unsupported mode", ref)
    # 1. modality LUT (rescale slope/intercept), 2. VOI LUT / window, 3. MONOCHROME1 inverted.
    arr = apply_modality_lut(arr, ds)
    lo = hi = None
    if "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds, prefer_lut=True)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        arr = apply_voi_lut(arr, ds, prefer_lut=False)
        lo, hi = _window_range(ds)
    arr = np.asarray(arr, dtype=np.float64)
    if lo is None:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if photometric == "MONOCHROME1":
        arr = (lo + hi) - arr
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((arr - lo) * scale), 0, 255).astype(np.uint8)


def _window_range(ds) -> tuple[float, float]:
    """The output range pydicom's windowing maps into (PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        lo, hi = -float(2 ** (int(ds.BitsStored) - 1)), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None and not ds.get("ModalityLUTSequence"):
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


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


def _to_pixels(ref: str, *, size: int, draft: bool, max_pixels: int) -> np.ndarray:
    """Decode, orient and convert to (H, W) or (H, W, 3) uint8 at the source resolution (or draft)."""
    file, array, index = split_ref(ref)
    if array is not None:
        return _array_to_uint8(_npz_slice(ref, file, array, index))
    _check_file(ref)
    if _is_dicom(ref):
        return _dicom_to_uint8(ref, max_pixels)
    with _open_pil(ref, max_pixels) as im:
        if draft and im.format == "JPEG" and min(im.size) >= 2 * DRAFT_FACTOR * size:
            target = DRAFT_FACTOR * size
            im.draft(im.mode if im.mode in ("L", "RGB") else None, (target, target))
        _load(im, ref)
        oriented = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        return _pil_to_uint8(oriented, ref)


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
    ref = str(ref)
    pixels = _to_pixels(ref, size=size, draft=draft, max_pixels=max_pixels)
    if pixels.ndim == 3 and channels == 1:
        pixels = np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    im = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    out = np.asarray(resize_crop(im, size))
    if out.ndim == 2:
        out = out[..., None]
    elif channels is None and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2]):
        out = out[..., :1]
    if channels == 3 and out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def is_gray_source(ref: str) -> bool:
    """True when the reference is grayscale by its header alone (no decoding); False means maybe colour."""
    ref = str(ref)
    file, array, index = split_ref(ref)
    try:
        if array is not None:
            return _npz_slice(ref, file, array, index).ndim == 2
        if _is_dicom(ref):
            import pydicom

            ds = pydicom.dcmread(ref, stop_before_pixels=True)
            return str(ds.get("PhotometricInterpretation", "")).upper() in ("MONOCHROME1", "MONOCHROME2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(ref) as im:
                return im.mode in _GRAY_MODES
    except Exception:  # noqa: BLE001 - unknown from the header: decode to find out
        return False


def is_colour(ref: str, *, size: int, draft: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether ``decode(ref, size=size)`` has 3 channels (cheap for grayscale files: header only)."""
    if is_gray_source(ref):
        return False
    return decode(ref, size=size, draft=draft, max_pixels=max_pixels).shape[-1] == 3


__all__ = [
    "DECODER_VERSION",
    "DEFAULT_MAX_PIXELS",
    "DRAFT_FACTOR",
    "REASONS",
    "RESIZE_METHOD",
    "ImageRejected",
    "decode",
    "is_colour",
    "is_gray_source",
    "probe",
    "resize_crop",
    "scale_to_uint8",
    "split_ref",
]

