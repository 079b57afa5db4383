"""``featpipe study``: a shipped study preset run on your data, as its own DVC workspace.

A preset is a params file in the checkout's ``studies/`` folder holding only what its source design sets
(backbones, heads, shots or fractions, arms, the clinical rule, the report metric). :func:`setup_study` writes a
workspace: ``dvc.yaml`` from the checkout and a complete ``params.yaml`` (every key, the defaults filled in, as
DVC's per-key dependencies need) with the data section read from what ``--data`` is (:func:`data_settings`),
then ``dvc repro`` runs it. ``--smoke`` swaps every backbone for its tiny twin of the same family, two seeds, two
shot counts or fractions and one epoch: the whole graph of the preset in minutes (CI runs it on real images).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import yaml

from featpipe.backbones.registry import get as get_backbone
from featpipe.backbones.weights import FILE_SUFFIXES
from featpipe.cli.demo import copy_dvcignore, dvc
from featpipe.core.errors import ConfigError
from featpipe.core.names import finetune_run_name
from featpipe.params.config import Params, apply_overrides, build, to_dict

PRESETS = "studies"
TWINS = {"densenet": "tiny_cnn", "resnet": "tiny_cnn", "efficientnet": "tiny_cnn", "vit": "tiny_vit",
         "siglip": "tiny_siglip", "dinov2": "tiny_dino"}


def presets(project: str | Path = ".") -> dict[str, Path]:
    """{name: file} of the presets shipped in ``<project>/studies/``."""
    folder = Path(project) / PRESETS
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def describe(path: Path) -> str:
    """A preset's first comment line (what design it reproduces)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def data_settings(path: str | Path) -> dict:
    """The ``data`` keys for what ``path`` is: an npz file, a CSV (HAM10000's ``image_id, dx, lesion_id``
    columns are recognised), a folder holding CheXpert's ``train.csv`` + ``valid.csv``, or a folder of class
    folders (Kaggle's ``train/<CLASS>/``, ``test/<CLASS>/``)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ConfigError(f"--data {path} not found: pass your image folder, CSV or npz file")
    if p.is_file() and p.suffix.lower() == ".npz":
        return {"source": "npz", "path": str(p)}
    if p.is_file() and p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8-sig") as f:
            columns = next(csv.reader(f), [])
        if {"image_id", "dx"} <= set(columns):  # HAM10000_metadata.csv
            return {"source": "csv", "path": str(p), "csv": {"path_col": "image_id", "label_col": "dx",
                                                             "patient_col": "lesion_id" if "lesion_id" in columns else None}}
        return {"source": "csv", "path": str(p)}
    if p.is_dir() and (p / "train.csv").is_file() and (p / "valid.csv").is_file():  # CheXpert-v1.0(-small)
        return {"source": "csv", "path": str(p), "csv": {"split_files": ["train.csv", "valid.csv"], "root": str(p.parent),
                                                         "path_col": "Path", "label_col": None}}
    if p.is_dir():
        return {"source": "folder", "path": str(p)}
    raise ConfigError(f"--data {path}: expected an image folder, a CSV file, an npz file or CheXpert's folder")


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base


def study_params(preset: Path, data: str | Path, *, smoke: bool = False, overrides=()) -> dict:
    """The workspace's complete ``params.yaml`` (a plain dict, validated): the preset, its data section for
    ``data``, the smoke settings and ``overrides`` (``section.key=value``), every other key the default."""
    raw = yaml.safe_load(preset.read_text()) or {}
    raw = _merge(raw, {"data": data_settings(data)})
    if raw["data"].get("csv", {}).get("split_files") and not any(o.startswith("data.csv.task=") for o in overrides):
        raise ConfigError("CheXpert's folder: choose the pathology to classify, e.g. -S data.csv.task=Pneumonia")
    if smoke:
        raw = smoke_settings(raw)
    apply_overrides(raw, overrides)
    return to_dict(build(Params, raw, ""))


def _twin(name: str, own: frozenset = frozenset()) -> str:
    """The tiny member of ``name``'s family (a tiny member, or a network of the study's own, stays)."""
    if name in own:
        return name
    spec = get_backbone(name)
    return name if spec.tiny else TWINS.get(spec.family, "tiny_cnn")


def _twin_layer(name: str, layer: str | None, own: frozenset = frozenset()) -> str | None:
    """The tiny twin's cut point at the same relative depth as ``layer`` in ``name``'s cut points."""
    if not layer or name in own:
        return layer
    spec, twin = get_backbone(name), get_backbone(_twin(name))
    cuts, tiny = list(spec.layers), list(twin.layers)
    i = cuts.index(spec.resolve_layer(layer)) if spec.resolve_layer(layer) in cuts else 0
    return tiny[min(len(tiny) - 1, i * len(tiny) // max(1, len(cuts)))]


def _twin_weights(weights):
    """Pretrained weights do not exist for the twins: anything but a local file becomes the twin's default."""
    return weights if weights and Path(str(weights)).suffix.lower() in FILE_SUFFIXES else ("random" if weights == "random" else None)


