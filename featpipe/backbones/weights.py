"""Weights: resolve what the user asked for, identify it, and load it (never silently random).

``weights`` is one of:

- ``default``: the backbone's registered default (torchvision ImageNet enum for CNNs/ViT, the hub id
  for MedSigLIP, ``random`` for the tiny test members);
- ``imagenet``: torchvision's weight enum; the file is looked up in ``$TORCH_HOME/hub/checkpoints``
  (``torch.hub.get_dir()``) and downloaded there only when online;
- ``random``: seeded (seed 0) random initialisation, only when asked for; ``random:seed<n>`` draws it
  from seed ``n`` (scratch fine-tuning uses the run's seed, so seeds vary the initialisation too);
- a local file ``.pth`` / ``.pt`` (``torch.load(weights_only=True)``, never unpickling code) or
  ``.safetensors``: a state dict of the network (``module.``/``net.`` prefixes and a classifier are
  ignored; any other missing or unexpected key is an error);
- a local Hugging Face model folder (``config.json`` + ``*.safetensors``), e.g. a downloaded
  ``google/medsiglip-448``;
- a hub id (``owner/name``): fetched with ``huggingface_hub`` (honours ``HF_HOME``,
  ``HF_HUB_OFFLINE``, ``HF_TOKEN``), then loaded as a folder.

Backbones named by library (``timm:``, ``open_clip:``, ``xrv:``, and ``biomedclip``, ``xrv_densenet121``): their
``default`` weights come from the library's own cache (:mod:`featpipe.backbones.libs_timm`, ``libs_openclip``,
``libs_xrv``: kinds ``timm``, ``open_clip``, ``xrv``), a local file is loaded by the library's loader where it has
one; ``hf:`` backbones are Hugging Face folders or hub ids as above.

Offline: ``FEATPIPE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``) forbids any
download attempt. Weights that cannot be had raise :class:`~featpipe.core.errors.WeightsError` (one line:
which file is missing and how to provide it).

Identity (recorded in every feature cache as ``weights_id``): ``random:seed0``,
``torchvision:<Enum>:<file name>``, ``sha256:<hex>`` of a local file (and of torchxrayvision's), ``timm:<name>@<commit>``, ``hf-folder:sha256:<hex>``
over a folder's config and weight files, ``hf:<id>@<commit>`` for a hub snapshot (asked by hub id, or
its snapshot folder ``.../models--<owner>--<name>/snapshots/<commit>`` passed as a folder: one identity on
every machine).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from featpipe.backbones.hubcache import load_folder, offline
from featpipe.backbones.reference import Fixed, TorchvisionTransforms, folder_config
from featpipe.backbones.registry import LIBRARIES, hf_names
from featpipe.backbones.spec import BackboneSpec
from featpipe.core.errors import WeightsError
from featpipe.core.fileio import file_sha256

RANDOM_SEED = 0
FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_RANDOM_SEEDED = re.compile(r"^random:seed(\d+)$")
_SNAPSHOT = re.compile(r"/models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})$")


def random_seed(weights: str) -> int:
    """The initialisation seed of ``random`` (0) or ``random:seed<n>`` (n)."""
    m = _RANDOM_SEEDED.match(str(weights))
    return int(m.group(1)) if m else RANDOM_SEED


@dataclass(frozen=True)
class WeightsRef:
    """Resolved weights: ``kind`` in torchvision | random | file | hf_folder | timm | open_clip | xrv."""

    request: str
    kind: str
    source: str  # enum name, "random", or a local path
    identity: str
    tag: Optional[str]  # cache file-name tag; None for the backbone's default weights


def resolve(spec: BackboneSpec, weights: str = "default") -> WeightsRef:
    """Identify ``weights`` for ``spec`` without building the network (hub ids are fetched/looked up)."""
    request = str(weights or "default")
    asked = spec.default_weights if request == "default" else request
    is_default = asked == spec.default_weights
    lib = LIBRARIES.get(spec.traits.source)
    if is_default and hasattr(lib, "resolve_default"):  # timm, open_clip, torchxrayvision: the library's own cache
        kind, source, identity = lib.resolve_default(spec)
        return WeightsRef(request, kind, source, identity, None)
    if asked == "random" or _RANDOM_SEEDED.match(asked):
        seed = random_seed(asked)
        tag = None if is_default else ("random" if seed == RANDOM_SEED else f"random-seed{seed}")
        own = f"@{spec.pretrained}" if str(spec.pretrained or "").startswith("custom:") else ""  # its definition
        return WeightsRef(request, "random", "random", f"random:seed{seed}{own}", tag)
    if asked == "imagenet":
        if spec.traits.source != "torchvision" or not spec.pretrained or "_Weights." not in spec.pretrained:
            raise WeightsError(f"backbone '{spec.name}' has no torchvision ImageNet weights; "
                               f"use --weights default, random, or a local file or folder")
        return WeightsRef(request, "torchvision", spec.pretrained,
                          f"torchvision:{spec.pretrained}:{_tv_filename(spec.pretrained)}",
                          None if is_default else "imagenet")
    path = Path(asked).expanduser()
    if path.is_dir():
        return _folder_ref(spec, request, path, is_default)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists() or not _HUB_ID.match(asked):
        if not path.is_file():
            raise WeightsError(f"weights file {asked} not found; pass --weights with an existing "
                               ".pth/.pt/.safetensors file or a Hugging Face model folder")
        sha = file_sha256(path)
        return WeightsRef(request, "file", str(path.resolve()), f"sha256:{sha}", f"{_slug(path.stem)}-{sha[:8]}")
    folder, commit = _hub_snapshot(spec, asked)
    return WeightsRef(request, "hf_folder", str(folder), f"hf:{asked}@{commit}", None if is_default else _slug(asked))


def _folder_ref(spec, request, path: Path, is_default: bool) -> WeightsRef:
    if not (path / "config.json").is_file():
        raise WeightsError(f"weights folder {path} has no config.json; pass a Hugging Face model folder "
                           "or the weights file itself")
    snap = _SNAPSHOT.search(path.resolve().as_posix())
    if snap:  # a hub snapshot in a Hugging Face cache: the same identity as asking for its hub id (portable)
        repo = f"{snap.group(1)}/{snap.group(2)}"
        return WeightsRef(request, "hf_folder", str(path.resolve()), f"hf:{repo}@{snap.group(3)}",
                          None if repo == spec.default_weights else _slug(repo))
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in files)
    sha = hashlib.sha256(lines.encode()).hexdigest()
    return WeightsRef(request, "hf_folder", str(path.resolve()), f"hf-folder:sha256:{sha}",
                      None if is_default else f"{_slug(path.name)}-{sha[:8]}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "weights"


# --------------------------------------------------------------------------- torchvision


def _tv_enum(name: str):
    import torchvision.models as tvm

    enum_name, member = name.split(".")
    return getattr(getattr(tvm, enum_name), member)


def _tv_filename(name: str) -> str:
    return os.path.basename(_tv_enum(name).url)


def load_torchvision(spec: BackboneSpec, ref: WeightsRef) -> dict:
    """The state dict of a torchvision weight enum from the hub cache, downloading only when online."""
    import torch

    url = _tv_enum(ref.source).url
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    how = (f"download {url} into {target.parent} (or set TORCH_HOME to a folder holding hub/checkpoints/"
           f"{target.name}), or pass --weights PATH")
    if not target.is_file() and offline():
        raise WeightsError(f"ImageNet weights for {spec.name} not found at {target} (offline): {how}")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                                  weights_only=True)
    except Exception as exc:  # network errors, hash mismatch, refused unpickling
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"ImageNet weights for {spec.name} could not be had ({reason}): {how}") from None


# --------------------------------------------------------------------------- hub


def _hub_snapshot(spec: BackboneSpec, repo_id: str) -> tuple[Path, str]:
    if spec.traits.hf_class is None:
        raise WeightsError(f"hub id '{repo_id}' given for {spec.name}: hub ids are for Hugging Face backbones "
                           f"({', '.join(hf_names())}); pass a local .pth/.safetensors file, 'imagenet' or 'random'")
    try:
        from huggingface_hub import snapshot_download

        # read the environment now (huggingface_hub reads it once, at import)
        cache = os.environ.get("HF_HUB_CACHE") or (
            str(Path(os.environ["HF_HOME"]).expanduser() / "hub") if os.environ.get("HF_HOME") else None)
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model"], cache_dir=cache,
                                        local_files_only=offline(), token=os.environ.get("HF_TOKEN") or None))
    except Exception as exc:
        kind = type(exc).__name__
        hint = ("accept the model's terms on huggingface.co and set HF_TOKEN" if "Gated" in kind
                else "download it where online (huggingface-cli download " + repo_id + ") into HF_HOME, "
                "or pass --weights FOLDER with the model folder")
        raise WeightsError(f"weights '{repo_id}' for {spec.name} could not be had ({kind}; "
                           f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}): {hint}") from None
    return folder, folder.name


# --------------------------------------------------------------------------- loading into a network


def read_state_dict(path: str | Path) -> dict:
    """A state dict from ``.safetensors`` or ``torch.load(weights_only=True)``; wrappers unwrapped."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot read weights file {path} as a plain state dict ({reason[:200]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return sd


