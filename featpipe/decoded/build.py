"""The decoding pass of :func:`featpipe.decoded.cache.build`: jobs, workers, and the file :class:`Writer`.

Rows arrive in any order with their natural channels (1 for grey content, 3 for colour). The file is
written as ``<path>.partial`` with one channel until the first colour row arrives; it is then widened:
a 3-channel file is started (``<path>.partial3``), the rows written so far are copied into it with their
grey channel replicated, and the one-channel file is removed. Nothing is decoded twice. Rows left out
at the end (rejected images) are compacted away before the file is renamed into place.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from featpipe.core.errors import CacheError, DataError
from featpipe.imaging.decode import ImageRejected, decode_sizes

_BLOCK = 64


class Writer:
    """A decoded-cache file being written for ``n`` manifest rows at ``size``."""

    def __init__(self, path: Path, *, size: int, n: int, attrs: dict):
        self.path, self.size, self.n, self.attrs = Path(path), int(size), int(n), dict(attrs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.channels = 1
        self.done = np.zeros(self.n, dtype=bool)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.f: h5py.File | None = self._create(self.tmp, 1)

    def _create(self, tmp: Path, channels: int) -> h5py.File:
        f = h5py.File(tmp, "w")
        s = self.size
        f.create_dataset("images", shape=(self.n, s, s, channels), maxshape=(None, s, s, channels), dtype=np.uint8,
                         chunks=(1, s, s, channels))
        return f

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
        self.done[row] = True

    def get(self, row: int) -> np.ndarray:
        img = self.f["images"][row]
        return img[..., :1] if self.channels == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(
            img[..., 0], img[..., 2]) else img

    def _widen(self) -> None:
        tmp = self.path.with_name(self.path.name + ".partial3")
        new = self._create(tmp, 3)
        old, dst = self.f["images"], new["images"]
        rows = np.flatnonzero(self.done)
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []:
            for b in range(int(run[0]), int(run[-1]) + 1, _BLOCK):
                e = min(b + _BLOCK, int(run[-1]) + 1)
                dst[b:e] = np.repeat(old[b:e], 3, axis=-1)
        self.f.close()
        os.unlink(self.tmp)
        self.f, self.tmp, self.channels = new, tmp, 3

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
        self.f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        self.f.create_dataset("sha256", data=np.array(shas, dtype=object), dtype=h5py.string_dtype("utf-8"))
        self.f.attrs.update({**self.attrs, **attrs, "channels": self.channels, "complete": True})
        self.f.close()
        self.f = None
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Close and remove an unfinished file (no-op after :meth:`finish`)."""
        if self.f is not None:
            self.f.close()
            self.f = None
            if self.tmp.exists():
                self.tmp.unlink()


# --------------------------------------------------------------------------- decoding


def _decode_task(jobs: Sequence[tuple[str, tuple[int, ...]]], draft: bool, max_pixels: int) -> list:
    """Worker: per (ref, sizes) ``(pixels by size, (w, h))`` or the reject reason (a string)."""
    out = []
    for ref, sizes in jobs:
        try:
            out.append(decode_sizes(ref, sizes, draft=draft, max_pixels=max_pixels))
        except ImageRejected as exc:
            out.append(exc.reason)
    return out


def _stream(jobs: Sequence[tuple[int, str, tuple[int, ...]]], *, draft: bool, max_pixels: int,
            pool: ProcessPoolExecutor | None) -> Iterator[tuple[int, object]]:
    """Yield ``(row, result)`` in order; at most a few chunks in flight (flat memory)."""
    if not jobs:
        return
    workers = pool._max_workers if pool is not None else 1
    size = max(1, min(8, math.ceil(len(jobs) / (workers * 4))))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    if pool is None:
        for c in chunks:
            yield from zip((j[0] for j in c), _decode_task([j[1:] for j in c], draft, max_pixels))
        return
    pending: deque = deque()
    it = iter(chunks)
    try:
        for c in it:
            pending.append((c, pool.submit(_decode_task, [j[1:] for j in c], draft, max_pixels)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            c, fut = pending.popleft()
            out = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode_task, [j[1:] for j in nxt], draft, max_pixels)))
            yield from zip((j[0] for j in c), out)
    finally:
        for _, fut in pending:  # a consumer that stopped early (or an error) leaves nothing running
            fut.cancel()


def mp_context():
    """fork on Linux (fast; no ``if __name__ == "__main__"`` guard needed; the workers run Pillow and
    numpy only, as torch's DataLoader workers do), spawn elsewhere."""
    import multiprocessing
    import sys

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def jobs_for(writers: dict, shas: list[str], refs: list[str]) -> list[tuple[int, str, tuple[int, ...]]]:
    """One job per distinct sha256 that some file lacks: (first row, ref, the sizes that lack it). A row
    whose bytes some other row of the same file already holds (same sha256) is copied, not decoded."""
    need: dict[str, tuple[int, set]] = {}
    for size, w in writers.items():
        held = {shas[r]: int(r) for r in np.flatnonzero(w.done)}
        for r in np.flatnonzero(~w.done):
            if shas[r] in held:
                w.put(int(r), w.get(held[shas[r]]))
            else:
                need.setdefault(shas[r], (int(r), set()))[1].add(size)
    return sorted((r, refs[r], tuple(sorted(s))) for r, s in need.values())


def decode_into(jobs, writers: dict, shas, ids, refs, *, options, pool, result, rejects: bool) -> None:
    """Decode every job once and put its pixels in every row (duplicates included) and size that lacks it."""
    rows_of: dict[str, list[int]] = {}
    for r, s in enumerate(shas):
        rows_of.setdefault(s, []).append(r)
    bar = _progress(len(jobs), options.progress)
    for row, out in _stream(jobs, draft=options.draft, max_pixels=options.max_pixels, pool=pool):
        same = rows_of[shas[row]]
        if isinstance(out, str):
            if not rejects:
                raise DataError(f"cannot decode image {ids[row]} ({refs[row]}): {out}; re-run 'featpipe prepare' "
                                "to reject it, or fix the file")
            result.rejects.update({ids[r]: out for r in same})
        else:
            pixels, dims = out
            result.decoded += 1
            for r in same:
                result.dims[ids[r]] = dims
                for size, img in pixels.items():
                    if not writers[size].has(r):
                        writers[size].put(r, img)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="img", desc="decode", leave=False)


def checked_rows(manifest: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """ids, sha256s and resolved image references of the manifest rows (one line errors for a bad manifest)."""
    import pandas as pd

    from featpipe.decoded.cache import image_refs

    missing = [c for c in ("id", "path", "sha256") if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {', '.join(missing)}")
    ids = manifest["id"].astype(str).tolist()
    if not ids:
        raise DataError("the manifest has no images to decode: run 'featpipe prepare' first")
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise DataError(f"manifest has duplicate id {dup!r}: re-run 'featpipe prepare'")
    return ids, manifest["sha256"].astype(str).tolist(), image_refs(manifest)


def _natural(img: np.ndarray) -> np.ndarray:
    """A cached row with equal channels back to one channel (lossless)."""
    if img.shape[-1] == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return img[..., :1]
    return img


def copy_reused(old: h5py.File, rows: np.ndarray, writer) -> None:
    """Copy the rows reused from the previous file (``rows[i]``: its row there, -1 = none) into ``writer``."""
    from featpipe.decoded.cache import _read_rows

    reused = np.flatnonzero(rows >= 0)
    for b in range(0, len(reused), _BLOCK):
        dst = reused[b:b + _BLOCK]
        for r, img in zip(dst, _read_rows(old["images"], rows[dst])):
            writer.put(int(r), _natural(img))
