"""Text towers of CLIP-like backbones (MedSigLIP, BiomedCLIP): prompts -> unit text embeddings in the image
embedding's space.

The backbone's :class:`~featpipe.backbones.spec.TextTower` names who builds the full model and pins the tokenizer
settings (SigLIP: ``padding="max_length"``, ``max_length=64``, truncation; BiomedCLIP: whitespace collapsed,
padded to 256, truncated); :func:`tokenize` is the one place prompts are tokenized. The weights are the
backbone's own (:func:`featpipe.backbones.weights.resolve`: the same hub snapshot or folder whose vision tower
made the feature cache), loaded whole (vision + text) with its tokenizer from that folder, offline. The image
side of a SigLIP model needs no projection: its image embedding is the vision tower's pooled output, the
``pooler`` features the cache holds; BiomedCLIP's is ``image_embeds`` (``encode_image``, projected to 512).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from featpipe.backbones import libs_openclip
from featpipe.backbones.registry import get
from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsRef, resolve
from featpipe.core.errors import FeatpipeError, WeightsError


@dataclass(frozen=True)
class TextEmbeddings:
    """Unit text embeddings (n, D) of ``prompts`` and the model's logit scale (``exp(logit_scale)``) and bias."""

    prompts: tuple[str, ...]
    embeddings: np.ndarray
    logit_scale: float
    logit_bias: float
    weights_id: str


def text_spec(backbone: str | BackboneSpec) -> BackboneSpec:
    spec = get(backbone)
    if spec.text is None:
        raise FeatpipeError(f"backbone '{spec.name}' has no text tower: zero-shot needs a CLIP-like backbone "
                            "(medsiglip, biomedclip)")
    return spec


def tokenize(spec: BackboneSpec, tokenizer, prompts: Sequence[str]):
    """``prompts`` tokenized with the settings pinned in ``spec.text`` (torch tensors)."""
    text = text_spec(spec).text
    texts = [" ".join(p.split()) for p in prompts] if text.clean == "whitespace" else list(prompts)
    return tokenizer(texts, return_tensors="pt", **text.tokenizer_kwargs())


def load_text_model(spec: BackboneSpec, ref: WeightsRef):
    """(full model in eval mode, tokenizer) from the weights folder ``ref`` (a hub snapshot or a local folder; an
    open_clip repository: :func:`featpipe.backbones.libs_openclip.load_text_model`)."""
    if spec.text.library == "open_clip":
        if ref.kind != "open_clip":
            raise WeightsError(f"zero-shot with {spec.name} needs its open_clip repository's checkpoint (vision + "
                               f"text + tokenizer), not {ref.kind} weights '{ref.request}'")
        return libs_openclip.load_text_model(spec, ref.source)
    if ref.kind != "hf_folder":
        raise WeightsError(f"zero-shot with {spec.name} needs its Hugging Face weights folder (vision + text + "
                           f"tokenizer), not {ref.kind} weights '{ref.request}'")
    import torch
    import transformers

    try:
        model = getattr(transformers, spec.text.hf_class).from_pretrained(ref.source, local_files_only=True,
                                                                           dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(ref.source, local_files_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot load {spec.name}'s text tower and tokenizer from {ref.source} ({reason[:200]}): "
                           "the folder needs the full model (text_model.* weights) and its tokenizer files") from None
    return model.eval(), tokenizer


def embed_prompts(backbone: str, prompts: Sequence[str], *, weights: str = "default",
                  batch_size: int = 32) -> TextEmbeddings:
    """Unit text embeddings of ``prompts`` by ``backbone``'s text tower (float64, rows in prompt order)."""
    import torch

    spec = text_spec(backbone)
    ref = resolve(spec, weights)
    model, tokenizer = load_text_model(spec, ref)
    out = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = tokenize(spec, tokenizer, prompts[s:s + batch_size])
            if spec.text.library == "open_clip":  # HFTextEncoder: attention mask = ids != pad, CLS pooled, MLP
                feats = model.encode_text(enc["input_ids"])
            else:
                feats = model.get_text_features(input_ids=enc["input_ids"])
                feats = getattr(feats, "pooler_output", feats)
            out.append(feats.double().numpy())
    emb = np.concatenate(out) if out else np.zeros((0, spec.embed_dim))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 1.0
    bias = float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else 0.0
    return TextEmbeddings(tuple(prompts), emb, scale, bias, ref.identity)
