"""The HDF5 feature cache: one file per (data set, backbone, weights, layer).

Layout (readable with plain ``h5py``, ``pandas`` or ``h5dump``; no featpipe needed)::

    cache/<dataset>/<backbone>[@<layer>][+<weights-tag>].h5
      features  float32 | float16 (N, D), chunked by rows
      ids       (N,) utf-8 strings: the manifest ids, in manifest order
      labels    (N,) int64: the manifest labels
      sha256    (N,) utf-8 strings: sha256 of each image's bytes (what incremental runs compare)
      features_crc32  (ceil(N / block_rows),) uint32: CRC-32 per block of rows of ``features``
                (:mod:`featpipe.core.checksums`), checked on every read: a mismatch is a one-line error,
                and ``extract`` re-extracts the rows of the damaged blocks
      attrs     backbone, weights, weights_id, layer ("" = final embedding), features (which embedding:
                avgpool, cls, mean, pooler, image_embeds), preprocess (JSON),
                manifest_sha256, embedding_dim, precision, device, featpipe_version, torch_version,
                torchvision_version, transformers_version, complete (bool), batch_size,
                and for a shard file: shard ("i/n"), shard_rows ("start:stop" in the manifest)

A file is only ever written whole: to a temporary name in the same folder, then renamed into place
(:func:`write_features`), so a reader never sees a half-written cache under its final name. It is written through
:mod:`featpipe.core.h5out`, so a disk that fills during the write is an ``OSError`` (one line at the CLI), never
a crash in libhdf5; rows are streamed block by block (memory stays flat), and the rows an extraction computed
stay in its journal (``<cache>.partial/``) for the next run.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import h5py
import numpy as np

from featpipe.core import checksums
from featpipe.core.errors import CacheError
from featpipe.core.fileio import atomic_write, ensure_space
from featpipe.core.h5out import write_h5
from featpipe.core.locks import LockTimeout, build_lock
from featpipe.core.names import cache_name
from featpipe.core.provenance import mismatch

STR = h5py.string_dtype("utf-8")
# Attributes whose values must match the request for a cached row to be reused (besides id + sha256).
VALIDITY_KEYS = ("backbone", "weights_id", "layer", "features", "preprocess", "embedding_dim", "precision", "decoder",
                 "feature_dtype")
_JSON_ATTRS = ("preprocess", "decoder")  # dict-valued attributes, stored as JSON
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FeatureSet:
    """Embeddings of one cache file, rows in manifest order."""

    ids: np.ndarray  # (N,) str
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64
    attrs: dict
    sha256: Optional[np.ndarray] = field(default=None, repr=False)  # (N,) str, when recorded

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, ids: Iterable[str]) -> np.ndarray:
        """Row indices of ``ids`` (in the order given); a missing id is a :class:`CacheError`."""
        pos = {k: i for i, k in enumerate(self.ids.tolist())}
        ids = list(ids)
        missing = [k for k in ids if k not in pos]
        if missing:
            raise CacheError(
                f"{len(missing)} ids are not in the feature cache (first: {missing[0]!r}); "
                "re-run 'featpipe extract' with the current manifest"
            )
        return np.fromiter((pos[k] for k in ids), dtype=np.int64, count=len(ids))

    def select(self, ids: Iterable[str]) -> "FeatureSet":
        """The rows of ``ids``, in that order."""
        idx = self.index_of(ids)
        return FeatureSet(
            self.ids[idx], self.features[idx], self.labels[idx], dict(self.attrs),
            None if self.sha256 is None else self.sha256[idx],
        )


def cache_path(cache_dir: str | Path, dataset: str, backbone: str, *, layer: Optional[str] = None,
               weights_tag: Optional[str] = None) -> Path:
    """``<cache_dir>/<dataset>/<backbone>[@<layer>][+<weights-tag>].h5``."""
    return Path(cache_dir) / _safe(dataset) / cache_name(backbone, layer=layer, weights_tag=weights_tag)


def shard_path(path: str | Path, index: int, count: int) -> Path:
    """The file of shard ``index`` (0-based) of ``count`` beside the final cache ``path``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.shard-{index}-of-{count}.h5")


