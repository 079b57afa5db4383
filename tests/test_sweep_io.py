"""The sweep's fixed costs, removed without changing what it writes: run ids without a frame, skops imported
without torch (same trusted types), libsvm silent, saved-head writes that never poll."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featpipe.evaluation.table import KEY_COLUMNS, key_frame, run_id
from featpipe.heads.registry import make_head
from featpipe.params.config import HeadsParams

ROOT = Path(__file__).resolve().parents[1]

BASE = {"dataset": "d", "backbone": "resnet50", "weights": "default", "weights_id": "torchvision:IMAGENET1K_V2",
        "layer": "", "head": "svc", "head_params": {"C": 1.0, "kernel": "rbf"}, "shots": 5, "seed": 3,
        "split_sha256": "a" * 64}


def _frame_run_id(row) -> str:
    """The run id as the results table's key frame normalises the row (the definition run_id must keep)."""
    key = key_frame(pd.DataFrame([dict(row)])).iloc[0]
    text = json.dumps([str(key[k]) for k in KEY_COLUMNS], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize("change", [
    {}, {"layer": None}, {"layer": math.nan}, {"layer": "layer3"}, {"shots": 5.0, "seed": np.int64(3)},
    {"head_params": '{"kernel": "rbf", "C": 1.0}'}, {"head_params": None}, {"weights_id": None},
    {"split_sha256": math.nan}, {"head": "finetune:lora", "head_params": {}},
])
def test_run_id_is_the_key_frames_hash(change):
    row = BASE | change
    assert run_id(row) == _frame_run_id(row)
    without = {k: v for k, v in row.items() if k not in ("weights_id", "split_sha256")}  # older rows
    assert run_id(without) == _frame_run_id(without)


def test_run_id_names_a_missing_key_column():
    with pytest.raises(ValueError, match="key column 'head'"):
        run_id({k: v for k, v in BASE.items() if k != "head"})


_LISTS = """
import json, sys
import skops.io._trusted_types as t
names = sorted(n for n in dir(t) if n.isupper() and n.endswith("NAMES"))
print(json.dumps({"torch": "torch" in sys.modules, **{n: sorted(map(str, getattr(t, n))) for n in names}}))
"""


def _trusted(prelude: str) -> dict:
    out = subprocess.run([sys.executable, "-c", prelude + _LISTS], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_skops_imported_without_torch_trusts_exactly_what_skops_computes_itself():
    own = _trusted("")  # skops' own import (walks every sklearn package, torch included)
    ours = _trusted("from featpipe.heads.io import skops_io; skops_io()\n")
    assert ours.pop("torch") is False  # the point: no torch import to save a head
    own.pop("torch")
    assert len(own["SKLEARN_ESTIMATOR_TYPE_NAMES"]) > 100
    assert ours == own


def test_svc_head_fits_silently(capfd):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    X = rng.normal(size=(20, 8)) + y[:, None]
    make_head("svc", HeadsParams(), seed=0).fit(X, y)
    out, err = capfd.readouterr()
    assert "optimization finished" not in out + err



@pytest.mark.parametrize("head", ["logistic", "prototype"])
def test_pool_scaled_rows_are_memoised_and_score_bit_for_bit_as_the_pipeline(head):
    from featpipe.heads.scaling import fit_pipeline, pool_scaler, scaled_rows

    rng = np.random.default_rng(2)
    y = np.arange(60) % 2
    X = (rng.normal(size=(60, 16)) * 3 + y[:, None]).astype(np.float32)  # float32, as caches hold them
    pool = lambda center: pool_scaler(("test_sweep_io", head), lambda: X[:40], center_only=center)  # noqa: E731
    model = fit_pipeline(make_head(head, HeadsParams(), seed=0), X[:10], y[:10], kind="pool", pool=pool)
    rows = np.arange(10, 60)
    scaled = scaled_rows(model, ("cache", head), lambda: X[rows])
    np.testing.assert_array_equal(model[1:].predict_proba(scaled), model.predict_proba(X[rows]))
    assert scaled_rows(model, ("cache", head), lambda: 1 / 0) is scaled  # computed once per cache and rows
    kshot = fit_pipeline(make_head(head, HeadsParams(), seed=0), X[:10], y[:10], kind="kshot")
    assert scaled_rows(kshot, ("cache", head), lambda: X[rows]) is None  # its own scaler: scored as before
