"""Saved heads that cannot run code when loaded.

A saved head is two files:

- ``<name>.skops``: the fitted pipeline in skops.io format (a zip of ``schema.json`` + ``.npy`` arrays);
- ``<name>.json``: what ``predict`` needs and what a cache must match (dataset, classes, backbone,
  weights and weights identity, layer, preprocessing, embedding size, threshold, head parameters,
  k, seed, train ids) plus the sha256 of the ``.skops`` file.

Loading (:func:`load_head`) refuses, with a one-line error, before anything is built:
a ``.skops`` file whose hash differs from the sidecar; anything that is not a zip of ``schema.json``
and plain ``.npy`` arrays (a pickle, a joblib file, an object-dtype array, an extra member); and any
type outside scikit-learn/numpy's skops-trusted set and :data:`TRUSTED` (this package's head
classes), which is passed to ``skops.io.load`` explicitly. :func:`check_compatible` refuses features
from another backbone, weights, layer, preprocessing or embedding size.
"""

from __future__ import annotations

import hashlib
import io
import json
import pkgutil
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from featpipe.core.errors import CacheError, FeatpipeError, IntegrityError
from featpipe.core.fileio import atomic_write, check_seal, seal
from featpipe.core.locks import build_lock, clean_leftovers_once
from featpipe.core.provenance import mismatch
from featpipe.heads.registry import HEAD_CLASSES


class UnsafeModelError(IntegrityError):
    """A saved head that could run code when loaded, or that was modified after saving."""


_LEGACY_MODULE = "featpipe.heads"  # where every head class lived when featpipe.heads was one module
_MODULE_OF = {c.__qualname__: c.__module__ for c in HEAD_CLASSES}
TRUSTED = tuple(f"{c.__module__}.{c.__qualname__}" for c in HEAD_CLASSES) + tuple(
    f"{_LEGACY_MODULE}.{c.__qualname__}" for c in HEAD_CLASSES)  # heads saved by those versions
# Keys of the sidecar that features must match for a head to apply to them.
MATCH_KEYS = ("backbone", "weights_id", "layer", "preprocess", "embedding_dim")
_PICKLE_MAGIC = (b"\x80", b"(dp", b"(lp", b"ccopy_reg", b"cnumpy", b"cbuiltins", b"c__builtin__")


@dataclass(frozen=True)
class SavedHead:
    pipeline: object  # a fitted sklearn Pipeline (predict_proba columns in ``meta["classes"]`` order)
    meta: dict
    path: Path


