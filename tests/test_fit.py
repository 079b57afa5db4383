"""featpipe fit / sweep end to end on a hand-written splits.json and feature cache."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from featpipe.cli.main import main
from featpipe.core import checksums
from featpipe.params.config import load_params
from featpipe.core.errors import CacheError, DataError
from featpipe.evaluation.metrics import choose_threshold
from featpipe.evaluation.table import read_curves

D = 16
MANIFEST_SHA = "m" * 64


def write_cache(path: Path, ids, X, y, **attrs) -> Path:
    """The feature-cache layout of docs/architecture.md (with its per-block checksums), written with h5py directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"backbone": "toy", "weights": "default", "weights_id": "random:seed0", "layer": "",
            "preprocess": json.dumps({"input_size": 28, "mean": [0.5] * 3, "std": [0.5] * 3}),
            "manifest_sha256": MANIFEST_SHA, "embedding_dim": X.shape[1], "precision": "fp32", "complete": True}
    with h5py.File(path, "w") as f:
        f["features"] = np.asarray(X, np.float32)
        checksums.write(f, "features", checksums.of_dataset(f["features"]), checksums.BLOCK_ROWS)  # as extract writes
        f["ids"] = np.asarray(ids, dtype=object).astype(h5py.string_dtype("utf-8"))
        f["labels"] = np.asarray(y, np.int64)
        for k, v in (base | attrs).items():
            f.attrs[k] = v
    return path


def write_fixture(root: Path, *, sep: float = 4.0, n_train=40, n_val=30, n_test=60, seeds=(0, 1, 2), shots=(2, 5, 10),
                  backbone="toy", cache_attrs=None) -> dict:
    """splits.json + cache/<dataset>/<backbone>.h5 + manifest.csv (two images per patient)."""
    rng = np.random.default_rng(0)
    mu = np.zeros(D)
    mu[0] = sep / 2
    ids, y = [], []
    for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            ids.append(f"{part}/{i}")
            y.append(i % 2)
    y = np.array(y)
    X = rng.normal(size=(len(ids), D)) + np.outer(2 * y - 1, mu)
    train = [i for i in ids if i.startswith("train")]
    by_class = {c: [i for i, lab in zip(ids, y) if i.startswith("train") and lab == c] for c in (0, 1)}
    fewshot = {}
    for s in seeds:
        order = {c: list(np.random.default_rng(s).permutation(v)) for c, v in by_class.items()}
        fewshot[str(s)] = {str(k): sorted(order[0][:k] + order[1][:k]) for k in shots}  # nested in k
    splits = {"format": 1, "dataset": "toyset", "classes": ["normal", "pneumonia"], "manifest_sha256": MANIFEST_SHA,
              "params": {}, "train": train, "val": [i for i in ids if i.startswith("val")],
              "test": [i for i in ids if i.startswith("test")], "fewshot": fewshot, "capped": {}, "excluded": []}
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "splits.json").write_text(json.dumps(splits))
    pd.DataFrame({"id": ids, "path": ids, "label": y, "label_name": np.where(y == 1, "pneumonia", "normal"),
                  "patient_id": [f"{i.split('/')[0]}-{int(i.split('/')[1]) // 2}" for i in ids],
                  "source_split": [i.split("/")[0] for i in ids], "sha256": [f"{n:064x}" for n in range(len(ids))],
                  "width": 28, "height": 28}
                 ).to_csv(root / "data" / "manifest.csv", index=False)
    write_cache(root / "cache" / "toyset" / f"{backbone}.h5", ids, X, y, backbone=backbone, **(cache_attrs or {}))
    return {"ids": ids, "X": X, "y": y, "splits": splits}


def fit_cli(root: Path, *args) -> int:
    return main(["fit", "--splits", str(root / "data/splits.json"), "--manifest", str(root / "data/manifest.csv"),
                 "--cache-dir", str(root / "cache"),
                 "--results", str(root / "results"), "--models", str(root / "models"), "--backbone", "toy",
                 "--params", str(root / "none.yaml"), *args])


