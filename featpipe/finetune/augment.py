"""Train-time augmentation on uint8 image tensors, every random draw from an explicit generator.

torchvision's v2 transform classes draw from the global RNG; here the parameters (crop box, flip,
angle, brightness and contrast factors) are drawn from the ``torch.Generator`` passed in and applied
with ``torchvision.transforms.v2.functional``, so the same seed gives the same images and nothing
else in the process is disturbed. Validation and test images are never augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Augment:
    """Random resized crop (area ``scale``, aspect ``ratio``), horizontal flip, rotation within
    ``+-degrees``, brightness and contrast factors in ``[1 - b, 1 + b]``."""

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2

    @classmethod
    def from_params(cls, p) -> Augment:
        return cls(scale=(float(p.crop_scale_min), 1.0), hflip=bool(p.hflip), degrees=float(p.rotation_degrees),
                   brightness=float(p.brightness), contrast=float(p.contrast))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g).item())


def crop_box(h: int, w: int, aug: Augment, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) as torchvision's ``RandomResizedCrop.get_params``, from ``g``."""
    area = h * w
    log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, *aug.scale)
        ar = math.exp(_uniform(g, *log_ratio))
        cw = round(math.sqrt(target * ar))
        ch = round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g).item())
            left = int(torch.randint(0, w - cw + 1, (), generator=g).item())
            return top, left, ch, cw
    # fallback: central crop at the nearest allowed aspect ratio
    in_ratio = w / h
    if in_ratio < aug.ratio[0]:
        cw, ch = w, round(w / aug.ratio[0])
    elif in_ratio > aug.ratio[1]:
        ch, cw = h, round(h * aug.ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def augment_one(img: torch.Tensor, *, size: int, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """One uint8 ``(C, H, W)`` image -> augmented uint8 ``(C, size, size)``."""
    h, w = img.shape[-2:]
    top, left, ch, cw = crop_box(h, w, aug, g)
    out = TF.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
    if aug.hflip and torch.rand((), generator=g).item() < 0.5:
        out = TF.horizontal_flip(out)
    if aug.degrees > 0:
        out = TF.rotate(out, _uniform(g, -aug.degrees, aug.degrees), interpolation=TF.InterpolationMode.BILINEAR)
    if aug.brightness > 0:
        out = TF.adjust_brightness(out, _uniform(g, 1 - aug.brightness, 1 + aug.brightness))
    if aug.contrast > 0:
        out = TF.adjust_contrast(out, _uniform(g, 1 - aug.contrast, 1 + aug.contrast))
    return out


def augment_batch(images: torch.Tensor, *, size: int, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> augmented uint8 ``(N, C, size, size)``, image by image."""
    return torch.stack([augment_one(im, size=size, aug=aug, g=g) for im in images])
