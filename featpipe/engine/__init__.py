"""Where extract, sweep and finetune run: ``local`` (this process) or ``ray`` (a Ray cluster).

The engine only decides *where* work runs. What is computed, what is reused and what is written
stay with the owners (:mod:`featpipe.features.extract`, :mod:`featpipe.fewshot.fit`, :mod:`featpipe.finetune.run`), so
a Ray run writes the same feature cache and the same results rows as a local run.

``engine.address`` (params) or ``RAY_ADDRESS``: ``auto`` (the cluster this node belongs to, started
with ``ray start``), ``ray://host:10001`` (Ray Client) or ``host:6379`` (the head's GCS); empty starts a
local cluster in this process with ``engine.num_cpus`` CPUs (all by default) and stops it at the end.
Paths are shared with the workers as they are: put the cache, results and models on a file system
that every node mounts at the same path, and start featpipe from the same working directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Optional

from featpipe.params.config import EngineParams
from featpipe.core.errors import FeatpipeError
from featpipe.core.optional import require

INSTALL_HINT = "pip install 'featpipe[ray]'"


class EngineError(FeatpipeError):
    """The Ray engine is missing or its cluster cannot be reached."""


def add_argument(parser) -> None:
    """``--engine local|ray`` (default: ``engine.kind`` of the params)."""
    parser.add_argument("--engine", choices=("local", "ray"), default=None,
                        help="where the work runs: this process, or a Ray cluster (default: engine.kind; "
                             "address and per-task CPU/GPU requests in engine.*)")


def from_args(args, params) -> EngineParams:
    """``params.engine`` with ``--engine`` applied."""
    ep = params.engine
    kind = getattr(args, "engine", None)
    return dataclasses.replace(ep, kind=kind) if kind else ep


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


def connect(ep: EngineParams) -> bool:
    """Connect to (or start) the cluster of ``ep`` unless this process already is; True if this call did."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = ep.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if address is None:
        kwargs["num_cpus"] = ep.num_cpus  # its workers inherit this process's environment (PYTHONPATH, TORCH_HOME)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"cannot start or reach the Ray cluster at {where} ({first}); check engine.address / "
                          "RAY_ADDRESS, or 'ray start --head' on the head node") from None
    return True


@contextlib.contextmanager
def session(ep: EngineParams) -> Iterator[None]:
    """The Ray connection for one command (shut down at the end if this started it); nothing for local."""
    if ep.kind != "ray":
        yield
        return
    started = connect(ep)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def user_error(exc: BaseException) -> BaseException:
    """The run's own :class:`FeatpipeError` inside a Ray error (a task's or Ray Data's), else ``exc``."""
    seen, depth = exc, 0
    while seen is not None and depth < 10:
        if isinstance(seen, FeatpipeError) and not type(seen).__name__.startswith("RayTaskError"):
            return seen
        seen, depth = getattr(seen, "cause", None) or seen.__cause__, depth + 1
    return exc


def fetch(futures):
    """``ray.get``: a task that raised a FeatpipeError fails the command with that one-line error."""
    import ray

    try:
        return ray.get(futures)
    except ray.exceptions.RayError as exc:
        for f in futures if isinstance(futures, list) else [futures]:
            ray.cancel(f)
        err = user_error(exc)
        if err is exc:
            raise
        raise err from None


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def gpus_per_task(request: float) -> float:
    """``request`` where the cluster has GPUs, else 0 (CPU tasks)."""
    return float(request) if request > 0 and cluster_gpus() > 0 else 0.0


def in_dir(cwd: Optional[str]) -> None:
    """Run a task in the driver's working directory (relative paths mean the same on every node)."""
    if cwd and os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)