@pytest.fixture
def project(tmp_path):
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n")
    write_fixture(tmp_path)
    return tmp_path


def test_fit_end_to_end_writes_rows_metrics_and_models(project, capsys):
    assert fit_cli(project, "--head", "svc", "--shots", "10", "--seeds", "0", "1", "2", "--bootstrap-seed", "1") == 0
    out = capsys.readouterr().out
    assert "toyset/toy+random/svc/k10" in out and "balanced_accuracy" in out and "95% CI" in out
    assert "patient-level bootstrap" in out
    runs = pd.read_csv(project / "results/runs.csv")
    assert len(runs) == 3 and sorted(runs["seed"]) == [0, 1, 2]
    assert (runs["accuracy"] >= 0.65).all() and (runs["n_train"] == 20).all() and (runs["n_test"] == 60).all()
    for col in ("dataset", "backbone", "weights", "layer", "head", "head_params", "shots", "split_sha256", "ids_sha256",
                "auroc", "auprc", "auprc_baseline", "sensitivity", "specificity", "threshold", "brier", "model_path",
                "recall[pneumonia]"):
        assert col in runs.columns, col
    assert runs["ids_sha256"].nunique() == 3  # each seed its own k-shot ids
    summary = json.loads((project / "results/summary.json").read_text())
    entry = summary["toyset/toy+random/svc/k10"]
    assert entry["n_seeds"] == 3 and entry["accuracy"]["mean"] == pytest.approx(runs["accuracy"].mean())
    assert entry["accuracy"]["spread"] == pytest.approx(runs["accuracy"].max() - runs["accuracy"].min())
    for path in runs["model_path"]:
        assert Path(path).is_file() and Path(path).with_suffix(".json").is_file()
        assert Path(path).name.startswith("toy-svc-k10-s")
    curves = read_curves(project / "results")
    assert set(curves) == set(runs["run_id"]) and all(any(v["roc"] for v in c.values()) for c in curves.values())


def test_fit_prints_one_summary_row_per_configuration_and_the_details_only_with_verbose(project, capsys):
    """The default output is one table row per configuration whose numbers are runs.csv's across seeds (mean and
    the summary's 95% interval of balanced accuracy, AUROC and the selection metric macro F1); ``--verbose`` adds
    every metric's mean/std/intervals/min/max/spread."""
    import re

    assert fit_cli(project, "--head", "logistic", "--shots", "5", "--seeds", "0", "1", "2") == 0
    out = capsys.readouterr().out
    runs = pd.read_csv(project / "results/runs.csv")
    entry = json.loads((project / "results/summary.json").read_text())["toyset/toy+random/logistic/k5"]
    rows = [ln for ln in out.splitlines() if "toyset/toy+random/logistic/k5" in ln]
    assert len(rows) == 1 and rows[0].startswith("* ")  # one row; the configuration chosen on val (the only one)
    assert rows[0].split()[2] == "3"  # seeds
    cells = re.findall(r"(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", rows[0])
    assert len(cells) == 3
    for (mean, lo, hi), metric in zip(cells, ("balanced_accuracy", "auroc", "macro_f1")):
        assert float(mean) == pytest.approx(runs[metric].mean(), abs=5e-4)
        assert (float(lo), float(hi)) == pytest.approx((entry[metric]["ci_low"], entry[metric]["ci_high"]), abs=5e-4)
    assert rows[0].split()[-1] == ("yes" if entry["clinical_grade"] else "no")
    assert "spread" not in out and "brier" not in out and len(out.splitlines()) < 15
    assert fit_cli(project, "--head", "logistic", "--shots", "5", "--seeds", "0", "1", "2", "--verbose") == 0
    verbose = capsys.readouterr().out
    assert verbose.startswith(out.split("per class")[0])  # the same table first, then the details
    assert "details per configuration (--verbose)" in verbose and "spread" in verbose
    brier = next(ln for ln in verbose.splitlines() if ln.split()[:1] == ["brier"])
    assert float(brier.split()[1]) == pytest.approx(runs["brier"].mean(), abs=5e-4)