def fit_state_dict(net, sd: dict, spec: BackboneSpec, source: str) -> None:
    """Load ``sd`` into ``net`` strictly, after normalising key prefixes; a mismatch is a WeightsError."""
    want = net.state_dict()
    out = {}
    for key, value in sd.items():
        for prefix in ("module.", "net.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        key = spec.traits.map_key(key, want)  # the family's renames; None = a classifier or another tower
        if key is not None:
            out[key] = value
    missing = [k for k in want if k not in out and not k.endswith("num_batches_tracked")]  # old files lack it
    unexpected = [k for k in out if k not in want]
    if missing or unexpected:
        raise WeightsError(
            f"weights {source} do not fit {spec.name}: {len(missing)} missing keys "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})"
        )
    bad = [k for k in out if tuple(out[k].shape) != tuple(want[k].shape)]
    if bad:
        raise WeightsError(f"weights {source} do not fit {spec.name}: shape of {bad[0]} is "
                           f"{tuple(out[bad[0]].shape)}, expected {tuple(want[bad[0]].shape)}")
    net.load_state_dict(out, strict=True)


def load_hf_folder(spec: BackboneSpec, folder: str | Path):
    """The family's Hugging Face model (``spec.traits.hf_class``) from a local folder: strictly (every weight
    present), of the registered width and input size (``spec`` as :func:`with_weights` made it). A full
    checkpoint's other towers are ignored."""
    fam = spec.traits
    if fam.hf_class is None:
        raise WeightsError(f"{folder} is a Hugging Face folder but {spec.name} is a torchvision network; "
                           "pass its .pth or .safetensors state dict")
    net = load_folder(fam.hf_class, folder, spec.name)
    cfg = net.config
    size = getattr(cfg, "image_size", None)
    if cfg.hidden_size != spec.embed_dim or (fam.check_image_size and size != spec.preprocess.input_size):
        raise WeightsError(f"weights folder {folder} holds a {fam.name} of width {cfg.hidden_size} at {size}px, "
                           f"but {spec.name} is {spec.embed_dim}-d at {spec.preprocess.input_size}px")
    return net


