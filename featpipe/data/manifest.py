"""The manifest: one row per usable image, plus a rejects report and a duplicates report.

``data/manifest.csv`` columns: ``id, path, label, label_name, patient_id, source_split, sha256, width,
height``. ``path`` is relative to the data root (posix; npz entries ``<file.npz>#<array>/<index>``), and
the root is recorded once, in ``<manifest stem>.root.json`` beside the manifest: the same data in two
folders give byte-identical manifests and splits (so the same split hash). :func:`read_manifest` joins
the root back, so every reader gets paths it can open. Every file is hashed (sha256 of its bytes; npz
entries: of the image array's bytes) and fully decoded once: by the ``decode`` hook when one is given
(``prepare`` passes the decoded-cache build, so the check and the cache come from the same decode), else by
:func:`featpipe.imaging.decode.probe`. What cannot be used goes to ``rejects.csv`` with a reason and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write, file_sha256
from featpipe.core.workers import pool_kwargs
from featpipe.data.sources import Record
from featpipe.imaging.base import ImageRejected
from featpipe.imaging.decode import image_size, probe

COLUMNS = ["id", "path", "label", "label_name", "patient_id", "source_split", "sha256", "width", "height"]
REJECT_COLUMNS = ["id", "path", "reason"]
DUPLICATE_COLUMNS = ["sha256", "count", "ids", "labels", "conflicting_labels"]


def _check_file(args: tuple[str, int, bool]) -> tuple[str | None, int, int, str | None]:
    """(sha256, width, height, reject reason) of one file; runs in a worker process."""
    path, max_pixels, verify = args
    try:
        if not os.path.isfile(path):
            return None, 0, 0, "missing"
        if os.path.getsize(path) == 0:
            return None, 0, 0, "zero bytes"
        digest = file_sha256(path)
    except OSError as exc:
        return None, 0, 0, f"unreadable ({exc.strerror or exc})"
    if not verify:
        return digest, 0, 0, None
    try:
        w, h = probe(path, max_pixels=max_pixels)
    except ImageRejected as exc:
        return digest, 0, 0, exc.reason
    return digest, int(w), int(h), None


def _check_npz(records: Sequence[Record]) -> list[tuple[str | None, int, int, str | None]]:
    """Hash npz entries in-process: one load per array, a digest per image."""
    out = []
    cache: dict[tuple[str, str], np.ndarray] = {}
    for r in records:
        file, ref = r.path.rsplit("#", 1)
        array, index = ref.rsplit("/", 1)
        if (file, array) not in cache:
            with np.load(file, allow_pickle=False) as data:
                cache[(file, array)] = np.ascontiguousarray(data[array])
        img = cache[(file, array)][int(index)]
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (1, 3)):
            out.append((None, 0, 0, "unsupported mode"))
            continue
        out.append((hashlib.sha256(img.tobytes()).hexdigest(), int(img.shape[1]), int(img.shape[0]), None))
    return out


@dataclass
class ManifestResult:
    manifest: pd.DataFrame
    rejects: pd.DataFrame
    duplicates: pd.DataFrame
    classes: list[str] = field(default_factory=list)


DecodeHook = Callable[[pd.DataFrame], tuple[dict, dict]]  # (id, path, sha256) rows -> (rejects, (w, h) by id)


def build_manifest(records: Sequence[Record], *, max_pixels: int, verify: bool = True, workers: int = 2,
                   class_order: Sequence[str] | None = None, decode: DecodeHook | None = None) -> ManifestResult:
    """Hash and check every record; classes are sorted by name unless ``class_order`` is given.

    ``decode`` (with ``verify``): called once with the hashed candidates; returns the ids that do not
    decode with their reason, and the upright (width, height) of those it decoded (the others, already
    known to decode, are read from their header)."""
    npz = [r for r in records if "#" in r.path and r.path.split("#", 1)[0].endswith(".npz")]
    npz_keys = {id(r) for r in npz}
    files = [r for r in records if id(r) not in npz_keys]
    checked: dict[int, tuple] = {}
    for r, res in zip(npz, _check_npz(npz)):
        checked[id(r)] = res
    todo = [r for r in files if r.reject is None]
    jobs = [(r.path, max_pixels, verify and decode is None) for r in todo]
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(max_workers=workers, **pool_kwargs()) as pool:
            results = list(pool.map(_check_file, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        results = [_check_file(j) for j in jobs]
    for r, res in zip(todo, results):
        checked[id(r)] = res
    if verify and decode is not None:
        _decode_candidates(records, checked, decode, max_pixels=max_pixels, npz_keys=npz_keys)

    rows, rejects = [], []
    for r in records:
        digest, w, h, reason = checked.get(id(r), (None, 0, 0, r.reject))
        reason = r.reject or reason
        if reason:
            rejects.append({"id": r.id, "path": r.path, "reason": reason})
        else:
            rows.append({"id": r.id, "path": r.path, "label_name": r.label_name, "patient_id": r.patient_id,
                         "source_split": r.source_split, "sha256": digest, "width": w, "height": h,
                         "_index": r.label_index})
    if not rows:
        raise DataError("no usable images: every file was rejected (see the rejects report)")
    names = sorted({row["label_name"] for row in rows})
    if class_order is not None:
        missing = [n for n in names if n not in class_order]
        if missing:
            raise DataError(f"labels {missing} are not in the configured class list {list(class_order)}")
        names = [n for n in class_order if n in names]
    elif all(row["_index"] is not None for row in rows):  # npz: keep the stored label numbers' order
        names = [n for _, n in sorted({(row["_index"], row["label_name"]) for row in rows})]
    if len(names) < 2:
        raise DataError(f"only one class found ({names[0]}): a classifier needs at least two")
    lookup = {n: i for i, n in enumerate(names)}
    for row in rows:
        row["label"] = lookup[row["label_name"]]
        row.pop("_index")
    manifest = pd.DataFrame(rows, columns=COLUMNS)
    return ManifestResult(manifest, pd.DataFrame(rejects, columns=REJECT_COLUMNS), find_duplicates(manifest), names)


def _decode_candidates(records, checked: dict, decode: DecodeHook, *, max_pixels: int, npz_keys: set) -> None:
    """Run the decode hook on every hashed, not yet rejected record; fold its verdicts into ``checked``."""
    cand = [r for r in records if r.reject is None and checked.get(id(r), (None, 0, 0, "x"))[3] is None]
    if not cand:
        return
    bad, dims = decode(pd.DataFrame({"id": [r.id for r in cand], "path": [r.path for r in cand],
                                     "sha256": [checked[id(r)][0] for r in cand]}))
    for r in cand:
        digest, w, h, _ = checked[id(r)]
        if r.id in bad:
            checked[id(r)] = (digest, 0, 0, bad[r.id])
        elif r.id in dims:
            checked[id(r)] = (digest, *map(int, dims[r.id]), None)
        elif id(r) not in npz_keys:  # reused from a cache: known to decode; its size from the header
            try:
                checked[id(r)] = (digest, *image_size(r.path, max_pixels=max_pixels), None)
            except ImageRejected as exc:
                checked[id(r)] = (digest, 0, 0, exc.reason)


def find_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Groups of byte-identical images (same sha256); conflicting labels are flagged."""
    out = []
    for digest, grp in manifest.groupby("sha256", sort=True):
        if len(grp) > 1:
            labels = sorted(set(grp["label_name"]))
            out.append({"sha256": digest, "count": len(grp), "ids": ";".join(grp["id"]), "labels": ";".join(labels),
                        "conflicting_labels": len(labels) > 1})
    return pd.DataFrame(out, columns=DUPLICATE_COLUMNS)


