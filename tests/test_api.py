"""The Python API: ``import featpipe`` stays light, the documented example runs, and the API's answers are the
library's (embeddings = the feature cache's rows; one-line errors as the parameter file gives them)."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import featpipe
from featpipe.core.errors import ConfigError, DataError
from featpipe.features.cache import cache_path
from featpipe.features.extract import extract
from featpipe.params.config import DecodeParams, ExtractParams
from test_fit import fit_cli, write_fixture

ROOT = Path(__file__).resolve().parents[1]


def test_import_featpipe_loads_no_torch_and_lists_the_api():
    code = ("import sys, featpipe; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'sklearn' not in sys.modules; print(','.join(featpipe.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    names = set(out.stdout.strip().split(","))
    assert {"create_backbone", "embed", "evaluate_fewshot", "make_head", "load_model", "summarize", "compare"} <= names
    assert names <= set(dir(featpipe))
    with pytest.raises(AttributeError):
        featpipe.no_such_function  # noqa: B018


def test_documented_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("api_example", ROOT / "docs" / "api_example.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(tmp_path)
    runs, preds = out["runs"], out["predictions"]
    assert len(runs) == 2 * 2 * 3 and runs["run_id"].is_unique
    assert set(preds["run_id"]) == set(runs["run_id"]) and set(preds["split"]) == {"val", "test"}
    assert len(out["summary"]) == 4 and out["summary"]["n_seeds"].eq(3).all()
    assert {"config_a", "config_b", "p_holm", "boot_ci_low"} <= set(out["comparisons"].columns)
    assert list(out["table"]["predicted"]) == ["normal", "opacity"]
    assert (tmp_path / "models" / "my-head.json").is_file()


def test_embed_equals_the_feature_cache_row(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (37, 45), dtype=np.uint8)).save(p)
        paths.append(p)
    manifest = pd.DataFrame({"id": [p.stem for p in paths], "path": [str(p) for p in paths], "label": [0, 1, 0],
                             "label_name": ["a", "b", "a"], "patient_id": ["p0", "p1", "p2"], "source_split": "",
                             "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
                             "width": 45, "height": 37})
    params = ExtractParams(backbones=("tiny_cnn",), device="cpu", precision="fp32")
    extract(manifest, backbone="tiny_cnn", dataset="d", cache_dir=tmp_path / "cache", params=params,
            decode=DecodeParams(workers=1), progress=False)
    cached = featpipe.load_features(cache_path(tmp_path / "cache", "d", "tiny_cnn"))
    backbone = featpipe.create_backbone("tiny_cnn")
    X = featpipe.embed(backbone, paths, device="cpu", precision="fp32")
    np.testing.assert_allclose(X, cached.select([p.stem for p in paths]).features, atol=1e-6)
    batch = np.stack([np.asarray(Image.open(p)) for p in paths])  # one numpy batch (N, H, W)
    np.testing.assert_allclose(featpipe.embed(backbone, batch, device="cpu", precision="fp32"), X, atol=1e-6)


def test_make_head_takes_keywords_and_refuses_unknown_ones_as_the_config_does():
    head = featpipe.make_head("svc", C=3.0, kernel="linear", l2_normalize=True)
    assert head[-1].C == 3.0 and [n for n, _ in head.steps] == ["scale", "l2", "clf"]
    with pytest.raises(ConfigError, match=r"^unknown parameter 'heads.svc.foo' \(known in heads.svc: "):
        featpipe.make_head("svc", foo=1)
    with pytest.raises(ConfigError, match="unknown head 'nope'"):
        featpipe.make_head("nope")


def test_evaluate_fewshot_refuses_overlapping_sets_and_matches_a_splits_file(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    X = rng.normal(size=(20, 8)) + y[:, None] * 3
    ids = [f"i{k}" for k in range(20)]
    with pytest.raises(DataError, match="in both train and test"):
        featpipe.evaluate_fewshot(X, y, ids, train=ids[:12], test=ids[11:])
    train, test = ids[:6] + ids[10:16], ids[6:10] + ids[16:]
    runs, preds = featpipe.evaluate_fewshot(X, y, ids, train=train, test=test, heads="prototype", shots=[2],
                                            seeds=[0, 1])
    assert list(runs["n_train"]) == [4, 4] and list(runs["n_test"]) == [8, 8]
    assert set(preds.loc[preds["split"] == "test", "id"]) == set(test)


def test_evaluate_fewshot_gives_the_rows_and_predictions_featpipe_fit_writes(tmp_path):
    (tmp_path / "none.yaml").write_text("fit:\n  n_jobs: 1\n")
    write_fixture(tmp_path)
    assert fit_cli(tmp_path, "--head", "logistic", "--shots", "5", "--seeds", "0", "1") == 0
    on_disk = pd.read_csv(tmp_path / "results" / "runs.csv").sort_values("seed").reset_index(drop=True)
    features = featpipe.load_features(tmp_path / "cache" / "toyset" / "toy.h5")
    runs, preds = featpipe.evaluate_fewshot(features, splits=tmp_path / "data" / "splits.json", heads="logistic",
                                            shots=[5], seeds=[0, 1])
    assert list(runs["run_id"]) == list(on_disk["run_id"])
    for col in ("accuracy", "auroc", "threshold", "brier", "val_balanced_accuracy"):
        np.testing.assert_allclose(runs[col].to_numpy(float), on_disk[col].to_numpy(float), rtol=1e-9, err_msg=col)
    written = featpipe.read_predictions(tmp_path / "results")
    key = ["run_id", "split", "id"]
    a, b = preds.sort_values(key).reset_index(drop=True), written.sort_values(key).reset_index(drop=True)
    assert list(a[key].astype(str).itertuples(index=False)) == list(b[key].astype(str).itertuples(index=False))
    np.testing.assert_allclose(a["p[pneumonia]"], b["p[pneumonia]"], atol=1e-7)
    summary = featpipe.summarize(runs)
    assert summary.loc[0, "accuracy"] == pytest.approx(on_disk["accuracy"].mean())
