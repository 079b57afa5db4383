"""Atomic file writes: a temporary file in the target folder, renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".<name>.tmp-<pid>-...": featpipe.core.locks.clean_leftovers removes it if this process dies before the rename
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


SEAL_KEY = "sidecar_sha256"


def _canonical(meta: dict) -> bytes:
    import json

    return json.dumps({k: v for k, v in meta.items() if k != SEAL_KEY}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def seal(meta: dict, *, default=None) -> str:
    """The sidecar's JSON text with ``sidecar_sha256``: a hash of every other field (canonical JSON), so an
    edit to any of them (preprocessing, input size, layer, classes, threshold, backbone, weights identity,
    the model file's hash, ...) is detected on load by :func:`check_seal`."""
    import hashlib
    import json

    plain = json.loads(json.dumps(meta, default=default))  # exactly what a reader will get back
    plain[SEAL_KEY] = hashlib.sha256(_canonical(plain)).hexdigest()
    return json.dumps(plain, indent=1, sort_keys=True)


def check_seal(meta: object, where: str | Path) -> dict:
    """``meta`` (a parsed sidecar) when its ``sidecar_sha256`` matches its fields; else one-line IntegrityError."""
    import hashlib

    from featpipe.core.errors import IntegrityError

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
