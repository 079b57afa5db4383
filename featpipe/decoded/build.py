"""Building the decoded-image cache (:mod:`featpipe.decoded.cache`): :func:`build` and its decoding pass.

One pass (:func:`build`): every image that any requested file lacks is decoded once for all the decoded forms
those files hold (a form is a size, bilinear, or a :class:`featpipe.imaging.base.Resize`: size and filter;
:func:`featpipe.imaging.decode.decode_sizes`; byte-identical files, same sha256, are decoded once), in a pool
of worker processes, streamed in order into the files (flat memory). Channels are decided in that same
pass: each row is stored with its natural channels (:func:`featpipe.imaging.decode.decode`); the file holds one
channel until the first colour row arrives, and is then widened (rows written so far replicated) instead
of decoding anything twice. With ``rejects=True`` (``featpipe prepare``) an image that cannot be decoded
is reported and left out instead of stopping the build: that is how ``prepare`` verifies the files and
fills the caches from the same decode.

Each file being built is a :class:`featpipe.decoded.writer.Writer`.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.locks import build_lock, clean_leftovers, remove_stale
from featpipe.core.progress import progress as progress_bar
from featpipe.core.workers import pool_kwargs
from featpipe.decoded.cache import (
    DecodeOptions,
    content_sha256,
    damaged_rows,
    decoder_settings,
    image_refs,
    open_reusable,
    read_rows,
    strings,
)
from featpipe.decoded.writer import Writer
from featpipe.imaging.base import DEFAULT_DRAFT, DEFAULT_MAX_PIXELS, ImageRejected, Resize, as_resize
from featpipe.imaging.decode import decode_sizes

_BLOCK = 64  # rows per copy block (flat memory)


@dataclass
class BuildResult:
    """What one :func:`build` did: per decoded form (the keys of the targets: sizes or
    :class:`~featpipe.imaging.base.Resize`) the file and (images, decoded, reused, channels, rewritten);
    the ids it rejected with their reason (``rejects=True`` only); the upright source (width, height) of
    each image it decoded; images decoded (once for all sizes) and seconds."""

    paths: dict[int | Resize, Path]
    stats: dict[int | Resize, dict]
    rejects: dict[str, str] = field(default_factory=dict)
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)
    decoded: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- build


def build(manifest: pd.DataFrame, targets: dict[int | Resize, Path], *, options: DecodeOptions = DecodeOptions(),
          rejects: bool = False) -> BuildResult:
    """Bring the file of every ``form -> path`` in ``targets`` up to date for ``manifest`` in one pass (a form
    is a size, bilinear, or a :class:`~featpipe.imaging.base.Resize`).

    One builder per file at a time (:func:`featpipe.core.locks.build_lock`, taken in form order): a second
    process waits, then finds the first one's file current and leaves it as is. A ``.partial`` left by a
    killed build is removed."""
    ids, shas, refs = checked_rows(manifest)
    with ExitStack() as stack:
        for _, path in sorted((as_resize(s), Path(p)) for s, p in targets.items()):
            stack.enter_context(build_lock(path, what="the decoded-image cache"))
            clean_leftovers(path.parent)
            for leftover in (".partial", ".partial3"):
                remove_stale(path.with_name(path.name + leftover), why="left by an interrupted decode")
        return _build(ids, shas, refs, targets, options=options, rejects=rejects)


def _build(ids: list[str], shas: list[str], refs: list[str], targets: dict, *, options: DecodeOptions,
           rejects: bool) -> BuildResult:
    t0 = time.perf_counter()
    result = BuildResult({s: Path(p) for s, p in targets.items()}, {})
    plans = _plans(ids, shas, result, draft=options.draft)
    writers: dict[int, Writer] = {}
    pool = None
    try:
        for size, (old, rows) in plans.items():
            writers[size] = Writer(result.paths[size], size=as_resize(size).size, n=len(ids),
                                   attrs=decoder_settings(size, options.draft))
            if old is not None:
                copy_reused(old, rows, writers[size])
        jobs = jobs_for(writers, shas, refs)
        if jobs:
            workers = min(options.workers, len(jobs))
            pool = (ProcessPoolExecutor(max_workers=workers, mp_context=mp_context(), **pool_kwargs())
                    if workers > 1 else None)
            decode_into(jobs, writers, shas, ids, refs, options=options, pool=pool, result=result,
                         rejects=rejects)
        keep = np.array([i not in result.rejects for i in ids], dtype=bool)
        for size, w in writers.items() if keep.any() else ():  # nothing usable: no file (prepare says why)
            kept_ids = [i for i, k in zip(ids, keep) if k]
            kept_shas = [s for s, k in zip(shas, keep) if k]
            reused = int(((plans[size][1] >= 0) & keep).sum())
            w.finish(keep, kept_ids, kept_shas, {
                "rows_sha256": content_sha256(kept_ids, kept_shas),
                "n_decoded": len(kept_ids) - reused, "n_reused": reused,
                "seconds": round(time.perf_counter() - t0, 3)})
            result.stats[size] = {"images": len(kept_ids), "decoded": len(kept_ids) - reused, "reused": reused,
                                  "rewritten": True, "channels": w.channels}
    finally:
        for old, _ in plans.values():
            if old is not None:
                old.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for w in writers.values():
            w.discard()
    result.seconds = time.perf_counter() - t0
    return result


def _plans(ids: list[str], shas: list[str], result: BuildResult, *, draft: bool
           ) -> dict[int | Resize, tuple[h5py.File | None, np.ndarray]]:
    """Per form to write: the previous file when its rows may be reused (else None) and, per manifest row,
    its row there (-1: none). A form whose file holds exactly these rows gets its stats and no plan."""
    n = len(ids)
    plans: dict[int | Resize, tuple[h5py.File | None, np.ndarray]] = {}
    for size, path in result.paths.items():
        old = open_reusable(path, decoder_settings(size, draft))
        rows = np.full(n, -1, dtype=np.int64)
        if old is not None:
            old_ids, old_shas = strings(old["ids"]), strings(old["sha256"])
            damaged = damaged_rows(old, path)
            old_shas = [None if j in damaged else s for j, s in enumerate(old_shas)]  # decoded again
            if old_ids == ids and old_shas == shas:  # exactly these rows: nothing to write
                result.stats[size] = {"images": n, "decoded": 0, "reused": n, "rewritten": False,
                                      "channels": int(old["images"].shape[-1])}
                old.close()
                continue
            where = {k: j for j, k in enumerate(zip(old_ids, old_shas))}
            rows[:] = [where.get(k, -1) for k in zip(ids, shas)]
        plans[size] = (old, rows)
    return plans


def build_decoded(manifest: pd.DataFrame, *, size: int | Resize, path: Path, workers: int = 2, draft: bool = DEFAULT_DRAFT,
                  progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """One decoded form (a size, bilinear, or a :class:`~featpipe.imaging.base.Resize`): :func:`build` for
    ``{size: path}``; returns ``path``."""
    build(manifest, {size: Path(path)}, options=DecodeOptions(workers, draft, max_pixels, progress))
    return Path(path)


# --------------------------------------------------------------------------- decoding


def _decode_task(jobs: Sequence[tuple[str, tuple, str]], draft: bool, max_pixels: int) -> list:
    """Worker: per (ref, forms, manifest sha256) ``(pixels by form, (w, h))`` or the reject reason (a string);
    the bytes are hashed and checked against the manifest first (``"changed since prepare"``)."""
    out = []
    for ref, sizes, sha in jobs:
        try:
            out.append(decode_sizes(ref, sizes, draft=draft, max_pixels=max_pixels, sha256=sha))
        except ImageRejected as exc:
            out.append(exc.reason)
    return out


def _stream(jobs: Sequence[tuple[int, str, tuple]], *, draft: bool, max_pixels: int,
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
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def jobs_for(writers: dict, shas: list[str], refs: list[str]) -> list[tuple[int, str, tuple]]:
    """One job per distinct sha256 that some file lacks: (first row, ref, the forms that lack it, sha256). A row
    whose bytes some other row of the same file already holds (same sha256) is copied, not decoded."""
    need: dict[str, tuple[int, set]] = {}
    for size, w in writers.items():
        held = {shas[r]: int(r) for r in np.flatnonzero(w.done)}
        for r in np.flatnonzero(~w.done):
            if shas[r] in held:
                w.put(int(r), w.get(held[shas[r]]))
            else:
                need.setdefault(shas[r], (int(r), set()))[1].add(size)
    return sorted((r, refs[r], tuple(sorted(s, key=as_resize)), shas[r]) for r, s in need.values())


def decode_into(jobs, writers: dict, shas, ids, refs, *, options, pool, result, rejects: bool) -> None:
    """Decode every job once and put its pixels in every row (duplicates included) and form that lacks it."""
    rows_of: dict[str, list[int]] = {}
    for r, s in enumerate(shas):
        rows_of.setdefault(s, []).append(r)
    bar = progress_bar(len(jobs), "decode", enabled=options.progress, leave=False)
    for row, out in _stream(jobs, draft=options.draft, max_pixels=options.max_pixels, pool=pool):
        same = rows_of[shas[row]]
        if isinstance(out, str):
            if not rejects and out == "changed since prepare":
                raise DataError(f"image {ids[row]} ({refs[row]}) changed since 'featpipe prepare' (its sha256 is not "
                                "the manifest's): re-run 'featpipe prepare', or restore the file")
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
        bar.update(1)
    bar.close()


def checked_rows(manifest: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """ids, sha256s and resolved image references of the manifest rows (one line errors for a bad manifest)."""
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
    reused = np.flatnonzero(rows >= 0)
    for b in range(0, len(reused), _BLOCK):
        dst = reused[b:b + _BLOCK]
        for r, img in zip(dst, read_rows(old["images"], rows[dst])):
            writer.put(int(r), _natural(img))
