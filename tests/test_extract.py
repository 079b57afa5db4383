"""Extraction into the feature cache: correct, incremental, never stale, resumable after SIGKILL, shardable."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from featpipe.backbones import registry
from featpipe.backbones.model import build
from featpipe.core import checksums
from featpipe.features import cache as featcache
from featpipe.cli.main import main
from featpipe.params.config import DecodeParams, ExtractParams
from featpipe.core.errors import CacheError
from featpipe.features.extract import extract
from featpipe.features.shards import merge_shards, parse_shard, shard_bounds

FIGURE1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "figure1-covid-cxr"
FP32 = ExtractParams(batch_size=4, precision="fp32")
ONE_WORKER = DecodeParams(workers=1)  # tiny images: a process pool costs more than it saves
REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (40 + seed % 3, 44), dtype=np.uint8)
    if seed % 4 == 1:  # some colour images among the grayscale ones
        arr = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _manifest(root: Path, seeds, name="manifest.csv") -> Path:
    rows = []
    for s in seeds:
        p = root / "img" / f"{s:03d}.png"
        if not p.exists():
            _image(p, s)
        w, h = Image.open(p).size
        rows.append({"id": f"img/{s:03d}.png", "path": str(p), "label": s % 2, "label_name": "ab"[s % 2],
                     "patient_id": f"p{s}", "source_split": "", "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                     "width": w, "height": h})
    out = root / name
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def _run(manifest, cache, params=FP32, **kw):
    return extract(manifest, backbone=kw.pop("backbone", "tiny_cnn"), dataset="t", cache_dir=cache, params=params,
                   decode=ONE_WORKER, progress=False, **kw)


def test_features_equal_the_model_on_decoded_images(tmp_path):
    from featpipe.backbones.modelinput import to_tensor_batch
    from featpipe.imaging.decode import decode

    m = _manifest(tmp_path, range(10))
    r = _run(m, tmp_path / "cache")
    assert r.path == tmp_path / "cache" / "t" / "tiny_cnn.h5" and (r.extracted, r.reused) == (10, 0)
    fs = featcache.read_features(r.path)
    df = pd.read_csv(m, dtype=str)
    assert fs.ids.tolist() == df["id"].tolist() and fs.labels.tolist() == [i % 2 for i in range(10)]
    a = fs.attrs
    assert (a["backbone"], a["weights_id"], a["layer"], a["precision"], a["embedding_dim"]) == (
        "tiny_cnn", "random:seed0", "", "fp32", 32)
    assert a["manifest_sha256"] == hashlib.sha256(m.read_bytes()).hexdigest() and a["preprocess"]["input_size"] == 32
    assert a["torch_version"] == torch.__version__ and a["torchvision_version"] and a["transformers_version"]
    spec = registry.get("tiny_cnn")
    images = np.stack([decode(p, size=32, channels=3) for p in df["path"]])
    with torch.inference_mode():
        direct = build(spec)(to_tensor_batch(images, spec.preprocess.mean, spec.preprocess.std)).numpy()
    np.testing.assert_allclose(fs.features, direct, atol=1e-5)
    assert not list((tmp_path / "cache" / "t").glob("*.partial"))


def test_incremental_runs_extract_only_what_changed(tmp_path):
    cache = tmp_path / "cache"
    r1 = _run(_manifest(tmp_path, range(12)), cache)
    before = featcache.read_features(r1.path)
    assert _run(_manifest(tmp_path, range(12)), cache).extracted == 0  # nothing to do
    _image(tmp_path / "img" / "001.png", seed=99)  # a changed file
    m2 = _manifest(tmp_path, list(range(1, 12)) + [20, 21, 22])  # one removed, three added
    r2 = _run(m2, cache)
    assert (r2.extracted, r2.reused, r2.dropped, r2.images) == (4, 10, 1, 14)
    after = featcache.read_features(r2.path)
    assert after.ids.tolist() == pd.read_csv(m2, dtype=str)["id"].tolist()
    assert np.array_equal(after.select(before.ids[2:]).features, before.features[2:])  # reused rows untouched
    assert not np.allclose(after.features[0], before.features[1])  # img/001 re-extracted
    fresh = featcache.read_features(_run(m2, tmp_path / "fresh").path)
    np.testing.assert_allclose(after.features, fresh.features, atol=1e-5)


@pytest.mark.parametrize("stale", ["preprocess", "weights_id", "precision"])
def test_a_cache_made_for_another_request_is_not_reused(tmp_path, stale, capsys):
    m = _manifest(tmp_path, range(6))
    r = _run(m, tmp_path / "cache")
    good = featcache.read_features(r.path).features
    with h5py.File(r.path, "a") as f:  # as if written by other weights / preprocessing / precision
        f["features"][...] = 0.0
        f.attrs[stale] = {"preprocess": '{"input_size": 28}', "weights_id": "sha256:00", "precision": "bf16"}[stale]
    again = extract(m, backbone="tiny_cnn", dataset="t", cache_dir=tmp_path / "cache", params=FP32, decode=ONE_WORKER)
    assert (again.extracted, again.reused) == (6, 0)
    assert stale in capsys.readouterr().err  # said, not silent
    np.testing.assert_array_equal(featcache.read_features(r.path).features, good)


def test_rows_of_another_manifest_version_are_not_reused(tmp_path):
    m = _manifest(tmp_path, range(6))
    r = _run(m, tmp_path / "cache")
    good = featcache.read_features(r.path).features
    with h5py.File(r.path, "a") as f:  # row 2 came from a different file with the same id
        f["features"][2] = 0.0
        f["sha256"][2] = "0" * 64
        f["features_crc32"][...] = checksums.of_dataset(f["features"])  # a sound file, of another manifest
    again = _run(m, tmp_path / "cache")
    assert (again.extracted, again.reused) == (1, 5)
    np.testing.assert_allclose(featcache.read_features(r.path).features, good, atol=1e-6)


def test_other_weights_and_layers_get_their_own_files(tmp_path):
    m = _manifest(tmp_path, range(6))
    base = _run(m, tmp_path / "cache")
    torch.manual_seed(1)
    wfile = tmp_path / "w.pt"
    torch.save(registry.get("tiny_cnn").make().state_dict(), wfile)
    other = _run(m, tmp_path / "cache", params=ExtractParams(batch_size=4, precision="fp32", weights=str(wfile)))
    assert other.path != base.path and other.path.name.startswith("tiny_cnn+w-") and other.extracted == 6
    assert featcache.read_attrs(other.path)["weights_id"].startswith("sha256:")
    cut = _run(m, tmp_path / "cache", params=ExtractParams(batch_size=4, precision="fp32", layer="denseblock2"))
    assert cut.path.name == "tiny_cnn@features.denseblock2.h5"
    fs = featcache.read_features(cut.path)
    assert fs.features.shape == (6, 16 + 2 * 8) and fs.attrs["layer"] == "features.denseblock2"


KILL_AFTER_TWO_BATCHES = """
import os, signal, sys
from featpipe.backbones.model import FeatureModel
from featpipe.params.config import DecodeParams, ExtractParams
from featpipe.features.extract import extract
calls = [0]
forward = FeatureModel.forward
def dying_forward(self, x):
    calls[0] += 1
    if calls[0] == 3:  # two batches written, the third in flight
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, x)
FeatureModel.forward = dying_forward
extract(sys.argv[1], backbone="tiny_cnn", dataset="t", cache_dir=sys.argv[2],
        params=ExtractParams(batch_size=4), decode=DecodeParams(workers=1), progress=False)
