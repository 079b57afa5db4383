"""Building a fine-tunable network from the backbone registry, and its checkpoint on disk.

A checkpoint is two files side by side:

- ``<stem>.safetensors``: every tensor of the :class:`~featpipe.finetune.strategies.FinetuneModel`
  (backbone and head, buffers included); safetensors holds tensors only, so loading runs no code;
- ``<stem>.json``: what the tensors mean: backbone, layer, strategy, classes, preprocessing, training
  params, split hash, weights identity, versions, and the sha256 of the tensor file (checked on load).

:func:`load_finetuned` rebuilds the architecture with random weights (nothing is downloaded) and
loads the tensors strictly: every name and shape must match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from featpipe.backbones import registry
from featpipe.backbones.model import build
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import DataError, IntegrityError
from featpipe.core.fileio import atomic_write, check_seal, seal
from featpipe.core.locks import build_lock, clean_leftovers_once
from featpipe.core.runtime import Runtime
from featpipe.finetune.data import DecodingImages, Prep
from featpipe.finetune.loop import predict_proba
from featpipe.finetune.strategies import (
    FinetuneModel,
    apply_strategy,
    check_strategy,
    new_head,
)

FORMAT = 1
KIND = "featpipe-finetune"


def build_model(backbone: str, strategy: str, n_classes: int, *, weights: str = "default",
                layer: str | None = None, truncated_mode: str = "layerwise", seed: int = 0):
    """(FinetuneModel with the strategy's trainable parameters set, BackboneSpec).

    ``scratch`` always builds random weights drawn from ``seed`` (weights ``random:seed<seed>``);
    ``truncated`` cuts at ``layer``. Random initialisation (scratch weights, the new head) is a function
    of ``seed`` and leaves the global RNG untouched.
    """
    spec = registry.get(backbone)
    if strategy == "truncated" and layer:
        layer = spec.resolve_layer(layer)
    check_strategy(strategy, layer, list(spec.layers))
    cut = layer if strategy == "truncated" else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        features = build(spec, weights=f"random:seed{int(seed)}" if strategy == "scratch" else weights,
                                   layer=cut)
    dim = int(spec.output_dim(cut))
    head = new_head(dim, n_classes, generator=torch.Generator().manual_seed(int(seed) + 7919))
    model = FinetuneModel(features, head)
    spec = features.spec  # with the preprocessing of the weights it was built with
    apply_strategy(model, strategy, family=spec.family, truncated_mode=truncated_mode,
                   input_size=int(spec.preprocess.input_size))
    return model, spec


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_of(path: str | Path) -> Path:
    return paths_for(path)[1]


def paths_for(path: str | Path) -> tuple[Path, Path]:
    """(tensor file, sidecar) for a checkpoint named by either file or by its stem."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_finetuned(model: FinetuneModel, meta: dict[str, Any], path: str | Path) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the tensor file's path."""
    from safetensors.torch import save

    tensors_path, sidecar = paths_for(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    data = save(state, metadata={"featpipe": f"{KIND}/{FORMAT}"})
    full = {"kind": KIND, "format": FORMAT, **meta, "tensors": tensors_path.name,
            "tensors_sha256": hashlib.sha256(data).hexdigest()}
    with build_lock(tensors_path, what="the fine-tuned model"):  # the pair is one process's, never a mix
        clean_leftovers_once(tensors_path.parent)
        atomic_write(tensors_path, data)
        atomic_write(sidecar, seal(full, default=_jsonable))
    return tensors_path


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def read_meta(path: str | Path) -> dict:
    """The sidecar of a checkpoint (no tensors read)."""
    _, sidecar = paths_for(path)
    if not sidecar.exists():
        raise DataError(f"{sidecar}: fine-tuned model sidecar not found (expected beside the .safetensors file)")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{sidecar}: not valid JSON; re-run featpipe finetune") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        kind = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise IntegrityError(f"{sidecar}: not a featpipe fine-tuned model (kind={kind!r})")
    check_seal(meta, sidecar)
    if meta.get("kind") != KIND:
        raise DataError(f"{sidecar}: not a featpipe fine-tuned model (kind={meta.get('kind')!r})")
    if int(meta.get("format", 0)) > FORMAT:
        raise DataError(f"{sidecar}: checkpoint format {meta.get('format')} is newer than this featpipe; upgrade it")
    return meta


def load_finetuned(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[FinetuneModel, dict]:
    """``(model, meta)`` from a checkpoint (either file, or the common stem). Never unpickles.

    ``model`` maps normalized ``(B, 3, H, W)`` float tensors to ``(B, len(meta["classes"]))`` logits
    and is in eval mode; ``meta["preprocess"]`` has input_size, mean and std for its inputs;
    ``model.features`` is the backbone's FeatureModel (Grad-CAM targets live in it).
    """
    from safetensors.torch import load_file

    tensors_path, _ = paths_for(path)
    meta = read_meta(path)
    if not tensors_path.exists():
        raise DataError(f"{tensors_path}: fine-tuned weights not found")
    if not meta.get("tensors_sha256"):
        raise IntegrityError(f"{sidecar_of(path)} records no tensors_sha256: refusing to load {tensors_path.name}")
    if _sha256(tensors_path) != meta["tensors_sha256"]:
        raise IntegrityError(f"{tensors_path}: contents do not match its sidecar's sha256 (file changed or mixed up)")
    spec = registry.get(meta["backbone"])
    cut = meta.get("layer") or None
    with torch.random.fork_rng(devices=[]):
        features = build(spec, weights="random", layer=cut)
    dim = int(spec.output_dim(cut))
    model = FinetuneModel(features, torch.nn.utils.skip_init(torch.nn.Linear, dim, len(meta["classes"])))
    try:
        state = load_file(str(tensors_path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: the file is not what it claims
        raise IntegrityError(f"{tensors_path}: not a readable safetensors file ({type(exc).__name__}); "
                             "refusing to load it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{tensors_path}: weights do not fit backbone {meta['backbone']!r} ({first})") from None
    return model.to(device).eval(), meta


def predict_files(model: FinetuneModel, meta: dict, refs, *, batch_size: int = 32, device: str = "cpu"):
    """Class probabilities ``(n, C)`` for image files (or npz references) with a loaded fine-tuned model:
    decoded as the decoded-image cache decodes (the form :attr:`featpipe.backbones.spec.Preprocess.decoding` of the
    sidecar's ``preprocess``: size and filter), centre-cropped and
    normalised as in training's val/test passes, on the :class:`~featpipe.core.runtime.Runtime` of ``device``
    at the precision it was trained in. Apply ``meta["threshold"]`` (chosen on val) to ``p(classes[1])`` for
    binary labels."""
    refs = [str(r) for r in refs]
    pre = Preprocess.from_dict(meta["preprocess"])
    rt = Runtime.resolve(device, meta.get("precision", "fp32"), traits=registry.get(meta["backbone"]).traits)
    src = DecodingImages({r: r for r in refs}, size=pre.decoding)
    return predict_proba(rt.prepare(model), src, refs, prep=Prep.from_preprocess(pre), rt=rt, batch_size=batch_size)
