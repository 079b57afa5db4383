"""The path a researcher takes: default (pretrained) weights, planted offline under their real file names
(tests/pretrained_fixtures.py), through every command on real chest X-rays (a slice of PneumoniaMNIST)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import module_folder
import pretrained_fixtures as pf
from featpipe.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """Default weights of resnet18 (torchvision file), MedSigLIP and RAD-DINO (hub snapshots), made once (and
    removed when the module is done: ~270 MB)."""
    with module_folder(tmp_path_factory, "pretrained") as h:
        yield pf.plant(h, ["resnet18", "medsiglip", "rad_dino"])


@pytest.fixture
def project(tmp_path, monkeypatch, planted, pneumoniamnist) -> Path:
    """A working directory with a 20-image slice of real PneumoniaMNIST and a params file reading it."""
    pf.use_home(monkeypatch, planted)
    monkeypatch.chdir(tmp_path)
    data = pf.tiny_npz(pneumoniamnist, tmp_path / "data" / "cxr.npz", {"train": 6, "val": 2, "test": 2})
    params = {"data": {"name": "cxr", "source": "npz", "path": str(data), "class_names": ["normal", "pneumonia"]},
              "split": {"seeds": [0], "shots": [4], "min_source_val_per_class": 2},
              "extract": {"backbones": ["resnet18"], "batch_size": 16},
              "fit": {"bootstrap": 0},
              "finetune": {"backbones": ["resnet18"], "strategies": ["head"], "shots": [4], "seeds": [0], "epochs": 1,
                           "patience": 1, "batch_size": 8, "augment": False},
              "gradcam": {"per_outcome": 1, "sanity_layers": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["prepare"]) == 0
    return tmp_path


def _cli(*argv) -> None:
    assert main(list(argv)) == 0, argv


def _explain(model: Path, out: str = "reports/gradcam") -> dict:
    """gradcam and sanity-check on ``model``; returns the Grad-CAM index."""
    _cli("gradcam", "--model", str(model), "--out", out)
    _cli("sanity-check", "--model", str(model), "--out", out)
    from featpipe.explain.render import slug

    run = Path(out) / slug(model.stem)
    index = json.loads((run / "index.json").read_text())
    assert (run / "grid.png").is_file() and index["images"]
    sanity = json.loads((run / "sanity.json").read_text())
    assert sanity["run"] == model.stem and len(sanity["cascade"]) >= 2 and -1 <= sanity["correlation"] <= 1
    return index


def test_default_weights_through_every_command(project, capsys):
    """extract, fit, sweep, finetune, predict, gradcam, sanity-check, collect and report on resnet18 with its
    default (ImageNet) weights, read offline from $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth."""
    _cli("extract", "--backbone", "resnet18")
    cache = Path("cache/cxr/resnet18.h5")  # default weights: no tag in the name
    from featpipe.features.cache import read_features

    attrs = read_features(cache).attrs
    assert attrs["weights_id"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1:resnet18-f37072fd.pth"
    _cli("fit", "--head", "logistic", "--shots", "4", "--backbone", "resnet18", "--results", "results/fit/a")
    _cli("sweep", "--heads", "svc", "prototype", "--results", "results/fit/b")
    _cli("finetune", "--backbone", "resnet18", "--strategy", "head", "--quiet", "--results", "results/finetune")
    heads = sorted(Path("models").rglob("*.skops"))
    assert {h.name.split("-")[1] for h in heads} == {"logistic", "svc", "prototype"}
    tuned = next(Path("models/finetune").rglob("*.safetensors"))
    side = json.loads(tuned.with_suffix(".json").read_text())
    assert side["weights_id"].startswith("torchvision:ResNet18_Weights.IMAGENET1K_V1")

    images = _pngs(Path("imgs"))
    for model in (heads[0], tuned):
        _cli("predict", "--model", str(model), "--out", "pred.csv", "imgs")
        pred = pd.read_csv("pred.csv")
        assert len(pred) == len(images) and np.allclose(pred[["p[normal]", "p[pneumonia]"]].sum(axis=1), 1, atol=1e-5)
    for model in (heads[0], tuned):  # the bug this guards: weights file DenseNet161_Weights.IMAGENET1K_V1 not found
        index = _explain(model)
        assert index["info"]["backbone"] == "resnet18"

    _cli("collect", "results/fit", "results/finetune", "--out", "results")
    _cli("report", "--out", "reports/report.html")
    html = Path("reports/report.html").read_text()
    assert "Grad-CAM" in html and html.count("data:image/png;base64,") >= 3
    runs = pd.read_csv("results/runs.csv")
    assert set(runs["head"]) >= {"logistic", "svc", "prototype", "finetune:head"}
    assert set(runs["weights"]) == {"imagenet1k_v1"}  # short and portable: the identity is weights_id


def _pngs(folder: Path) -> list[Path]:
    """Two real test images as PNG files (what a user passes to predict)."""
    from PIL import Image

    folder.mkdir()
    data = np.load("data/cxr.npz")
    out = []
    for i in range(2):
        p = folder / f"cxr{i}.png"
        Image.fromarray(data["test_images"][i]).save(p)
        out.append(p)
    return out


def _local_weights_file(planted: Path, tmp_path: Path) -> str:
    """The planted resnet18 state dict copied to a file of the user's own naming."""
    path = tmp_path / "my resnet18.pth"
    shutil.copy(planted / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth", path)
    return str(path)


def _hub_folder(planted: Path) -> str:
    """RAD-DINO's snapshot folder passed as a local model folder (what a user downloads by hand)."""
    return str(next((planted / "hf" / "hub" / "models--microsoft--rad-dino" / "snapshots").iterdir()))


@pytest.mark.parametrize("backbone,weights,expected_id", [
    ("resnet18", "imagenet", "torchvision:ResNet18_Weights.IMAGENET1K_V1:resnet18-f37072fd.pth"),
    ("resnet18", "local-file", "sha256:"),
    ("rad_dino", "hub-folder", "hf:microsoft/rad-dino@"),  # a snapshot folder is its hub id + commit
])
def test_gradcam_and_sanity_check_of_heads_on_pretrained_weights(project, planted, backbone, weights, expected_id):
    """Heads fitted on ImageNet-named, local-file and hub-folder weights are explained with the very weights
    they were fitted on (the sidecar's weights request rebuilds them). Hub ids (MedSigLIP's default) go
    through the same rebuild: test_dvc_repro_on_the_default_params_with_planted_weights fits on them."""
    request = {"local-file": lambda: _local_weights_file(planted, project),
               "hub-folder": lambda: _hub_folder(planted)}.get(weights, lambda: weights)()
    _cli("extract", "--backbone", backbone, "--weights", request)
    _cli("fit", "--head", "logistic", "--shots", "4", "--backbone", backbone, "--weights", request)
    head = next(Path("models").rglob(f"{backbone}*-logistic-*.skops"))
    side = json.loads(head.with_suffix(".json").read_text())
    assert side["weights_id"].startswith(expected_id) and side["weights_request"] == request
    index = _explain(head)
    assert index["info"]["backbone"] == backbone


def test_a_head_refuses_other_weights_than_it_was_fitted_on(project, planted):
    """A saved head whose weights file changed since fitting is refused with one line, never explained with
    other weights."""
    request = _local_weights_file(planted, project)
    _cli("extract", "--backbone", "resnet18", "--weights", request)
    _cli("fit", "--head", "prototype", "--shots", "4", "--backbone", "resnet18", "--weights", request)
    head = next(Path("models").rglob("*.skops"))
    import torch

    sd = torch.load(request, weights_only=True)
    sd["conv1.weight"] = sd["conv1.weight"] * 2
    torch.save(sd, request)
    assert main(["gradcam", "--model", str(head)]) != 0
    from featpipe.core.errors import CacheError
    from featpipe.saved.load import load_model

    with pytest.raises(CacheError, match="weights_id"):
        load_model(head)
