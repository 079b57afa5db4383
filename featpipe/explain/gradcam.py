"""Grad-CAM of any featpipe model (fine-tuned network, or frozen backbone + head) on its registered layer.

:func:`gradcam` runs ``pytorch_grad_cam.GradCAM`` in a ``with`` block (its hooks are always released)
on the backbone's ``spec.gradcam_layer`` (or a ``layer`` override), and returns maps of the input's
height and width, each scaled to [0, 1].

What is explained, exactly:

- activations are the target module's output as that module returned it (a snapshot, so that an in-place
  operation after the module, such as DenseNet's final ``relu(inplace=True)``, cannot change them, on
  any device), gradients are those of the class score with respect to that output;
- transformer token outputs (B, T, D) are reshaped to a (B, D, h, w) grid after dropping the
  ``spec.prefix_tokens`` leading tokens (ViT's CLS token; SigLIP has none), see :func:`token_grid`;
- the class score is the model's logit for the target class (by default the predicted one); for a
  binary frozen head, logits are ``[-d/2, d/2]`` (see :mod:`featpipe.heads.torch_twin`).

Gradients must reach the target layer although the backbone is frozen: the input is made to require
grad, and the call runs with grad enabled and outside ``inference_mode`` whatever the caller's mode.
Parameters never receive ``.grad`` (their ``requires_grad`` is switched off during the call and restored).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from featpipe.backbones.model import FeatureModel
from featpipe.core.errors import FeatpipeError
from featpipe.core.runtime import Runtime


def feature_model(model: nn.Module) -> nn.Module:
    """The backbone :class:`~featpipe.backbones.model.FeatureModel` inside ``model`` (or ``model`` itself)."""
    if isinstance(model, FeatureModel):
        return model
    for m in model.modules():
        if isinstance(m, FeatureModel):
            return m
    raise FeatpipeError(f"{type(model).__name__} holds no featpipe backbone: cannot find its Grad-CAM layer")


def target_layer(model: nn.Module, layer: Optional[str] = None) -> nn.Module:
    """The module Grad-CAM hooks: ``spec.gradcam_layer`` of the backbone in ``model``, or ``layer``
    (a module name in the backbone's network, e.g. ``features.denseblock3``)."""
    fm = feature_model(model)
    name = layer or fm.gradcam_layer
    try:
        return fm.net.get_submodule(name)
    except AttributeError:
        raise FeatpipeError(f"backbone '{fm.spec.name}' has no module '{name}' to take Grad-CAM at") from None


def grid_shape(n_tokens: int, prefix_tokens: int = 0) -> tuple[int, int]:
    """(h, w) of the square patch grid behind ``n_tokens`` tokens, ``prefix_tokens`` of which are not patches."""
    n = n_tokens - prefix_tokens
    side = math.isqrt(max(n, 0))
    if n <= 0 or side * side != n:
        raise FeatpipeError(f"{n_tokens} tokens minus {prefix_tokens} prefix tokens is not a square patch grid")
    return side, side


def token_grid(tokens: torch.Tensor, prefix_tokens: int = 0) -> torch.Tensor:
    """(B, T, D) tokens -> (B, D, h, w) patch grid (the first ``prefix_tokens`` dropped). SigLIP at 448 px,
    patch 14: 1024 tokens -> 32 x 32; ViT-B/16 at 224: 197 tokens, CLS dropped -> 14 x 14."""
    h, w = grid_shape(tokens.shape[1], prefix_tokens)
    grid = tokens[:, prefix_tokens:, :]
    return grid.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2).contiguous()


def reshape_transform(spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``reshape_transform`` for ``spec``'s layer outputs: token grids reshaped, conv maps snapshot."""
    prefix = int(getattr(spec, "prefix_tokens", 0) or 0)

    def transform(t):
        if isinstance(t, (tuple, list)):
            t = t[0]
        if t.ndim == 3:
            return token_grid(t, prefix)
        if t.ndim == 4:
            return t.clone()
        raise FeatpipeError(f"Grad-CAM layer output of shape {tuple(t.shape)} is neither a feature map nor tokens")

    return transform


@contextmanager
def _grad_ready(model: nn.Module):
    """Grad on, inference mode off, parameters not accumulating .grad, training flag restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(False)
            yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
           runtime: Optional[Runtime] = None) -> torch.Tensor:
    """The model's class logits (B, C) on the CPU, no grad (for choosing targets and reporting probabilities)."""
    model.eval()
    rt = runtime or _runtime(model)
    with torch.no_grad(), rt.autocast():
        return torch.cat([model(rt.inputs(images[i:i + batch_size])).detach().cpu()
                          for i in range(0, len(images), batch_size)])


def _runtime(model: nn.Module) -> Runtime:
    """fp32 on the device ``model``'s parameters are on (a model given without its runtime)."""
    p = next(model.parameters(), None)
    return Runtime.of(p.device if p is not None else "cpu", "fp32")


def gradcam(model: nn.Module, images: torch.Tensor, targets: Optional[Sequence[int]] = None, *,
            layer: Optional[str] = None, batch_size: int = 16, runtime: Optional[Runtime] = None) -> np.ndarray:
    """Grad-CAM maps, float32 (N, H, W) in [0, 1], of ``model`` (normalised images (N, 3, H, W) -> class
    logits) for class ``targets[i]`` of image i (default: the predicted class), run on ``runtime`` (default:
    fp32 on the device of the model's parameters)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.ndim != 4:
        raise ValueError(f"expected images (N, 3, H, W), got shape {tuple(images.shape)}")
    spec = feature_model(model).spec
    module = target_layer(model, layer)
    rt = runtime or _runtime(model)
    if targets is None:
        targets = logits(model, images, runtime=rt).argmax(dim=1).tolist()
    targets = [int(t) for t in targets]
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} targets for {len(images)} images")
    out = []
    with _grad_ready(model), rt.autocast():
        for i in range(0, len(images), batch_size):
            x = rt.inputs(images[i:i + batch_size].detach().clone()).requires_grad_(True)
            tg = [ClassifierOutputTarget(t) for t in targets[i:i + batch_size]]
            maps = None
            with GradCAM(model=model, target_layers=[module], reshape_transform=reshape_transform(spec)) as cam:
                maps = cam(input_tensor=x, targets=tg)
                acts = cam.activations_and_grads.activations
                grid = tuple(acts[0].shape[-2:]) if acts else None
            if maps is None:  # GradCAM.__exit__ swallows IndexError
                raise FeatpipeError("Grad-CAM failed (an index error inside pytorch_grad_cam): check the targets")
            if grid is not None and grid == (1, 1):
                warnings.warn(f"Grad-CAM layer '{layer or spec.gradcam_layer}' of {spec.name} is 1 x 1 at "
                              f"{tuple(x.shape[-2:])} px input: the map is constant; use a larger input or an "
                              "earlier layer", stacklevel=2)
            out.append(np.asarray(maps, dtype=np.float32))
    return np.clip(np.concatenate(out), 0.0, 1.0)


def layer_grid(model: nn.Module, images: torch.Tensor, *, layer: Optional[str] = None,
               runtime: Optional[Runtime] = None) -> tuple[int, int]:
    """(h, w) of the Grad-CAM layer's map for inputs like ``images`` (one image run, no grad)."""
    fm = feature_model(model)
    module = target_layer(model, layer)
    got = {}

    def hook(_m, _i, o):
        got["shape"] = tuple(reshape_transform(fm.spec)(o).shape[-2:])

    h = module.register_forward_hook(hook)
    try:
        logits(model, images[:1], runtime=runtime)
    finally:
        h.remove()
    return got["shape"]
