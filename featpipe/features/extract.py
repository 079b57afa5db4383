"""Extraction: manifest -> decoded-image cache -> frozen backbone in batches -> HDF5 feature cache.

Valid by content: a cached row is reused only when its (id, sha256) is in the manifest and the file
was made with the same backbone, weights identity, layer, preprocessing, embedding size and precision;
anything else is extracted again (a different request for the same file name re-extracts everything,
and says so). Interruptible: completed batches go to ``<cache>.partial/`` (see
:class:`featpipe.features.cache.PartialRows`) and the cache is written whole and renamed into place at the
end. ``shard=(i, n)`` extracts a deterministic, batch-aligned slice of the manifest into its own file;
:func:`merge_shards` joins them into exactly the cache of a single run.

Manifest sha256: of the manifest file's bytes when a path is given (as ``splits.json`` records it); of
``df.to_csv(index=False, lineterminator="\\n")`` when a DataFrame is given.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from featpipe.backbones.registry import get
from featpipe.backbones import weights as weights_mod
from featpipe.backbones.model import FeatureModel
from featpipe.backbones.modelinput import centre_crop, ensure_decoded, normalise
from featpipe.backbones.spec import Preprocess
from featpipe.core import locks
from featpipe.core.errors import CacheError, FeatpipeError
from featpipe.core.log import logger, notice
from featpipe.core.runtime import Runtime
from featpipe.core.versions import versions
from featpipe.data.manifest import read_manifest
from featpipe.decoded.cache import DecodedImages, DecodeOptions, decoded_path, decoder_identity
from featpipe.engine.base import Executor
from featpipe.engine.local import LocalExecutor
from featpipe.features import cache as featcache
from featpipe.params.config import DecodeParams, ExtractParams


@dataclass
class ExtractResult:
    path: Path
    backbone: str
    images: int  # rows in the cache
    extracted: int  # computed by this run
    reused: int  # taken from the previous cache
    resumed: int  # taken from an interrupted run's completed batches
    dropped: int  # rows of the previous cache no longer in the manifest
    seconds: float
    images_per_s: float  # of the computed rows, model + reading, excluding model loading
    device: str
    precision: str
    embedding_dim: int
    reextracted: str = ""  # why the previous cache could not be reused ("" = it was, or there was none)

    def summary(self) -> str:
        speed = f", {self.images_per_s:.1f} img/s" if self.extracted else ""
        why = f" (re-extracted: {self.reextracted})" if self.reextracted else ""
        return (f"{self.backbone}: {self.images} images -> {self.path} ({self.embedding_dim}-d, {self.precision} on "
                f"{self.device}): {self.extracted} extracted, {self.reused} reused, {self.resumed} resumed, "
                f"{self.dropped} dropped in {self.seconds:.1f} s{speed}{why}")


# --------------------------------------------------------------------------- helpers


def load_manifest(manifest: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The manifest and its sha256 (see the module doc)."""
    if isinstance(manifest, pd.DataFrame):
        text = manifest.to_csv(index=False, lineterminator="\n")
        return manifest.reset_index(drop=True), hashlib.sha256(text.encode()).hexdigest()
    df = read_manifest(manifest)
    return df, weights_mod.file_sha256(manifest)


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"i/n"`` (0-based i) -> ``(i, n)``."""
    if text in (None, ""):
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise FeatpipeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise FeatpipeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_bounds(n_rows: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``index`` of ``count``: whole batches, so shards merged equal one run."""
    batches = -(-n_rows // batch_size)
    b0, b1 = index * batches // count, (index + 1) * batches // count
    return min(b0 * batch_size, n_rows), min(b1 * batch_size, n_rows)


def _say(msg: str, progress: bool) -> None:
    """A notice when the caller shows progress, else an INFO record (:mod:`featpipe.core.log`)."""
    if progress:
        notice(msg)
    else:
        logger.info(msg)


# --------------------------------------------------------------------------- extraction


def extract(manifest: str | Path | pd.DataFrame, *, backbone: str, dataset: str, cache_dir: str | Path = "cache",
            params: ExtractParams = ExtractParams(), decode: DecodeParams = DecodeParams(),
            shard: Optional[tuple[int, int]] = None, progress: bool = True,
            engine: Optional[Executor] = None) -> ExtractResult:
    """Bring ``cache/<dataset>/<backbone>[@layer][+weights].h5`` (or its shard file) up to date.

    ``engine``: the executor that computes the plan's batches (default: this process, see :mod:`featpipe.engine`);
    everything else (what to reuse, the plan, the journal, the file written) is this function's, so every
    engine writes the same cache."""
    t0 = time.perf_counter()
    spec = get(backbone)
    layer = spec.resolve_layer(params.layer)
    df, msha = load_manifest(manifest)
    ref = weights_mod.resolve(spec, params.weights)
    final = featcache.cache_path(cache_dir, dataset, spec.name, layer=layer, weights_tag=ref.tag)
    out, extra = final, {}
    if shard is not None:
        start, stop = shard_bounds(len(df), params.batch_size, *shard)
        df = df.iloc[start:stop].reset_index(drop=True)
        out = featcache.shard_path(final, *shard)
        extra = {"shard": f"{shard[0]}/{shard[1]}", "shard_rows": f"{start}:{stop}"}
    engine = engine or LocalExecutor()
    device, precision = _placement(engine, params, spec)
    dim = spec.output_dim(layer)
    expected = {"backbone": spec.name, "weights_id": ref.identity, "layer": layer or "",
                "preprocess": spec.preprocess.to_dict(), "embedding_dim": dim, "precision": precision,
                "decoder": decoder_identity(spec.preprocess.decoding, decode.draft),
                "feature_dtype": params.feature_dtype}
    job = _Job(spec, ref, layer, df, msha, out, expected, extra, device, precision, dim, engine)
    with locks.build_lock(out, what=f"the {spec.name} feature cache"):
        locks.clean_leftovers(out.parent)
        res = _update(job, cache_dir=cache_dir, dataset=dataset, params=params, decode=decode, shard=shard,
                      progress=progress)
    res.seconds = time.perf_counter() - t0
    return res


@dataclass
class _Job:
    spec: object
    ref: object
    layer: Optional[str]
    df: pd.DataFrame
    msha: str
    out: Path
    expected: dict
    extra: dict
    device: object
    precision: str
    dim: int
    engine: Executor  # where the batches are computed


def _update(job: _Job, *, cache_dir, dataset, params, decode, shard, progress) -> ExtractResult:
    """With the cache's build lock held: reuse what is valid, extract the rest, write the cache."""
    spec, ref, df, out, dim = job.spec, job.ref, job.df, job.out, job.dim
    ids = df["id"].astype(str).tolist()
    shas = df["sha256"].astype(str).tolist()
    old_rows, old_ids, why = _reusable_rows(out, job.expected, ids, shas, progress)
    old_n, dropped = len(old_ids), len(set(old_ids) - set(ids))
    todo = np.flatnonzero(old_rows < 0)
    reused = len(ids) - len(todo)
    if not len(todo) and _up_to_date(out, old_n, old_rows, df, job.msha, params.feature_dtype):
        locks.remove_stale(out.with_name(out.name + ".partial"),
                           why="journal of a run killed after its cache was written")
        return ExtractResult(out, spec.name, len(ids), 0, reused, 0, 0, 0.0, 0.0, str(job.device), job.precision,
                             dim)
    plan = {**job.expected, "batch_size": params.batch_size, "ids": [ids[i] for i in todo],
            "sha256": [shas[i] for i in todo]}
    net = weights_mod.load_network(spec, ref)  # missing weights: one line, before any decoding or journal
    partial = featcache.PartialRows(out, plan, dim=dim, batch_size=params.batch_size)
    try:
        if partial.discarded:
            _say(f"discarded {partial.discarded} rows of an interrupted extraction made for another request", progress)
        n_new, loop_s = _run_batches(job, todo, partial, cache_dir=cache_dir, dataset=dataset, params=params,
                                     decode=decode, shard=shard, progress=progress, net=net)
        speed = n_new / max(loop_s, 1e-9)
        attrs = {**job.expected, "weights": ref.source if ref.kind != "random" else "random",
                 "manifest_sha256": job.msha, "device": str(job.device), "batch_size": params.batch_size,
                 "dataset": dataset, **versions("torch", "torchvision", "transformers"), **job.extra}
        _assemble(out, df, old_rows, todo, partial, attrs, dim, params.feature_dtype)
        resumed = partial.resumed
        partial.remove()
    finally:
        partial.close()
    return ExtractResult(out, spec.name, len(ids), n_new, reused, resumed, dropped, 0.0, speed, str(job.device),
                         job.precision, dim, why)


def _placement(engine: Executor, params: ExtractParams, spec):
    """(device, precision) as the engine's embedding models will see them (asked where they run)."""
    import torch

    device, precision = engine.probe(functools.partial(_device_precision, params.device, params.precision, spec.name))
    return torch.device(device), precision


def _device_precision(device: str, precision: str, backbone: str) -> tuple[str, str]:
    rt = Runtime.resolve(device, precision, traits=get(backbone).traits)
    return str(rt.device), rt.precision


def _reusable_rows(out: Path, expected: dict, ids: list, shas: list,
                   progress: bool) -> tuple[np.ndarray, list, str]:
    """For each manifest row, its row in the existing cache (-1 = extract); the existing cache's ids; and why
    nothing could be reused ("" when rows were reusable or there was no cache)."""
    rows = np.full(len(ids), -1, dtype=np.int64)
    if not out.exists():
        return rows, [], ""
    try:
        attrs = featcache.read_attrs(out)
        why = featcache.provenance_mismatch(attrs, expected) or (None if attrs.get("complete") else "incomplete")
        if why is None:
            with featcache._open(out) as f:
                old_ids, old_sha = f["ids"].asstr()[()], f["sha256"].asstr()[()]
    except (CacheError, KeyError, OSError) as exc:
        why = f"unreadable ({exc})"
    if why is not None:
        _say(f"{out} does not match this request ({why}): extracting every image again", progress)
        return rows, [], why
    where = {(i, s): j for j, (i, s) in enumerate(zip(old_ids, old_sha))}
    rows[:] = [where.get(k, -1) for k in zip(ids, shas)]
    return rows, old_ids.tolist(), ""


def _up_to_date(out: Path, old_n: int, old_rows: np.ndarray, df: pd.DataFrame, msha: str, dtype: str) -> bool:
    if old_n != len(df) or not np.array_equal(old_rows, np.arange(len(df))):
        return False
    attrs = featcache.read_attrs(out)
    with featcache._open(out) as f:
        same_labels = np.array_equal(f["labels"][()], df["label"].to_numpy(dtype=np.int64))
        same_dtype = str(f["features"].dtype) == dtype
    return same_labels and same_dtype and attrs.get("manifest_sha256") == msha


def _decoded_rows(sub: pd.DataFrame, shared=None, *, full: pd.DataFrame, pre: Preprocess, cache_dir, dataset: str,
                  decode, shard, progress: bool) -> tuple[str, np.ndarray]:
    """The decoded-image cache covering ``sub`` (the cache ``pre`` reads made current for ``full`` first, through
    :func:`featpipe.backbones.modelinput.ensure_decoded`): its absolute path and ``sub``'s rows in it. Run on the
    engine (where the batches are read). ``decode``: ``params.decode`` or a
    :class:`featpipe.decoded.cache.DecodeOptions` (with ``max_pixels``)."""
    path = decoded_path(cache_dir, dataset, pre.decoding)
    if shard is not None and not path.exists():  # shards never race on one shared file
        path = path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}.h5")
    opts = decode if isinstance(decode, DecodeOptions) else DecodeOptions(decode.workers, decode.draft)
    opts = DecodeOptions(opts.workers, opts.draft, opts.max_pixels, progress)
    ensure_decoded(full, [pre], cache_dir=cache_dir, dataset=dataset, options=opts, paths={pre.decoding: path})
    with DecodedImages(path) as reader:
        rows = reader.require(sub)
    return os.path.abspath(path), np.asarray(rows, dtype=np.int64)


