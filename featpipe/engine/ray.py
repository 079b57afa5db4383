"""The Ray engine: work runs on a Ray cluster (``pip install 'featpipe[ray]'``).

:meth:`RayExecutor.map` runs each chunk of :func:`featpipe.engine.base.plan` as one Ray task of ``cpus`` CPUs
(and ``gpus`` GPUs where the cluster has GPUs); the function and the shared arrays go to the object store once
and every task reads them zero-copy. A task lost with its worker is run again (``RETRIES``); a task that raises
fails the call with that task's own error.

:meth:`RayExecutor.embed` is a Ray Data pipeline::

    plan batches (k)  -> read     (CPU tasks, ``decode_cpus`` each; at most two in flight per actor)
                      -> prepare + model (actor pool: one model per actor, ``embed_cpus`` CPUs and
                                          ``embed_gpus`` GPUs each where the cluster has GPUs)
                      -> this process, in plan order

A lost actor is restarted by Ray and costs only its in-flight batch.

Where the cluster is: ``address`` or ``RAY_ADDRESS``: ``auto`` (the cluster this node belongs to, started
with ``ray start``), ``ray://host:10001`` (Ray Client) or ``host:6379`` (the head's GCS); empty starts a
local cluster in this process with ``num_cpus`` CPUs (all by default) and, when the executor is used as a
context manager, stops it at the end. Paths are shared with the workers as they are: put the files on a
file system that every node mounts at the same path, and start from the same working directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from featpipe.core.optional import require
from featpipe.engine.base import EngineError, Executor, plan, run_chunk, run_setup, user_error

INSTALL_HINT = "pip install 'featpipe[ray]'"
RETRIES = 2  # a task whose worker died is run again this many times


@dataclasses.dataclass(frozen=True)
class RayOptions:
    address: Optional[str] = None  # auto | ray://host:10001 | host:6379 | None = start a local cluster here
    num_cpus: Optional[int] = None  # CPUs of a local cluster started here (None = all of this machine)
    decode_cpus: float = 1.0  # per embedding read task
    embed_cpus: float = 1.0  # per embedding actor (one model per actor)
    embed_gpus: float = 1.0  # per embedding actor where the cluster has GPUs (0 = CPU actors)
    actors: int = 0  # embedding actors: 0 = one per embed_gpus of the cluster's GPUs, else one per 2 embed_cpus

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "RayOptions":
        """The options among ``settings`` (other keys are for other engines or for the caller)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})


def create(settings: Mapping[str, Any], *, workers: int = 1) -> "RayExecutor":
    """The Ray executor for ``settings`` (``engine.*``); ``workers`` is the local engine's and unused here."""
    return RayExecutor(RayOptions.from_settings(settings))


def import_ray():
    """The ``ray`` module, or a one-line error that says how to install it (or that the installed one is too old)."""
    require("ray", "2.60", extra="ray", why="--engine ray")
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray with Ray Data ({exc.name or 'ray'} is not installed): "
                          f"{INSTALL_HINT}") from None
    return ray


class RayExecutor(Executor):
    name = "ray"
    interactive = False

    def __init__(self, options: RayOptions = RayOptions()):
        self.options = options
        self._started = False

    def __enter__(self) -> "RayExecutor":
        self._started = self.connect()
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def connect(self) -> bool:
        """Connect to (or start) the cluster unless this process already is; True if this call did."""
        ray = import_ray()
        if ray.is_initialized():
            return False
        o = self.options
        address = o.address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
        if address is None:
            kwargs["num_cpus"] = o.num_cpus  # its workers inherit this process's environment (PYTHONPATH, ...)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local cluster"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot start or reach the Ray cluster at {where} ({first}); check engine.address / "
                              "RAY_ADDRESS, or 'ray start --head' on the head node") from None
        return True

    # ----------------------------------------------------------------------- map

    def map(self, fn, items, *, cpus=1.0, gpus=0.0, shared=None, cost=None, on_result=None) -> list:
        items = list(items)
        chunks = plan(items, cost)
        if not chunks:
            return []
        self.connect()
        ray = import_ray()
        shared = dict(shared or {})
        names, refs = list(shared), [ray.put(shared[n]) for n in shared]
        task = ray.remote(num_cpus=_cpus(cpus), num_gpus=_gpus(gpus), max_retries=RETRIES)(_chunk)
        fn_ref, where = ray.put(fn), (os.getcwd(), self.setup)
        futures = [task.remote(fn_ref, [items[i] for i in ch], where, names, *refs) for ch in chunks]
        out: list = [None] * len(items)
        chunk_of = {f: ch for f, ch in zip(futures, chunks)}
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for i, r in zip(chunk_of[done[0]], _fetch(done[0], cancel=pending)):
                out[i] = r
                if on_result is not None:
                    on_result(i, r)
        return out

    # ----------------------------------------------------------------------- embedding

    def probe(self, fn):
        self.connect()
        ray = import_ray()
        o = self.options
        task = ray.remote(num_cpus=o.embed_cpus, num_gpus=_gpus(o.embed_gpus))(_call)
        return _fetch(task.remote(fn, (os.getcwd(), self.setup)))

    def embed(self, batches: Sequence, *, read: Callable, model_factory: Callable, prepare: Optional[Callable] = None,
              item_bytes: int = 0, progress: bool = False):
        self.connect()
        ray = import_ray()
        batches = list(batches)
        gpus = _gpus(self.options.embed_gpus)
        actors = _actor_count(self.options, gpus)
        ds = _pipeline(ray, batches, read=read, prepare=prepare, model_factory=model_factory, options=self.options,
                       gpus=gpus, actors=actors, item_bytes=item_bytes, progress=progress, setup=self.setup)
        return _in_order(ds, batches)


