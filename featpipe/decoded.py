"""The decoded-image cache: every manifest image decoded once per input resolution, in HDF5.

Layout of ``cache/<dataset>/decoded-<size>.h5`` (readable with plain h5py / h5dump):

- ``images``: uint8 ``(N, size, size, C)``, chunked one image per chunk; C = 1 when every image is
  grayscale, else 3 (grayscale images replicated);
- ``ids``: utf-8 strings, the manifest ids in manifest order; ``sha256``: the manifest's sha256 per row;
- attrs: ``format, size, channels, resize_method, draft, draft_factor, decoder_version, manifest_sha256,
  featpipe_version, pillow_version, pydicom_version, numpy_version, complete`` and the last build's
  ``n_decoded, n_reused, seconds``.

Valid by content: a rebuild reuses the rows whose (id, sha256) are in the previous file, when that file
was made with the same size, resize method, draft setting, decoder version and Pillow and pydicom
versions; anything
else is decoded again. The new file is written beside the old one (``*.partial``) and renamed into place.

Channels: an image is colour when its decoded pixels differ between channels (see
:func:`featpipe.imaging.decode`). Grayscale files are known from their header alone; files that may be
colour (RGB, palette, CMYK, ...) are decoded once to find out, stopping at the first colour one; reused
rows of a 3-channel file are checked from their cached pixels. So C depends on the content only.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Self

import h5py
import numpy as np
import pandas as pd

from featpipe import __version__
from featpipe.errors import CacheError, DataError
from featpipe.workers import pool_kwargs
from featpipe.imaging import (
    DECODER_VERSION,
    DEFAULT_MAX_PIXELS,
    DRAFT_FACTOR,
    RESIZE_METHOD,
    ImageRejected,
    decode,
    is_gray_source,
    split_ref,
)

FORMAT = 1
_REUSE_KEYS = ("format", "size", "resize_method", "draft", "draft_factor", "decoder_version", "pillow_version",
               "pydicom_version")
_BLOCK = 256  # rows per copy block (flat memory)


def decoded_path(cache_dir: str | Path, dataset: str, size: int) -> Path:
    """``<cache_dir>/<dataset>/decoded-<size>.h5``."""
    return Path(cache_dir) / dataset / f"decoded-{int(size)}.h5"


def content_sha256(manifest: pd.DataFrame) -> str:
    """A hash of the manifest's (id, sha256) rows in order: what the decoded pixels depend on."""
    h = hashlib.sha256()
    for i, s in zip(manifest["id"].astype(str), manifest["sha256"].astype(str)):
        h.update(f"{i}\t{s}\n".encode())
    return h.hexdigest()


def _versions() -> dict:
    import PIL

    try:
        import pydicom

        pyd = pydicom.__version__
    except ImportError:  # pragma: no cover - optional extra
        pyd = ""
    return {"pillow_version": PIL.__version__, "pydicom_version": pyd, "numpy_version": np.__version__}


def _absolute_ref(ref: str) -> str:
    file, array, index = split_ref(ref)
    return f"{os.path.abspath(file)}#{array}/{index}" if array is not None else os.path.abspath(file)


# --------------------------------------------------------------------------- parallel decoding


def _decode_many(refs: Sequence[str], size: int, channels: int | None, draft: bool, max_pixels: int):
    """Worker: a list of arrays (natural channels when ``channels`` is None)."""
    return [decode(r, size=size, channels=channels, draft=draft, max_pixels=max_pixels) for r in refs]


