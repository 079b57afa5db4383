"""Any model featpipe saved, loaded as one torch model Grad-CAM can explain.

- a saved head (``.skops`` + ``.json``, :mod:`featpipe.headio`): its backbone is rebuilt with the weights
  named in the sidecar, and must have the same weights identity (never another network's weights);
  the head becomes a :class:`~featpipe.explain.torch_head.TorchHead` after it;
- a fine-tuned model (``.safetensors`` + ``.json``, :func:`featpipe.finetune.load_finetuned`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from featpipe.errors import FeatpipeError


@dataclass
class Explainable:
    model: nn.Module  # normalised (B, 3, H, W) -> class logits (B, C), eval mode
    meta: dict  # the sidecar
    kind: str  # "head" | "finetune"
    path: Path
    classes: list
    preprocess: dict  # input_size, resize_size, mean, std
    threshold: float | None  # binary decision threshold on p(classes[1]) chosen on val, or None

    @property
    def run(self) -> str:
        """The run's name: the model file's stem."""
        return self.path.stem


def _preprocess(meta: dict, spec) -> dict:
    pre = meta.get("preprocess")
    if isinstance(pre, str):
        import json

        pre = json.loads(pre)
    return dict(pre or spec.preprocess.to_dict())


def load_explainable(path: str | Path) -> Explainable:
    """Load ``path`` (a saved head or a fine-tuned model, chosen by its suffix)."""
    path = Path(path)
    if path.suffix == ".skops":
        return _load_head(path)
    if path.suffix in (".safetensors", ".json") or path.with_suffix(".safetensors").is_file():
        return _load_finetuned(path)
    raise FeatpipeError(f"{path}: not a featpipe model (expected a saved head .skops or a fine-tuned .safetensors)")


def _load_head(path: Path) -> Explainable:
    from featpipe import backbones
    from featpipe.explain.torch_head import FrozenWithHead, torch_head
    from featpipe.headio import load_head

    saved = load_head(path)
    meta = saved.meta
    spec = backbones.get(meta["backbone"])
    weights = meta.get("weights") or "default"
    features = backbones.build(spec, weights=weights, layer=meta.get("layer") or None)
    want = meta.get("weights_id")
    if want and features.weights_id != want:
        raise FeatpipeError(f"{path} was fitted on {spec.name} features with weights {want}, but weights "
                            f"'{weights}' here are {features.weights_id}: provide the same weights")
    head = torch_head(saved.pipeline)
    classes = list(meta.get("classes") or head.classes)
    model = FrozenWithHead(features, head).eval()
    return Explainable(model, meta, "head", path, classes, _preprocess(meta, spec), meta.get("threshold"))


def _load_finetuned(path: Path) -> Explainable:
    from featpipe import backbones
    from featpipe.finetune import load_finetuned
    from featpipe.finetune.checkpoint import paths_for

    model, meta = load_finetuned(path)
    spec = backbones.get(meta["backbone"])
    return Explainable(model.eval(), meta, "finetune", paths_for(path)[0], list(meta["classes"]),
                       _preprocess(meta, spec), meta.get("threshold"))
