"""The decoded-image cache: every manifest image decoded once per decoded form (size and resize filter), in HDF5.

Layout of ``cache/<dataset>/decoded-<size>.h5`` (bilinear; another filter: ``decoded-<size>-<filter>.h5``, e.g.
``decoded-518-bicubic.h5``; readable with plain h5py / h5dump):

- ``images``: uint8 ``(N, size, size, C)``, chunked one image per chunk; C = 1 when every image is
  grayscale, else 3 (grayscale images replicated);
- ``ids``: utf-8 strings, the manifest ids in manifest order; ``sha256``: the manifest's sha256 per row;
- ``images_crc32``: a CRC-32 per block of 64 rows of ``images`` (:mod:`featpipe.core.checksums`): the reader
  checks each block it reads once per process (a mismatch is a one-line error), a build decodes the rows of
  damaged blocks again instead of reusing them;
- attrs: ``format, size, channels, resize_method`` (names the filter), ``draft, draft_factor, decoder_version, rows_sha256``
  (a hash of the (id, sha256) rows), ``featpipe_version, pillow_version, pydicom_version, numpy_version,
  complete`` and the last build's ``n_decoded, n_reused, seconds``.

Valid by content: a build reuses the rows whose (id, sha256) are in the previous file, when that file
was made with the same size, resize method (filter), draft setting, decoder version and Pillow and pydicom
versions; anything else is decoded. A file that already holds exactly the manifest's rows is left
untouched (not rewritten). Otherwise the new file is written beside the old one (``*.partial``) and
renamed into place.

This module is the file's layout, its identity and its reader (:class:`DecodedImages`); writing it
is :func:`featpipe.decoded.build.build`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import h5py
import numpy as np
import pandas as pd

from featpipe.core import checksums
from featpipe.core.errors import CacheError
from featpipe.core.log import notice
from featpipe.core.provenance import mismatch
from featpipe.core.versions import versions
from featpipe.imaging.base import DECODER_VERSION, DEFAULT_DRAFT, DEFAULT_MAX_PIXELS, Resize, as_resize
from featpipe.imaging.npz import split_ref
from featpipe.imaging.pil import DRAFT_FACTOR

FORMAT = 2
# The decoder settings a file's rows may be reused under (its identity; compared by featpipe.core.provenance).
REUSE_KEYS = ("format", "size", "resize_method", "draft", "draft_factor", "decoder_version", "pillow_version",
               "pydicom_version")


@dataclass(frozen=True)
class DecodeOptions:
    """How images are decoded into the cache (``params.decode`` and ``data.max_image_pixels``)."""

    workers: int = 2
    draft: bool = DEFAULT_DRAFT
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True

    @classmethod
    def from_params(cls, params, *, progress: bool = True) -> DecodeOptions:
        return cls(params.decode.workers, params.decode.draft, params.data.max_image_pixels, progress)


def decoded_path(cache_dir: str | Path, dataset: str, size: int | Resize) -> Path:
    """``<cache_dir>/<dataset>/decoded-<label>.h5`` of a decoded form (a size: bilinear; or a
    :class:`~featpipe.imaging.base.Resize`): ``decoded-256.h5``, ``decoded-518-bicubic.h5``."""
    return Path(cache_dir) / dataset / f"decoded-{as_resize(size).label}.h5"


def content_sha256(ids: Sequence[str], shas: Sequence[str]) -> str:
    """A hash of the (id, sha256) rows in order: what the decoded pixels depend on."""
    h = hashlib.sha256()
    for i, s in zip(ids, shas):
        h.update(f"{i}\t{s}\n".encode())
    return h.hexdigest()


def image_refs(manifest: pd.DataFrame) -> list[str]:
    """Each manifest row's image reference, resolved (the one place manifest paths become files)."""
    out = []
    for ref in manifest["path"].astype(str):
        file, array, index = split_ref(ref)
        out.append(f"{os.path.abspath(file)}#{array}/{index}" if array is not None else os.path.abspath(file))
    return out


def decoder_settings(size: int | Resize, draft: bool) -> dict:
    """What the decoded pixels of a decoded form (a size: bilinear; or a :class:`~featpipe.imaging.base.Resize`)
    depend on besides the file bytes (attrs of the cache; in feature caches' provenance)."""
    form = as_resize(size)
    return {"format": FORMAT, "size": form.size, "resize_method": form.method, "draft": bool(draft),
            "draft_factor": DRAFT_FACTOR, "decoder_version": DECODER_VERSION,
            **versions("PIL", "pydicom", "numpy")}


