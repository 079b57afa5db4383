"""Small JSON summaries of the big, content-validated caches, for DVC to depend on.

The decoded-image and feature caches are HDF5 files that featpipe validates by content and updates
incrementally; their bytes change with every write (HDF5 records times). DVC therefore tracks a stamp
per cache: what it holds (rows, provenance) and a hash of its content. An extraction that reproduces the
same features leaves the stamp, and so every later stage, untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from featpipe.core.fileio import atomic_write


def _ids_hash(h: "hashlib._Hash", f: h5py.File, *names: str) -> None:
    for name in names:
        if name in f:
            for v in f[name].asstr()[()] if f[name].dtype.kind in "OS" else f[name][()]:
                h.update(str(v).encode() + b"\n")


def decoded_stamp(path: str | Path) -> dict:
    with h5py.File(path, "r") as f:
        h = hashlib.sha256()
        _ids_hash(h, f, "ids", "sha256")
        a = f.attrs
        keep = {k: (a[k].item() if hasattr(a[k], "item") else a[k]) for k in ("size", "channels", "resize_method", "draft",
                                                                              "decoder_version") if k in a}
        h.update(json.dumps({k: str(v) for k, v in keep.items()}, sort_keys=True).encode())
        return {"file": str(path), "images": int(f["images"].shape[0]), **{k: str(v) for k, v in keep.items()},
                "content_sha256": h.hexdigest()}


def features_stamp(path: str | Path) -> dict:
    with h5py.File(path, "r") as f:
        h = hashlib.sha256()
        _ids_hash(h, f, "ids")
        feats = f["features"]
        for start in range(0, feats.shape[0], 4096):
            h.update(np.ascontiguousarray(feats[start:start + 4096]).tobytes())
        a = {k: f.attrs[k] for k in ("backbone", "weights_id", "layer", "precision", "embedding_dim") if k in f.attrs}
        return {"file": str(path), "rows": int(feats.shape[0]), "dtype": str(feats.dtype),
                **{k: str(v) for k, v in a.items()}, "content_sha256": h.hexdigest()}


def write_stamp(out: str | Path, entries: dict) -> Path:
    return atomic_write(out, json.dumps(entries, indent=1, sort_keys=True) + "\n")
