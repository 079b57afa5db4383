"""HDF5 files written so that a failing disk is a Python exception, never a crash in libhdf5.

libhdf5 does not survive a write that fails: when the disk fills during a write (ENOSPC), h5py raises, and the
process then dies with a segmentation fault when the file is closed or collected (seen with h5py 3.16 / HDF5
2.0 on a full tmpfs, with the default driver and with a plain Python file object alike). So HDF5 never sees a
failed write here: :class:`H5Out` gives h5py a file object (h5py's ``fileobj`` driver) whose writes go to the
real file; the first ``OSError`` is recorded, not raised into libhdf5, and every later write is dropped. The
writer calls :meth:`H5Out.check` after each block (cheap: one attribute), and :meth:`H5Out.close` closes the
HDF5 file, ``fsync``-s the data (a delayed allocation failure surfaces here) and raises the recorded error as a
plain ``OSError`` naming the file, which the CLI prints as one line. Data is streamed to the disk as h5py
writes it, so memory stays what the writer holds (no in-memory image of the file).

:func:`write_h5` wraps it in :func:`featpipe.core.fileio.atomic_path`: the file appears complete under its
name, or not at all (the temporary is removed on any error).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from featpipe.core.fileio import atomic_path


class _Sink:
    """The file object h5py writes through: positioned raw I/O on ``path``; the first failed write is kept in
    :attr:`error` and later writes are dropped (libhdf5 is told each write succeeded)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self.pos = 0
        self.error: OSError | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = os.lseek(self.fd, offset, whence) if whence == 2 else (offset if whence == 0 else self.pos + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _write(self, data: memoryview) -> None:  # the one place bytes reach the disk (tests fail it)
        while len(data):
            done = os.pwrite(self.fd, data, self.pos)
            self.pos += done
            data = data[done:]

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        end = self.pos + len(view)
        if self.error is None:
            try:
                self._write(view)
            except OSError as exc:
                self.error = exc
        self.pos = end
        return len(view)

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        got = os.preadv(self.fd, [view], self.pos)
        self.pos += got
        return got

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = os.fstat(self.fd).st_size - self.pos
        data = os.pread(self.fd, max(0, size), self.pos)
        self.pos += len(data)
        return data

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        pass


class H5Out:
    """An HDF5 file open for writing at ``path`` (:attr:`file`, an ``h5py.File``) whose write failures become
    ``OSError`` from :meth:`check` or :meth:`close` instead of a crash in libhdf5 (see the module docstring).
    Errors name ``name`` (the file being made; default ``path``, the temporary written)."""

    def __init__(self, path: str | Path, *, name: str | Path | None = None):
        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        self._sink = _Sink(self.path)
        try:
            self.file = h5py.File(self._sink, "w")
        except BaseException:
            os.close(self._sink.fd)
            raise

    def check(self) -> None:
        """Raise the first failed write, if any (call after each block of data)."""
        exc = self._sink.error
        if exc is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.name))

    def close(self) -> None:
        """Close the HDF5 file, sync it to the disk and raise the first failed write, if any. Idempotent."""
        if self._sink.fd < 0:
            return
        try:
            if self.file.id.valid:
                self.file.close()
            self.check()
            os.fsync(self._sink.fd)
        finally:
            os.close(self._sink.fd)
            self._sink.fd = -1


@contextmanager
def write_h5(path: str | Path) -> Iterator[H5Out]:
    """An :class:`H5Out` on a temporary file beside ``path``, renamed onto ``path`` when the block ends without an
    error and closes cleanly; removed otherwise (a failing disk is an ``OSError`` naming the file)."""
    with atomic_path(path) as tmp:
        out = H5Out(tmp, name=path)
        try:
            yield out
        except BaseException:
            try:
                out.close()
            except OSError:
                pass  # the error that brought us here is the one to report
            raise
        out.close()