# --------------------------------------------------------------------------- driver side


def _fetch(future, *, cancel: Sequence = ()):
    """``ray.get``: a task that raised a FeatpipeError fails with that one-line error; the rest are cancelled."""
    import ray

    try:
        return ray.get(future)
    except ray.exceptions.RayError as exc:
        for f in cancel:
            ray.cancel(f)
        err = user_error(exc)
        if err is exc:
            raise
        raise err from None


def _cpus(request: float) -> float:
    """``request``, but never more than the cluster has (a task asking more would wait forever)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return min(float(request), total)


def _gpus(request: float) -> float:
    """``request`` where the cluster has GPUs, else 0 (CPU tasks)."""
    import ray

    return float(request) if request > 0 and float(ray.cluster_resources().get("GPU", 0.0)) > 0 else 0.0


def _actor_count(o: RayOptions, gpus: float) -> int:
    """``actors``, or one per ``embed_gpus`` of the cluster's GPUs, or one per two ``embed_cpus``."""
    import ray

    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 0.0))
    if o.actors > 0:
        n = o.actors
    elif gpus > 0:
        n = max(1, int(float(res.get("GPU", 0.0)) // gpus))
    else:
        n = max(1, int((cpus - o.decode_cpus) // (2 * max(o.embed_cpus, 1e-9))))
    if gpus == 0 and n * o.embed_cpus + o.decode_cpus > cpus + 1e-9:
        raise EngineError(f"{n} embedding actor(s) x engine.embed_cpus={o.embed_cpus:g} + engine.decode_cpus="
                          f"{o.decode_cpus:g} need more than the cluster's {cpus:g} CPUs: lower engine.actors, "
                          "engine.embed_cpus or engine.decode_cpus")
    return n


def _pipeline(ray, batches: list, *, read, prepare, model_factory, options: RayOptions, gpus: float, actors: int,
              item_bytes: int, progress: bool, setup: tuple = ()):
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    if not progress:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    cwd = os.getcwd()
    items = [{"k": k} for k in range(len(batches))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * actors + 4)))
    # The read tasks' own memory request (the actors have none) also keeps Ray Data from fusing them into the
    # actors; a worker with torch imported takes ~400 MiB. At most two reads in flight per actor: enough to keep
    # every actor fed, never a crowd of reader processes (with decode_cpus=0 nothing else would bound them).
    memory = 2 * int(item_bytes) + (512 << 20)
    ds = ds.map_batches(_read, batch_size=1, num_cpus=options.decode_cpus, memory=memory, concurrency=2 * actors,
                        fn_kwargs={"read": read, "batches": batches, "cwd": cwd})
    threads = max(1, int(round(options.embed_cpus))) if options.embed_cpus >= 1 else 1
    return ds.map_batches(_Embedder, batch_size=1, num_cpus=options.embed_cpus, num_gpus=gpus,
                          compute=ray.data.ActorPoolStrategy(size=actors),
                          fn_constructor_args=(model_factory, prepare),
                          fn_constructor_kwargs={"threads": threads, "where": (cwd, setup)})


def _in_order(ds, batches: list):
    """``(batch, embeddings)`` in plan order as the pipeline's (unordered) outputs arrive."""
    waiting: dict[int, np.ndarray] = {}
    nxt = 0
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k, emb in zip(out["k"], out["emb"]):
                waiting[int(k)] = np.asarray(emb, dtype=np.float32)
            while nxt in waiting:
                yield batches[nxt], waiting.pop(nxt)
                nxt += 1
    except Exception as exc:  # a task's own one-line error (e.g. an unreadable input) stays one line
        err = user_error(exc)
        if err is exc:
            raise
        raise err from None
    if nxt != len(batches):
        raise EngineError(f"the Ray pipeline returned {nxt} of {len(batches)} batches; run the command again to "
                          "finish (completed batches are kept)")


# --------------------------------------------------------------------------- cluster side


def _in_dir(where) -> None:
    """Run in the driver's working directory (relative paths mean the same on every node); ``where`` is that
    directory, or (directory, the executor's setup callables), which then run here."""
    cwd, setup = where if isinstance(where, tuple) else (where, ())
    if cwd and os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    run_setup(setup)


def _chunk(fn, items: list, where: tuple, names: list, *arrays) -> list:
    _in_dir(where)
    return run_chunk(fn, items, dict(zip(names, arrays)))


def _call(fn, where: tuple):
    _in_dir(where)
    return fn()


def _read(batch: dict, *, read, batches: list, cwd: str) -> dict:
    """CPU task: one planned batch read."""
    _in_dir(cwd)
    k = int(batch["k"][0])
    return {"k": np.asarray(batch["k"], dtype=np.int64), "x": np.asarray(read(batches[k]))[None]}


class _Embedder:
    """Actor: one model, made once; a read batch in, its (n, D) float32 embeddings out."""

    def __init__(self, model_factory, prepare, *, threads: int, where: tuple):
        _in_dir(where)
        if threads > 0:
            try:
                import torch
            except ImportError:  # pragma: no cover  (a model that is not torch's)
                pass
            else:
                torch.set_num_threads(threads)
        self.prepare = prepare
        self.model = model_factory()

    def __call__(self, batch: dict) -> dict:
        x = np.array(batch["x"][0])  # a writable copy of the object-store batch
        if self.prepare is not None:
            x = self.prepare(x)
        y = np.asarray(self.model(x), dtype=np.float32)
        return {"k": np.asarray(batch["k"], dtype=np.int64), "emb": y[None]}
