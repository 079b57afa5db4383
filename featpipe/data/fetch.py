"""``featpipe fetch``: make sure the data source is there, and fingerprint it cheaply.

The synthetic set is generated, a MedMNIST file is downloaded where the network allows (else one line
says where to put it), a folder or CSV is checked to exist. The fingerprint (every file's relative path,
size and modification time, hashed) is what ``prepare`` depends on in ``dvc.yaml``: added, removed or
changed images rerun ``prepare``; an untouched source leaves the whole graph as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write
from featpipe.data import synthetic
from featpipe.data.sources import csv_root
from featpipe.params.config import DataParams


def fetch_medmnist(flag: str, size: int, dest: Path) -> Path:
    """Download MedMNIST's ``<flag>[_<size>].npz`` with the medmnist package; a clear error offline."""
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    try:
        import medmnist  # optional extra: pip install 'featpipe[medmnist]'
        from medmnist import INFO
    except ImportError:
        raise DataError(f"{dest} not found: download MedMNIST's {name} (zenodo.org/records/10519652) and put it at "
                        f"{dest}, or pip install 'featpipe[medmnist]' to fetch it") from None
    if flag not in INFO:
        raise DataError(f"bad value for 'data.medmnist_flag': {flag!r} (not a MedMNIST data set)")
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(medmnist, INFO[flag]["python_class"])(split="train", download=True, size=size, root=str(root))
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"could not download {name} ({type(exc).__name__}); without network, put the file at {dest}") from None
    got = root / name
    if got != dest and got.is_file():
        shutil.move(got, dest)
    return dest


def ensure_source(data: DataParams) -> Path:
    path = Path(data.path)
    if data.source == "synthetic":
        return synthetic.generate(path, data.synthetic)
    if data.source == "npz" and not path.is_file():
        if not data.medmnist_flag:
            raise DataError(f"npz file {path} not found: put the file there or set data.medmnist_flag to download it")
        fetch_medmnist(data.medmnist_flag, data.medmnist_size, path)
    if not path.exists():
        raise DataError(f"data {data.source} {path} not found: set data.path (see the README, 'Your data')")
    return path


def fingerprint(data: DataParams) -> dict:
    """Paths, sizes and mtimes of everything the source reads (a CSV source: the CSV and its image root)."""
    path = ensure_source(data)
    roots = [path]
    if data.source == "csv":
        roots.append(csv_root(path, data.csv))
    h = hashlib.sha256()
    n = 0
    for root in roots:
        if root.is_file():
            st = root.stat()
            h.update(f"{root.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n += 1
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                st = os.stat(full)
                h.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                n += 1
    return {"source": data.source, "path": str(data.path), "files": n, "sha256": h.hexdigest()}


def write_fingerprint(data: DataParams, out: str | Path) -> dict:
    fp = fingerprint(data)
    atomic_write(out, json.dumps(fp, indent=1, sort_keys=True) + "\n")
    return fp
