"""Atomic file writes (the one helper: :func:`atomic_path`, and :func:`atomic_write` for bytes or text),
file hashes, and sealed sidecars.

A file is written under a temporary name in its own folder, ``.<name>.tmp-<pid>-<random>``, and renamed
into place only when complete, so readers see the old file or the new one, never half of one; a temporary
file left by a process that died is removed by :func:`featpipe.core.locks.clean_leftovers`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featpipe.core.errors import FeatpipeError, IntegrityError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` (an empty file, or with ``folder`` an empty folder) to write by any
    means (h5py, PIL, ...): renamed onto ``path`` when the block ends without an error, removed when it
    raises. A folder replaces only a ``path`` that does not exist (or is an empty folder) by then."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name[:100]}.tmp-{os.getpid()}-"  # a long name's temporary stays below NAME_MAX
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
        os.replace(tmp, path)
    finally:
        if folder and tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def ensure_space(path: str | Path, need: int, *, what: str) -> None:
    """One-line error when the folder of ``path`` has less than ``need`` bytes (plus 5% and 16 MiB) free: checked
    before a large write (HDF5 fails badly when the disk fills during its final write)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need * 1.05 + (16 << 20):
        raise FeatpipeError(f"not enough free space for {what} {path}: about {need / 2**20:.0f} MiB needed, "
                            f"{free / 2**20:.0f} MiB free in {folder}; free some space or choose another folder")


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as utf-8) to ``path`` through :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


SEAL_KEY = "sidecar_sha256"


def _canonical(meta: dict) -> bytes:
    return json.dumps({k: v for k, v in meta.items() if k != SEAL_KEY}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def seal(meta: dict, *, default=None) -> str:
    """The sidecar's JSON text with ``sidecar_sha256``: a hash of every other field (canonical JSON), so an
    edit to any of them (preprocessing, input size, layer, classes, threshold, backbone, weights identity,
    the model file's hash, ...) is detected on load by :func:`check_seal`."""
    plain = json.loads(json.dumps(meta, default=default))  # exactly what a reader will get back
    plain[SEAL_KEY] = hashlib.sha256(_canonical(plain)).hexdigest()
    return json.dumps(plain, indent=1, sort_keys=True)


def check_seal(meta: object, where: str | Path) -> dict:
    """``meta`` (a parsed sidecar) when its ``sidecar_sha256`` matches its fields; else one-line IntegrityError."""
    if not isinstance(meta, dict):
        raise IntegrityError(f"{where} is not a featpipe sidecar (a JSON object was expected)")
    recorded = meta.get(SEAL_KEY)
    if not recorded:
        raise IntegrityError(f"{where} has no {SEAL_KEY}: it was written by an older featpipe or edited; "
                             "refusing to use it (re-run the fit or fine-tuning that made it)")
    if hashlib.sha256(_canonical(meta)).hexdigest() != recorded:
        raise IntegrityError(f"{where} was modified after it was saved (its fields do not match its {SEAL_KEY}); "
                             "refusing to use it")
    return meta
