"""The Hugging Face hub cache, shared by every backbone whose files live there (the hub members, ``hf:``, ``timm:``
and ``open_clip:`` backbones): where it is, whether downloading is allowed, and one file of a repository.

Offline (``FEATPIPE_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``) nothing is downloaded: a
file not already in the cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) is a
one-line :class:`~featpipe.core.errors.WeightsError` saying how to put it there. The environment is read at each
call (``huggingface_hub`` reads it once, at import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from featpipe.core.errors import WeightsError

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when downloads are forbidden (``FEATPIPE_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "").lower() in _TRUE
               for k in ("FEATPIPE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache_dir() -> Optional[str]:
    """The hub cache folder the environment names now (None: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def where() -> str:
    return cache_dir() or "~/.cache/huggingface/hub"


def cached(repo_id: str, filename: str) -> Optional[Path]:
    """``filename`` of ``repo_id`` (its ``main`` snapshot) if it is in the cache, else None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())
    return Path(found) if isinstance(found, str) else None


def fetch(repo_id: str, filenames: Sequence[str], *, what: str) -> Path:
    """The first of ``filenames`` that ``repo_id`` has, from the cache or (online) downloaded into it.
    None of them to be had = one-line WeightsError naming the repository, the cache and what to do."""
    for name in filenames:
        path = cached(repo_id, name)
        if path is not None:
            return path
    hint = (f"download it where online (huggingface-cli download {repo_id} {filenames[0]}) into "
            f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}")
    if offline():
        raise WeightsError(f"{what}: {' or '.join(filenames)} of {repo_id} is not in the hub cache {where()} "
                           f"(offline): {hint}")
    from huggingface_hub import hf_hub_download

    reason = "not found"
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir(), token=os.environ.get("HF_TOKEN") or None))
        except Exception as exc:  # missing file, gated repository, no network
            reason = type(exc).__name__
            if "EntryNotFound" not in reason:
                break
    raise WeightsError(f"{what}: {' or '.join(filenames)} of {repo_id} could not be had ({reason}): {hint}")


def commit_of(path: Path) -> str:
    """The snapshot commit of a file in the hub cache (``.../snapshots/<commit>/<file>``)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else "local"


def load_folder(model_class: str, folder: str | Path, backbone: str):
    """A ``transformers`` model of class ``model_class`` from a local model folder, strictly: every weight present
    and of the right shape (a missing or mismatched key, or a folder transformers cannot read, is one-line
    :class:`~featpipe.core.errors.WeightsError`); fp32, nothing downloaded. The one loader of model folders."""
    import torch
    import transformers

    try:
        net, info = getattr(transformers, model_class).from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot load a {model_class} from {folder} ({reason[:200]})") from None
    missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if missing:
        raise WeightsError(f"weights folder {folder} does not fit {backbone}: {len(missing)} missing or "
                           f"mismatched keys ({', '.join(map(str, missing[:3]))})")
    return net
