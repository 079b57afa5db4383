"""The executor interface every engine implements, and the one plan (chunks, cost order) they all follow.

An executor is handed work and decides only where it runs:

- :meth:`Executor.map` runs a picklable ``fn(item, shared)`` over items and returns the results in item order.
  ``shared`` is a dict of read-only numpy arrays (e.g. feature matrices) that every item may read: each
  executor ships them once (a memory-mapped file for the local process pool, the object store for Ray).
  ``cpus``/``gpus`` are what one item needs; ``cost`` (item -> estimated seconds of work on one core) orders and
  groups the items through :func:`plan`, the same for every executor; the local engine also runs a map whose
  estimate is small in the caller's process (starting worker processes would cost more than they save).
- :meth:`Executor.embed` runs planned batches through a picklable ``read`` (batch -> array, run where CPUs
  are), an optional ``prepare`` (array -> model input, run in the model's process) and a model made by a
  picklable ``model_factory`` (called once per model process), and hands ``(batch, embeddings)`` back in plan
  order, so that the caller can journal them as they come.
- :meth:`Executor.probe` runs a function once where :meth:`embed` runs its models (e.g. to ask which device
  and precision they will get).

Functions and items must be picklable (module-level functions, :func:`functools.partial` of them, plain
data). Each runs in the caller's working directory, so relative paths mean the same everywhere.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from featpipe.core.errors import FeatpipeError

CHUNK = 4  # at most this many items per chunk (one worker call / one task)


class EngineError(FeatpipeError):
    """An engine is missing, or cannot run the work it was handed (e.g. a cluster that cannot be reached)."""


def plan(items: Sequence, cost: Optional[Callable[[Any], float]] = None, *, chunk: int = CHUNK) -> list[list[int]]:
    """Item indices grouped into chunks, in the order every executor starts them.

    Costliest items first (ties keep item order); consecutive items share a chunk of at most ``chunk`` items
    while the chunk's total cost stays within a budget: the costliest item's cost, or an even share of the
    total over ``ceil(len(items) / chunk)`` chunks when that is larger. Light items travel together (fewer
    calls), heavy ones alone (the workers finish together). Without ``cost`` every item costs the same: one
    item per chunk, in item order."""
    if cost is None:
        return [[i] for i in range(len(items))]
    costs = [float(cost(it)) for it in items]
    order = sorted(range(len(items)), key=lambda i: -costs[i])
    budget = max(costs[order[0]], sum(costs) / -(-len(costs) // chunk)) if order else 0.0
    chunks: list[list[int]] = []
    total = 0.0
    for i in order:
        if chunks and len(chunks[-1]) < chunk and total + costs[i] <= budget:
            chunks[-1].append(i)
            total += costs[i]
        else:
            chunks.append([i])
            total = costs[i]
    return chunks


def run_chunk(fn: Callable, items: Sequence, shared: Mapping[str, np.ndarray]) -> list:
    """``fn(item, shared)`` for each item of one chunk (what every executor runs in a worker)."""
    return [fn(item, shared) for item in items]


def run_setup(setup: Sequence[Callable]) -> None:
    """Run an executor's :attr:`Executor.setup` callables (in a worker, before its work)."""
    for fn in setup:
        fn()


def user_error(exc: BaseException) -> BaseException:
    """The run's own :class:`FeatpipeError` inside an engine's wrapper error, else ``exc``."""
    seen, depth = exc, 0
    while seen is not None and depth < 10:
        if isinstance(seen, FeatpipeError) and not type(seen).__name__.startswith("RayTaskError"):
            return seen
        seen, depth = getattr(seen, "cause", None) or seen.__cause__, depth + 1
    return exc


class Executor(abc.ABC):
    """Where work runs. Use as a context manager for one command (connects and disconnects where that means
    something); without one an executor connects on first use and stays connected."""

    name: str = ""
    interactive: bool = False  # True: work runs where its own output (progress bars, log lines) reaches the user
    # picklable callables every worker process runs before its work (e.g. registering the networks of your own
    # that the params define, which a fresh process does not know); idempotent, as a worker may run them again
    setup: tuple = ()

    def with_setup(self, *fns: Callable[[], Any]) -> "Executor":
        """This executor, with ``fns`` added to :attr:`setup`."""
        self.setup = (*self.setup, *fns)
        return self

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @abc.abstractmethod
    def map(self, fn: Callable[[Any, Mapping[str, np.ndarray]], Any], items: Sequence, *, cpus: float = 1.0,
            gpus: float = 0.0, shared: Optional[Mapping[str, np.ndarray]] = None,
            cost: Optional[Callable[[Any], float]] = None,
            on_result: Optional[Callable[[int, Any], None]] = None) -> list:
        """``[fn(item, shared) for item in items]``, run where this executor runs work, chunked and ordered by
        :func:`plan`; ``gpus`` are used where the executor has GPUs (0: CPU only). ``on_result(index, result)``
        is called in this process as each result arrives."""

    @abc.abstractmethod
    def embed(self, batches: Sequence, *, read: Callable[[Any], np.ndarray], model_factory: Callable[[], Callable],
              prepare: Optional[Callable] = None, item_bytes: int = 0,
              progress: bool = False) -> Iterator[tuple[Any, np.ndarray]]:
        """Start embedding ``batches`` and return an iterator of ``(batch, float32 embeddings)`` in plan order.

        ``read(batch)`` -> array (may travel between processes: keep it compact); ``prepare(array)`` -> the model
        input, in the model's process; ``model_factory()`` -> ``model(input) -> (n, D)`` array, called once per
        model process. ``item_bytes``: the size of one ``read`` result (a memory hint). ``progress``: the
        executor's own progress display, if it has one."""

    @abc.abstractmethod
    def probe(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run once where :meth:`embed` runs its models, with their resources; its result."""
