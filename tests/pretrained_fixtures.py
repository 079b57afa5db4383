"""Planted "pretrained" weights: the default-weights path of every backbone, offline and in a temp dir.

- torchvision members: a random state dict of the full torchvision network (classifier included, as the
  real files are) saved under torchvision's own checkpoint file name (the basename of the weight enum's
  URL) in ``$TORCH_HOME/hub/checkpoints``; torchvision loads an existing file there without downloading;
- Hugging Face members (MedSigLIP, RAD-DINO): a small model of the real width and image size (one
  layer) saved as a hub cache snapshot ``$HF_HOME/hub/models--<owner>--<name>/snapshots/<commit>/`` with
  ``refs/main``, read under ``HF_HUB_OFFLINE=1``.

Files are made once per test session (:func:`planted_home`) and reused; :func:`use_home` points the
environment at them (and forbids any download).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from featpipe.backbones.registry import MEDSIGLIP_PROCESSOR, RAD_DINO_PROCESSOR

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_SEED = 1234

# The hub repositories' image processors as published (what a real snapshot holds beside the weights).
PREPROCESSOR_CONFIGS = {"google/medsiglip-448": MEDSIGLIP_PROCESSOR, "microsoft/rad-dino": RAD_DINO_PROCESSOR}


def torchvision_file(spec) -> str:
    """The checkpoint file name torchvision looks for (``densenet161-8d451a50.pth``)."""
    from featpipe.backbones.weights import _tv_filename

    return _tv_filename(spec.pretrained)


def plant_torchvision(home: Path, spec) -> Path:
    """A random full state dict of ``spec``'s torchvision network under its real file name."""
    import torch

    target = home / "torch" / "hub" / "checkpoints" / torchvision_file(spec)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            import torchvision.models as tvm

            net = tvm.get_model(spec.make.arch, weights=None)  # the full network, classifier included
        torch.save(net.state_dict(), target)
    return target


def plant_hub(home: Path, spec) -> Path:
    """A hub cache snapshot of ``spec``'s default hub id: a one-layer model of the real width (a backbone with a
    text tower: the full model, vision + text, with a tokenizer: :func:`plant_medsiglip_full`)."""
    import torch

    if spec.text is not None:
        return plant_medsiglip_full(home)

    repo = home / "hf" / "hub" / ("models--" + spec.pretrained.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    if not (snap / "config.json").is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            net = spec.make.build(num_hidden_layers=1)  # the real width and image size, one layer
            net.save_pretrained(snap)
        pre = PREPROCESSOR_CONFIGS.get(spec.pretrained)
        if pre is not None:
            (snap / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
    return snap


def plant(home: Path, names) -> Path:
    """Default weights of the registered backbones ``names`` under ``home``; returns ``home``."""
    from featpipe.backbones import registry

    for name in names:
        spec = registry.get(name)
        if spec.traits.source == "torchvision":
            plant_torchvision(home, spec)
        elif spec.traits.source == "hub":
            plant_hub(home, spec)
    return home


def use_home(monkeypatch, home: Path) -> Path:
    """Point TORCH_HOME / HF_HOME at ``home`` and forbid downloads (for this process and its children)."""
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for key in ("FEATPIPE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def env_for(home: Path) -> dict:
    """The environment of a subprocess that must find the planted weights offline."""
    env = dict(os.environ, TORCH_HOME=str(home / "torch"), HF_HOME=str(home / "hf"), FEATPIPE_OFFLINE="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    return env


def tiny_npz(src: Path, dest: Path, per_class: dict) -> Path:
    """A slice of a MedMNIST-style npz (``<split>_images`` / ``<split>_labels``): the first ``per_class[split]``
    images of each class of each split, in file order (deterministic)."""
    import numpy as np

    data = np.load(src)
    out = {}
    for split, n in per_class.items():
        y = data[f"{split}_labels"].ravel()
        idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)]))
        out[f"{split}_images"], out[f"{split}_labels"] = data[f"{split}_images"][idx], data[f"{split}_labels"][idx]
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **out)
    return dest


# A small word-level tokenizer for the planted MedSigLIP snapshot (the real one is a SentencePiece model): saved
# under the hub layout with the model, loaded by AutoTokenizer offline.
TOKENIZER_WORDS = ("<pad>", "</s>", "<unk>", "a", "an", "chest", "x-ray", "of", "normal", "healthy", "lungs",
                   "pneumonia", "no", "with", "showing", "opacity", "clear", "photo", "the")


def plant_medsiglip_full(home: Path) -> Path:
    """A FULL MedSigLIP snapshot (``SiglipModel``: vision + text, one layer each, the real widths and image
    size, text positions = 64) with a small tokenizer, as ``google/medsiglip-448`` in ``home``'s hub cache."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    repo = home / "hf" / "hub" / "models--google--medsiglip-448"
    snap = repo / "snapshots" / COMMIT
    if not (snap / "tokenizer.json").is_file():
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TOKENIZER_WORDS)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                model_max_length=64).save_pretrained(snap)
        cfg = SiglipConfig(
            text_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1, num_attention_heads=16,
                             vocab_size=len(TOKENIZER_WORDS), max_position_embeddings=64, projection_size=1152,
                             pad_token_id=0, eos_token_id=1),
            vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1, num_attention_heads=16,
                               image_size=448, patch_size=14))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            SiglipModel(cfg).save_pretrained(snap)
        (snap / "preprocessor_config.json").write_text(json.dumps(MEDSIGLIP_PROCESSOR, indent=1))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
    return snap
