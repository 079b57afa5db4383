"""A study's own parts of the params: its arms (``finetune.arms``), its networks (``networks``) and the
metrics it is judged on (``report.metric``, ``compare.metrics``). Read with the rest of ``params.yaml`` by
:mod:`featpipe.params.config`, which re-exports these names."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from featpipe.core.errors import ConfigError

# the metrics a configuration can be chosen and compared on (every one has a val_ column in runs.csv; the
# same names as featpipe.evaluation.metrics.SUMMARY_METRICS, which a test checks), and one class's own
# precision, recall or F1: f1[<class name>]
METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "sensitivity", "specificity", "brier")
_PER_CLASS_METRIC = re.compile(r"^(precision|recall|f1)\[[^\[\]]+\]$")


def check_metric(key: str, name: str) -> None:
    """A metric name of params (``report.metric``, ``compare.metrics``): one line listing the valid names."""
    if name not in METRIC_NAMES and not _PER_CLASS_METRIC.match(str(name)):
        raise ConfigError(f"bad value for '{key}': {name!r} (choose from {', '.join(METRIC_NAMES)}, or one class's "
                          "precision[<class>], recall[<class>], f1[<class>], e.g. f1[pneumonia])")



FINETUNE_STRATEGIES = ("scratch", "head", "layerwise", "full", "truncated")  # = featpipe.finetune.strategies.STRATEGIES
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ArmParams:
    """One arm of a study (``finetune.arms``): a backbone fine-tuned with a strategy and its own settings; a
    setting left out (null) is the ``finetune`` section's. Each arm is its own configuration
    (``head = finetune:<strategy>:<name>``) in every table and figure."""

    name: str = ""  # letters, digits, . _ -: the arm's label and file names
    backbone: str = ""
    strategy: str = "full"
    weights: str | None = None  # default | imagenet | random | a local file for THIS backbone | a hub id
    layer: str | None = None  # truncated: the cut point
    optimizer: Literal["adamw", "adam", "sgd"] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None  # sgd
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    backbone_lr_factor: float | None = None
    truncated_mode: Literal["layerwise", "full"] | None = None
    augment: bool | None = None
    layerwise_freeze: tuple[str, ...] | None = None  # what layer-wise freezes (see FinetuneParams)

    def __post_init__(self):
        if not _ARM_NAME.match(self.name or ""):
            raise ConfigError(f"finetune.arms entry {self.name!r}: give it a name (letters, digits, '.', '_', '-')")
        if not self.backbone:
            raise ConfigError(f"finetune.arms '{self.name}': set its backbone")
        if self.strategy not in FINETUNE_STRATEGIES:
            raise ConfigError(f"finetune.arms '{self.name}': unknown strategy {self.strategy!r} (choose from "
                              f"{', '.join(FINETUNE_STRATEGIES)})")
        if self.strategy == "truncated" and not self.layer:
            raise ConfigError(f"finetune.arms '{self.name}': the truncated strategy needs its layer")

    def overrides(self) -> dict:
        """The ``finetune`` settings this arm sets (everything but name, backbone, strategy and layer)."""
        skip = ("name", "backbone", "strategy", "layer")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}



@dataclass(frozen=True)
class NetworkParams:
    """A network of your own (``networks``), registered as a backbone under ``name`` by
    :func:`featpipe.backbones.custom.register_networks`: usable for extraction, fine-tuning (scratch too) and
    Grad-CAM like a built-in one."""

    name: str = ""
    factory: str = "simple_cnn"  # simple_cnn (conv-BN-ReLU-pool blocks) or a Python entry point "module:callable"
    channels: tuple[int, ...] = (16, 32, 64)  # simple_cnn: output channels of each block
    embed_dim: int | None = None  # module:callable: its embedding size (simple_cnn: the last channels)
    input_size: int = 64
    resize_size: int | None = None  # default: input_size (no crop)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    gradcam_layer: str | None = None  # simple_cnn: the last block; module:callable: required
    layers: tuple[str, ...] = ()  # module:callable: cut points as "module.name=dim" (simple_cnn: every block)

    def __post_init__(self):
        if not _ARM_NAME.match(self.name or ""):
            raise ConfigError(f"networks entry {self.name!r}: give it a name (letters, digits, '.', '_', '-')")
        if self.factory != "simple_cnn":
            if ":" not in self.factory:
                raise ConfigError(f"networks '{self.name}': factory {self.factory!r} must be simple_cnn or "
                                  "'module:callable' (a function returning the network)")
            if not self.embed_dim or not self.gradcam_layer:
                raise ConfigError(f"networks '{self.name}': a module:callable network needs embed_dim and gradcam_layer")
        elif not self.channels:
            raise ConfigError(f"networks '{self.name}': simple_cnn needs channels, e.g. [16, 32, 64]")
