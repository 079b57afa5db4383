"""One runtime (device, precision, memory format, autocast) for extraction, fine-tuning, predict and Grad-CAM:
predict on the images of the manifest gives exactly the cached embeddings, and the scores of the cached rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featpipe.backbones import registry
from featpipe.backbones.modelinput import decode_files
from featpipe.core.errors import FeatpipeError
from featpipe.core.runtime import Runtime
from featpipe.data.manifest import read_manifest
from featpipe.features.cache import read_features
from featpipe.predict import predict
from featpipe.saved.load import load_model

from conftest import fit_tiny_project


def test_runtime_decides_memory_format_and_autocast_once():
    cnn, vit = registry.get("tiny_cnn").traits, registry.get("tiny_vit").traits
    assert Runtime.of("cpu", "bf16", traits=cnn).channels_last
    assert not Runtime.of("cpu", "fp32", traits=cnn).channels_last
    assert not Runtime.of("cpu", "bf16", traits=vit).channels_last
    assert not Runtime.of("cpu", "bf16").channels_last
    rt = Runtime.resolve("cpu", "fp32", traits=cnn)
    assert rt == Runtime(torch.device("cpu"), "fp32", False)
    with rt.autocast():
        assert not torch.is_autocast_cpu_enabled()
    with Runtime.of("cpu", "bf16").autocast():
        assert torch.is_autocast_cpu_enabled()
    with pytest.raises(FeatpipeError, match="unknown device"):
        Runtime.resolve("tpu:7")
    with pytest.raises(FeatpipeError, match="precision"):
        Runtime.resolve("cpu", "fp16")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """prepare -> extract (tiny_cnn, bf16 on the CPU: autocast + channels_last) -> fit a logistic head."""
    return fit_tiny_project(tmp_path, monkeypatch, precision="bf16")


def test_predict_on_the_manifest_gives_exactly_the_cached_embeddings(project):
    model = load_model(project)
    assert model.runtime == Runtime(torch.device("cpu"), "bf16", channels_last=True)  # the run extraction ran
    manifest = read_manifest("data/manifest.csv")
    paths = manifest["path"].astype(str).tolist()
    cached = read_features(next(Path("cache/demo").glob("tiny_cnn*.h5"))).select(manifest["id"].astype(str).tolist())
    ok, pixels, rejects = decode_files(paths, model.decode_size)
    assert ok == paths and not rejects
    assert np.array_equal(model.embed(pixels), cached.features)  # bit for bit: same pixels, same kernels
    result = predict(project, paths)
    cols = [f"p[{c}]" for c in model.classes]
    assert result.table["path"].tolist() == paths
    assert np.array_equal(result.table[cols].to_numpy(), model.pipeline.predict_proba(cached.features))
