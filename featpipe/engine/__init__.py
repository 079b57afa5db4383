"""Where work runs: an executor is handed picklable work and runs it here, in a process pool, or on a cluster.

The engine decides *where*, never *what*: what is computed, reused and written stays with its owner
(:mod:`featpipe.features.extract` plans and journals the embedding batches, :mod:`featpipe.fewshot.fit` the head
runs, :mod:`featpipe.finetune.run` the fine-tuning jobs), so every engine writes the same caches and the same
results rows. The engine imports nothing of featpipe but :mod:`featpipe.core`; its settings come in as plain
values (``engine.*`` of the params, mapped by the command layer).

- :mod:`featpipe.engine.base`: the :class:`~featpipe.engine.base.Executor` interface (``map``, ``embed``,
  ``probe``) and :func:`~featpipe.engine.base.plan`, the one chunking and cost order every engine follows;
- :mod:`featpipe.engine.local`: this process, or a pool of worker processes on this machine (the default);
- :mod:`featpipe.engine.ray`: a Ray cluster (tasks for ``map``, Ray Data actors for ``embed``).

A new engine (Dask, SLURM arrays, ...) is one new file here, ``featpipe/engine/<kind>.py``: a subclass of
:class:`~featpipe.engine.base.Executor` and a module function ``create(settings, *, workers=1)`` that builds it
from the ``engine.*`` settings it understands (ignoring the others). :func:`create` finds it by its ``kind``
(``--engine <kind>``; the params' ``engine.kind`` lists the kinds a params file may name).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Mapping

from featpipe.engine.base import EngineError, Executor

_NOT_ENGINES = {"base"}


def kinds() -> list[str]:
    """The engines in this package (each module but :mod:`~featpipe.engine.base`)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if m.name not in _NOT_ENGINES and not m.name.startswith("_"))


def create(kind: str = "local", settings: Mapping[str, Any] | None = None, *, workers: int = 1) -> Executor:
    """The executor of engine ``kind`` built from ``settings`` (e.g. ``engine.*`` of the params);
    ``workers``: processes for the local engine's ``map`` (1 = this process)."""
    if kind not in kinds():
        raise EngineError(f"unknown engine {kind!r} (choose from {', '.join(kinds())})")
    return importlib.import_module(f"{__name__}.{kind}").create(dict(settings or {}), workers=workers)