class DecodedBatches:
    """Picklable reader for the engine: decoded-cache rows -> uint8 crops at the model's input size. The file is
    opened on first use in each process (never pickled)."""

    def __init__(self, path: str, preprocess: Preprocess):
        self.path, self.preprocess, self._reader = path, preprocess, None

    def __getstate__(self) -> dict:
        return {"path": self.path, "preprocess": self.preprocess, "_reader": None}

    def __call__(self, rows) -> np.ndarray:
        if self._reader is None:
            self._reader = DecodedImages(self.path)
        return centre_crop(self._reader.read(np.asarray(rows, dtype=np.int64)), self.preprocess)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class ModelFactory:
    """Picklable model factory for the engine: ``()`` -> the frozen model as ``uint8-normalised batch -> (n, D)``
    float32. ``net``, the network already loaded in this process, is used here and never pickled."""

    def __init__(self, spec, ref, layer, *, device: str, precision: str, net=None):
        self.spec, self.ref, self.layer, self.device, self.precision = spec, ref, layer, device, precision
        self.net = net

    def __getstate__(self) -> dict:
        return {**self.__dict__, "net": None}

    def __call__(self):
        rt = Runtime.of(self.device, self.precision, traits=self.spec.traits)
        model = load_model(self.spec, self.ref, self.layer, runtime=rt, net=self.net)
        return functools.partial(embed_batch, model, runtime=rt)


