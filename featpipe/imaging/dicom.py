"""The DICOM backend of :mod:`featpipe.imaging.decode`, DICOM to 8 bits: modality LUT (rescale
slope/intercept), then VOI LUT or window, then MONOCHROME1 inverted, then scaled by the output range of the
window (or the LUT's bit depth, or the actual range)."""

from __future__ import annotations

import numpy as np

from featpipe.core.optional import require
from featpipe.imaging.base import ImageRejected, scale_to_uint8


def is_dicom(ref: str) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` marker at byte 128."""
    if ref.lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(ref, "rb") as fh:
            head = fh.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def dicom_to_uint8(ref: str, max_pixels: int) -> np.ndarray:
    require("pydicom", "3.0.1", extra="dicom", why="DICOM files")  # one error for the command, not a reject per file
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

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
