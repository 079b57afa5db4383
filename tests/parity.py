"""Parity with the reference: featpipe's network input and embedding of a real file against what the backbone's own
library computes from the same file (its preprocessing + its model call + its documented pooling).

Used by ``tests/test_parity.py`` (the assertions) and ``benchmarks/parity.py`` (the table in
``benchmarks/results/parity.md``). featpipe's side is the real path: the file decoded into the decoded cache
(:func:`featpipe.backbones.modelinput.ensure_decoded`, default decode options: JPEG draft on), read back, turned
into the network input by :func:`featpipe.backbones.modelinput.model_input` and embedded by the
:class:`~featpipe.backbones.model.FeatureModel` built with the default weights (planted under their real names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from featpipe.backbones import registry
from featpipe.backbones.model import build
from featpipe.backbones.modelinput import ensure_decoded, model_input
from featpipe.backbones.weights import resolve_spec
from featpipe.core.fileio import file_sha256
from featpipe.decoded.cache import DecodedImages, DecodeOptions
from featpipe.imaging.base import DEFAULT_DRAFT
from tests.pretrained_fixtures import plant_hub, plant_torchvision

# Real radiographs of several shapes (Figure 1 set): portrait 3024x4032 and 1414x1755, landscape RGB 1151x972,
# a 16-bit-free grey PNG 3052x2541, a wide 844x480, and a 224x224 PNG (upsampled by the 448/518 px members).
PARITY_FILES = ("COVID-00006.jpg", "COVID-00017.jpg", "COVID-00001.jpg", "COVID-00015b.png", "COVID-00020.jpg",
                "COVID-00048.png")
TORCHVISION = ("densenet161", "resnet50", "resnet18", "densenet121", "efficientnet_b4", "vit_b_16")
HUB = ("medsiglip", "rad_dino")


@dataclass
class Parity:
    backbone: str
    files: list[str]
    input_max_diff: float  # max |featpipe - reference| of the network input, on the 0-255 scale (before normalising)
    input_mean_diff: float
    lowest_cosine: float
    reference: str
    per_file_max: dict  # file name -> its input max |difference| (0-255)
    draft: bool = DEFAULT_DRAFT


def load_reference_image(path: Path) -> Image.Image:
    """The file as the references' own loaders give it: EXIF-oriented (Hugging Face ``load_image``), RGB."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def featpipe_side(name: str, files: list[Path], tmp: Path, *, draft: bool = DEFAULT_DRAFT):
    """(network input (n, C, H, W) float32, embeddings (n, D)) through featpipe's decoded cache and model."""
    spec, _ = resolve_spec(registry.get(name), "default")
    manifest = pd.DataFrame({"id": [f.name for f in files], "path": [str(f) for f in files],
                             "sha256": [file_sha256(f) for f in files]})
    res = ensure_decoded(manifest, [spec], cache_dir=tmp, dataset="parity", options=DecodeOptions(1, draft=draft, progress=False))
    with DecodedImages(res.paths[spec.preprocess.decoding]) as r:
        pixels = r.read(r.index_of(manifest["id"]))
    x = model_input(pixels, spec.preprocess)
    model = build(name)
    import torch

    with torch.no_grad():
        emb = model(x).numpy()
    return x.numpy(), emb, spec.preprocess


def torchvision_reference(name: str, files: list[Path], state_dict_path: Path):
    """``Weights.transforms()`` on each file + the full torchvision network (planted weights) called as is; the
    embedding is what its classifier receives (global average pool for CNNs, the class token for ViT)."""
    import torch
    import torchvision.models as tvm

    spec = registry.get(name)
    enum_name, member = spec.pretrained.split(".")
    weights = getattr(getattr(tvm, enum_name), member)
    net = tvm.get_model(spec.make.arch, weights=None)
    net.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True))
    net.eval()
    head = next(getattr(net, a) for a in ("fc", "classifier", "heads") if hasattr(net, a))
    got = []
    handle = head.register_forward_hook(lambda _m, inp, _out: got.append(inp[0].detach().flatten(1)))
    t = weights.transforms()
    x = torch.stack([t(load_reference_image(f)) for f in files])
    with torch.no_grad():
        net(x)
    handle.remove()
    return x.numpy(), got[0].numpy(), f"torchvision {spec.pretrained}.transforms() + {spec.make.arch}"