def _stream(rows: Sequence[int], refs: Sequence[str], ids: Sequence[str], *, size: int, channels: int | None,
            draft: bool, max_pixels: int, pool: ProcessPoolExecutor | None) -> Iterator[tuple[list[int], list]]:
    """Yield (rows, arrays) chunks in order; at most a few chunks in flight (flat memory)."""
    if not rows:
        return
    workers = pool._max_workers if pool is not None else 1
    chunk = max(1, min(16, math.ceil(len(rows) / (workers * 4))))
    chunks = [list(rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    pending: deque = deque()
    try:
        if pool is None:
            for c in chunks:
                yield c, _decode_many([refs[r] for r in c], size, channels, draft, max_pixels)
            return
        it = iter(chunks)
        for c in it:
            pending.append((c, pool.submit(_decode_many, [refs[r] for r in c], size, channels, draft, max_pixels)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            c, fut = pending.popleft()
            out = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode_many, [refs[r] for r in nxt], size, channels, draft,
                                                 max_pixels)))
            yield c, out
    except ImageRejected as exc:
        row = next((r for r in rows if refs[r] == exc.ref), None)
        who = ids[row] if row is not None else exc.ref
        raise DataError(f"cannot decode image {who} ({exc.ref}): {exc.reason}; re-run 'featpipe prepare' "
                        "to reject it, or fix the file") from None
    finally:
        for _, fut in pending:  # a consumer that stopped early (or an error) leaves nothing running
            fut.cancel()


# --------------------------------------------------------------------------- previous cache


def _reusable(path: Path, wanted: dict) -> h5py.File | None:
    """The previous file, opened, when its rows may be reused for ``wanted``; else None."""
    if not path.is_file():
        return None
    try:
        f = h5py.File(path, "r")
    except OSError:
        return None  # unreadable (e.g. not HDF5): rebuilt from scratch
    attrs = dict(f.attrs)
    ok = bool(attrs.get("complete")) and all(_same(attrs.get(k), wanted[k]) for k in _REUSE_KEYS)
    if not ok or "images" not in f:
        f.close()
        return None
    return f


def _same(a, b) -> bool:
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(a, np.generic):
        a = a.item()
    return a == b


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for any int rows (duplicates, any order), reading contiguous runs as slices."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
    if len(rows) == 0:
        return out
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    uniq, inverse = np.unique(srt, return_inverse=True)
    buf = np.empty((len(uniq),) + ds.shape[1:], dtype=ds.dtype)
    breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
    start = 0
    for run in np.split(uniq, breaks):
        buf[start:start + len(run)] = ds[int(run[0]):int(run[-1]) + 1]
        start += len(run)
    out[order] = buf[inverse]
    return out


def _colour_rows(images: np.ndarray) -> bool:
    return images.shape[-1] == 3 and bool(
        np.any(images[..., 0] != images[..., 1]) or np.any(images[..., 0] != images[..., 2]))


def _fit_channels(images: np.ndarray, channels: int) -> np.ndarray:
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    return images[..., :1]  # only ever reached for gray rows (equal channels): lossless


# --------------------------------------------------------------------------- build


def decoder_settings(size: int, draft: bool) -> dict:
    """What the decoded pixels depend on besides the file bytes (attrs of the cache; in feature caches' provenance)."""
    return {"format": FORMAT, "size": int(size), "resize_method": RESIZE_METHOD, "draft": bool(draft),
            "draft_factor": DRAFT_FACTOR, "decoder_version": DECODER_VERSION, **_versions()}


def decoder_identity(size: int, draft: bool) -> dict:
    """The settings that change decoded pixels (recorded in every feature cache: a change re-extracts)."""
    wanted = decoder_settings(size, draft)
    return {k: wanted[k] for k in _REUSE_KEYS}


def settings_mismatch(attrs: dict, *, size: int, draft: bool) -> str | None:
    """The first decoder setting of a decoded cache's ``attrs`` that differs from ``(size, draft)``; None if all match."""
    wanted = decoder_settings(size, draft)
    for k in _REUSE_KEYS:
        if not _same(attrs.get(k), wanted[k]):
            return f"decoded with {k}={attrs.get(k)!r}, requested {wanted[k]!r}"
    return None


def build_decoded(manifest: pd.DataFrame, *, size: int, path: Path, **kw) -> Path:
    """Decode every manifest row into ``path`` (see the module doc), reusing valid rows; returns ``path``.

    One builder per file at a time (:func:`featpipe.locks.build_lock`): a second process waits, then
    takes the first one's file as is when it is current. A ``.partial`` left by a killed build is removed.
    """
    from featpipe.locks import build_lock, clean_leftovers, remove_stale

    path = Path(path)
    with build_lock(path, what="the decoded-image cache") as waited:
        clean_leftovers(path.parent)
        remove_stale(path.with_name(path.name + ".partial"), why="left by an interrupted decode")
        if waited and _current(path, manifest, size=size, draft=kw.get("draft", True)):
            return path
        return _build_decoded(manifest, size=size, path=path, **kw)


def _current(path: Path, manifest: pd.DataFrame, *, size: int, draft: bool) -> bool:
    """``path`` is complete, made with these settings, and holds exactly the manifest's (id, sha256) rows."""
    f = _reusable(path, decoder_settings(size, draft))
    if f is None:
        return False
    with f:
        return (_strings(f["ids"]) == manifest["id"].astype(str).tolist()
                and _strings(f["sha256"]) == manifest["sha256"].astype(str).tolist())


def _build_decoded(manifest: pd.DataFrame, *, size: int, path: Path, workers: int = 2, draft: bool = True,
                   progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                   manifest_sha256: str | None = None) -> Path:
    t0 = time.perf_counter()
    path = Path(path)
    missing = [c for c in ("id", "path", "sha256") if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {', '.join(missing)}")
    ids = manifest["id"].astype(str).tolist()
    shas = manifest["sha256"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise DataError(f"manifest has duplicate id {dup!r}: re-run 'featpipe prepare'")
    refs = [_absolute_ref(p) for p in manifest["path"].astype(str)]
    wanted = decoder_settings(size, draft)
    n = len(ids)
    if n == 0:
        raise DataError("the manifest has no images to decode: run 'featpipe prepare' first")
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _reusable(path, wanted)
    tmp = path.with_name(path.name + ".partial")
    pool = (ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), **pool_kwargs())
            if workers > 1 and n > 1 else None)
    try:
        old_rows = np.full(n, -1, dtype=np.int64)
        if old is not None:
            where = {(i, s): j for j, (i, s) in enumerate(zip(_strings(old["ids"]), _strings(old["sha256"])))}
            old_rows = np.array([where.get(k, -1) for k in zip(ids, shas)], dtype=np.int64)
        reused = np.flatnonzero(old_rows >= 0)
        new = [int(r) for r in np.flatnonzero(old_rows < 0)]
        channels = _decide_channels(old, old_rows[reused], new, refs, ids, size=size, draft=draft,
                                    max_pixels=max_pixels, pool=pool)
        with h5py.File(tmp, "w") as f:
            images = f.create_dataset("images", shape=(n, size, size, channels), dtype=np.uint8,
                                      chunks=(1, size, size, channels))
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("sha256", data=np.array(shas, dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.attrs.update({**wanted, "channels": channels, "complete": False, "featpipe_version": __version__,
                            "manifest_sha256": manifest_sha256 or content_sha256(manifest)})
            for b in range(0, len(reused), _BLOCK):
                rows = reused[b:b + _BLOCK]
                block = _fit_channels(_read_rows(old["images"], old_rows[rows]), channels)
                _write_rows(images, rows, block)
            bar = _progress(len(new), progress)
            for rows, arrays in _stream(new, refs, ids, size=size, channels=channels, draft=draft,
                                        max_pixels=max_pixels, pool=pool):
                _write_rows(images, np.asarray(rows), np.stack(arrays))
                if bar is not None:
                    bar.update(len(rows))
            if bar is not None:
                bar.close()
            f.attrs.update({"n_decoded": len(new), "n_reused": len(reused),
                            "seconds": round(time.perf_counter() - t0, 3), "complete": True})
        if old is not None:
            old.close()
            old = None
        os.replace(tmp, path)
    finally:
        if old is not None:
            old.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if tmp.exists():
            tmp.unlink()
    return path


def _mp_context():
    """fork on Linux (fast; no ``if __name__ == "__main__"`` guard needed; the workers run Pillow and
    numpy only, as torch's DataLoader workers do), spawn elsewhere."""
    import multiprocessing
    import sys

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]]


def _write_rows(ds: h5py.Dataset, rows: np.ndarray, block: np.ndarray) -> None:
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    start = 0
    for run in np.split(rows, breaks):
        ds[int(run[0]):int(run[-1]) + 1] = block[start:start + len(run)]
        start += len(run)


def _decide_channels(old: h5py.File | None, old_reused: np.ndarray, new: list[int], refs, ids, *, size, draft,
                     max_pixels, pool) -> int:
    if old is not None and len(old_reused) and old["images"].shape[-1] == 3:
        for b in range(0, len(old_reused), _BLOCK):
            if _colour_rows(_read_rows(old["images"], np.sort(old_reused[b:b + _BLOCK]))):
                return 3
    maybe = [r for r in new if not is_gray_source(refs[r])]
    for _, arrays in _stream(maybe, refs, ids, size=size, channels=None, draft=draft, max_pixels=max_pixels,
                             pool=pool):
        if any(a.shape[-1] == 3 for a in arrays):
            return 3
    return 1


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="img", desc="decode", leave=False)


