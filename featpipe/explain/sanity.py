"""Adebayo et al. (2018), "Sanity checks for saliency maps": the model-randomisation test.

The top ``layers`` parameterised modules of the model (in registration order, from the output down:
the head first, then the backbone's last layers) are re-initialised one after another (cascading, with a
seeded generator) and the maps for the same images and the same target classes are computed again.
A method whose maps explain the model must change: the mean Spearman rank correlation between the
original and the fully randomised maps must fall below ``threshold``. A map that does not depend on the
model (e.g. :func:`edge_map`, an edge detector) keeps a correlation of 1 and fails.

The model is modified in place during the check and restored exactly afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from featpipe.core.runtime import Runtime
from featpipe.explain.gradcam import gradcam, logits

Explainer = Callable[[nn.Module, torch.Tensor, Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class SanityResult:
    passed: bool
    threshold: float
    correlation: float  # mean Spearman correlation, original vs all ``layers`` randomised
    per_image: tuple[float, ...]
    cascade: tuple[tuple[str, float], ...] = field(default=())  # (module randomised last, mean correlation)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        steps = ", ".join(f"{name or '<root>'}: {c:.2f}" for name, c in self.cascade)
        return (f"{verdict}: mean rank correlation {self.correlation:.3f} after re-initialising the top "
                f"{len(self.cascade)} layers (threshold {self.threshold}); cascade: {steps}")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (1 when both are constant, 0 when only one is)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    ca, cb = np.ptp(a) == 0, np.ptp(b) == 0
    if ca or cb:
        return 1.0 if ca and cb else 0.0
    return float(spearmanr(a, b).statistic)


def top_layers(model: nn.Module, n: int) -> list[tuple[str, nn.Module]]:
    """The last ``n`` modules holding parameters of their own, last first."""
    mods = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return mods[::-1][:n]


def reinit(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``module``'s own parameters (its ``reset_parameters`` when it has one, run under a
    seeded RNG; else a normal draw with each parameter's own scale)."""
    if hasattr(module, "reset_parameters"):
        try:
            module.reset_parameters(generator=generator)
            return
        except TypeError:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                module.reset_parameters()
            return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 1.0
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * (std or 1.0))


def edge_map(model: nn.Module, images: torch.Tensor, targets: Optional[Sequence[int]] = None) -> np.ndarray:
    """A map that ignores the model: Sobel gradient magnitude of the channel-mean image, scaled to [0, 1]."""
    x = images.detach().float().mean(dim=1, keepdim=True).cpu()
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = torch.nn.functional.conv2d(x, kx, padding=1)
    gy = torch.nn.functional.conv2d(x, kx.transpose(2, 3), padding=1)
    mag = torch.sqrt(gx**2 + gy**2)[:, 0].numpy()
    mag -= mag.min(axis=(1, 2), keepdims=True)
    return (mag / np.maximum(mag.max(axis=(1, 2), keepdims=True), 1e-12)).astype(np.float32)


def sanity_check(model: nn.Module, images: torch.Tensor, *, explain: Optional[Explainer] = None,
                 targets: Optional[Sequence[int]] = None, layers: int = 4, threshold: float = 0.5,
                 seed: int = 0, gradcam_layer: Optional[str] = None, runtime: Optional[Runtime] = None) -> SanityResult:
    """Model-randomisation check of ``explain`` (default: :func:`featpipe.explain.gradcam.gradcam`) on
    ``images``; targets default to the unmodified model's predicted classes (kept for every step). ``runtime``:
    where the default explainer runs (:func:`~featpipe.explain.gradcam.gradcam`'s default when None)."""
    if explain is None:
        def explain(m, x, t):
            return gradcam(m, x, t, layer=gradcam_layer, runtime=runtime)
    if targets is None:
        targets = logits(model, images, runtime=runtime).argmax(dim=1).tolist()
    chosen = top_layers(model, layers)
    if not chosen:
        raise ValueError("the model has no parameterised layers to re-initialise")
    saved = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in chosen}
    was_training = model.training
    g = torch.Generator().manual_seed(int(seed))
    base = explain(model, images, targets)
    cascade, per_image = [], []
    try:
        for name, module in chosen:
            reinit(module, g)
            maps = explain(model, images, targets)
            per_image = [spearman(a, b) for a, b in zip(base, maps)]
            cascade.append((name, float(np.mean(per_image))))
    finally:
        for name, m in chosen:
            m.load_state_dict(saved[name])
        model.train(was_training)
    corr = cascade[-1][1]
    return SanityResult(passed=bool(corr < threshold), threshold=float(threshold), correlation=corr,
                        per_image=tuple(per_image), cascade=tuple(cascade))
