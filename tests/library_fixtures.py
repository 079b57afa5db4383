"""Planted weights and reference pipelines for the backbones named by library (timm, open_clip, torchxrayvision,
Hugging Face): random weights under the real names, offline, and each library's own transform and forward, so
that featpipe's input and embedding can be compared with what the library does on the same file.

- timm: ``timm/<name>`` hub snapshot with the full model's ``model.safetensors`` (classifier included);
- open_clip (BiomedCLIP): hub snapshot with ``open_clip_config.json`` and ``open_clip_pytorch_model.bin``. The
  towers are the published ones (timm ViT-B/16, linear projection to 512; a BERT text tower, context length 256),
  the BERT tiny (its config.json planted as ``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``) with a small
  WordPiece tokenizer in the snapshot;
- torchxrayvision: its file name in a cache folder (``FEATPIPE_XRV_CACHE``), a whole pickled random DenseNet as
  its real files are;
- hf: a tiny DINOv2 saved as a model folder with a ``preprocessor_config.json`` (BitImageProcessor style: shorter
  side 256 bicubic, crop 224).

:func:`measure` returns, per file, featpipe's network input (decoded cache + ``model_input``, the extraction path)
against the reference input on the 0-255 scale, and the cosine of the two embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
SEED = 4321
TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
# portrait grey, landscape grey (wide), RGB landscape, RGB (near square, portrait) from figure1-covid-cxr
FILES = ("COVID-00018.jpg", "COVID-00020.jpg", "COVID-00001.jpg", "COVID-00008.jpg")
HF_PROCESSOR = {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
                "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5307] * 3,
                "image_std": [0.2583] * 3, "image_processor_type": "BitImageProcessor", "resample": 3,
                "rescale_factor": 1 / 255, "size": {"shortest_edge": 256}}


def _snapshot(home: Path, repo: str) -> Path:
    root = home / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def plant_timm(home: Path, name: str = TIMM_NAME) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    snap = _snapshot(home, f"timm/{name}")
    if not (snap / "model.safetensors").is_file():
        torch.manual_seed(SEED)
        net = timm.create_model(name, pretrained=False)  # the full model, classifier included, as published
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


# A small BERT WordPiece vocabulary for the planted BiomedCLIP text tower (the real one is PubMedBERT's 30522
# entries, special tokens first in the same order): saved under the hub layout with the snapshot.
BERT_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "chest", "x", "-", "ray", "of", "normal",
              "healthy", "lungs", "pneumonia", "no", "with", "showing", "opacit", "##y", "##ies", "clear", "photo", "the")
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def plant_biomedbert_config(home: Path) -> Path:
    """The config.json of BiomedCLIP's text model (``text_cfg.hf_model_name``: open_clip builds the text tower from
    it), tiny: one layer of width 64, the planted vocabulary, 512 positions as PubMedBERT's."""
    from transformers import BertConfig

    snap = _snapshot(home, BIOMEDBERT)
    if not (snap / "config.json").is_file():
        BertConfig(vocab_size=len(BERT_WORDS), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=128, max_position_embeddings=512, pad_token_id=0,
                   initializer_range=0.5).save_pretrained(snap)  # wide: prompts embed apart (0.02: cosines ~1)
    return snap


def plant_biomedclip(home: Path) -> Path:
    """The BiomedCLIP snapshot: the published image tower (timm ViT-B/16, linear projection to 512) and text tower
    (a BERT through open_clip's HFTextEncoder, MLP projection, CLS pooling, context length 256), the BERT tiny
    (:func:`plant_biomedbert_config`), and a BERT WordPiece tokenizer of :data:`BERT_WORDS` in the snapshot."""
    import torch
    from open_clip.model import CustomTextCLIP
    from transformers import BertTokenizerFast

    from featpipe.backbones.libs_openclip import BIOMEDCLIP, BIOMEDCLIP_CONFIG

    bert = plant_biomedbert_config(home)
    snap = _snapshot(home, BIOMEDCLIP)
    if not (snap / "open_clip_pytorch_model.bin").is_file():
        (snap / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP_CONFIG, indent=1))
        BertTokenizerFast(vocab={w: i for i, w in enumerate(BERT_WORDS)}, do_lower_case=True,
                          model_max_length=512).save_pretrained(snap)
        (snap / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")  # as the published repository has it
        text_cfg = dict(BIOMEDCLIP_CONFIG["model_cfg"]["text_cfg"], hf_model_name=str(bert), hf_model_pretrained=False)
        torch.manual_seed(SEED)
        model = CustomTextCLIP(embed_dim=512, vision_cfg=BIOMEDCLIP_CONFIG["model_cfg"]["vision_cfg"], text_cfg=text_cfg)
        torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin")
    return snap


def biomedclip_local_dir(home: Path) -> Path:
    """The planted snapshot as an open_clip ``local-dir:`` folder (the reference: open_clip's own create_model,
    transform and tokenizer), its text model named by the planted config's folder (open_clip would look the hub
    name up through huggingface_hub, whose cache location is fixed at import)."""
    snap = plant_biomedclip(home)
    local = home / "biomedclip-local"
    if not (local / "open_clip_config.json").is_file():
        local.mkdir(parents=True, exist_ok=True)
        for f in snap.iterdir():
            if f.name != "open_clip_config.json":
                (local / f.name).symlink_to(f)
        config = json.loads((snap / "open_clip_config.json").read_text())
        config["model_cfg"]["text_cfg"]["hf_model_name"] = str(plant_biomedbert_config(home))
        (local / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    return local


def plant_xrv(home: Path, *, legacy: bool = True) -> Path:
    import torch
    import torchxrayvision as xrv

    from featpipe.backbones.libs_xrv import weights_path

    folder = home / "xrv"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights_path("densenet121-res224-all")[0].name
    if not target.is_file():
        torch.manual_seed(SEED)
        net = xrv.models.DenseNet(weights=None)
        for m in net.modules():  # trained statistics, not the initial 0/1 (so the features are not degenerate)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        torch.save(net, target, _use_new_zipfile_serialization=not legacy)  # the whole model, as xrv's files
    return folder


def plant_hf_folder(home: Path) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = home / "tiny-dinov2"
    if not (folder / "config.json").is_file():
        torch.manual_seed(SEED)
        net = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                       image_size=224, patch_size=16))
        net.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(HF_PROCESSOR, indent=1))
    return folder