def shard_files(path: str | Path) -> list[Path]:
    """Existing shard files of the final cache ``path``, in shard order."""
    p = Path(path)
    pat = re.compile(re.escape(p.stem) + r"\.shard-(\d+)-of-(\d+)\.h5$")
    found = []
    for q in p.parent.glob(f"{p.stem}.shard-*-of-*.h5"):
        m = pat.match(q.name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), q))
    return [q for _, _, q in sorted(found)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+=-]", "_", name)


# --------------------------------------------------------------------------- reading


def read_attrs(path: str | Path) -> dict:
    """The attributes of a cache file (``preprocess`` decoded from JSON); no feature data read."""
    with _open(path) as f:
        return _attrs(f)


def read_features(path: str | Path, *, require_complete: bool = True) -> FeatureSet:
    """Load a whole cache file; features as float32 whatever the stored dtype."""
    with _open(path) as f:
        attrs = _attrs(f)
        if require_complete and not attrs.get("complete", False):
            raise CacheError(f"feature cache {path} is incomplete; re-run 'featpipe extract' to finish it")
        for name in ("features", "ids", "labels"):
            if name not in f:
                raise CacheError(f"{path} is not a featpipe feature cache (no '{name}' dataset)")
        ids = f["ids"].asstr()[()]
        raw = f["features"][()]
        _check_rows(f, raw, path)
        feats = raw.astype(np.float32, copy=False)
        labels = f["labels"][()].astype(np.int64, copy=False)
        sha = f["sha256"].asstr()[()] if "sha256" in f else None
    return FeatureSet(np.asarray(ids, dtype=object).astype(str), feats, labels, attrs,
                      None if sha is None else np.asarray(sha, dtype=object).astype(str))


