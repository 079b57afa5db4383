"""Grad-CAM: map shape and range, class dependence, token-grid reshapes, hooks, sanity check, rendering."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.backbones import registry
from featpipe.backbones.model import build
from featpipe.params.config import HeadsParams, SyntheticParams
from featpipe.backbones.modelinput import to_tensor_batch
from featpipe.explain.gradcam import gradcam, grid_shape, layer_grid, token_grid
from featpipe.explain.sanity import edge_map, sanity_check, spearman
from featpipe.explain.select import select_examples
from featpipe.heads.torch_twin import FrozenWithHead, torch_head
from featpipe.heads.registry import make_head

SIZE = 64  # tiny_cnn at 64 px: norm5 is 2 x 2, denseblock3 4 x 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Synthetic images (signal of finding1 in the top-left quadrant) and tiny_cnn + a fitted logistic head."""
    from featpipe.data.synthetic import generate

    out = generate(tmp_path_factory.mktemp("syn") / "s", SyntheticParams(classes=2, images_per_class=24, size=SIZE,
                                                                           images_per_patient=1, seed=0))
    files = sorted(out.glob("*/*.png"))
    y = np.array([0 if f.parent.name == "normal" else 1 for f in files])
    px = np.stack([np.asarray(Image.open(f))[..., None] for f in files])
    fm = build("tiny_cnn")
    x = to_tensor_batch(px, fm.spec.preprocess.mean, fm.spec.preprocess.std)
    with torch.no_grad():
        feats = fm(x).numpy()
    pipe = make_head("logistic", replace(HeadsParams(), cv_folds=0), seed=0).fit(feats, y)
    return {"x": x, "y": y, "px": px, "model": FrozenWithHead(fm, torch_head(pipe)).eval(), "dir": out}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def test_maps_have_input_size_and_unit_range_and_depend_on_class(synthetic):
    model, x = synthetic["model"], synthetic["x"][:6]
    m1 = gradcam(model, x, [1] * 6, layer="features.denseblock3")
    m0 = gradcam(model, x, [0] * 6, layer="features.denseblock3")
    assert m1.shape == (6, SIZE, SIZE) and m1.dtype == np.float32
    assert m1.min() >= 0 and m1.max() <= 1 and m1.max() > 0.99  # each map scaled to [0, 1]
    assert np.abs(m1 - m0).max() > 0.5  # binary head: class 0 explains -d, class 1 explains d


def test_finetuned_multiclass_maps_differ_between_classes():
    from featpipe.finetune import build_model

    model, _ = build_model("tiny_cnn", "full", 3, seed=0)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = [gradcam(model, x, [c, c]) for c in range(3)]
    assert all(m.shape == (2, SIZE, SIZE) for m in maps)
    assert np.abs(maps[0] - maps[1]).max() > 0.1 and np.abs(maps[1] - maps[2]).max() > 0.1


def test_no_hooks_left_and_model_untouched_even_under_inference_mode(synthetic):
    model = synthetic["model"]
    before = _hooks(model)
    flags = [p.requires_grad for p in model.parameters()]
    with torch.inference_mode():  # the cache is made in inference mode; Grad-CAM must still get gradients
        maps = gradcam(model, synthetic["x"][:2], [1, 1], layer="features.denseblock3")
    assert maps.max() > 0
    assert _hooks(model) == before == 0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(Exception):
        gradcam(model, synthetic["x"][:2], [5, 5])  # no class 5: fails ...
    assert _hooks(model) == 0  # ... and leaves no hook behind