def hub_reference(name: str, files: list[Path], snapshot: Path):
    """``AutoImageProcessor`` of the snapshot + ``AutoModel`` of the snapshot: ``get_image_features`` of a full SigLIP
    (MedSigLIP: the model card's image embedding, the vision tower's pooled output) or ``pooler_output`` (RAD-DINO:
    the CLS token after the final layer norm)."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    proc = AutoImageProcessor.from_pretrained(str(snapshot))
    net = AutoModel.from_pretrained(str(snapshot), dtype=torch.float32).eval()
    x = proc(images=[load_reference_image(f) for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if hasattr(net, "get_image_features"):  # a full SigLIP snapshot (vision + text): the model card's call
            out = net.get_image_features(pixel_values=x)
            emb, call = (out if torch.is_tensor(out) else out.pooler_output), "get_image_features"
        else:
            emb, call = net(pixel_values=x).pooler_output, "pooler_output"
    return x.numpy(), emb.numpy(), f"{type(proc).__name__} + {type(net).__name__}.{call}"


def compare(name: str, files: list[Path], tmp: Path, home: Path, *, draft: bool = DEFAULT_DRAFT) -> Parity:
    """featpipe against the reference on ``files`` (default weights planted under ``home``); ``draft``: the decode
    option (on by default: JPEGs much larger than the target decoded at a reduced DCT scale)."""
    spec = registry.get(name)
    if name in TORCHVISION:
        ref_x, ref_e, how = torchvision_reference(name, files, plant_torchvision(home, spec))
    else:
        ref_x, ref_e, how = hub_reference(name, files, plant_hub(home, spec))
    x, e, pre = featpipe_side(name, files, tmp, draft=draft)
    assert x.shape == ref_x.shape, (name, x.shape, ref_x.shape)
    scale = np.asarray(pre.std, dtype=np.float32).reshape(1, -1, 1, 1) * 255.0
    diff = np.abs(x - ref_x) * scale
    cos = (e * ref_e).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref_e, axis=1))
    per_file = diff.reshape(len(files), -1).max(axis=1)
    return Parity(name, [f.name for f in files], float(diff.max()), float(diff.mean()), float(cos.min()), how,
                  {f.name: float(d) for f, d in zip(files, per_file)}, draft)


def table(rows: list[Parity]) -> str:
    lines = ["| backbone | files | input max abs diff (0-255) | input mean abs diff | lowest cosine | reference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.backbone} | {len(r.files)} | {r.input_max_diff:.3f} | {r.input_mean_diff:.4f} | "
                     f"{r.lowest_cosine:.7f} | {r.reference} |")
    return "\n".join(lines)


def torchvision_table() -> dict:
    """What the installed torchvision's ``transforms()`` gives for every registered torchvision member."""
    from featpipe.backbones.reference import TorchvisionTransforms

    refs = {registry.get(n).reference for n in registry.names(tiny=False)}
    return {r.enum: dict(r.live().__dict__) for r in sorted((r for r in refs if isinstance(r, TorchvisionTransforms)),
                                                               key=lambda r: r.enum)}


def write_torchvision_table(path: Path) -> None:
    """Regenerate featpipe/backbones/torchvision_transforms.py from the installed torchvision."""
    import torchvision

    body = "".join(f"    {e!r}: {r!r},\n" for e, r in torchvision_table().items())
    path.write_text(f'''"""What ``<Enum>.transforms()`` gives for featpipe's torchvision members, generated from torchvision
{torchvision.__version__} by ``python tests/parity.py --write-torchvision-table`` (do not edit: regenerate). Read by
:class:`featpipe.backbones.reference.TorchvisionTransforms` without importing torch; tests/test_parity.py compares
it with the installed torchvision."""

TORCHVISION_VERSION = {torchvision.__version__!r}
TORCHVISION_TRANSFORMS = {{
{body}}}
''')


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write-torchvision-table"]:
        write_torchvision_table(Path(__file__).resolve().parents[1] / "featpipe" / "backbones" /
                                "torchvision_transforms.py")
