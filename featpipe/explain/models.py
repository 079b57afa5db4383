"""Any model featpipe saved, loaded (by :func:`featpipe.saved.models.load_model`) as one torch model Grad-CAM can explain.

- a saved head (``.skops`` + ``.json``): its backbone is rebuilt from the weights request in the sidecar,
  and must have the same weights identity (never another network's weights); the head becomes a
  :class:`~featpipe.heads.torch_twin.TorchHead` after it;
- a fine-tuned model (``.safetensors`` + ``.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn


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


def load_explainable(path: str | Path) -> Explainable:
    """Load ``path`` (a saved head or a fine-tuned model) through :func:`featpipe.saved.models.load_model`, which
    rebuilds a head's backbone from the weights the user asked for (never from a resolved source)."""
    from featpipe.saved.models import load_model

    m = load_model(path)
    return Explainable(m.model, m.meta, m.kind, m.path, m.classes, m.preprocess, m.meta.get("threshold"))
