"""The command layer picks where work runs: ``--engine`` (default ``engine.kind``) and ``engine.*`` -> an executor.

The executor is handed down to the library functions (``extract``, ``sweep``, ``run_jobs``); they default to the
local engine when called without one.
"""

from __future__ import annotations

import dataclasses

from featpipe import engine
from featpipe.engine.base import Executor


def add_argument(parser) -> None:
    """``--engine KIND`` (default: ``engine.kind`` of the params)."""
    parser.add_argument("--engine", choices=engine.kinds(), default=None,
                        help="where the work runs: this process (local), or a Ray cluster (ray) (default: "
                             "engine.kind; address and per-task CPU/GPU requests in engine.*)")


def from_args(args, params, *, workers: int = 1) -> Executor:
    """The executor of ``--engine`` (else ``params.engine.kind``) with the ``engine.*`` settings;
    ``workers``: processes of the local engine's parallel runs (1 = this process)."""
    ep = params.engine
    kind = getattr(args, "engine", None) or ep.kind
    return engine.create(kind, dataclasses.asdict(ep), workers=workers)