def skops_io():
    """``skops.io``, imported without the package walk that imports torch.

    skops builds its list of trusted scikit-learn types at import time with
    ``sklearn.utils.discovery.all_estimators()``, whose ``pkgutil.walk_packages`` imports every sklearn package
    to list its modules, ``sklearn.externals.array_api_compat.torch`` (hence torch: seconds per process) among
    them, although ``all_estimators`` then drops every module under ``externals``, ``tests``, ... and every
    private (``._``) one. During that import the walk does not descend into such packages: every module below
    one is dropped anyway, so the list is the same (a test compares it with skops' own). A scikit-learn whose
    ``all_estimators`` works otherwise gets the plain import."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    from sklearn.utils import discovery

    ignore = getattr(discovery, "_MODULE_TO_IGNORE", None)
    if ignore is None or getattr(discovery, "pkgutil", None) is not pkgutil:  # another scikit-learn: plain import
        import skops.io

        return skops.io

    def dropped(name: str) -> bool:
        return any(p in ignore for p in name.split(".")) or "._" in name

    def walk(path=None, prefix="", onerror=None):
        for info in pkgutil.iter_modules(path, prefix):
            yield info
            if info.ispkg and not dropped(info.name):
                try:
                    __import__(info.name)
                except ImportError:  # as pkgutil.walk_packages: a package that cannot be imported is not descended
                    continue
                yield from walk(getattr(sys.modules[info.name], "__path__", None) or [], info.name + ".", onerror)

    real = discovery.pkgutil
    discovery.pkgutil = types.SimpleNamespace(**{**vars(pkgutil), "walk_packages": walk})
    try:
        import skops.io
    finally:
        discovery.pkgutil = real
    return skops.io


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_head(path: str | Path, pipeline, meta: Mapping) -> Path:
    """Write ``path`` (.skops) and its JSON sidecar atomically; returns the .skops path."""
    sio = skops_io()

    path = Path(path)
    if path.suffix != ".skops":
        raise ValueError("a saved head's file name must end in .skops")
    data = _dumps(sio, pipeline)
    _check_archive(data, path)  # what we write must pass what we read
    side = dict(meta) | {"format": 1, "model_file": path.name, "model_sha256": hashlib.sha256(data).hexdigest()}
    with build_lock(path.parent / "saved-heads", what="a saved head in", brief=True):  # a pair is one process's, never a mix
        clean_leftovers_once(path.parent)
        atomic_write(path, data)
        atomic_write(sidecar(path), seal(side, default=_json_default))
    return path


def _dumps(sio, pipeline) -> bytes:
    """``sio.dumps(pipeline)`` with ``schema.json`` written compact (json's C encoder) instead of indented (its
    pure-Python encoder: most of the time of skops.io.dumps). The same schema and arrays, read by ``skops.io.loads``
    as any archive; a skops without these internals gets its own ``dumps``."""
    try:
        import skops
        from skops.io._utils import SaveContext, get_state
    except ImportError:
        return sio.dumps(pipeline)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        ctx = SaveContext(zip_file=zf)
        state = get_state(pipeline, ctx)
        ctx.clear_memo()
        state["protocol"] = ctx.protocol
        state["_skops_version"] = skops.__version__
        zf.writestr("schema.json", json.dumps(state))
    return buffer.getvalue()


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (tuple, np.ndarray)):
        return list(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def read_meta(path: str | Path) -> dict:
    side = sidecar(path)
    if not side.is_file():
        raise FeatpipeError(f"{side} not found: a saved head needs its .json sidecar (re-run 'featpipe fit')")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{side} is not valid JSON: re-run 'featpipe fit'") from None
    return check_seal(meta, side)


def _check_archive(data: bytes, path: Path) -> None:
    """Only ``schema.json`` and non-object ``.npy`` members; no pickle anywhere."""
    if data[:2] != b"PK":
        kind = "a pickle" if data[:1] == b"\x80" or data[:3] in _PICKLE_MAGIC else "not a skops archive"
        raise UnsafeModelError(f"{path} is {kind}: refusing to load it (saved heads are skops archives)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UnsafeModelError(f"{path} is not a valid skops archive: refusing to load it") from None
    with zf:
        names = zf.namelist()
        if "schema.json" not in names:
            raise UnsafeModelError(f"{path} has no schema.json: not a skops archive, refusing to load it")
        for name in names:
            if name == "schema.json":
                continue
            if not name.endswith(".npy"):
                raise UnsafeModelError(f"{path} holds an unexpected member {name!r}: refusing to load it")
            try:
                with zf.open(name) as buf:  # the header only (the bytes are covered by the sidecar's sha256)
                    version = np.lib.format.read_magic(buf)
                    reader = {(1, 0): np.lib.format.read_array_header_1_0}.get(version,
                                                                               np.lib.format.read_array_header_2_0)
                    header = reader(buf)
            except (ValueError, OSError, zipfile.BadZipFile):
                raise UnsafeModelError(f"{path}: member {name!r} is not a plain numpy array; refusing to load it") from None
            if header[2].hasobject:
                raise UnsafeModelError(f"{path}: member {name!r} holds Python objects (a pickle); refusing to load it")


def load_head(path: str | Path) -> SavedHead:
    """Load a saved head safely (see the module docstring); no code in the file can run."""
    sio = skops_io()

    path = Path(path)
    if not path.is_file():
        raise FeatpipeError(f"saved head {path} not found")
    meta = read_meta(path)
    data = path.read_bytes()
    _check_archive(data, path)
    if hashlib.sha256(data).hexdigest() != meta.get("model_sha256"):
        raise UnsafeModelError(f"{path} does not match the hash in {sidecar(path).name}: it was modified after "
                               "saving; refusing to load it")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # malformed schema
        raise UnsafeModelError(f"{path}: unreadable skops schema ({exc}); refusing to load it") from None
    bad = [t for t in untrusted if t not in TRUSTED]
    if bad:
        raise UnsafeModelError(f"{path} contains types that are not trusted ({', '.join(bad)}); refusing to load it")
    try:
        pipeline = sio.loads(_current_modules(data), trusted=[t for t in untrusted if t in TRUSTED]
                             + [f"{m}.{c}" for c, m in _MODULE_OF.items()])
    except Exception as exc:
        raise UnsafeModelError(f"{path} could not be loaded safely ({type(exc).__name__}: {exc})") from None
    return SavedHead(pipeline, meta, path)


def _current_modules(data: bytes) -> bytes:
    """The archive with head classes saved under their old module (``featpipe.heads.<Class>``, when the heads
    were one module) pointed at the module each lives in now; any other archive is returned unchanged. Runs
    after the trust check: only trusted head class names are rewritten, to trusted names."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(zf.read("schema.json"))
    moved = 0

    def walk(node) -> None:
        nonlocal moved
        if isinstance(node, dict):
            if node.get("__module__") == _LEGACY_MODULE and node.get("__class__") in _MODULE_OF:
                node["__module__"] = _MODULE_OF[node["__class__"]]
                moved += 1
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    if not moved:
        return data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in zf.infolist():
            dst.writestr(info, json.dumps(schema) if info.filename == "schema.json" else zf.read(info.filename))
    return out.getvalue()


def check_compatible(meta: Mapping, attrs: Mapping, *, what: str = "the features") -> None:
    """Raise :class:`CacheError` unless ``attrs`` (feature-cache or model attributes) match the head's
    :data:`MATCH_KEYS` (compared by :func:`featpipe.core.provenance.mismatch`; a key either side does not
    record is not compared; a layer of None or "" is the final embedding)."""
    offered, fitted = dict(attrs), dict(meta)
    if "layer" in offered and fitted.get("layer") is not None:  # None and "" both name the final embedding
        offered["layer"], fitted["layer"] = offered["layer"] or "", fitted["layer"] or ""
    why = mismatch(offered, fitted, MATCH_KEYS, require_recorded=False, label="the head's")
    if why is not None:
        raise CacheError(f"{what} do not fit this head (fitted on {meta.get('backbone')} features): {why}; use the "
                         "matching backbone/cache or refit the head")