def use(monkeypatch, home: Path) -> None:
    """Point the hub cache and torchxrayvision's cache at ``home``; forbid downloads."""
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("FEATPIPE_XRV_CACHE", str(home / "xrv"))
    for key in ("FEATPIPE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")


# --------------------------------------------------------------------------- references


def reference(kind: str, home: Path):
    """(transform: path -> (C, H, W) float tensor, forward: batch -> embeddings) of the library's reference."""
    import torch
    from PIL import Image

    def rgb(f):
        with Image.open(f) as im:
            return im.convert("RGB")

    if kind == "timm":
        import timm
        from timm.data import create_transform, resolve_model_data_config

        net = timm.create_model(TIMM_NAME, pretrained=True, pretrained_cfg_overlay={"file": str(plant_timm(home))}).eval()
        cfg = resolve_model_data_config(net)
        t = create_transform(**cfg, is_training=False)
        return (lambda f: t(rgb(f))), (lambda x: net.forward_head(net.forward_features(x), pre_logits=True))
    if kind == "biomedclip":
        import open_clip

        model, _, val = open_clip.create_model_and_transforms("local-dir:" + str(biomedclip_local_dir(home)))
        model.eval()
        return (lambda f: val(rgb(f))), model.encode_image
    if kind == "xrv":
        import torchvision
        import torchxrayvision as xrv

        model = xrv.models.DenseNet(weights="densenet121-res224-all", cache_dir=str(plant_xrv(home))).eval()
        t = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])

        def xrv_input(f):  # the README's pipeline
            with Image.open(f) as im:
                img = np.asarray(im)
            img = xrv.datasets.normalize(img, 255)
            if img.ndim == 3:
                img = img[..., :3].mean(2)
            return torch.from_numpy(t(img[None, ...]))

        return xrv_input, model.features2
    if kind == "hf":
        from transformers import AutoImageProcessor, AutoModel

        folder = plant_hf_folder(home)
        proc = AutoImageProcessor.from_pretrained(str(folder), use_fast=False)  # Pillow resizing (the slow processor)
        net = AutoModel.from_pretrained(str(folder)).eval()
        return ((lambda f: proc(rgb(f), return_tensors="pt")["pixel_values"][0]),
                (lambda x: net(pixel_values=x).last_hidden_state[:, 0]))
    raise ValueError(kind)


NAMES = {"timm": f"timm:{TIMM_NAME}", "biomedclip": "biomedclip", "xrv": "xrv_densenet121", "hf": None}
PLANT = {"timm": plant_timm, "biomedclip": plant_biomedclip, "xrv": plant_xrv, "hf": plant_hf_folder}


def measure(kind: str, home: Path, image_dir: Path, cache_dir: Path, *, files=FILES, draft: bool = True) -> dict:
    """featpipe against the library's reference on ``files``: per file, the input max |diff| on the 0-255 scale,
    and the cosine of the embeddings (fp32). featpipe's input is read from its decoded cache (``ensure_decoded``,
    the pipeline's decode options; ``draft=False``: JPEGs decoded whole) through ``model_input``; its embedding from
    ``create_backbone``."""
    import pandas as pd
    import torch

    from featpipe.backbones.create import create_backbone
    from featpipe.backbones.modelinput import decode_key, ensure_decoded, model_input
    from featpipe.core.fileio import file_sha256
    from featpipe.decoded.cache import DecodedImages, DecodeOptions

    PLANT[kind](home)
    name = NAMES[kind] or f"hf:{plant_hf_folder(home)}"
    backbone = create_backbone(name)
    paths = [image_dir / f for f in files]
    manifest = pd.DataFrame({"id": list(files), "path": [str(p) for p in paths],
                             "sha256": [file_sha256(p) for p in paths]})
    res = ensure_decoded(manifest, [backbone.preprocess], cache_dir=cache_dir / f"draft-{draft}", dataset="parity",
                         options=DecodeOptions(1, draft=draft, progress=False))
    with DecodedImages(res.paths[decode_key(backbone.preprocess)]) as r:
        pixels = r.read(r.index_of(manifest["id"]))
    ours = model_input(pixels, backbone.preprocess)
    transform, forward = reference(kind, home)
    theirs = torch.stack([transform(p) for p in paths]).float()
    scale = torch.tensor([s * 255.0 for s in backbone.preprocess.std]).view(1, -1, 1, 1)  # network units -> 0-255
    gap = (ours - theirs).abs() * scale
    diff = gap.amax(dim=(1, 2, 3))
    with torch.inference_mode():
        a, b = backbone.model(ours).double(), forward(theirs).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return {"backbone": name if kind != "hf" else "hf:<tiny DINOv2 folder>", "files": list(files),
            "input_diff": diff.tolist(), "cosine": cos.tolist(), "input_mean_diff": gap.mean(dim=(1, 2, 3)).tolist(),
            "interior_diff": gap[..., 4:-4, 4:-4].amax(dim=(1, 2, 3)).tolist(), "shape": tuple(ours.shape[1:]),
            "ref_shape": tuple(theirs.shape[1:])}