def with_weights(spec: BackboneSpec, ref: WeightsRef) -> BackboneSpec:
    """``spec`` with the preprocessing of the weights ``ref``: torchvision's ``transforms()`` as installed (when it
    differs from featpipe's generated table, :mod:`featpipe.backbones.torchvision_transforms`); a Hugging Face folder's own
    ``preprocessor_config.json`` (:func:`featpipe.backbones.reference.folder_config`) wins over the registered
    reference, so a snapshot that normalises with other statistics (RAD-DINO's chest X-ray mean/std) is used
    as its authors' code would use it, never refused and never fed the registered statistics."""
    if ref.kind == "torchvision" and isinstance(spec.reference, TorchvisionTransforms):
        live = spec.reference.live()  # torchvision is imported to build the network anyway
        return spec if live == spec.preprocess else replace(
            spec, reference=Fixed(live, f"{spec.reference.source} (installed torchvision)"))
    if ref.kind != "hf_folder":
        return spec
    config = folder_config(ref.source)
    if config is None or config == spec.reference:
        return spec
    return replace(spec, reference=config)


def local_preprocess(spec: BackboneSpec, weights: str = "default") -> BackboneSpec:
    """``spec`` with the preprocessing of ``weights`` as far as it is known locally, without loading or downloading
    anything (``prepare`` decodes for it before weights are needed): a model folder's own
    ``preprocessor_config.json``, or the one of a hub id's snapshot already in the Hugging Face cache; otherwise
    the registered reference (``extract`` settles it with :func:`resolve_spec`)."""
    asked = spec.default_weights if str(weights or "default") == "default" else str(weights)
    config = None
    if Path(asked).expanduser().is_dir():
        config = folder_config(Path(asked).expanduser())
    elif spec.traits.hf_class and _HUB_ID.match(asked):
        from huggingface_hub import try_to_load_from_cache

        cache = os.environ.get("HF_HUB_CACHE") or (
            str(Path(os.environ["HF_HOME"]).expanduser() / "hub") if os.environ.get("HF_HOME") else None)
        found = try_to_load_from_cache(asked, "preprocessor_config.json", cache_dir=cache)
        config = folder_config(Path(found).parent) if isinstance(found, str) else None
    return spec if config is None or config == spec.reference else replace(spec, reference=config)


def resolve_spec(spec: BackboneSpec, weights: str = "default") -> tuple[BackboneSpec, WeightsRef]:
    """(the spec with the preprocessing of ``weights``, the resolved weights): :func:`resolve` then
    :func:`with_weights`. Every caller that builds or caches features with a backbone starts here."""
    ref = resolve(spec, weights)
    return with_weights(spec, ref), ref


def load_network(spec: BackboneSpec, ref: WeightsRef):
    """The bare network of ``spec`` (classifier removed) carrying the weights ``ref``."""
    import torch

    lib = LIBRARIES.get(spec.traits.source)
    if lib is not None and ref.kind != "random":  # the library's own loader, where it has one
        net = lib.load(spec, ref.kind, ref.source, lambda n, sd: fit_state_dict(n, sd, spec, ref.source),
                       read_state_dict)
        if net is not None:
            return net
    if ref.kind == "hf_folder":
        return load_hf_folder(spec, ref.source)
    with torch.random.fork_rng(devices=[]):  # random init is reproducible and leaves global RNG alone
        torch.manual_seed(random_seed(ref.identity.split("@")[0]) if ref.kind == "random" else RANDOM_SEED)
        net = spec.make()
    if ref.kind == "random":
        return net
    if ref.kind == "torchvision":
        fit_state_dict(net, load_torchvision(spec, ref), spec, ref.source)
    else:
        fit_state_dict(net, read_state_dict(ref.source), spec, ref.source)
    return net
