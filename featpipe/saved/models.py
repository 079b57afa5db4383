"""Saved models: model sidecars, and loading a saved model with its backbone rebuilt (run names:
:mod:`featpipe.core.names`).

Sidecars: every saved model is a model file plus ``<stem>.json`` beside it, sealed (``sidecar_sha256``,
:func:`featpipe.core.fileio.seal` / ``check_seal``) by the format's writer (:mod:`featpipe.heads.io` for skops
archives, :mod:`featpipe.finetune.checkpoint` for safetensors), which also hold each format's safety checks.
:func:`kind_of`, :func:`model_file` and :func:`read_sidecar` find and read either kind.

Rebuilding: :func:`rebuild_backbone` builds a saved head's backbone from what the user asked for at
extraction (the sidecar's ``weights_request``: ``default``, ``imagenet``, a file, a folder or a hub id),
never from the resolved source (an enum name or a cache path is not a request), and refuses weights whose
identity differs from the one the head was fitted on. :func:`load_model` loads either kind as a torch
model mapping normalised images to class logits: predict, gradcam and sanity-check load through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from featpipe.core.errors import DataError
from featpipe.core.names import FINETUNE_SUFFIX, HEAD_SUFFIX
from featpipe.finetune.checkpoint import read_meta as read_finetuned_meta
from featpipe.heads.io import read_meta as read_head_meta

# kind -> (model file suffix, sidecar "kind" value, newest format this featpipe reads, how to remake it)
KINDS = {"head": (HEAD_SUFFIX, "featpipe-head", 1, "featpipe fit"),
         "finetune": (FINETUNE_SUFFIX, "featpipe-finetune", 1, "featpipe finetune")}


class SavedModelError(DataError):
    """A path that is not a featpipe saved model."""


# --------------------------------------------------------------------------- sidecars


def kind_of(path: str | Path) -> str:
    """``head`` or ``finetune`` from a model path (either file of the pair)."""
    p = Path(path)
    if p.suffix == HEAD_SUFFIX or (p.suffix == ".json" and p.with_suffix(HEAD_SUFFIX).is_file()):
        return "head"
    if p.suffix in (FINETUNE_SUFFIX, ".json") or p.with_name(p.name + FINETUNE_SUFFIX).is_file():
        return "finetune"
    raise SavedModelError(f"{p}: not a featpipe model (expected a saved head {HEAD_SUFFIX} or a fine-tuned "
                          f"{FINETUNE_SUFFIX}, with its .json beside it)")


def model_file(path: str | Path, kind: Optional[str] = None) -> Path:
    """The model file of a saved model named by either file or (fine-tuned) by its stem."""
    p = Path(path)
    kind = kind or kind_of(p)
    suffix = KINDS[kind][0]
    if p.suffix in (suffix, ".json"):
        return p.with_suffix(suffix)
    return p.with_name(p.name + suffix)


def sidecar_path(path: str | Path) -> Path:
    return model_file(path).with_suffix(".json")


def read_sidecar(path: str | Path, *, kind: Optional[str] = None) -> dict:
    """The sealed sidecar of a saved model of either kind (no model file opened): the formats' readers
    (:func:`featpipe.heads.io.read_meta`, :func:`featpipe.finetune.checkpoint.read_meta`) check its seal."""
    kind = kind or kind_of(path)
    read = read_head_meta if kind == "head" else read_finetuned_meta
    return read(model_file(path, kind))