def test_siglip_token_grid_448_patch_14_and_tiny():
    from featpipe.backbones.nets import siglip_config

    cfg = siglip_config(**registry.get("medsiglip").make.config)
    side = cfg.image_size // cfg.patch_size
    assert (side, side) == (32, 32)
    tokens = torch.randn(1, side * side, 8)
    grid = token_grid(tokens, registry.get("medsiglip").prefix_tokens)  # SigLIP: no CLS token
    assert grid.shape == (1, 8, 32, 32)
    assert torch.equal(grid[0, :, 0, 0], tokens[0, 0]) and torch.equal(grid[0, :, 0, 1], tokens[0, 1])
    vit = token_grid(torch.randn(1, 197, 4), registry.get("vit_b_16").prefix_tokens)  # CLS dropped
    assert vit.shape == (1, 4, 14, 14)
    with pytest.raises(Exception):
        grid_shape(197, 0)  # keeping ViT's CLS token is not a grid
    from featpipe.finetune import build_model

    model, spec = build_model("tiny_siglip", "full", 2, seed=0)
    x = torch.randn(2, 3, 28, 28)
    assert layer_grid(model, x) == (2, 2)  # 28 px / patch 14
    maps = gradcam(model, x, [0, 1])
    assert maps.shape == (2, 28, 28) and 0 <= maps.min() and maps.max() <= 1 and _hooks(model) == 0


def test_sanity_check_passes_for_model_and_fails_for_edge_detector(synthetic):
    model, x = synthetic["model"], synthetic["x"][-6:]  # finding1 images
    real = sanity_check(model, x, layers=2, threshold=0.5, gradcam_layer="features.denseblock3")
    assert real.passed, real.summary()
    assert real.correlation < 0.5 and len(real.cascade) == 2
    edges = sanity_check(model, x, explain=lambda m, xx, t: edge_map(m, xx), layers=2)
    assert not edges.passed and edges.correlation > 0.99
    # the model is restored exactly after the check
    after = gradcam(model, x[:2], [1, 1], layer="features.denseblock3")
    np.testing.assert_allclose(after, gradcam(model, x[:2], [1, 1], layer="features.denseblock3"), atol=1e-6)
    assert spearman(np.zeros(4), np.zeros(4)) == 1.0 and spearman(np.zeros(4), np.arange(4)) == 0.0


def test_balanced_selection():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    p = np.array([1, 1, 0, 0, 0, 1, 1, 1])
    pick = select_examples(y, p, classes=["n", "p"], per_cell=2, seed=0)
    cells = [("TP" if y[i] and p[i] else "TN" if not y[i] and not p[i] else "FP" if p[i] else "FN") for i in pick]
    assert cells == ["TP", "TP", "TN", "TN", "FP", "FP", "FN"]
    assert pick == select_examples(y, p, classes=["n", "p"], per_cell=2, seed=0)  # reproducible
    y3, p3 = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 1, 1])
    assert len(select_examples(y3, p3, classes=["a", "b", "c"], per_cell=1)) == 5


def test_gradcam_command_renders_grid_and_index(synthetic, tmp_path):
    """A saved head through `featpipe gradcam --images`: PNGs, grid.png, index.csv/json."""
    from featpipe.cli.main import main
    from featpipe.heads.io import save_head

    fm = synthetic["model"].features
    with torch.no_grad():
        feats = fm(synthetic["x"]).numpy()
    pipe = make_head("svc", replace(HeadsParams(), cv_folds=0), seed=0).fit(feats, synthetic["y"])
    meta = {"dataset": "syn", "classes": ["normal", "finding1"], "backbone": "tiny_cnn", "weights": "default",
            "weights_id": fm.weights_id, "layer": "", "preprocess": fm.spec.preprocess.to_dict(),
            "embedding_dim": 32, "threshold": 0.5}
    model = save_head(tmp_path / "m.skops", pipe, meta)
    imgs = sorted(str(p) for p in synthetic["dir"].glob("finding1/*.png"))[:2]
    out = tmp_path / "reports"
    assert main(["gradcam", "--model", str(model), "--images", *imgs, "--out", str(out),
                 "--layer", "features.denseblock2"]) == 0
    run = out / "m"
    assert (run / "grid.png").is_file() and (run / "index.csv").is_file()
    index = json.loads((run / "index.json").read_text())
    assert [r["id"] for r in index["images"]] == imgs and all((run / r["file"]).is_file() for r in index["images"])
    assert index["info"]["layer"] == "features.denseblock2" and index["info"]["grid"] == [4, 4]  # 32 px input
    (tmp_path / "p.yaml").write_text("{}\n")
    assert main(["gradcam", "--params", str(tmp_path / "p.yaml")]) == 2  # no model given or in gradcam.runs
