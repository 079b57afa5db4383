"""Sharded extraction: ``--shard i/n`` extracts a deterministic, batch-aligned slice of the manifest into its
own file; :func:`merge_shards` joins the shard files into exactly the cache a single run writes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from featpipe.backbones import weights as weights_mod
from featpipe.backbones.registry import get
from featpipe.core import locks
from featpipe.core.errors import CacheError, FeatpipeError
from featpipe.data.manifest import load_manifest
from featpipe.features import cache as featcache
from featpipe.params.config import ExtractParams


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"i/n"`` (0-based i) -> ``(i, n)``."""
    if text in (None, ""):
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise FeatpipeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise FeatpipeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_bounds(n_rows: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``index`` of ``count``: whole batches, so shards merged equal one run."""
    batches = -(-n_rows // batch_size)
    b0, b1 = index * batches // count, (index + 1) * batches // count
    return min(b0 * batch_size, n_rows), min(b1 * batch_size, n_rows)


def merge_shards(manifest: str | Path | pd.DataFrame, *, backbone: str, dataset: str, cache_dir: str | Path = "cache",
                 params: ExtractParams = ExtractParams()) -> Path:
    """Join the shard files of one (backbone, weights, layer) into the cache a single run would write."""
    df, msha = load_manifest(manifest)
    spec = get(backbone)
    layer = spec.resolve_layer(params.layer)
    spec, ref = weights_mod.resolve_spec(spec, params.weights)
    final = featcache.cache_path(cache_dir, dataset, spec.name, layer=layer, weights_tag=ref.tag)
    paths = featcache.shard_files(final)
    if not paths:
        raise CacheError(f"no shard files for {final}: run 'featpipe extract --shard i/n' first")
    counts = {int(p.name.rsplit("-of-", 1)[1][:-3]) for p in paths}
    if len(counts) != 1 or len(paths) != next(iter(counts)):
        raise CacheError(f"shard files of {final} are incomplete or mixed ({len(paths)} files for n={sorted(counts)}); "
                         "run every 'featpipe extract --shard i/n' of one n")
    for p in paths:
        if featcache.read_attrs(p).get("manifest_sha256") != msha:
            raise CacheError(f"shard {p} was extracted from another manifest; re-run its 'featpipe extract --shard'")
    with locks.build_lock(final, what=f"the {spec.name} feature cache"):
        locks.clean_leftovers(final.parent)
        featcache.merge_files(paths, final)
        with featcache._open(final) as f:
            if f["ids"].asstr()[()].tolist() != df["id"].astype(str).tolist():
                final.unlink()
                raise CacheError(f"shards of {final} do not cover the manifest in order; re-extract them")
    return final