ROOT_SUFFIX = ".root.json"


def root_file(manifest_path: str | Path) -> Path:
    p = Path(manifest_path)
    return p.with_name(p.stem + ROOT_SUFFIX)


def relative_paths(manifest: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """``manifest`` with every ``path`` made relative to ``root`` (posix; the ``#array/index`` part kept)."""
    base = os.path.abspath(str(root))

    def rel(p: str) -> str:
        file, sep, ref = p.partition("#") if ".npz#" in p else (p, "", "")
        return Path(os.path.relpath(os.path.abspath(file), base)).as_posix() + sep + ref

    out = manifest.copy()
    out["path"] = [rel(str(p)) for p in out["path"]]
    return out


def write_root(manifest_path: str | Path, root: str | Path) -> Path:
    """Record the data root of ``manifest_path`` (as given: relative to the working directory or absolute)."""
    return atomic_write(root_file(manifest_path), json.dumps({"root": Path(root).as_posix()}, indent=1) + "\n")


def _root_of(manifest_path: Path) -> str | None:
    f = root_file(manifest_path)
    if not f.is_file():
        return None  # a manifest written before paths were relative: paths as stored
    try:
        return str(json.loads(f.read_text())["root"])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{f} is not a featpipe data-root file: rerun 'featpipe prepare'") from None


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read ``manifest.csv`` with string ids (never numbers) and int labels; ``path`` joined to the data root."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found: run 'featpipe prepare' first")
    df = pd.read_csv(path, dtype={c: str for c in ("id", "path", "label_name", "patient_id", "source_split", "sha256")},
                     keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path} is not a featpipe manifest (missing columns: {', '.join(missing)})")
    df["label"] = df["label"].astype("int64")
    root = _root_of(path)
    if root is not None:
        df["path"] = [p if os.path.isabs(p) else (PurePosixPath(root) / p).as_posix() for p in df["path"].astype(str)]
    return df


def ids_sha256(ids: Iterable[str]) -> str:
    """A hash of a set of manifest ids (order-free), for provenance columns."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def load_manifest(manifest: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The manifest and its sha256: of the file's bytes when a path is given (as ``splits.json`` records it);
    of ``df.to_csv(index=False, lineterminator="\\n")`` when a DataFrame is given."""
    if isinstance(manifest, pd.DataFrame):
        text = manifest.to_csv(index=False, lineterminator="\n")
        return manifest.reset_index(drop=True), hashlib.sha256(text.encode()).hexdigest()
    df = read_manifest(manifest)
    return df, file_sha256(manifest)
