"""The local engine: this process, or a pool of worker processes on this machine (joblib's loky).

:meth:`LocalExecutor.map` runs the chunks of :func:`featpipe.engine.base.plan` in this process when
``workers`` is 1, when there is one chunk, or when the items' estimated cost (seconds of work) adds up to less
than ``pool_min_seconds``: a worker process spends ~2 s importing featpipe, scikit-learn, scipy and pandas
before its first item, so a small map finishes sooner here (``featpipe fit-svc --shots 10`` on 2 cores: 2.66 s
wall, against 5.25 s with two workers: ``benchmarks/results/small_fit.md``). Otherwise it runs them in ``workers`` processes; shared arrays go to
``.npy`` files in a temporary folder that every worker memory-maps read-only. The results are the same either way
(each item's work is single-threaded and deterministic). Workers end with this process
(:func:`featpipe.core.workers.die_with_parent`) and run in its working directory.

:meth:`LocalExecutor.embed` runs the model in this process; a reading thread reads and prepares batch k+1
while the model embeds batch k.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from featpipe.core.workers import die_with_parent
from featpipe.engine.base import Executor, plan, run_chunk, run_setup


POOL_MIN_SECONDS = 5.0  # the default of engine.pool_min_seconds: twice a worker's start-up on an idle 2-core machine


def create(settings: Mapping[str, Any], *, workers: int = 1) -> "LocalExecutor":
    """The local executor; its one ``engine.*`` setting is ``pool_min_seconds``."""
    return LocalExecutor(workers, pool_min_seconds=float(settings.get("pool_min_seconds", POOL_MIN_SECONDS)))


class LocalExecutor(Executor):
    """``workers``: processes for :meth:`map` (1 = this process; -1 = one per CPU, -2 = all but one, as joblib
    counts: :func:`effective_workers`). ``pool_min_seconds``: a map whose items' ``cost`` (estimated seconds of
    work each) adds up to less runs in this process (0: always in ``workers`` processes; a map without ``cost``
    always uses them)."""

    name = "local"
    interactive = True

    def __init__(self, workers: int = 1, *, pool_min_seconds: float = POOL_MIN_SECONDS):
        self.workers = int(workers)
        self.pool_min_seconds = float(pool_min_seconds)

    def in_process(self, items: Sequence, cost=None, *, chunks: Optional[list] = None) -> bool:
        """Whether :meth:`map` runs ``items`` in this process (see the class); ``chunks``: their :func:`plan`, if
        already made."""
        if effective_workers(self.workers) == 1:
            return True
        if len(plan(items, cost) if chunks is None else chunks) <= 1:
            return True
        return cost is not None and sum(float(cost(it)) for it in items) < self.pool_min_seconds

    def map(self, fn, items, *, cpus=1.0, gpus=0.0, shared=None, cost=None, on_result=None) -> list:
        items = list(items)
        shared = dict(shared or {})
        chunks = plan(items, cost)
        out: list = [None] * len(items)
        if self.in_process(items, cost, chunks=chunks):
            for ch in chunks:
                for i in ch:
                    out[i] = fn(items[i], shared)
                    if on_result is not None:
                        on_result(i, out[i])
            return out
        from joblib import Parallel, delayed

        with tempfile.TemporaryDirectory(prefix="featpipe-engine-") as tmp:
            paths = {}
            for k, (name, arr) in enumerate(shared.items()):
                paths[name] = os.path.join(tmp, f"shared{k}.npy")
                np.save(paths[name], arr)
            results = Parallel(n_jobs=self.workers, return_as="generator_unordered")(
                delayed(_worker)(fn, [items[i] for i in ch], paths, os.getpid(), os.getcwd(), k, self.setup)
                for k, ch in enumerate(chunks))
            for k, res in results:  # as each chunk finishes: the caller can write its results at once
                for i, r in zip(chunks[k], res):
                    out[i] = r
                    if on_result is not None:
                        on_result(i, r)
        return out

    def embed(self, batches: Sequence, *, read: Callable, model_factory: Callable, prepare: Optional[Callable] = None,
              item_bytes: int = 0, progress: bool = False) -> Iterator[tuple[Any, np.ndarray]]:
        model = model_factory()  # loaded now: the caller's clock starts after it
        return _stream(list(batches), read, prepare, model)

    def probe(self, fn):
        return fn()


def effective_workers(workers: int) -> int:
    """Processes ``workers`` means, joblib's way: n > 0 is n, -1 every CPU, -2 every CPU but one, ...; 1 when
    joblib would run in this process anyway (one CPU left, ``JOBLIB_MULTIPROCESSING=0``)."""
    if workers == 1:
        return 1
    from joblib import effective_n_jobs

    return max(1, int(effective_n_jobs(workers)))


def _worker(fn: Callable, items: list, paths: Mapping[str, str], parent: int, cwd: str, k: int,
            setup: Sequence = ()) -> tuple[int, list]:
    die_with_parent(parent, pdeathsig=False)  # loky workers: never outlive the main process
    # loky reuses worker processes across calls: relative paths must mean what they mean in the caller's
    # working directory now, not in the one the worker was started in
    os.chdir(cwd)
    run_setup(setup)
    shared = {name: np.load(p, mmap_mode="r") for name, p in paths.items()}
    return k, run_chunk(fn, items, shared)


def _stream(batches: list, read: Callable, prepare: Optional[Callable], model: Callable):
    def load(batch):
        x = read(batch)
        return prepare(x) if prepare is not None else x

    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, batches[0])
        for k, batch in enumerate(batches):
            x = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(load, batches[k + 1])
            yield batch, np.asarray(model(x), dtype=np.float32)