def build_stats(path: str | Path) -> dict:
    """The last build's figures recorded in the file: images, decoded, reused, seconds, channels."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        return {"images": int(f["images"].shape[0]), "decoded": int(a["n_decoded"]), "reused": int(a["n_reused"]),
                "seconds": float(a["seconds"]), "channels": int(a["channels"])}


# --------------------------------------------------------------------------- reader


class DecodedImages:
    """Lazy reader: the HDF5 file is opened on first access in each process (safe for DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._ids: np.ndarray | None = None
        self._index: dict | None = None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise CacheError(f"decoded-image cache {self.path} not found: run 'featpipe decode --size N'")
            f = h5py.File(self.path, "r")
            if not bool(f.attrs.get("complete", False)) or "images" not in f:
                f.close()
                raise CacheError(f"decoded-image cache {self.path} is incomplete: run 'featpipe decode' again")
            self._h5, self._pid = f, os.getpid()
        return self._h5

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_h5=None, _pid=None)
        return state

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._file().attrs.items()}

    @property
    def size(self) -> int:
        return int(self._file()["images"].shape[1])

    @property
    def channels(self) -> int:
        return int(self._file()["images"].shape[-1])

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.array(_strings(self._file()["ids"]), dtype=str)
        return self._ids

    @property
    def sha256(self) -> np.ndarray:
        return np.array(_strings(self._file()["sha256"]), dtype=str)

    def index_of(self, ids: Iterable[str]) -> np.ndarray:
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids.tolist())}
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise CacheError(f"{len(missing)} id(s) not in decoded-image cache {self.path} (first: {missing[0]}): "
                             "run 'featpipe decode' for the current manifest")
        return np.array([self._index[i] for i in ids], dtype=np.int64)

    def require(self, manifest: pd.DataFrame) -> np.ndarray:
        """Rows of the manifest's ids, checking each sha256 matches (a stale cache is an error)."""
        rows = self.index_of(manifest["id"].astype(str))
        stale = np.flatnonzero(self.sha256[rows] != manifest["sha256"].astype(str).to_numpy())
        if len(stale):
            raise CacheError(f"decoded-image cache {self.path} is stale for {len(stale)} image(s) (first: "
                             f"{manifest['id'].iloc[stale[0]]}): run 'featpipe decode' again")
        return rows

    def __len__(self) -> int:
        return int(self._file()["images"].shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} images")
        return self._file()["images"][i % n]

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``(n, H, W, C)`` in the order asked (any order, duplicates allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"rows out of range for {n} images")
        return _read_rows(self._file()["images"], idx % n if n else idx)

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._pid = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
