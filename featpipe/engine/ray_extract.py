"""Extraction on a Ray cluster: the batches :func:`featpipe.features.extract.extract` plans, as a Ray Data pipeline.

``extract`` decides everything that makes a cache (rows to reuse, the plan, the journal, the file and
its attributes); this module only computes the plan's batches elsewhere::

    plan batches (k, decoded-cache rows)           one row per batch of ``extract.batch_size`` images,
      -> read + centre-crop   (CPU tasks)           exactly the batches a local run computes
      -> embed                (actor pool)          one model per actor, ``num_gpus`` where GPUs exist
      -> driver, in batch order -> featcache.PartialRows journal -> the same HDF5 cache as a local run

The decoded-image cache is checked (and built when missing or stale) by one CPU task on the cluster,
with the same code as a local run. The per-batch steps are :func:`featpipe.features.extract.read_batch`,
:func:`~featpipe.features.extract.model_input` and :func:`~featpipe.features.extract.embed_batch`, shared with the local
engine, so precision, channels_last and batching cannot drift between them.

Resumable: the driver journals each batch (in order) as it arrives, so a killed driver restarts from
the batches already written; a lost worker or actor is retried by Ray and costs only its in-flight
batch.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from featpipe.params.config import EngineParams, ExtractParams
from featpipe.engine import EngineError, connect, fetch, gpus_per_task, import_ray, in_dir, user_error
from featpipe.core.errors import CacheError
from featpipe.core.runtime import Runtime


def runner(ep: EngineParams, params: ExtractParams, *, spec=None):
    """(device, precision, batch runner) as the embedding actors will see them (asked of the cluster)."""
    import torch

    connect(ep)
    ray = import_ray()
    gpus = gpus_per_task(ep.embed_gpus)
    actors = _actor_count(ep, gpus)
    probe = ray.remote(num_cpus=ep.embed_cpus, num_gpus=gpus)(_placement)
    device, precision = fetch(probe.remote(params.device, params.precision, os.getcwd(),
                                           spec.name if spec is not None else None))
    return torch.device(device), precision, functools.partial(run_batches, engine=ep, gpus=gpus, actors=actors)


def _placement(device: str, precision: str, cwd: str, backbone: str | None = None) -> tuple[str, str]:
    from featpipe.backbones.registry import get

    in_dir(cwd)
    rt = Runtime.resolve(device, precision, traits=get(backbone).traits if backbone else None)
    return str(rt.device), rt.precision


def _actor_count(ep: EngineParams, gpus: float) -> int:
    """``engine.actors``, or one per ``embed_gpus`` of the cluster's GPUs, or one per two ``embed_cpus``."""
    import ray

    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 0.0))
    if ep.actors > 0:
        n = ep.actors
    elif gpus > 0:
        n = max(1, int(float(res.get("GPU", 0.0)) // gpus))
    else:
        n = max(1, int((cpus - ep.decode_cpus) // (2 * max(ep.embed_cpus, 1e-9))))
    if gpus == 0 and n * ep.embed_cpus + ep.decode_cpus > cpus + 1e-9:
        raise EngineError(f"{n} embedding actor(s) x engine.embed_cpus={ep.embed_cpus:g} + engine.decode_cpus="
                          f"{ep.decode_cpus:g} need more than the cluster's {cpus:g} CPUs: lower engine.actors, "
                          "engine.embed_cpus or engine.decode_cpus")
    return n


# --------------------------------------------------------------------------- cluster-side steps


def _ensure_decoded(sub, df, *, size: int, cache_dir: str, dataset: str, decode, shard, cwd: str, progress: bool):
    """On a worker: the decoded-image cache covering ``sub`` (built for ``df`` when missing/stale) and its rows."""
    from featpipe.features.extract import _decoded_rows

    in_dir(cwd)
    reader, rows = _decoded_rows(sub, df, size=size, cache_dir=cache_dir, dataset=dataset, decode=decode,
                                 shard=shard, progress=progress)
    path = os.path.abspath(reader.path)
    reader.close()
    return path, np.asarray(rows, dtype=np.int64)


_READERS: dict = {}


def _read(batch: dict, *, path: str, backbone: str, cwd: str) -> dict:
    """CPU task: one planned batch's decoded images, centre-cropped to the model input (uint8)."""
    from featpipe.backbones.registry import get
    from featpipe.decoded.cache import DecodedImages
    from featpipe.features.extract import read_batch

    in_dir(cwd)
    reader = _READERS.get(path) or _READERS.setdefault(path, DecodedImages(path))
    rows = np.asarray(batch["rows"][0], dtype=np.int64)
    images = read_batch(reader, rows, get(backbone))
    return {"k": np.asarray(batch["k"], dtype=np.int64), "x": images[None]}


class Embedder:
    """Actor: one frozen model, loaded once; a planned batch in, its (n, D) float32 embeddings out."""

    def __init__(self, backbone: str, ref, layer, *, device: str, precision: str, threads: int, cwd: str):
        import torch

        from featpipe.backbones.registry import get
        from featpipe.features.extract import load_model

        in_dir(cwd)
        if threads > 0:
            torch.set_num_threads(threads)
        self.spec = get(backbone)
        self.runtime = Runtime.of(device, precision, traits=self.spec.traits)
        self.model = load_model(self.spec, ref, layer, runtime=self.runtime)

    def __call__(self, batch: dict) -> dict:
        from featpipe.features.extract import embed_batch, model_input

        x = model_input(np.array(batch["x"][0]), self.spec)  # a writable copy of the object-store batch
        y = embed_batch(self.model, x, runtime=self.runtime)
        return {"k": np.asarray(batch["k"], dtype=np.int64), "emb": y[None]}


# --------------------------------------------------------------------------- driver


def run_batches(spec, ref, layer, df, todo: np.ndarray, partial, *, cache_dir, dataset, params, decode, device,
                precision, shard, progress, engine: EngineParams, gpus: float, actors: int,
                net=None) -> tuple[int, float]:
    """Compute the plan's batches not yet in ``partial`` on the cluster; journal them in order. (``net``, the
    driver's copy loaded to check the weights before any work, is not shipped: each actor loads its own.)"""
    start = partial.done
    if start >= partial.total:
        return 0, 0.0
    ray = import_ray()
    from tqdm import tqdm

    cwd = os.getcwd()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    build = ray.remote(num_cpus=max(1.0, min(float(decode.workers), cpus)))(_ensure_decoded)
    from featpipe.backbones.modelinput import decode_size

    path, drows = fetch(build.remote(df.iloc[todo[start:]], df, size=decode_size(spec.preprocess),
                                       cache_dir=str(cache_dir), dataset=dataset, decode=decode, shard=shard,
                                       cwd=cwd, progress=progress))
    b = params.batch_size
    items = [{"k": k, "rows": drows[s:s + b].tolist()} for k, s in enumerate(range(0, len(drows), b))]
    ds = _pipeline(ray, items, batch_size=b, path=path, spec=spec, ref=ref, layer=layer, device=str(device), precision=precision,
                   engine=engine, gpus=gpus, actors=actors, cwd=cwd, progress=progress)
    bar = tqdm(total=partial.total, initial=start, unit="img", desc=f"extract {spec.name} (ray)",
               disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    waiting: dict[int, np.ndarray] = {}
    nxt = 0
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k, emb in zip(out["k"], out["emb"]):
                waiting[int(k)] = np.asarray(emb, dtype=np.float32)
            while nxt in waiting:  # the journal takes batches in plan order only
                rows = waiting.pop(nxt)
                partial.append(rows)
                bar.update(len(rows))
                nxt += 1
    except Exception as exc:  # a task's own one-line error (e.g. an unreadable decoded cache) stays one line
        err = user_error(exc)
        if err is exc:
            raise
        raise err from None
    finally:
        bar.close()
    if nxt != len(items):
        raise CacheError(f"the Ray pipeline returned {nxt} of {len(items)} batches for {spec.name}; "
                         "re-run 'featpipe extract --engine ray' to finish (completed batches are kept)")
    return partial.total - start, time.perf_counter() - t0


def _pipeline(ray, items: list, *, batch_size: int, path, spec, ref, layer, device, precision, engine, gpus, actors, cwd, progress):
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    if not progress:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * actors + 4)))
    # The read tasks' own memory request (the actors have none) also keeps Ray Data from fusing them into the actors.
    side = spec.preprocess.input_size
    memory = 2 * batch_size * side * side * 3 + (512 << 20)  # a worker with featpipe + torch imported: ~400 MiB
    # At most two reads in flight per actor: enough to keep every actor fed, never a crowd of reader processes
    # (with engine.decode_cpus=0 nothing else would bound them).
    ds = ds.map_batches(_read, batch_size=1, num_cpus=engine.decode_cpus, memory=memory, concurrency=2 * actors,
                        fn_kwargs={"path": path, "backbone": spec.name, "cwd": cwd})
    threads = max(1, int(round(engine.embed_cpus))) if engine.embed_cpus >= 1 else 1
    return ds.map_batches(Embedder, batch_size=1, num_cpus=engine.embed_cpus, num_gpus=gpus,
                          compute=ray.data.ActorPoolStrategy(size=actors),
                          fn_constructor_args=(spec.name, ref, layer),
                          fn_constructor_kwargs={"device": device, "precision": precision, "threads": threads,
                                                 "cwd": cwd})