def smoke_settings(raw: dict) -> dict:
    """The preset's graph at test size: tiny twins of every backbone (same family; cut points at the same
    depth), two seeds, shots [2, 5] or fractions [0.2, 0.5], one epoch, one Grad-CAM run of the study."""
    s, ex, fit, ft = (raw.setdefault(k, {}) for k in ("split", "extract", "fit", "finetune"))
    own = frozenset(n["name"] for n in raw.get("networks", []))  # the study's own networks are small already
    s["seeds"] = [0, 1]
    if s.get("fractions"):
        s["fractions"], s["shots"] = [0.2, 0.5], []
    else:
        s["shots"], s["shots_policy"] = [2, 5], "cap"
    ex["backbones"] = list(dict.fromkeys(_twin(b, own) for b in ex.get("backbones", ["tiny_cnn"])))
    ex.update(weights="default", precision="fp32", device="cpu", batch_size=16)
    ft["backbones"] = list(dict.fromkeys(_twin(b, own) for b in ft.get("backbones", ["tiny_cnn"])))
    ft.update(seeds=[0, 1], shots=[], epochs=1, patience=1, precision="fp32", device="cpu", weights="default")
    arms = []
    for a in ft.get("arms", []):
        a = {**a, "backbone": _twin(a["backbone"], own), "layer": _twin_layer(a["backbone"], a.get("layer"), own)}
        w = _twin_weights(a.get("weights"))
        a.pop("weights", None) if w is None else a.update(weights=w)
        arms.append(a)
    ft["arms"] = arms
    fit["n_jobs"] = 1
    raw.setdefault("decode", {})["workers"] = 1
    raw.setdefault("compare", {})["bootstrap"] = 50
    raw.setdefault("heads", {}).setdefault("mlp", {})["epochs"] = 20
    raw.setdefault("gradcam", {})["runs"] = _smoke_gradcam(raw)
    return raw


def _smoke_gradcam(raw: dict) -> list[str]:
    """One Grad-CAM run the smoke study makes: its first head on its first backbone at 5 shots (or its first
    fraction's subsets are unknown before prepare: then the first fine-tuning arm's), seed 0."""
    ex, fit, ft = raw["extract"], raw.get("fit", {}), raw["finetune"]
    if ex.get("backbones") and fit.get("heads") and raw["split"].get("shots"):
        return [f"{ex['backbones'][0]}-{fit['heads'][0]}-k5-s0"]
    if ft.get("arms") and raw["split"].get("shots"):
        a = ft["arms"][0]
        layer = a.get("layer") if a["strategy"] == "truncated" else None
        return [finetune_run_name("", a["backbone"], a["strategy"], 5, 0, layer=layer, arm=a["name"])[1:]]
    return []


def setup_study(project: str | Path, name: str, data: str | Path, workdir: str | Path, *, smoke: bool = False,
                overrides=()) -> Path:
    """The workspace of preset ``name`` on ``data``: ``dvc.yaml``, the complete ``params.yaml``, the zero-shot
    prompts file the pipeline depends on, the checkout's ``.dvcignore``, ``dvc init``."""
    found = presets(project)
    if name not in found:
        raise ConfigError(f"no study preset {name!r} in {Path(project) / PRESETS} (presets: {', '.join(found) or 'none'})")
    params = study_params(found[name], data, smoke=smoke, overrides=overrides)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(project) / "dvc.yaml", work / "dvc.yaml")
    copy_dvcignore(Path(project), work)
    prompts = Path(str((params.get("zeroshot") or {}).get("prompts") or "prompts.yaml"))
    if not prompts.is_absolute() and (Path(project) / prompts).is_file() and not (work / prompts).exists():
        shutil.copyfile(Path(project) / prompts, work / prompts)  # the zeroshot stage's prompts (a dependency)
    header = f"# featpipe study {name}: {describe(found[name])}\n# data: {data}{' (smoke run)' if smoke else ''}\n"
    (work / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    if not (work / ".dvc").is_dir():
        dvc(["init", "--no-scm", "-q"], work)
        dvc(["config", "core.analytics", "false"], work)
    return work