def decoder_identity(size: int | Resize, draft: bool) -> dict:
    """The settings that change decoded pixels, the resize filter included (recorded in every feature cache: a
    change re-extracts)."""
    wanted = decoder_settings(size, draft)
    return {k: wanted[k] for k in REUSE_KEYS}


def settings_mismatch(attrs: Mapping, wanted: Mapping) -> str | None:
    """The first of :data:`REUSE_KEYS` in which a decoded cache's ``attrs`` differ from the ``wanted``
    :func:`decoder_settings` (None if all match), worded by :func:`featpipe.core.provenance.mismatch`."""
    return mismatch(attrs, wanted, REUSE_KEYS)


# --------------------------------------------------------------------------- previous cache


def open_reusable(path: Path, wanted: dict) -> h5py.File | None:
    """The previous file, opened, when its rows may be reused for ``wanted``; else None."""
    if not path.is_file():
        return None
    try:
        f = h5py.File(path, "r")
    except OSError:
        return None  # unreadable (e.g. not HDF5): rebuilt from scratch
    attrs = dict(f.attrs)
    if not bool(attrs.get("complete")) or "images" not in f or settings_mismatch(attrs, wanted) is not None:
        f.close()
        return None
    return f


def damaged_rows(f: h5py.File, path: Path) -> set[int]:
    """Rows of a previous file whose ``images`` fail their checksums (every row when it records none), said
    in one line: a build decodes them again instead of reusing them."""
    bad = checksums.bad_blocks(f, "images")
    n = int(f["images"].shape[0])
    if bad is None:
        notice(f"{path} has no checksums (made by an older featpipe): decoding its images again")
        return set(range(n))
    if bad:
        notice(f"{path}: {checksums.span(bad, checksums.stored(f, 'images')[1], n)} do not match their checksums "
               "(damaged): decoding them again")
    return set(checksums.rows_of(bad, checksums.stored(f, "images")[1], n).tolist())


def strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]]


def read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for any int rows (duplicates, any order), reading contiguous runs as slices."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
    if len(rows) == 0:
        return out
    order = np.argsort(rows, kind="stable")
    uniq, inverse = np.unique(rows[order], return_inverse=True)
    buf = np.empty((len(uniq),) + ds.shape[1:], dtype=ds.dtype)
    start = 0
    for run in np.split(uniq, np.flatnonzero(np.diff(uniq) != 1) + 1):
        buf[start:start + len(run)] = ds[int(run[0]):int(run[-1]) + 1]
        start += len(run)
    out[order] = buf[inverse]
    return out


def build_stats(path: str | Path) -> dict:
    """The figures recorded in the file by the build that wrote it: images, decoded, reused, seconds, channels."""
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
        self._sums: tuple | None = None  # (checksums, block_rows) of ``images``, read with the file
        self._ok: set = set()  # blocks checked in this process

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise CacheError(f"decoded-image cache {self.path} not found: run 'featpipe decode'")
            f = h5py.File(self.path, "r")
            if not bool(f.attrs.get("complete", False)) or "images" not in f:
                f.close()
                raise CacheError(f"decoded-image cache {self.path} is incomplete: run 'featpipe decode' again")
            self._h5, self._pid = f, os.getpid()
            self._sums, self._ok = checksums.stored(f, "images"), set()
        return self._h5

    def _check(self, rows: np.ndarray) -> None:
        """The blocks holding ``rows`` checked against their checksums, each once per process; a damaged
        one is a one-line CacheError (a file with no checksums is read unchecked, said once; its build redoes it)."""
        f = self._file()
        if self._sums is None:
            checksums.say_unchecked(self.path, "featpipe decode")
        if self._sums is None or not len(rows):
            return
        block_rows = self._sums[1]
        todo = set(np.unique(np.asarray(rows) // block_rows).tolist()) - self._ok
        if not todo:
            return
        bad = checksums.bad_blocks(f, "images", todo)
        if bad:
            raise CacheError(f"decoded-image cache {self.path} is damaged ({checksums.span(bad, block_rows, len(self))} "
                             "do not match their checksums): run 'featpipe decode' (it decodes them again)")
        self._ok |= todo

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
            self._ids = np.array(strings(self._file()["ids"]), dtype=str)
        return self._ids

    @property
    def sha256(self) -> np.ndarray:
        return np.array(strings(self._file()["sha256"]), dtype=str)

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
        self._check(np.array([i % n]))
        return self._file()["images"][i % n]

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``(n, H, W, C)`` in the order asked (any order, duplicates allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"rows out of range for {n} images")
        self._check(idx % n if n else idx)
        return read_rows(self._file()["images"], idx % n if n else idx)

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._pid = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