def load_model(spec, ref, layer, *, runtime: Runtime, net=None):
    """The frozen feature model prepared for ``runtime`` (device, memory format; one per process or Ray
    actor); ``net``: the backbone network when already loaded."""
    if net is None:
        net = weights_mod.load_network(spec, ref)
    return runtime.prepare(FeatureModel(net, spec, layer=layer, weights=ref).eval().requires_grad_(False))


def read_batch(reader, rows, spec) -> np.ndarray:
    """uint8 ``(n, input, input, C)``: the decoded-cache ``rows``, centre-cropped to the model's input size."""
    return centre_crop(reader.read(rows), spec.preprocess)


def model_input(images: np.ndarray, spec):
    """Cropped uint8 images -> the normalised float32 ``(n, 3, H, W)`` batch the model takes."""
    return normalise(images, spec.preprocess)


def embed_batch(model, x, *, runtime: Runtime) -> np.ndarray:
    """One batch through the model: float32 ``(n, D)``, run as ``runtime`` runs it (:meth:`Runtime.forward`)."""
    return runtime.forward(model, x).numpy()


def _run_batches(job: _Job, todo: np.ndarray, partial, *, cache_dir, dataset, params, decode, shard, progress,
                 net=None) -> tuple[int, float]:
    """Compute the plan's batches not yet in ``partial`` on the job's engine and journal them in plan order;
    returns how many rows were computed and the loop's seconds (after the model is loaded locally)."""
    start = partial.done
    if start >= partial.total:
        return 0, 0.0
    from tqdm import tqdm

    spec, df, engine = job.spec, job.df, job.engine
    find = functools.partial(_decoded_rows, full=df, pre=spec.preprocess, cache_dir=str(cache_dir), dataset=dataset,
                             decode=decode, shard=shard, progress=progress)
    (path, drows), = engine.map(find, [df.iloc[todo[start:]]], cpus=max(1, int(decode.workers)))
    b = params.batch_size
    read = DecodedBatches(path, spec.preprocess)
    side = spec.preprocess.input_size
    stream = engine.embed([drows[s:s + b] for s in range(0, len(drows), b)], read=read,
                          prepare=functools.partial(model_input, spec=spec), progress=progress,
                          model_factory=ModelFactory(spec, job.ref, job.layer, device=str(job.device),
                                                     precision=job.precision, net=net),
                          item_bytes=b * side * side * 3)
    where = "" if engine.interactive else f" ({engine.name})"
    bar = tqdm(total=partial.total, initial=start, unit="img", desc=f"extract {spec.name}{where}",
               disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for _, emb in stream:
            partial.append(emb)
            bar.update(len(emb))
    finally:
        bar.close()
        read.close()
    return partial.total - start, time.perf_counter() - t0


def _assemble(out: Path, df: pd.DataFrame, old_rows: np.ndarray, todo: np.ndarray, partial, attrs: dict, dim: int,
              dtype: str) -> None:
    """Write the cache whole (old rows + new rows, manifest order) and rename it into place."""
    new_pos = np.full(len(df), -1, dtype=np.int64)
    new_pos[todo] = np.arange(len(todo))
    new = partial.rows()

    def blocks(step: int = 4096):
        f = featcache._open(out) if (old_rows >= 0).any() else None
        try:
            for s in range(0, len(df), step):
                o, p = old_rows[s:s + step], new_pos[s:s + step]
                block = np.empty((len(o), dim), dtype=np.float32)
                if (p >= 0).any():
                    block[p >= 0] = new[p[p >= 0]]
                if (o >= 0).any():
                    want = o[o >= 0]
                    uniq, inverse = np.unique(want, return_inverse=True)
                    block[o >= 0] = np.asarray(f["features"][uniq], dtype=np.float32)[inverse]
                yield block
        finally:
            if f is not None:
                f.close()

    featcache.write_features(out, ids=df["id"].astype(str).tolist(), features=blocks(),
                             labels=df["label"].to_numpy(dtype=np.int64), attrs=attrs,
                             sha256=df["sha256"].astype(str).tolist(), dim=dim, dtype=dtype)


# --------------------------------------------------------------------------- shards


def merge_shards(manifest: str | Path | pd.DataFrame, *, backbone: str, dataset: str, cache_dir: str | Path = "cache",
                 params: ExtractParams = ExtractParams()) -> Path:
    """Join the shard files of one (backbone, weights, layer) into the cache a single run would write."""
    df, msha = load_manifest(manifest)
    spec = get(backbone)
    layer = spec.resolve_layer(params.layer)
    ref = weights_mod.resolve(spec, params.weights)
    final = featcache.cache_path(cache_dir, dataset, spec.name, layer=layer, weights_tag=ref.tag)
    paths = featcache.shard_files(final)
    if not paths:
        raise CacheError(f"no shard files for {final}: run 'featpipe extract --shard i/n' first")
    counts = {int(p.name.rsplit("-of-", 1)[1][:-3]) for p in paths}
    if len(counts) != 1 or len(paths) != next(iter(counts)):
        raise CacheError(f"shard files of {final} are incomplete or mixed ({len(paths)} files for n={sorted(counts)}); "
                         "run every 'featpipe extract --shard i/n' of one n")
    for p in paths:
        if featcache.read_attrs(p).get("manifest_sha256") != msha:
            raise CacheError(f"shard {p} was extracted from another manifest; re-run its 'featpipe extract --shard'")
    with locks.build_lock(final, what=f"the {spec.name} feature cache"):
        locks.clean_leftovers(final.parent)
        featcache.merge_files(paths, final)
        with featcache._open(final) as f:
            if f["ids"].asstr()[()].tolist() != df["id"].astype(str).tolist():
                final.unlink()
                raise CacheError(f"shards of {final} do not cover the manifest in order; re-extract them")
    return final
