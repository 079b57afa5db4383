"""Where a backbone's preprocessing comes from: its own library's reference, read, never retyped.

A reference is a small frozen, hashable callable returning the :class:`~featpipe.backbones.spec.Preprocess`
(``spec.reference``; ``spec.preprocess`` calls it once). ``source`` says in one line what was read.

- :class:`TorchvisionTransforms`: a torchvision weight enum's ``transforms()`` (``ImageClassification``: shorter
  side to ``resize_size`` with its interpolation, antialiased; centre crop ``crop_size``; ImageNet mean/std);
- :class:`ProcessorConfig`: a Hugging Face image processor's ``preprocessor_config.json`` (:func:`from_processor`:
  ``size`` ``{"height", "width"}`` = the whole image resized, ``{"shortest_edge"}`` = shorter side; ``do_center_crop``
  + ``crop_size``; ``resample``; ``rescale_factor``; ``image_mean``/``image_std``); for a hub member the published
  file is registered and a downloaded snapshot's own file wins (:func:`for_folder`);
- :class:`TimmTransform`, :class:`OpenClipTransform`: the evaluation transform timm / open_clip build for a model,
  read step by step (:func:`from_transform`: ``Resize``, ``CenterCrop``, ``Normalize``);
- :class:`XrvTransform`: torchxrayvision's documented pipeline (one channel, [-1024, 1024], its resolution);
- :class:`Fixed`: a Preprocess given as is (tiny test members, which have no reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from featpipe.backbones.spec import Preprocess
from featpipe.backbones.torchvision_transforms import TORCHVISION_TRANSFORMS
from featpipe.core.errors import FeatpipeError, WeightsError

# PIL resampling codes, as image processors record them
_RESAMPLE = {1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Fixed:
    """A Preprocess given as is (no library reference: featpipe's tiny test members)."""

    value: Preprocess
    source: str = "featpipe test member (no reference)"

    def __call__(self) -> Preprocess:
        return self.value


@dataclass(frozen=True)
class TorchvisionTransforms:
    """``<Enum>.transforms()`` of a torchvision weight enum (``ResNet50_Weights.IMAGENET1K_V1``).

    Read from :mod:`featpipe.backbones.torchvision_transforms`, a table generated from the installed torchvision
    (``python tests/parity.py --write-torchvision-table``) so that ``prepare`` and ``decode`` know the preprocessing without
    importing torch; :meth:`live` reads torchvision itself, and building a network checks the two agree
    (:func:`featpipe.backbones.weights.resolve_spec`), so a torchvision whose transforms changed is followed."""

    enum: str

    @property
    def source(self) -> str:
        return f"torchvision {self.enum}.transforms()"

    def __call__(self) -> Preprocess:
        row = TORCHVISION_TRANSFORMS.get(self.enum)
        return Preprocess(**row) if row is not None else self.live()

    def live(self) -> Preprocess:
        """The preprocessing read from the installed torchvision now (imports it)."""
        import torchvision.models as tvm

        enum_name, member = self.enum.split(".")
        t = getattr(getattr(tvm, enum_name), member).transforms()
        return Preprocess(input_size=int(t.crop_size[0]), resize_size=int(t.resize_size[0]), mean=tuple(t.mean),
                          std=tuple(t.std), interpolation=str(t.interpolation.value), resize_mode="shorter")


@dataclass(frozen=True)
class ProcessorConfig:
    """A Hugging Face image processor config (the JSON text of ``preprocessor_config.json``)."""

    text: str
    source: str = "preprocessor_config.json"

    def __call__(self) -> Preprocess:
        return from_processor(json.loads(self.text), where=self.source)

    @classmethod
    def of(cls, config: dict, source: str) -> ProcessorConfig:
        return cls(json.dumps(config, sort_keys=True), source)


def _side(value, what: str, where: str) -> tuple[int, str]:
    """(pixels, mode) of an image processor ``size``/``crop_size`` entry."""
    if isinstance(value, (int, float)):
        return int(value), "square"
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            if int(value["height"]) != int(value["width"]):
                raise FeatpipeError(f"{where}: {what} {value} is not square; featpipe decodes square images")
            return int(value["height"]), "square"
        if "shortest_edge" in value and "longest_edge" not in value:
            return int(value["shortest_edge"]), "shorter-floor"  # Hugging Face's center_crop rounds down
    raise FeatpipeError(f"{where}: {what} {value!r} is not a size featpipe can reproduce "
                        "(height = width, or shortest_edge)")


def from_processor(cfg: dict, *, where: str = "preprocessor_config.json") -> Preprocess:
    """The Preprocess a Hugging Face image processor config describes (what ``AutoImageProcessor`` does with it:
    resize, optional centre crop, rescale by 1/255, normalise). A step featpipe cannot reproduce is a one-line
    error, never an approximation."""
    if not cfg.get("do_resize", True):
        raise FeatpipeError(f"{where}: do_resize is false; featpipe needs a fixed input size")
    size, mode = _side(cfg.get("size"), "size", where)
    crop = size
    if cfg.get("crop_pct") is not None and mode == "shorter-floor":  # ConvNeXt-style: resize to size / crop_pct, crop
        crop, size = size, int(size / float(cfg["crop_pct"]))
    if cfg.get("do_center_crop"):
        crop = _side(cfg.get("crop_size", size), "crop_size", where)[0]
    resample = int(cfg.get("resample", 2))
    if resample not in _RESAMPLE:
        raise FeatpipeError(f"{where}: resample {resample} is not one featpipe decodes with "
                            f"({', '.join(f'{k}={v}' for k, v in _RESAMPLE.items())})")
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise FeatpipeError(f"{where}: rescale_factor {cfg.get('rescale_factor')} is not 1/255")
    if not cfg.get("do_rescale", True):
        raise FeatpipeError(f"{where}: do_rescale is false (0-255 input); featpipe scales to [0, 1]")
    mean, std = (0.0,) * 3, (1.0,) * 3
    if cfg.get("do_normalize", True):
        mean, std = _triple(cfg.get("image_mean", 0.5)), _triple(cfg.get("image_std", 0.5))
    return Preprocess(input_size=crop, resize_size=size, mean=mean, std=std, interpolation=_RESAMPLE[resample],
                      resize_mode=mode)


def _triple(v) -> tuple[float, float, float]:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3


def folder_config(folder: str | Path) -> Optional[ProcessorConfig]:
    """The image processor config of a model folder (its ``preprocessor_config.json``), None when it has none."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        raise WeightsError(f"{path} is not valid JSON") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path} is not an image processor config (a JSON object)")
    return ProcessorConfig.of(cfg, str(path))


# --------------------------------------------------------------------------- transforms of other libraries


_PASS_THROUGH = ("ToTensor", "MaybeToTensor", "MaybeConvertMode", "ConvertImageDtype", "PILToTensor")


def from_transform(transform, *, where: str) -> Preprocess:
    """The Preprocess of an evaluation transform built of torchvision steps (what timm's ``create_transform`` and
    open_clip's ``image_transform_v2`` return): ``Resize`` (an int or one-element size = shorter side; ``(h, w)``
    = the whole image), ``CenterCrop``, ``Normalize``; conversions to a tensor or to RGB are passed. Any other
    step (timm's ``ResizeKeepRatio``, ``CenterCropOrPad`` border modes) is a one-line error, never approximated."""
    size = mode = interp = crop = mean = std = None
    steps = getattr(transform, "transforms", [transform])
    for step in steps:
        kind = type(step).__name__
        if kind == "Resize":
            s = step.size if isinstance(step.size, (list, tuple)) else [step.size]
            if len(s) == 2 and s[0] != s[1]:
                raise FeatpipeError(f"{where}: resize to {s[0]} x {s[1]} is not square; featpipe decodes square images")
            size, mode = int(s[0]), "square" if len(s) == 2 else "shorter"
            interp = getattr(step.interpolation, "value", str(step.interpolation))
            if getattr(step, "max_size", None) is not None:
                raise FeatpipeError(f"{where}: a resize with max_size is not one featpipe reproduces")
        elif kind == "CenterCrop":
            c = step.size if isinstance(step.size, (list, tuple)) else [step.size, step.size]
            if c[0] != c[-1]:
                raise FeatpipeError(f"{where}: centre crop {c} is not square; featpipe decodes square images")
            crop = int(c[0])
        elif kind == "Normalize":
            mean, std = tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
        elif kind not in _PASS_THROUGH and not getattr(step, "__name__", "").endswith("convert_to_rgb"):
            raise FeatpipeError(f"{where}: the transform step {kind} is not one featpipe reproduces "
                                "(Resize, CenterCrop, Normalize)")
    if size is None or mean is None:
        raise FeatpipeError(f"{where}: the transform has no Resize or no Normalize step")
    return Preprocess(input_size=crop or size, resize_size=size, mean=mean, std=std, interpolation=interp,
                      resize_mode=mode)


@dataclass(frozen=True)
class TimmTransform:
    """timm's evaluation transform, ``timm.data.create_transform(**data_config)``, of a model's data config
    (``timm.data.resolve_model_data_config``: input size, ``crop_pct`` -> shorter side ``floor(input / crop_pct)``,
    ``crop_mode``, interpolation, mean, std), kept as JSON text."""

    config: str
    model: str

    @property
    def source(self) -> str:
        return f"timm create_transform(resolve_model_data_config({self.model}))"

    def __call__(self) -> Preprocess:
        from timm.data import create_transform

        cfg = json.loads(self.config)
        cfg["input_size"] = tuple(cfg["input_size"])
        return from_transform(create_transform(**cfg, is_training=False), where=self.source)


@dataclass(frozen=True)
class OpenClipTransform:
    """open_clip's evaluation transform, ``open_clip.image_transform_v2(PreprocessCfg(**cfg), is_train=False)``,
    the one ``create_model_and_transforms`` returns for the model (``preprocess_cfg`` of its
    ``open_clip_config.json`` on open_clip's defaults: shorter side bicubic, centre crop), kept as JSON text."""

    config: str
    model: str

    @property
    def source(self) -> str:
        return f"open_clip image_transform_v2 of {self.model}"

    def __call__(self) -> Preprocess:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = json.loads(self.config)
        return from_transform(image_transform_v2(PreprocessCfg(**cfg), is_train=False), where=self.source)


@dataclass(frozen=True)
class XrvTransform:
    """torchxrayvision's documented pipeline for weights ``weights``: ``xrv.datasets.normalize(img, 255)`` (to
    [-1024, 1024]), the mean of the colour channels, ``XRayCenterCrop()`` (a centred square of the shorter side),
    ``XRayResizer(input_resolution)`` (skimage, linear, antialiased): one channel, ``mean=0.5, std=1/2048`` on
    [0, 1] pixels, shorter side then (bilinear) to the model's resolution."""

    weights: str

    @property
    def source(self) -> str:
        return f"torchxrayvision XRayCenterCrop + XRayResizer + normalize of {self.weights}"

    def __call__(self) -> Preprocess:
        import torchxrayvision as xrv

        size = int(xrv.models.model_urls[self.weights].get("input_resolution", 224))
        resizer = xrv.datasets.XRayResizer(size)
        return Preprocess(input_size=resizer.size, resize_size=resizer.size, mean=(0.5,), std=(1 / 2048,),
                          interpolation="bilinear", resize_mode="shorter", channels=1)