def _check_rows(f: h5py.File, raw: np.ndarray, path) -> None:
    """``raw`` (all of ``features`` as stored) against the file's checksums; a mismatch is a CacheError."""
    rec = checksums.stored(f, "features")
    if rec is None:
        checksums.say_unchecked(path, f"featpipe extract --backbone {f.attrs.get('backbone', '<backbone>')}")
        return
    sums, rows = rec
    n_blocks = -(-len(raw) // rows)
    bad = [b for b in range(n_blocks) if b >= len(sums) or checksums.crc(raw[b * rows:(b + 1) * rows]) != int(sums[b])]
    if bad or len(sums) != n_blocks:
        raise damaged(path, checksums.span(bad, rows, len(raw)) if bad else "its checksum list")


def damaged(path, where: str) -> CacheError:
    """The one-line error for a feature cache whose rows fail their checksums."""
    return CacheError(f"feature cache {path} is damaged ({where} do not match their checksums): re-run "
                      "'featpipe extract' for it (the damaged rows are extracted again)")


_VERIFIED: set = set()


def verify(path: str | Path) -> None:
    """Check every row of a cache file against its checksums, once per file version per process (a file with
    none is read unchecked, said once: :func:`featpipe.core.checksums.say_unchecked`)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    with _open(p) as f:
        bad = checksums.bad_blocks(f, "features")
        if bad is None:
            checksums.say_unchecked(p, f"featpipe extract --backbone {f.attrs.get('backbone', '<backbone>')}")
        if bad:
            raise damaged(p, checksums.span(bad, checksums.stored(f, "features")[1], f["features"].shape[0]))
    _VERIFIED.add(key)


class LazyFeatures:
    """Row access to a cache file that opens it on first use in each process (safe for DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        verify(self.path)
        with _open(self.path) as f:
            self.ids = np.asarray(f["ids"].asstr()[()], dtype=object).astype(str)
            self.attrs = _attrs(f)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows) -> np.ndarray:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        rows = np.asarray(rows) if not isinstance(rows, (int, slice)) else rows
        if isinstance(rows, np.ndarray) and rows.ndim == 1:
            order = np.argsort(rows, kind="stable")
            uniq, inverse = np.unique(rows[order], return_inverse=True)
            got = self._file["features"][uniq]
            out = np.empty((len(rows), got.shape[1]), dtype=np.float32)
            out[order] = got[inverse]
            return out
        return np.asarray(self._file["features"][rows], dtype=np.float32)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state


def _open(path: str | Path) -> h5py.File:
    p = Path(path)
    if not p.exists():
        raise CacheError(f"feature cache {p} not found; run 'featpipe extract' first")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise CacheError(f"{p} is not a readable HDF5 file ({exc}); delete it and re-run 'featpipe extract'") from None


def _attrs(f: h5py.File) -> dict:
    out = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    for key in _JSON_ATTRS:
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out


def provenance_mismatch(attrs: Mapping, expected: Mapping) -> Optional[str]:
    """The first of :data:`VALIDITY_KEYS` whose recorded value differs from ``expected`` (None if all match),
    worded for the user by :func:`featpipe.core.provenance.mismatch`, e.g. ``"decoder draft True != requested
    False"``."""
    return mismatch(attrs, expected, VALIDITY_KEYS, unrecorded="not recorded (cache made by an older featpipe)")


# --------------------------------------------------------------------------- writing


def write_features(path: str | Path, *, ids: Sequence[str], features: np.ndarray | Iterable[np.ndarray],
                   labels: Sequence[int], attrs: Mapping, sha256: Optional[Sequence[str]] = None,
                   dim: Optional[int] = None, dtype: str = "float32") -> Path:
    """Write a complete cache file atomically (temporary file in the same folder, then rename).

    ``features`` is an (N, D) array or an iterable of row blocks (streamed, so memory stays flat);
    pass ``dim`` with an iterable. ``attrs`` are stored as given plus ``complete=True`` and
    ``embedding_dim``; a dict ``preprocess`` is stored as JSON.
    """
    path = Path(path)
    n = len(ids)
    if isinstance(features, np.ndarray):
        if features.ndim != 2 or features.shape[0] != n:
            raise ValueError(f"features shape {features.shape} does not match {n} ids")
        dim = features.shape[1]
        blocks: Iterable[np.ndarray] = (features[i:i + 4096] for i in range(0, n, 4096))
    else:
        if dim is None:
            raise ValueError("pass dim= when features is an iterable of blocks")
        blocks = features
    if len(labels) != n or (sha256 is not None and len(sha256) != n):
        raise ValueError("ids, labels and sha256 must have the same length")
    ensure_space(path, n * (int(dim) * np.dtype(dtype).itemsize + 200), what="the feature cache")
    with write_h5(path) as out:  # a full disk is an OSError here, never a crash in libhdf5
        f = out.file
        rows = max(1, min(n, _CHUNK_BYTES // max(1, dim * np.dtype(dtype).itemsize)))
        ds = f.create_dataset("features", shape=(n, dim), dtype=dtype, chunks=(rows, dim) if n else None)
        at, sums = 0, checksums.Running()
        for block in blocks:
            block = np.asarray(block).astype(dtype, copy=False)
            ds[at:at + len(block)] = block
            out.check()
            sums.add(block)
            at += len(block)
        if at != n:
            raise ValueError(f"got {at} feature rows for {n} ids")
        checksums.write(f, "features", sums.sums, sums.block_rows)
        f.create_dataset("ids", data=np.asarray(list(ids), dtype=object), dtype=STR)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        if sha256 is not None:
            f.create_dataset("sha256", data=np.asarray(list(sha256), dtype=object), dtype=STR)
        for k, v in attrs.items():
            if isinstance(v, dict):
                v = json.dumps(v, sort_keys=True)
            elif isinstance(v, str):
                v = str(v)  # str subclasses (torch's version string) are not storable as is
            f.attrs[k] = "" if v is None else v
        f.attrs["embedding_dim"] = int(dim)
        f.attrs["complete"] = True
    return path


def iter_rows(path: str | Path, rows: np.ndarray, *, block: int = 4096) -> Iterator[np.ndarray]:
    """Feature rows ``rows`` (any order, repeats allowed) of a cache file, in blocks, as float32 (the file is
    checked against its checksums first, once per process: :func:`verify`)."""
    verify(path)
    with _open(path) as f:
        ds = f["features"]
        for start in range(0, len(rows), block):
            part = np.asarray(rows[start:start + block])
            uniq, inverse = np.unique(part, return_inverse=True)
            yield np.asarray(ds[uniq], dtype=np.float32)[inverse]


def merge_files(paths: Sequence[str | Path], out: str | Path, *, ignore: Sequence[str] = ("shard", "shard_rows")) -> Path:
    """Concatenate complete cache files (same provenance) into ``out``, streaming row blocks."""
    if not paths:
        raise CacheError(f"no shard files to merge into {out}")
    metas = []
    for p in paths:
        verify(p)
        with _open(p) as f:
            a = _attrs(f)
            if not a.get("complete", False):
                raise CacheError(f"shard {p} is incomplete; re-run its 'featpipe extract --shard' first")
            metas.append((a, f["ids"].asstr()[()], f["labels"][()],
                          f["sha256"].asstr()[()] if "sha256" in f else None, f["features"].dtype))
    first = metas[0][0]
    for p, (a, *_rest) in zip(paths, metas):
        for key in set(first) | set(a):
            if key in ignore or key in ("device",):
                continue
            if a.get(key) != first.get(key):
                raise CacheError(f"cannot merge {p}: its {key} {a.get(key)!r} differs from {paths[0]}'s {first.get(key)!r}")
    ids = [i for m in metas for i in m[1]]
    if len(set(ids)) != len(ids):
        raise CacheError(f"shard files of {out} overlap (an id appears twice); delete them and re-extract")
    labels = np.concatenate([m[2] for m in metas])
    sha = None if any(m[3] is None for m in metas) else [s for m in metas for s in m[3]]
    attrs = {k: v for k, v in first.items() if k not in ignore and k != "complete"}

    def blocks():
        for p in paths:
            with _open(p) as f:
                ds = f["features"]
                for s in range(0, ds.shape[0], 4096):
                    yield ds[s:s + 4096]

    return write_features(out, ids=ids, features=blocks(), labels=labels, attrs=attrs, sha256=sha,
                          dim=int(first["embedding_dim"]), dtype=str(metas[0][4]))


# --------------------------------------------------------------------------- partial (resumable) rows


class PartialRows:
    """Completed batches of an extraction in progress, safe against SIGKILL at any moment.

    ``<final>.partial/plan.json`` names what is being computed (provenance, batch size and the ids +
    sha256 to extract, in order); ``features.f32`` holds their rows, appended one batch at a time
    (flushed and fsynced). A torn last write is cut back to the last whole batch, so a resumed run
    recomputes exactly the batches an uninterrupted run computes, with the same batch composition.
    A different plan (other weights, ids, batch size, ...) discards the old rows. The journal's
    :func:`~featpipe.core.locks.build_lock` (not waited for) keeps two processes from appending to the same file.
    """

    def __init__(self, final: str | Path, plan: Mapping, *, dim: int, batch_size: int):
        self.dir = Path(final).with_name(Path(final).name + ".partial")
        self.dim, self.batch_size = int(dim), int(batch_size)
        self.plan = json.loads(json.dumps(dict(plan), sort_keys=True, default=str))
        self.total = len(self.plan["ids"])
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "features.f32"
        self._lock = ExitStack()
        try:
            self._lock.enter_context(build_lock(self.data, what="the extraction journal", wait=False))
        except LockTimeout:
            raise CacheError(f"another process is extracting into {final}; wait for it or stop it") from None
        plan_file = self.dir / "plan.json"
        old = None
        if plan_file.is_file():
            try:
                old = json.loads(plan_file.read_text())
            except json.JSONDecodeError:
                old = None
        self.discarded = 0
        if old != self.plan:
            if self.data.exists():
                self.discarded = self.data.stat().st_size // (4 * self.dim)
                self.data.unlink()
            atomic_write(plan_file, json.dumps(self.plan, sort_keys=True))
        row_bytes = 4 * self.dim
        have = self.data.stat().st_size // row_bytes if self.data.exists() else 0
        done = have if have >= self.total else (have // self.batch_size) * self.batch_size
        done = min(done, self.total)
        with open(self.data, "ab") as f:
            f.truncate(done * row_bytes)
        self.done = done
        self.resumed = done
        self._out = open(self.data, "ab")

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) rows, got {rows.shape}")
        self._out.write(rows.tobytes())
        self._out.flush()
        os.fsync(self._out.fileno())
        self.done += len(rows)

    def rows(self) -> np.ndarray:
        """The completed rows as a read-only memory map (N_done, D) float32."""
        if self.done == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.data, dtype=np.float32, mode="r", shape=(self.done, self.dim))

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()
        self._lock.close()

    def remove(self) -> None:
        import shutil

        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
