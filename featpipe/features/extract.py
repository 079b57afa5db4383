"""Extraction: manifest -> decoded-image cache -> frozen backbone in batches -> HDF5 feature cache.

Valid by content: a cached row is reused only when its (id, sha256) is in the manifest and the file
was made with the same backbone, weights identity, layer, preprocessing, embedding size and precision;
anything else is extracted again (a different request for the same file name re-extracts everything,
and says so). Interruptible: completed batches go to ``<cache>.partial/`` (see
:class:`featpipe.features.cache.PartialRows`) and the cache is written whole and renamed into place at the
end. ``shard=(i, n)`` extracts a deterministic, batch-aligned slice of the manifest into its own file;
:func:`featpipe.features.shards.merge_shards` joins them into exactly the cache of a single run.

Manifest sha256: of the manifest file's bytes when a path is given (as ``splits.json`` records it); of
``df.to_csv(index=False, lineterminator="\\n")`` when a DataFrame is given.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from featpipe.backbones import weights as weights_mod
from featpipe.backbones.registry import get
from featpipe.core import checksums, locks
from featpipe.core.errors import CacheError
from featpipe.core.log import logger, notice
from featpipe.core.progress import progress as progress_bar
from featpipe.core.runtime import Runtime
from featpipe.core.versions import versions
from featpipe.data.manifest import load_manifest
from featpipe.decoded.cache import decoder_identity
from featpipe.engine.base import Executor
from featpipe.engine.local import LocalExecutor
from featpipe.features import cache as featcache
from featpipe.features.batches import DecodedBatches, ModelFactory, decoded_rows, model_input
from featpipe.features.shards import shard_bounds
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
    spec, ref = weights_mod.resolve_spec(spec, params.weights)
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
    expected = {"backbone": spec.name, "weights_id": ref.identity, "layer": layer or "", "features": spec.features,
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
    bad_rows: set = set()
    if not out.exists():
        return rows, [], ""
    try:
        attrs = featcache.read_attrs(out)
        why = featcache.provenance_mismatch(attrs, expected) or (None if attrs.get("complete") else "incomplete")
        if why is None:
            with featcache._open(out) as f:
                old_ids, old_sha = f["ids"].asstr()[()], f["sha256"].asstr()[()]
                bad = checksums.bad_blocks(f, "features")
                if bad is None:
                    why = "no checksums (made by an older featpipe)"
                else:
                    block_rows = checksums.stored(f, "features")[1]
                    bad_rows = set(checksums.rows_of(bad, block_rows, len(old_ids)).tolist())
    except (CacheError, KeyError, OSError) as exc:
        why = f"unreadable ({exc})"
    if why is not None:
        _say(f"{out} does not match this request ({why}): extracting every image again", progress)
        return rows, [], why
    if bad_rows:
        _say(f"{out}: {len(bad_rows)} row(s) do not match their checksums (damaged): extracting them again", progress)
    where = {(i, s): j for j, (i, s) in enumerate(zip(old_ids, old_sha)) if j not in bad_rows}
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


def _run_batches(job: _Job, todo: np.ndarray, partial, *, cache_dir, dataset, params, decode, shard, progress,
                 net=None) -> tuple[int, float]:
    """Compute the plan's batches not yet in ``partial`` on the job's engine and journal them in plan order;
    returns how many rows were computed and the loop's seconds (after the model is loaded locally)."""
    start = partial.done
    if start >= partial.total:
        return 0, 0.0
    spec, df, engine = job.spec, job.df, job.engine
    find = functools.partial(decoded_rows, full=df, pre=spec.preprocess, cache_dir=str(cache_dir), dataset=dataset,
                             decode=decode, shard=shard, progress=progress)
    (path, drows), = engine.map(find, [df.iloc[todo[start:]]], cpus=max(1, int(decode.workers)))
    b = params.batch_size
    read = DecodedBatches(path, spec.preprocess)
    side = spec.preprocess.input_size
    pin = str(job.device).startswith("cuda")  # pinned batches: asynchronous copies to the GPU
    stream = engine.embed([drows[s:s + b] for s in range(0, len(drows), b)], read=read,
                          prepare=functools.partial(model_input, spec=spec, pin=pin), progress=progress,
                          model_factory=ModelFactory(spec, job.ref, job.layer, device=str(job.device),
                                                     precision=job.precision, net=net),
                          item_bytes=b * side * side * spec.preprocess.channels)
    where = "" if engine.interactive else f" ({engine.name})"
    bar = progress_bar(partial.total, f"extract {spec.name}{where}", enabled=progress, initial=start)
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
