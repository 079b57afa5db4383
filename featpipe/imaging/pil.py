"""The Pillow backend (PNG, JPEG, TIFF, ...): open with our own limits, EXIF orientation, to 8 bits, and
JPEG reduced-scale (draft) decoding; the steps are described in :mod:`featpipe.imaging.decode`."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from featpipe.core.errors import DataError
from featpipe.imaging.base import ImageRejected, Resize, composite_black, finish, scale_to_uint8

# JPEG draft (DCT scaling by 1/2, 1/4 or 1/8) asks for DRAFT_FACTOR x the target, so the antialiased
# resize still does the last >= 2x of the reduction: on the 55 real radiographs at 224 this gave a mean
# abs difference to the full decode of <= 2 grey levels per image (median 0) at half the decode time;
# drafting straight to the target was 4x faster but up to 3.2 grey levels off.
DRAFT_FACTOR = 2

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr"}
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


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


def header_size(ref: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height), upright, from the header alone (a file already known to decode)."""
    with _open_pil(ref, max_pixels) as im:
        w, h = im.size
        return (h, w) if _orientation(im, header=True) in _ROTATED else (w, h)


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
        return composite_black(np.asarray(im.convert("LA")))[..., 0]
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return composite_black(np.asarray(im.convert("RGBA")))
    if mode in ("P", "CMYK", "YCbCr", "RGBX"):
        return np.asarray(im.convert("RGB"))
    raise ImageRejected("unsupported mode", ref)


def pil_pixels(ref: str, sizes: tuple[Resize, ...], *, draft: bool, max_pixels: int,
               channels) -> tuple[dict, tuple[int, int]]:
    """Each form's finished pixels (forms whose JPEG draft scale is the same share one decode; other formats:
    one decode for all) and the upright (width, height) of the file; no forms: the file is only verified."""
    with _open_pil(ref, max_pixels) as im:  # header only (no EXIF here: Pillow loads a PNG to find it)
        w, h = im.size
        jpeg = draft and im.format == "JPEG"
        mode = im.mode if im.mode in ("L", "RGB") else None
    dims = (w, h)
    requests: dict[int, list[Resize | None]] = {}
    for r in sizes or (None,):
        s = r.size if r is not None else 0
        requests.setdefault(DRAFT_FACTOR * s if jpeg and s and min(w, h) >= 2 * DRAFT_FACTOR * s else 0, []).append(r)
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
                by_scale[im.size] = {r: finish(source, r, channels) for r in sizes}
            out.update({r: by_scale[im.size][r] for r in group if r is not None})
    return out, dims
