"""The file a decoded-cache build writes (:class:`Writer`), for :mod:`featpipe.decoded.build`.

Rows arrive in any order with their natural channels (1 for grey content, 3 for colour). The file is
written as ``<path>.partial`` with one channel until the first colour row arrives; it is then widened:
a 3-channel file is started (``<path>.partial3``), the rows written so far are copied into it with their
grey channel replicated, and the one-channel file is removed. Nothing is decoded twice. Rows left out
at the end (rejected images) are compacted away; the CRC-32 of every block of rows (``images_crc32``,
:mod:`featpipe.core.checksums`) is written, and the file is renamed into place. Files are written through
:mod:`featpipe.core.h5out`: a disk that fills during the write is an ``OSError`` naming the cache (one line at
the CLI), never a crash in libhdf5; the previous cache, if any, stays in place, and the unfinished file is
removed (the rows it held are decoded again by the next run).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from featpipe.core import checksums
from featpipe.core.errors import CacheError
from featpipe.core.fileio import ensure_space
from featpipe.core.h5out import H5Out

_BLOCK = 64  # rows per copy block (flat memory)
_CHECK_ROWS = 64  # rows per checksum block of ``images`` (featpipe.core.checksums)


class Writer:
    """A decoded-cache file being written for ``n`` manifest rows at ``size``."""

    def __init__(self, path: Path, *, size: int, n: int, attrs: dict):
        self.path, self.size, self.n, self.attrs = Path(path), int(size), int(n), dict(attrs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.channels = 1
        self.done = np.zeros(self.n, dtype=bool)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.out: H5Out | None = self._create(self.tmp, 1)
        self.f: h5py.File | None = self.out.file

    def _create(self, tmp: Path, channels: int) -> H5Out:
        ensure_space(self.path, self.n * (self.size * self.size * channels + 200), what="the decoded-image cache")
        out = H5Out(tmp, name=self.path)
        s = self.size
        out.file.create_dataset("images", shape=(self.n, s, s, channels), maxshape=(None, s, s, channels),
                                dtype=np.uint8, chunks=(1, s, s, channels))
        return out

    def has(self, row: int) -> bool:
        return bool(self.done[row])

    def put(self, row: int, img: np.ndarray) -> None:
        """Row ``row`` := ``img`` uint8 ``(size, size, 1 | 3)``."""
        if img.shape != (self.size, self.size, img.shape[-1]) or img.shape[-1] not in (1, 3):
            raise CacheError(f"decoded image of shape {img.shape} does not fit a {self.size}-px cache")
        if img.shape[-1] == 3 and self.channels == 1:
            self._widen()
        if img.shape[-1] == 1 and self.channels == 3:
            img = np.repeat(img, 3, axis=-1)
        self.f["images"][row] = img
        self.out.check()
        self.done[row] = True

    def get(self, row: int) -> np.ndarray:
        img = self.f["images"][row]
        return img[..., :1] if self.channels == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(
            img[..., 0], img[..., 2]) else img

    def _widen(self) -> None:
        tmp = self.path.with_name(self.path.name + ".partial3")
        new = self._create(tmp, 3)
        old, dst = self.f["images"], new.file["images"]
        rows = np.flatnonzero(self.done)
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []:
            for b in range(int(run[0]), int(run[-1]) + 1, _BLOCK):
                e = min(b + _BLOCK, int(run[-1]) + 1)
                dst[b:e] = np.repeat(old[b:e], 3, axis=-1)
                new.check()
        self.out.close()
        os.unlink(self.tmp)
        self.out, self.f, self.tmp, self.channels = new, new.file, tmp, 3

    def finish(self, keep: np.ndarray, ids: list[str], shas: list[str], attrs: dict) -> None:
        """Keep the rows where ``keep``, in order, record ids/sha256/attrs and rename into place."""
        kept = np.flatnonzero(keep)
        if not self.done[kept].all():
            raise CacheError(f"internal error: {int((~self.done[kept]).sum())} rows of {self.path} were never written")
        ds = self.f["images"]
        if len(kept) < self.n:
            for j, r in enumerate(kept):  # j <= r: moving rows down in order never overwrites one still needed
                if j != r:
                    ds[j] = ds[r]
            ds.resize(len(kept), axis=0)
        checksums.write(self.f, "images", checksums.of_dataset(ds, _CHECK_ROWS), _CHECK_ROWS)
        self.f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        self.f.create_dataset("sha256", data=np.array(shas, dtype=object), dtype=h5py.string_dtype("utf-8"))
        self.f.attrs.update({**self.attrs, **attrs, "channels": self.channels, "complete": True})
        self.out.close()  # raises the first failed write (a full disk) before the file is renamed into place
        self.out = self.f = None
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Close and remove an unfinished file (no-op after :meth:`finish`)."""
        if self.out is not None:
            try:
                self.out.close()
            except OSError:
                pass  # a failed write: the error being raised already says so
            self.out = self.f = None
            if self.tmp.exists():
                self.tmp.unlink()