def test_rerun_replaces_rows_and_reproduces_numbers(project):
    assert fit_cli(project, "--head", "logistic", "--shots", "5", "--seeds", "0", "1") == 0
    first = pd.read_csv(project / "results/runs.csv")
    assert fit_cli(project, "--head", "logistic", "--shots", "5", "--seeds", "0", "1") == 0
    again = pd.read_csv(project / "results/runs.csv")
    assert len(again) == 2
    pd.testing.assert_frame_equal(first, again)  # same cache + params + seed -> same numbers
    assert fit_cli(project, "--head", "logistic", "--shots", "2", "--seeds", "0") == 0
    assert fit_cli(project, "--head", "prototype", "--shots", "5", "--seeds", "0", "-S", "heads.l2_normalize=true") == 0
    table = pd.read_csv(project / "results/runs.csv")
    assert len(table) == 4 and set(table["head"]) == {"logistic", "prototype"}


def test_threshold_comes_from_val_never_test(tmp_path):
    from featpipe.results.stages import fit
    from featpipe.heads.io import load_head

    params = load_params(None, ["fit.n_jobs=1"])
    fx = write_fixture(tmp_path, sep=1.5)
    runs, _ = fit(tmp_path / "data/splits.json", head="svc", shots=10, seeds=[0], params=params, backbone="toy",
                  cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", models_dir=tmp_path / "models")
    row = runs[0].row
    head = load_head(row["model_path"])
    val = [i for i, k in enumerate(fx["ids"]) if k.startswith("val/")]
    expected = choose_threshold(fx["y"][val], head.pipeline.predict_proba(fx["X"][val].astype(np.float32)))
    assert row["threshold"] == pytest.approx(expected) and head.meta["threshold"] == pytest.approx(expected)
    # flipping every test label changes the test metrics, not the threshold
    y2 = fx["y"].copy()
    test = [i for i, k in enumerate(fx["ids"]) if k.startswith("test/")]
    y2[test] = 1 - y2[test]
    write_cache(tmp_path / "cache/toyset/toy.h5", fx["ids"], fx["X"], y2)
    runs2, _ = fit(tmp_path / "data/splits.json", head="svc", shots=10, seeds=[0], params=params, backbone="toy",
                   cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", models_dir=None)
    assert runs2[0].row["threshold"] == row["threshold"]
    assert runs2[0].row["accuracy"] == pytest.approx(1 - row["accuracy"])


def test_stale_cache_and_leaky_splits_are_refused(tmp_path, capsys):
    (tmp_path / "none.yaml").write_text("")
    write_fixture(tmp_path, cache_attrs={"manifest_sha256": "other"})
    assert fit_cli(tmp_path, "--head", "svc", "--shots", "5") == 1
    err = capsys.readouterr().err
    assert "stale cache" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    from featpipe.data.splits import load_splits
    from featpipe.fewshot.fit import fit_run, load_cache

    write_fixture(tmp_path)
    s = json.loads((tmp_path / "data/splits.json").read_text())
    s["fewshot"]["0"]["5"][0] = s["test"][0]
    (tmp_path / "data/splits.json").write_text(json.dumps(s))
    with pytest.raises(DataError, match="not in train"):  # refused when the file is read
        load_splits(tmp_path / "data/splits.json")
    leaky = load_splits(tmp_path / "data/splits.json", check=False)
    data = load_cache(tmp_path / "cache", leaky, "toy")
    with pytest.raises(DataError, match="also in val/test"):  # and by the run itself
        fit_run(data, leaky, head="svc", shots=5, seed=0, params=load_params(None))
    splits = load_splits(tmp_path / "data/splits.json", check=False)
    with pytest.raises(CacheError, match="not found"):
        load_cache(tmp_path / "cache", splits, "other_backbone")


def test_sweep_parallel_equals_serial(tmp_path):
    from featpipe.results.stages import sweep

    write_fixture(tmp_path, backbone="toy")
    fx = write_fixture(tmp_path, backbone="toy2")
    # engine.pool_min_seconds=0: two worker processes, however small the grid (the default runs it in this process)
    params = load_params(None, ["fit.save_models=false", "fit.curves=false", "heads.mlp.epochs=30",
                                "engine.pool_min_seconds=0"])
    kw = dict(params=params, cache_dir=tmp_path / "cache", models_dir=None, backbones=["toy", "toy2"],
              heads=["svc", "mlp", "prototype"], shots=[2, 10], seeds=[0, 1])
    serial = sweep(tmp_path / "data/splits.json", results_dir=tmp_path / "r1", n_jobs=1, **kw)
    parallel = sweep(tmp_path / "data/splits.json", results_dir=tmp_path / "r2", n_jobs=2, **kw)
    assert len(serial) == len(parallel) == 2 * 3 * 2 * 2
    a, b = pd.read_csv(tmp_path / "r1/runs.csv"), pd.read_csv(tmp_path / "r2/runs.csv")
    assert len(a) == 24
    pd.testing.assert_frame_equal(a, b)
    assert set(json.loads((tmp_path / "r2/summary.json").read_text())) >= {"toyset/toy2+random/mlp/k10", "toyset/toy+random/svc/k2"}
    assert fx["splits"]["dataset"] == "toyset"


def test_parallel_sweep_saves_heads_under_the_callers_relative_models_dir(tmp_path, monkeypatch):
    """joblib/loky reuses its worker processes across calls: a second sweep from another working directory must
    still save its heads under *this* directory's ``models/`` (found by running the CLI's default paths in-process)."""
    from featpipe.results.stages import sweep

    params = load_params(None, ["fit.curves=false", "engine.pool_min_seconds=0"])  # worker processes, not this one
    kw = dict(params=params, backbones=["toy"], heads=["svc", "prototype"], shots=[2], seeds=[0, 1], n_jobs=2)
    for name in ("first", "second"):
        root = tmp_path / name
        write_fixture(root, backbone="toy", seeds=(0, 1), shots=(2,))
        monkeypatch.chdir(root)
        runs = sweep("data/splits.json", cache_dir="cache", results_dir="results", models_dir="models", **kw)
        saved = sorted(p.name for p in (root / "models").rglob("*.skops"))
        assert len(saved) == len(runs) == 4, (name, saved)
        assert all((root / r.model_path).is_file() for r in runs)


def test_cost_estimate_keeps_the_study_grid_on_workers_and_a_ten_run_fit_in_this_process():
    """The local engine starts its workers only for a grid estimated at engine.pool_min_seconds (5 s) or more:
    the benchmark's 960-run grid (about 40 s of CPU measured) must go to the workers, ``featpipe fit-svc --shots 10``
    (10 runs, ~0.2 s of fits, measured 5.25 s with two workers against 2.66 s in one process: small_fit.md) must not."""
    from featpipe.engine.local import LocalExecutor
    from featpipe.fewshot.fit import _cost

    sizes = [(824, 2208), (824, 2048), (824, 1152)]  # val + test rows, embedding dims of the benchmark caches
    heads = ("svc", "logistic", "mlp", "prototype")
    grid = [(c, heads, k, s) for c in range(3) for k in (1, 2, 5, 10, 20, 50, 100, 200) for s in range(10)]
    cost = functools.partial(_cost, sizes=sizes)
    assert 20 < sum(map(cost, grid)) < 80  # measured: ~39 s of CPU in one process (sweep_phases.py)
    ten = [(0, ("svc",), 10, s) for s in range(10)]
    assert 0.1 < sum(map(cost, ten)) < 1.0  # measured: ~0.19 s
    ex = LocalExecutor(2)
    assert not ex.in_process(grid, cost) and ex.in_process(ten, cost)
    # a multi-label task fits one head per label: 14 labels make the same 10 runs 14 times the work
    assert sum(map(functools.partial(_cost, sizes=sizes, labels=14), ten)) == pytest.approx(14 * sum(map(cost, ten)))
