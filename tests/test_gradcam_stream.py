"""Grad-CAM streams its outputs (issue 21, failure 12: a grid held every image, ~1.7 MB each, 3.56 GB for 2,000
files): images are read, explained and written a batch at a time, the grid is composed tile by tile and the maps
are written batch by batch; the files are what the user reads (every tile of the grid is its image's PNG, the
maps load with numpy). Peak memory at two sizes: benchmarks/bench_gradcam_memory.py."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.cli.main import main
from featpipe.data.synthetic import generate
from featpipe.explain import run as explain_run
from featpipe.explain.render import DPI, TILE_INCHES
from featpipe.explain.stream import GridPNG, MapsNPZ
from featpipe.heads.io import save_head
from featpipe.heads.registry import make_head
from featpipe.params.config import HeadsParams, SyntheticParams
from featpipe.backbones.model import build
from featpipe.backbones.modelinput import to_tensor_batch


def test_the_grid_png_is_composed_tile_by_tile(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(5)]
    title = rng.integers(0, 256, (3, 21, 3), dtype=np.uint8)
    grid = GridPNG(tmp_path / "g.png", n=5, tile=(5, 7), per_row=3, title=title)
    for t in tiles:
        grid.add(t)
    assert not (tmp_path / "g.png").exists()  # appears whole, when closed
    grid.close()
    got = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    blank = np.full((5, 7, 3), 255, np.uint8)
    want = np.concatenate([title, np.concatenate(tiles[:3], axis=1),
                           np.concatenate([tiles[3], tiles[4], blank], axis=1)])
    assert np.array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]


def test_the_maps_npz_is_written_batch_by_batch_and_aborts_cleanly(tmp_path):
    maps = np.random.default_rng(1).random((7, 4, 4)).astype(np.float32)
    out = MapsNPZ(tmp_path / "maps.npz", [f"i{k}" for k in range(7)], (4, 4))
    for s in range(0, 7, 3):
        out.add(maps[s:s + 3])
    out.close()
    with np.load(tmp_path / "maps.npz") as z:
        assert list(z["ids"]) == [f"i{k}" for k in range(7)]
        assert z["maps"].dtype == np.float16 and np.array_equal(z["maps"], maps.astype(np.float16))
    half = MapsNPZ(tmp_path / "other.npz", ["a", "b"], (4, 4))
    half.add(maps[:1])
    half.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]


@pytest.fixture(scope="module")
def saved_head(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs")
    out = generate(root / "s", SyntheticParams(classes=2, images_per_class=40, size=48, images_per_patient=1, seed=0))
    files = sorted(out.glob("*/*.png"))
    y = np.array([0 if f.parent.name == "normal" else 1 for f in files])
    fm = build("tiny_cnn")
    px = np.stack([np.asarray(Image.open(f))[..., None] for f in files])
    with torch.no_grad():
        feats = fm(to_tensor_batch(px, fm.spec.preprocess.mean, fm.spec.preprocess.std)).numpy()
    pipe = make_head("logistic", replace(HeadsParams(), cv_folds=0), seed=0).fit(feats, y)
    meta = {"dataset": "syn", "classes": ["normal", "finding1"], "backbone": "tiny_cnn", "weights": "default",
            "weights_id": fm.weights_id, "layer": "", "preprocess": fm.spec.preprocess.to_dict(),
            "embedding_dim": 32, "threshold": 0.5}
    return save_head(root / "m.skops", pipe, meta), [str(f) for f in files]


def test_gradcam_explains_and_writes_a_batch_at_a_time(saved_head, tmp_path, monkeypatch):
    model, files = saved_head
    (tmp_path / "broken.png").write_bytes(b"not a png")
    images = files[:45] + [str(tmp_path / "broken.png")] + files[45:70]
    batches, real = [], explain_run.gradcam
    monkeypatch.setattr(explain_run, "gradcam", lambda m, x, *a, **k: batches.append(len(x)) or real(m, x, *a, **k))
    out = tmp_path / "reports"
    assert main(["gradcam", "--model", str(model), "--images", *images, "--out", str(out),
                 "--layer", "features.denseblock2"]) == 0
    run = out / "m"
    index = json.loads((run / "index.json").read_text())
    ids = [r["id"] for r in index["images"]]
    assert ids == files[:70] and index["info"]["rejects"][0]["path"] == str(tmp_path / "broken.png")
    assert max(batches) == explain_run.BATCH and sum(batches) == 70  # never the whole set at once
    with np.load(run / "maps.npz") as z:
        assert list(z["ids"]) == ids and z["maps"].shape == (70, 32, 32)
        assert float(z["maps"].min()) >= 0 and float(z["maps"].max()) <= 1
    grid = np.asarray(Image.open(run / "grid.png").convert("RGB"))
    th, tw = int(TILE_INCHES[1] * DPI), int(TILE_INCHES[0] * DPI)
    top = grid.shape[0] - 35 * th  # 70 tiles, 2 per row, under the title strip
    assert grid.shape[1] == 2 * tw and 0 < top < th
    for k in (0, 1, 44, 69):  # each cell of the grid is that image's own PNG
        r, c = divmod(k, 2)
        tile = np.asarray(Image.open(run / index["images"][k]["file"]).convert("RGB"))
        assert np.array_equal(grid[top + r * th: top + (r + 1) * th, c * tw:(c + 1) * tw], tile)
