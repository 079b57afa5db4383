"""A stamp of featpipe's own code: its version and a hash of its sources.

Every DVC stage depends on this stamp (``featpipe fetch --code-stamp``, see ``dvc.yaml``), so a change to
featpipe's code reruns the stages that ran the old code, in the project's checkout and in a project that
installed featpipe from a wheel alike (where the package folder is not inside the DVC project). Stages whose
work is cached by featpipe itself (decode, extract) then find their caches current and leave their stamps,
and so everything after them, untouched when the new code gives the same result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from featpipe.core.fileio import atomic_write
from featpipe.core.versions import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def code_stamp(package_dir: str | Path = PACKAGE_DIR) -> dict:
    """``featpipe_version``, the number of source ``files`` and ``sources_sha256``: a sha256 over every
    ``.py`` file of the package (relative path and contents, in path order; ``__pycache__`` excluded)."""
    root = Path(package_dir)
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return {"featpipe_version": __version__, "files": len(files), "sources_sha256": h.hexdigest()}


def write_code_stamp(out: str | Path) -> dict:
    """Write :func:`code_stamp` to ``out`` as JSON (atomically; same code, same bytes)."""
    stamp = code_stamp()
    atomic_write(out, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return stamp
