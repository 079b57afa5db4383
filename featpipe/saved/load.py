"""The one loader of saved models: :func:`load_model` turns a saved head (``.skops`` + ``.json``) or a fine-tuned
model (``.safetensors`` + ``.json``) into a :class:`LoadedModel` that classifies decoded images.

A saved head's backbone is rebuilt by :func:`rebuild_backbone` from what the user asked for at extraction (the
sidecar's ``weights_request``: ``default``, ``imagenet``, a file, a folder or a hub id), never from the resolved
source (an enum name or a cache path is not a request), and weights whose identity differs from the one the head
was fitted on are refused before any image is read. Every network runs on one
:class:`~featpipe.core.runtime.Runtime` decided from the requested device and the precision recorded with the
model, with the backbone family's traits: the kernels extraction (or training) ran, so a head applied to an image
of its manifest sees exactly the embedding the feature cache holds.

``predict``, Grad-CAM and the sanity check load through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from featpipe.backbones.model import build
from featpipe.backbones.modelinput import model_input, same_channels
from featpipe.backbones.registry import get
from featpipe.backbones.spec import Preprocess
from featpipe.core.runtime import Runtime
from featpipe.evaluation.calibration import apply_temperature
from featpipe.features.batches import embed_batch
from featpipe.finetune.checkpoint import load_finetuned
from featpipe.finetune.data import ArrayImages, Prep
from featpipe.finetune.loop import predict_proba as finetuned_proba
from featpipe.heads.io import check_compatible, load_head
from featpipe.heads.torch_twin import FrozenWithHead, torch_head
from featpipe.imaging.base import Resize
from featpipe.saved.models import kind_of, model_file


def weights_request(meta: Mapping) -> str:
    """What was asked for when the features were made: ``weights_request`` (older sidecars: ``weights``
    when it is a request, i.e. not a resolved torchvision enum name)."""
    req = meta.get("weights_request")
    if req:
        return str(req)
    w = str(meta.get("weights") or "default")
    return "default" if "_Weights." in w else w


def rebuild_backbone(meta: Mapping):
    """The backbone :class:`~featpipe.backbones.model.FeatureModel` a saved head was fitted on (on the CPU),
    rebuilt from the sidecar's weights request and checked against it (weights identity, layer, preprocessing,
    embedding size) before any image is read."""
    spec = get(meta["backbone"])
    layer = spec.resolve_layer(meta.get("layer") or None)
    model = build(spec, weights=weights_request(meta), layer=layer)
    check_compatible(meta, {"backbone": spec.name, "weights_id": model.weights_id, "layer": layer or "",
                            "preprocess": spec.preprocess.to_dict(), "embedding_dim": model.embed_dim},
                     what=f"the backbone rebuilt with weights '{weights_request(meta)}'")
    return model


def head_proba(pipeline, meta: Mapping, embeddings: np.ndarray) -> np.ndarray:
    """A saved head's class probabilities of backbone embeddings: its pipeline, then the val-fitted temperature
    its sidecar records (``heads.calibrate: temperature``), if any."""
    proba = pipeline.predict_proba(embeddings)
    t = meta.get("temperature")
    return proba if t is None or not np.isfinite(t) else apply_temperature(proba, t)


def _stack(images) -> np.ndarray:
    """uint8 ``(n, S, S, C)`` from an array or a sequence of decoded images (grey replicated where mixed)."""
    if isinstance(images, np.ndarray):
        return images[..., None] if images.ndim == 3 else images
    return same_channels([np.asarray(im) for im in images])


@dataclass
class LoadedModel:
    """A saved model, ready to classify images decoded to :attr:`decoding` (uint8 ``(S, S, C)``; as
    :func:`featpipe.backbones.modelinput.decode_files` or the decoded-image cache decode them)."""

    kind: str  # "head" | "finetune"
    path: Path  # the model file
    meta: dict  # the sidecar
    spec: Any  # the backbone's BackboneSpec
    runtime: Runtime  # where and how its networks run
    features: Any  # the backbone FeatureModel (a head's, or the fine-tuned network's), prepared for the runtime
    pipeline: Any = None  # the fitted sklearn pipeline of a saved head
    network: Any = None  # the FinetuneModel of a fine-tuned model
    _module: Any = field(default=None, repr=False)

    @property
    def run(self) -> str:
        """The run's name: the model file's stem."""
        return self.path.stem

    @property
    def classes(self) -> list:
        return list(self.meta.get("classes") or [])

    @property
    def threshold(self) -> Optional[float]:
        """The binary decision threshold on ``p(classes[1])`` chosen on val (None: argmax)."""
        return self.meta.get("threshold") if len(self.classes) == 2 else None

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing of the model's inputs, as recorded in the sidecar (the backbone's when none is)."""
        pre = self.meta.get("preprocess")
        return Preprocess.from_dict(pre) if pre else self.spec.preprocess

    @property
    def decoding(self) -> Resize:
        """The decoded form images are read in before the centre crop (size and resize filter)."""
        return self.preprocess.decoding

    @property
    def decode_size(self) -> int:
        """The size images are decoded at before the centre crop (with the filter of :attr:`decoding`)."""
        return self.preprocess.resize_size

    def embed(self, images, *, batch_size: int = 32) -> np.ndarray:
        """float32 ``(n, D)`` backbone embeddings of decoded images, computed as extraction computes them."""
        pixels = _stack(images)
        pre = self.spec.preprocess if self.kind == "head" else self.preprocess
        out = [embed_batch(self.features, model_input(pixels[s:s + batch_size], pre), runtime=self.runtime)
               for s in range(0, len(pixels), batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.empty((0, 0), np.float32)

    def predict_proba(self, images, *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``(n, C)`` (columns in :attr:`classes` order) of decoded images: a head's pipeline
        on :meth:`embed` (with the run's val-fitted temperature, if any), or the fine-tuned network's softmax as
        its own test pass computes it (a multi-label network: a sigmoid per label)."""
        if self.kind == "head":
            return head_proba(self.pipeline, self.meta, self.embed(images, batch_size=batch_size))
        pixels = _stack(images)
        ids = [str(i) for i in range(len(pixels))]
        return finetuned_proba(self.network, ArrayImages(ids, pixels), ids, prep=Prep.from_preprocess(self.preprocess),
                               rt=self.runtime, batch_size=batch_size, multilabel=self.multilabel)

    @property
    def multilabel(self) -> bool:
        """A multi-label model: :attr:`classes` are its labels, each with a sigmoid output and its own val
        threshold (``thresholds`` in the sidecar)."""
        return self.meta.get("task") == "multilabel"

    def torch_module(self):
        """The model as one torch module: normalised ``(B, 3, H, W)`` -> class logits ``(B, C)``, eval mode (a
        head becomes a differentiable :class:`~featpipe.heads.torch_twin.TorchHead` after its backbone)."""
        if self._module is None:
            self._module = (self.network if self.kind == "finetune"
                            else self.runtime.prepare(FrozenWithHead(self.features, torch_head(self.pipeline))))
        return self._module


def load_model(path: str | Path, *, device: str = "cpu", precision: Optional[str] = None) -> LoadedModel:
    """Load a saved head or a fine-tuned model (either file of the pair, or a fine-tuned model's stem).

    ``device``: see :func:`featpipe.core.runtime.select_device` (checked before anything is read);
    ``precision``: ``None`` = the precision its features (or its training) ran in, as recorded in the sidecar
    (fp32 when none is recorded); ``fp32`` or ``bf16`` to override (Grad-CAM runs in fp32)."""
    kind = kind_of(path)
    file = model_file(path, kind)
    if kind == "head":
        saved = load_head(file)
        spec = get(saved.meta["backbone"])
        rt = Runtime.resolve(device, precision or saved.meta.get("precision") or "fp32", traits=spec.traits)
        features = rt.prepare(rebuild_backbone(saved.meta))
        return LoadedModel(kind, saved.path, saved.meta, spec, rt, features, pipeline=saved.pipeline)
    net, meta = load_finetuned(path)
    spec = get(meta["backbone"])
    rt = Runtime.resolve(device, precision or meta.get("precision") or "fp32", traits=spec.traits)
    net = rt.prepare(net)
    return LoadedModel(kind, file, meta, spec, rt, net.features, network=net)
