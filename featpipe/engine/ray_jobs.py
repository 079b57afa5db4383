"""Sweeps and fine-tuning on a Ray cluster: one Ray task per run, with its resource request.

Each (backbone, head, shots, seed) fit runs :func:`featpipe.fewshot.fit.fit_run` in a task of
``engine.fit_cpus`` CPUs; the feature matrices and the splits go to the object store once and are read
zero-copy by every task. Results come back to the driver, which writes the results table exactly as a
local sweep does, so the metrics are byte-identical (``fit_run`` is deterministic and single-threaded
in BLAS). Each fine-tuning job runs :func:`featpipe.finetune.run.run_job` in a task of
``engine.finetune_cpus`` CPUs and ``engine.finetune_gpus`` GPUs (where the cluster has GPUs); the job
writes its own row (under the table's lock), curve, training curve and checkpoint, as locally.

A task lost with its worker is retried by Ray (``max_retries``); a run that raises fails the command
with that run's error.
"""

from __future__ import annotations

import os
from typing import Sequence

from featpipe.params.config import EngineParams
from featpipe.engine import connect, fetch, gpus_per_task, import_ray, in_dir

RETRIES = 2  # a task whose worker died is run again this many times


# --------------------------------------------------------------------------- sweep


def _fit(data, splits, tasks: list, params, models_dir, cwd: str) -> list:
    from featpipe.fewshot.fit import fit_run

    in_dir(cwd)
    return [fit_run(data, splits, head=h, shots=k, seed=s, params=params, models_dir=models_dir) for h, k, s in tasks]


def fit_grid(splits, caches: Sequence, grid: Sequence[tuple], *, params, models_dir, engine: EngineParams) -> list:
    """The runs of ``grid`` ((cache index, head, shots, seed) tuples), one Ray task each, in grid order."""
    connect(engine)
    ray = import_ray()
    cwd = os.getcwd()
    data = [ray.put(c) for c in caches]
    splits_ref, params_ref = ray.put(splits), ray.put(params)
    task = ray.remote(num_cpus=engine.fit_cpus, max_retries=RETRIES)(_fit)
    futures = [task.remote(data[c], splits_ref, [(h, k, s)], params_ref, models_dir, cwd) for c, h, k, s in grid]
    return [r for out in fetch(futures) for r in out]


# --------------------------------------------------------------------------- fine-tuning


def _finetune(job, p, paths, build, cwd: str) -> dict:
    from featpipe.finetune.run import run_job

    in_dir(cwd)
    return run_job(job, p, paths, build=build, progress=False)


def _decoded(backbone: str, paths, build, cwd: str) -> None:
    """Bring the decoded-image cache a backbone's jobs read up to date (once, before its jobs run in parallel)."""
    from featpipe.backbones.registry import get
    from featpipe.data.manifest import read_manifest
    from featpipe.data.splits import load_splits
    from featpipe.finetune.run import image_source

    in_dir(cwd)
    splits = load_splits(paths.splits)
    src = image_source(paths, splits.dataset, get(backbone), read_manifest(paths.manifest),
                       [*splits.train, *splits.val, *splits.test], build=build, progress=False)
    src.reader.close()


def finetune_jobs(jobs: Sequence, p, paths, *, build: dict | None, engine: EngineParams) -> list[dict]:
    """Every fine-tuning job as a Ray task; their rows, in job order."""
    from featpipe.backbones.registry import get
    from featpipe.backbones.modelinput import decode_size

    connect(engine)
    ray = import_ray()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    prepare = ray.remote(num_cpus=max(1.0, min(float(getattr(build, "workers", 1)), cpus)))(_decoded)
    sizes = {}
    for job in jobs:  # parallel jobs must not race to build the same decoded cache
        sizes.setdefault(decode_size(get(job.backbone).preprocess), job.backbone)
    for backbone in sizes.values():
        fetch([prepare.remote(backbone, paths, build, os.getcwd())])
    task = ray.remote(num_cpus=engine.finetune_cpus, num_gpus=gpus_per_task(engine.finetune_gpus),
                      max_retries=RETRIES)(_finetune)
    cwd = os.getcwd()
    shared = ray.put(p), ray.put(paths), ray.put(build)
    return fetch([task.remote(job, *shared, cwd) for job in jobs])
