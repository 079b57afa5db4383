"""featpipe's version and the versions of the libraries recorded in provenance (caches, sidecars, report).

Importing this module imports no library: :func:`versions` reads a library's ``__version__`` when it is
already imported (so the version of the code that ran, e.g. torch's with its build tag ``2.5.1+cu124``),
else the installed distribution's version, without importing it.
"""

from __future__ import annotations

import sys
from importlib import metadata

__version__ = "0.1.0"

_DIST = {"PIL": "pillow", "sklearn": "scikit-learn", "pytorch_grad_cam": "grad-cam"}  # import name -> distribution name, where they differ
_KEY = {"PIL": "pillow"}  # import name -> provenance key, where they differ


def versions(*modules: str) -> dict[str, str]:
    """``{"featpipe_version": ..., "<module>_version": ...}`` for each import name in ``modules`` (``PIL``
    gives ``pillow_version``), in that order; ``""`` for a library that is not installed."""
    out = {"featpipe_version": __version__}
    for name in modules:
        loaded = sys.modules.get(name)
        version = getattr(loaded, "__version__", None) if loaded is not None else None
        if version is None:
            try:
                version = metadata.version(_DIST.get(name, name))
            except metadata.PackageNotFoundError:
                version = ""
        out[f"{_KEY.get(name, name)}_version"] = str(version)
    return out
