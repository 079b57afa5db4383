"""Per-row-block checksums of a cache's big dataset (``features`` of a feature cache, ``images`` of a
decoded-image cache): written with the data, checked when the data is read, so bit rot or an edit inside a
cache is detected instead of being used.

A cache file holds, beside the dataset ``<name>``, a dataset ``<name>_crc32``: one CRC-32 (zlib) per block of
``block_rows`` rows (its attribute), over the rows' bytes as stored (dtype and shape of the dataset). CRC-32
costs about a millisecond per megabyte: checking every row a run reads is cheap next to reading them.
Files written before the checksums have no ``<name>_crc32``: :func:`stored` is None and nothing can be
checked. Readers use such a file unchecked and say so once per file and process (:func:`say_unchecked`);
the builders (``featpipe extract``, ``featpipe decode``) rebuild it in full, with checksums, and say so.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np

from featpipe.core.log import notice

SUFFIX = "_crc32"
_SAID: set[str] = set()
BLOCK_ROWS = 256


def crc(rows: np.ndarray) -> int:
    """CRC-32 of ``rows``' bytes (C order)."""
    return zlib.crc32(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))


class Running:
    """Checksums of rows that arrive in order, in blocks of any size: :meth:`add` them, then :attr:`sums`."""

    def __init__(self, block_rows: int = BLOCK_ROWS):
        self.block_rows = int(block_rows)
        self._sums: list[int] = []
        self._cur, self._in = 0, 0

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows)
        at = 0
        while at < len(rows):
            take = min(self.block_rows - self._in, len(rows) - at)
            self._cur = zlib.crc32(rows[at:at + take].reshape(-1).view(np.uint8), self._cur)
            self._in += take
            at += take
            if self._in == self.block_rows:
                self._sums.append(self._cur)
                self._cur, self._in = 0, 0

    @property
    def sums(self) -> np.ndarray:
        tail = [self._cur] if self._in else []
        return np.asarray(self._sums + tail, dtype=np.uint32)


def of_dataset(ds, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """The checksums of a dataset (anything sliceable by rows with a ``shape``), read block by block."""
    run = Running(block_rows)
    for _, rows in blocks(ds, block_rows):
        run.add(rows)
    return run.sums


def blocks(ds, block_rows: int, which=None) -> Iterator[tuple[int, np.ndarray]]:
    """(block index, rows) of ``ds``, every block or those in ``which``."""
    n = int(ds.shape[0])
    for b in (range(-(-n // block_rows)) if which is None else sorted(set(which))):
        yield b, np.asarray(ds[b * block_rows:min(n, (b + 1) * block_rows)])


def write(f, name: str, sums: np.ndarray, block_rows: int) -> None:
    """Store ``sums`` as ``<name>_crc32`` in the open h5py file ``f``."""
    ds = f.create_dataset(name + SUFFIX, data=np.asarray(sums, dtype=np.uint32))
    ds.attrs["block_rows"] = int(block_rows)


def stored(f, name: str) -> tuple[np.ndarray, int] | None:
    """(checksums, block_rows) recorded for ``name`` in the open h5py file ``f``; None when it has none."""
    if name + SUFFIX not in f:
        return None
    ds = f[name + SUFFIX]
    return np.asarray(ds[()], dtype=np.uint32), int(ds.attrs.get("block_rows", BLOCK_ROWS))


def bad_blocks(f, name: str, which=None) -> list[int] | None:
    """Blocks of ``f[name]`` (all, or those in ``which``) whose rows do not match their checksum (a block past
    the recorded checksums counts as bad); None when the file records none."""
    rec = stored(f, name)
    if rec is None:
        return None
    sums, block_rows = rec
    ds = f[name]
    if len(sums) != -(-int(ds.shape[0]) // block_rows):
        return list(range(-(-int(ds.shape[0]) // block_rows))) if which is None else sorted(set(which))
    return [b for b, rows in blocks(ds, block_rows, which) if crc(rows) != int(sums[b])]


def rows_of(block_list, block_rows: int, n: int) -> np.ndarray:
    """The row indices of ``block_list`` (each block's rows, clipped at ``n``)."""
    if not block_list:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(b * block_rows, min(n, (b + 1) * block_rows)) for b in block_list])


def span(block_list, block_rows: int, n: int) -> str:
    """Human text for the rows of bad blocks: ``"rows 0-255 and 512-767"`` (first three)."""
    parts = [f"{b * block_rows}-{min(n, (b + 1) * block_rows) - 1}" for b in block_list[:3]]
    more = f" and {len(block_list) - 3} more block(s)" if len(block_list) > 3 else ""
    return "rows " + ", ".join(parts) + more


def say_unchecked(path, rebuild: str) -> None:
    """One notice per file and process: ``path`` has no checksums, it is read unchecked, ``rebuild`` (a command)
    rebuilds it with them."""
    key = str(path)
    if key not in _SAID:
        _SAID.add(key)
        notice(f"{path} has no checksums (written by an older featpipe): read unchecked; run '{rebuild}' to "
               "rebuild it with checksums")
