"""Which parameters train under each fine-tuning strategy, per backbone family.

A fine-tuned network is a :class:`FinetuneModel`: the backbone's ``FeatureModel`` (normalized
``(B, 3, H, W)`` -> ``(B, D)`` embeddings, as used for extraction) followed by a new linear head.

- ``scratch``: the architecture with random weights, everything trained.
- ``head``: backbone frozen (and kept in eval mode, so BatchNorm statistics do not move), head trained.
- ``layerwise``: the first block frozen, per family (the family's ``freeze`` rule in
  :mod:`featpipe.backbones.families`), the rest trained.
- ``full``: everything trained; the backbone at ``lr * backbone_lr_factor``.
- ``truncated``: the backbone cut at a registered layer (global pooling is the FeatureModel's),
  new head; trained as ``layerwise`` or ``full`` (``truncated_mode``).

Families are matched on parameter names relative to the network's root module (found inside the
FeatureModel whatever it is wrapped in), so a truncated graph module keeps the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from featpipe.backbones.families import FreezeRule, freeze_rule
from featpipe.core.errors import ConfigError

STRATEGIES = ("scratch", "head", "layerwise", "full", "truncated")
TRUNCATED_MODES = ("layerwise", "full")


class FinetuneModel(nn.Module):
    """``features`` (B, 3, H, W) -> (B, D), then ``head`` (B, D) -> (B, n_classes) logits."""

    def __init__(self, features: nn.Module, head: nn.Linear):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def new_head(in_features: int, n_classes: int, *, generator: torch.Generator | None = None) -> nn.Linear:
    """A linear head initialised like ``nn.Linear`` but from ``generator`` (reproducible, no global RNG)."""
    head = nn.utils.skip_init(nn.Linear, in_features, n_classes)  # no draw from the global RNG
    bound = 1.0 / in_features**0.5
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    return head


# --------------------------------------------------------------------------- freezing


def _root_for(module: nn.Module, rule: FreezeRule) -> tuple[str, nn.Module]:
    """(prefix, module) of the submodule under which every anchor of ``rule`` names a parameter."""
    for prefix, sub in module.named_modules():
        names = [n for n, _ in sub.named_parameters()]
        if all(any(n == a or n.startswith(a) for n in names) for a in rule.anchors):
            return prefix, sub
    raise ConfigError(
        f"layer-wise freezing: no {rule.family} network with {', '.join(rule.anchors)} found in the backbone "
        "(a truncated network cut before the first block cannot be trained layer-wise; use truncated_mode=full)"
    )


def _first_block(module: nn.Module) -> tuple[str, nn.Module]:
    """Fallback for families without a rule (the tiny test backbones): the first child with
    parameters, after descending through wrappers that hold a single parameterised child."""
    prefix = ""
    while True:
        kids = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        own = any(True for _ in module.parameters(recurse=False))
        if len(kids) == 1 and not own:
            prefix, module = prefix + kids[0][0] + ".", kids[0][1]
            continue
        if not kids:
            raise ConfigError("layer-wise freezing: the backbone has no block to freeze")
        return prefix + kids[0][0], kids[0][1]


def layerwise_frozen_names(features: nn.Module, family: str | None) -> list[str]:
    """Names (in ``features.named_parameters()``) that ``layerwise`` freezes."""
    rule = freeze_rule(family)
    if rule is not None:
        prefix, root = _root_for(features, rule)
        base = prefix + "." if prefix else ""
        return [base + n for n, _ in root.named_parameters() if n.startswith(rule.frozen)]
    block, _ = _first_block(features)
    return [n for n, _ in features.named_parameters() if n == block or n.startswith(block + ".")]


def unused_parameter_names(features: nn.Module, input_size: int) -> list[str]:
    """Parameters a forward pass never reaches (those past a truncated network's cut point), found by
    running one blank image through ``features`` and recording which modules ran."""
    ran: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda mod, _in: ran.add(id(mod))) for m in features.modules()]
    was = features.training
    try:
        features.eval()
        with torch.no_grad():
            spec = getattr(features, "spec", None)  # a FeatureModel: its input's channels (torchxrayvision: 1)
            features(torch.zeros(1, spec.preprocess.channels if spec is not None else 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
        features.train(was)
    out = []
    for prefix, m in features.named_modules():
        if id(m) not in ran:
            out += [f"{prefix}.{n}" if prefix else n for n, _ in m.named_parameters(recurse=False)]
    return out


def apply_strategy(model: FinetuneModel, strategy: str, *, family: str | None,
                   truncated_mode: str = "layerwise", input_size: int | None = None) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` as ``strategy`` prescribes.

    ``truncated`` with ``input_size`` also freezes the parameters past the cut point (never used,
    so they are not counted or updated)."""
    mode = _effective(strategy, truncated_mode)
    for p in model.parameters():
        p.requires_grad_(True)
    if mode == "head":
        for p in model.features.parameters():
            p.requires_grad_(False)
    elif mode == "layerwise":
        frozen = set(layerwise_frozen_names(model.features, family))
        for n, p in model.features.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
    if strategy == "truncated" and input_size:
        unused = set(unused_parameter_names(model.features, input_size))
        for n, p in model.features.named_parameters():
            if n in unused:
                p.requires_grad_(False)


def _effective(strategy: str, truncated_mode: str) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown fine-tuning strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if strategy == "truncated":
        if truncated_mode not in TRUNCATED_MODES:
            raise ConfigError(f"bad truncated_mode {truncated_mode!r} (choose from layerwise, full)")
        return truncated_mode
    return strategy


def param_groups(model: FinetuneModel, strategy: str, *, lr: float, backbone_lr_factor: float,
                 truncated_mode: str = "layerwise") -> list[dict]:
    """AdamW parameter groups: trainable head at ``lr``; trainable backbone at ``lr`` except under
    ``full`` (and truncated-as-full), where it gets ``lr * backbone_lr_factor``."""
    mode = _effective(strategy, truncated_mode)
    back = [p for p in model.features.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": lr, "name": "head"}]
    if back:
        groups.append({"params": back, "lr": lr * backbone_lr_factor if mode == "full" else lr, "name": "backbone"})
    return groups


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except modules whose parameters are all frozen stay in eval mode (frozen
    BatchNorm keeps its running statistics; a frozen backbone is a fixed function)."""
    model.train()
    for m in _frozen_modules(model):
        m.eval()


def _frozen_modules(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            yield m


def describe(model: FinetuneModel) -> dict:
    """Counts for logs and the checkpoint sidecar."""
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "trainable": count_trainable(model),
            "head_parameters": sum(p.numel() for p in model.head.parameters())}


def check_strategy(strategy: str, layer: str | None, layers: Sequence[str] = ()) -> None:
    """A truncated run needs a registered cut point; other strategies take none."""
    _effective(strategy, "layerwise")
    if strategy != "truncated" and layer:
        raise ConfigError(f"--layer applies to the truncated strategy only, not {strategy!r}")
    if strategy == "truncated" and not layer:
        raise ConfigError("the truncated strategy needs --layer (or finetune.layer) naming a cut point"
                          + (f": one of {', '.join(layers)}" if layers else ""))
    if strategy == "truncated" and layers and layer not in layers:
        raise ConfigError(f"unknown cut point {layer!r} (registered: {', '.join(layers)})")
