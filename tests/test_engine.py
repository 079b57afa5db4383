"""The executor interface: one plan (chunks, cost order) and the local engine's map and embed."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from featpipe import engine
from featpipe.engine.base import EngineError, plan
from featpipe.engine.local import LocalExecutor


def _scaled(item, shared, *, factor):
    return float(shared["X"][item].sum()) * factor


def test_plan_puts_costly_items_first_and_light_items_together():
    assert plan([1, 1, 1]) == [[0], [1], [2]]  # no cost: item order, one per chunk
    assert plan([14, 14, 1.4, 1.4], cost=float) == [[0, 1, 2, 3]]
    chunks = plan([1, 50, 1, 50, 1, 1, 1, 1, 1, 1], cost=float)
    assert chunks[:2] == [[1], [3]] and sorted(i for c in chunks for i in c) == list(range(10))
    assert all(len(c) <= 4 for c in chunks)


@pytest.mark.parametrize("workers", [1, 2])
def test_local_map_returns_results_in_item_order_with_shared_arrays(workers):
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    seen = []
    out = LocalExecutor(workers).map(functools.partial(_scaled, factor=2.0), list(range(6)), shared={"X": X},
                                     cost=lambda i: float(i), on_result=lambda i, r: seen.append(i))
    assert out == [float(X[i].sum()) * 2 for i in range(6)] and sorted(seen) == list(range(6))


def _pid(item, shared):
    return os.getpid()


@pytest.mark.parametrize("seconds, floor, here", [
    (0.1, 5.0, True),   # 8 items of 0.1 s: less work than starting two workers costs -> this process
    (1.0, 5.0, False),  # 8 s of work -> two worker processes
    (0.1, 0.0, False),  # engine.pool_min_seconds = 0: always the workers
])
def test_local_map_runs_a_small_map_in_this_process(seconds, floor, here):
    ex = engine.create("local", {"pool_min_seconds": floor}, workers=2)
    items = list(range(8))
    assert ex.in_process(items, cost=lambda i: seconds) is here
    pids = ex.map(_pid, items, cost=lambda i: seconds)
    assert (set(pids) == {os.getpid()}) is here
    if not here:
        assert os.getpid() not in pids
    # without a cost estimate, two workers are two processes whatever the floor
    assert os.getpid() not in LocalExecutor(2, pool_min_seconds=floor).map(_pid, items)


def test_local_embed_hands_batches_back_in_plan_order():
    batches = [np.arange(s, s + 3) for s in range(0, 9, 3)]
    got = list(LocalExecutor().embed(batches, read=lambda b: b * 2, prepare=lambda x: x + 1,
                                     model_factory=lambda: (lambda x: x[:, None].astype(np.float32))))
    assert [b.tolist() for b, _ in got] == [b.tolist() for b in batches]
    assert np.concatenate([e for _, e in got]).ravel().tolist() == [2 * i + 1 for i in range(9)]


def test_engines_are_found_by_kind():
    assert {"local", "ray"} <= set(engine.kinds())
    assert isinstance(engine.create("local", {"fit_cpus": 1.0}, workers=2), LocalExecutor)
    with pytest.raises(EngineError, match="unknown engine"):
        engine.create("spark")
