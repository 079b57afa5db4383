"""The npz backend: an image reference ``"<file.npz>#<array>/<index>"`` -> 8-bit pixels."""

from __future__ import annotations

import functools
import os

import numpy as np

from featpipe.imaging.base import ImageRejected, array_to_uint8


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


def npz_slice(ref: str, file: str, array: str, index: int) -> np.ndarray:
    """The image array of an npz reference as stored (a trailing channel of 1 dropped); else ImageRejected."""
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


def npz_to_uint8(ref: str, file: str, array: str, index: int) -> np.ndarray:
    """An npz slice (H, W) / (H, W, 3|4) of any numeric dtype -> uint8, alpha composited on black."""
    return array_to_uint8(npz_slice(ref, file, array, index))
