"""The command layer picks where work runs: ``--engine`` (default ``engine.kind``) and ``engine.*`` -> an executor.

Networks of your own (``networks:`` in the params) are registered in every worker process before its work (the
executor's ``setup``): the worker rebuilds them from their definition (a ``module:callable`` factory must be
importable there, e.g. on ``PYTHONPATH``).

The executor is handed down to the library functions (``extract``, ``sweep``, ``run_jobs``); they default to the
local engine when called without one.
"""

from __future__ import annotations

import dataclasses
import functools

from featpipe import engine
from featpipe.backbones.custom import register_networks
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
    ex = engine.create(kind, dataclasses.asdict(ep), workers=workers)
    if params.networks:  # a worker process (Ray, a local pool) registers them from their definition, as main did
        ex.with_setup(functools.partial(register_networks, params))
    return ex
