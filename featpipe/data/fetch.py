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
from pathlib import Path

from featpipe.config import DataParams
from featpipe.data import synthetic
from featpipe.errors import DataError
from featpipe.fileio import atomic_write


def ensure_source(data: DataParams) -> Path:
    path = Path(data.path)
    if data.source == "synthetic":
        return synthetic.generate(path, data.synthetic)
    if data.source == "npz" and not path.is_file():
        if not data.medmnist_flag:
            raise DataError(f"npz file {path} not found: put the file there or set data.medmnist_flag to download it")
        from featpipe.data.prepare import fetch_medmnist

        fetch_medmnist(data.medmnist_flag, data.medmnist_size, path)
    if not path.exists():
        raise DataError(f"data {data.source} {path} not found: set data.path (see the README, 'Your own data')")
    return path


def fingerprint(data: DataParams) -> dict:
    """Paths, sizes and mtimes of everything the source reads (a CSV source: the CSV and its image root)."""
    path = ensure_source(data)
    roots = [path]
    if data.source == "csv":
        roots.append(Path(data.csv.root) if data.csv.root else path.parent)
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