"""


def test_sigkill_mid_run_resumes_to_the_uninterrupted_features(tmp_path):
    m = _manifest(tmp_path, range(18))
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_BATCHES, str(m), str(cache)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    final = cache / "t" / "tiny_cnn.h5"
    assert not final.exists()  # nothing half-written under the final name
    data = final.with_name("tiny_cnn.h5.partial") / "features.f32"
    assert data.stat().st_size == 8 * 32 * 4
    with open(data, "ab") as f:
        f.write(b"\x01" * 50)  # and a torn write on top
    params = ExtractParams(batch_size=4)  # precision auto, as in the killed run
    resumed = _run(m, cache, params=params)
    assert (resumed.resumed, resumed.extracted) == (8, 10)
    uninterrupted = _run(m, tmp_path / "clean", params=params)
    a, b = featcache.read_features(resumed.path), featcache.read_features(uninterrupted.path)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.ids, b.ids)
    assert not data.parent.exists()


def test_shards_merged_equal_one_run(tmp_path, capsys):
    m = _manifest(tmp_path, range(18))
    assert [shard_bounds(18, 4, i, 3) for i in range(3)] == [(0, 4), (4, 12), (12, 18)]
    assert parse_shard("2/3") == (2, 3)
    for i in range(3):
        if i == 1:
            with pytest.raises(CacheError, match="incomplete or mixed"):
                merge_shards(m, backbone="tiny_cnn", dataset="t", cache_dir=tmp_path / "cache", params=FP32)
        r = _run(m, tmp_path / "cache", shard=(i, 3))
        assert r.path.name == f"tiny_cnn.shard-{i}-of-3.h5"
    merged = featcache.read_features(
        merge_shards(m, backbone="tiny_cnn", dataset="t", cache_dir=tmp_path / "cache", params=FP32))
    one = featcache.read_features(_run(m, tmp_path / "one").path)
    assert np.array_equal(merged.ids, one.ids) and np.array_equal(merged.labels, one.labels)
    assert np.array_equal(merged.features, one.features)
    skip = {"device", "shard", "shard_rows"}
    assert {k: v for k, v in merged.attrs.items() if k not in skip} == {k: v for k, v in one.attrs.items() if k not in skip}


def test_cli_extracts_every_configured_backbone_and_merges(tmp_path, capsys):
    m = _manifest(tmp_path, range(6))
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  name: cli\ndecode:\n  workers: 1\nextract:\n  backbones: [tiny_cnn, tiny_siglip]\n  batch_size: 4\n")
    common = ["--params", str(params), "--manifest", str(m), "--cache-dir", str(tmp_path / "c")]
    assert main(["extract", *common, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tiny_cnn: 6 images" in out and "tiny_siglip: 6 images" in out
    assert featcache.read_features(tmp_path / "c" / "cli" / "tiny_siglip.h5").features.shape == (6, 32)
    for i in range(2):
        assert main(["extract", *common, "--backbone", "tiny_vit", "--shard", f"{i}/2", "--no-progress"]) == 0
    assert main(["merge-shards", *common, "--backbone", "tiny_vit"]) == 0
    assert featcache.read_features(tmp_path / "c" / "cli" / "tiny_vit.h5").features.shape == (6, 16)
    capsys.readouterr()
    assert main(["extract", *common, "--backbone", "tiny_cnn", "--weights", str(tmp_path / "none.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.pth not found" in err
    assert main(["extract", *common, "--backbone", "tiny_cnn", "--layer", "layer9"]) == 1
    assert "no cut point 'layer9'" in capsys.readouterr().err
    assert main(["backbones", "--params", str(params)]) == 0
    listing = capsys.readouterr().out
    assert "densenet161" in listing and "2208" in listing and "google/medsiglip-448" in listing


def test_real_radiographs_extract(tmp_path):
    if not FIGURE1.is_dir():
        pytest.skip(f"real data not found at {FIGURE1} (the shared data folder beside the repo)")
    files = sorted(FIGURE1.glob("images/*.jpg"))[:4] + sorted(FIGURE1.glob("images/*.png"))[:1]
    rows = [{"id": p.name, "path": str(p), "label": 0, "label_name": "x", "patient_id": p.stem, "source_split": "",
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "width": 0, "height": 0} for p in files]
    r = extract(pd.DataFrame(rows), backbone="tiny_siglip", dataset="real", cache_dir=tmp_path, params=FP32,
                decode=ONE_WORKER, progress=False)
    fs = featcache.read_features(r.path)
    assert fs.features.shape == (5, 32) and np.isfinite(fs.features).all()
    assert len(np.unique(fs.features.round(4), axis=0)) == 5  # different images, different embeddings
