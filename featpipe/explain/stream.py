"""Files of a Grad-CAM run written as the images arrive, so memory stays flat in the number of images.

- :class:`GridPNG`: ``grid.png`` composed tile by tile: a PNG of known size (tiles of one size, ``per_row`` per
  row, a title strip on top) whose scanlines are compressed and written as each row of tiles is complete; only
  one row of tiles is held.
- :class:`MapsNPZ`: ``maps.npz`` (``ids`` and ``maps``, float16 (N, S, S), as ``numpy.load`` reads it) whose
  ``maps`` member is written batch by batch into the zip (deflated), never stacked in memory.

Both write to a temporary file beside the target (:func:`featpipe.core.fileio.atomic_path`) and rename it into
place on :meth:`close`; :meth:`abort` removes it.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from featpipe.core.fileio import atomic_path


class _Atomic:
    """A file opened for writing under a temporary name beside ``path``; renamed into place by :meth:`close`."""

    def __init__(self, path: str | Path):
        self._stack = ExitStack()
        self.tmp = self._stack.enter_context(atomic_path(path))
        self.fh = self._stack.enter_context(open(self.tmp, "wb"))

    def _commit(self) -> None:
        self.fh.close()
        self._stack.close()  # renames the temporary onto the path

    def abort(self) -> None:
        """Remove the temporary file (no-op after :meth:`close`)."""
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


class GridPNG(_Atomic):
    """An RGB PNG of ``n`` tiles (uint8 (h, w, 3), all of one size) ``per_row`` per row under ``title`` (uint8
    (t, per_row * w, 3), or None), written row of tiles by row of tiles; unfilled cells are white."""

    def __init__(self, path: str | Path, *, n: int, tile: tuple[int, int], per_row: int,
                 title: np.ndarray | None = None):
        super().__init__(path)
        self.th, self.tw = int(tile[0]), int(tile[1])
        self.per_row, self.n = int(per_row), int(n)
        self.width = self.per_row * self.tw
        rows = max(1, -(-self.n // self.per_row))
        height = rows * self.th + (0 if title is None else int(title.shape[0]))
        self.fh.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, height, 8, 2, 0, 0, 0))
        self._z = zlib.compressobj(6)
        self._row: list[np.ndarray] = []
        self.added = 0
        if title is not None:
            if title.shape[1] != self.width:
                raise ValueError(f"title strip {title.shape[1]} px wide for a {self.width}-px grid")
            self._lines(title)

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.fh.write(struct.pack(">I", len(data)) + kind + data
                      + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))

    def _lines(self, pixels: np.ndarray) -> None:
        rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(pixels.shape[0], -1)
        raw = np.concatenate([np.zeros((len(rows), 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per line
        data = self._z.compress(raw)
        if data:
            self._chunk(b"IDAT", data)

    def add(self, tile: np.ndarray) -> None:
        """The next tile, uint8 (h, w, 3)."""
        if tile.shape != (self.th, self.tw, 3):
            raise ValueError(f"tile of shape {tile.shape}, expected {(self.th, self.tw, 3)}")
        if self.added >= self.n:
            raise ValueError(f"more than {self.n} tiles")
        self._row.append(np.asarray(tile, np.uint8))
        self.added += 1
        if len(self._row) == self.per_row:
            self._flush_row()

    def _flush_row(self) -> None:
        blank = np.full((self.th, self.tw, 3), 255, np.uint8)
        self._lines(np.concatenate(self._row + [blank] * (self.per_row - len(self._row)), axis=1))
        self._row = []

    def close(self) -> None:
        if self.added != self.n:
            raise ValueError(f"{self.added} tiles added of {self.n}")
        if self._row or self.n == 0:
            self._flush_row()
        self._chunk(b"IDAT", self._z.flush())
        self._chunk(b"IEND", b"")
        self._commit()


class MapsNPZ(_Atomic):
    """``maps.npz`` with ``ids`` (str) and ``maps`` (float16 (len(ids), h, w)), the maps added in order, in
    batches."""

    def __init__(self, path: str | Path, ids: list[str], shape: tuple[int, int]):
        super().__init__(path)
        self.zf = zipfile.ZipFile(self.fh, "w", compression=zipfile.ZIP_DEFLATED)
        with self.zf.open("ids.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, np.array(ids, dtype=str))
        self.n, self.shape, self.added = len(ids), tuple(int(s) for s in shape), 0
        self._out = self.zf.open("maps.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": (self.n, *self.shape)}
        np.lib.format.write_array_header_2_0(self._out, header)

    def add(self, maps: np.ndarray) -> None:
        maps = np.ascontiguousarray(maps, dtype=np.float16)
        if maps.shape[1:] != self.shape or self.added + len(maps) > self.n:
            raise ValueError(f"maps of shape {maps.shape} do not fit {self.n} maps of {self.shape}")
        self._out.write(maps.tobytes())
        self.added += len(maps)

    def close(self) -> None:
        if self.added != self.n:
            raise ValueError(f"{self.added} maps added of {self.n}")
        self._out.close()
        self.zf.close()
        self._commit()

    def abort(self) -> None:
        try:
            self._out.close()
            self.zf.close()
        except (OSError, ValueError):
            pass
        super().abort()
