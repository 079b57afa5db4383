"""What changed in the data since the current manifest: files added, removed, changed (sha256) and relabelled.

``prepare`` compares the manifest it is about to write with the one it replaces (:func:`compare`); ``fetch``
compares the source as it is now with the current manifest without hashing everything
(:func:`against_manifest`: only files modified after the manifest was written are hashed). Either says it in
one summary line with the stages that are stale (:meth:`Changes.line`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from featpipe.core.errors import DataError
from featpipe.data.manifest import read_manifest
from featpipe.data.sources import Record
from featpipe.imaging.base import ImageRejected
from featpipe.imaging.decode import content_sha256

KINDS = ("added", "removed", "changed", "relabelled")
STALE = "decode, extract, fit/sweep, finetune, collect, compare, report"


@dataclass
class Changes:
    """Manifest ids per kind of change (each sorted)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in KINDS)

    def line(self, against: str | Path) -> str:
        """The one summary line (with the first id of each kind, and the stale stages when anything changed)."""
        if not self:
            return f"against {against}: no image added, removed, changed or relabelled"
        parts = [f"{len(getattr(self, k))} {k} (first: {getattr(self, k)[0]})" for k in KINDS if getattr(self, k)]
        return f"against {against}: " + ", ".join(parts) + f"; stale until re-run: prepare, {STALE}"


def compare(old: pd.DataFrame, new: pd.DataFrame) -> Changes:
    """The changes from manifest ``old`` to ``new`` (by id: sha256 for content, label_name for the label)."""
    o = old.set_index(old["id"].astype(str))
    n = new.set_index(new["id"].astype(str))
    both = o.index.intersection(n.index)
    return Changes(
        added=sorted(n.index.difference(o.index)), removed=sorted(o.index.difference(n.index)),
        changed=sorted(both[(o.loc[both, "sha256"].astype(str) != n.loc[both, "sha256"].astype(str)).to_numpy()]),
        relabelled=sorted(both[(o.loc[both, "label_name"].astype(str)
                                != n.loc[both, "label_name"].astype(str)).to_numpy()]))


def previous_manifest(manifest_path: str | Path) -> pd.DataFrame | None:
    """The manifest at ``manifest_path`` when there is a readable one (else None: nothing to compare with)."""
    try:
        return read_manifest(manifest_path) if Path(manifest_path).is_file() else None
    except (DataError, ValueError, OSError):
        return None


def _known_rejects(manifest_path: Path) -> set[str]:
    f = manifest_path.with_name("rejects.csv")
    try:
        return set(pd.read_csv(f, dtype={"id": str}, keep_default_na=False)["id"]) if f.is_file() else set()
    except (ValueError, KeyError, OSError):
        return set()


def against_manifest(records: Sequence[Record], manifest_path: str | Path) -> Changes | None:
    """The source's ``records`` now against the manifest at ``manifest_path`` (None when there is none).
    Files already rejected by the last ``prepare`` are not "added"; a file counts as changed when it was
    modified after the manifest was written and its sha256 differs."""
    manifest_path = Path(manifest_path)
    old = previous_manifest(manifest_path)
    if old is None:
        return None
    since = manifest_path.stat().st_mtime_ns
    known = _known_rejects(manifest_path)
    now = {r.id: r for r in records if r.reject is None or r.id in set(old["id"])}
    o = old.set_index(old["id"].astype(str))
    out = Changes(added=sorted(i for i in now if i not in o.index and i not in known),
                  removed=sorted(i for i in o.index if i not in now))
    for i in sorted(set(now) & set(o.index)):
        if str(now[i].label_name) != str(o.at[i, "label_name"]):
            out.relabelled.append(i)
        if _modified_after(str(o.at[i, "path"]), since) and _sha(str(o.at[i, "path"])) != str(o.at[i, "sha256"]):
            out.changed.append(i)
    return out


def _modified_after(ref: str, since_ns: int) -> bool:
    try:
        return os.stat(ref.split(".npz#", 1)[0] + ".npz" if ".npz#" in ref else ref).st_mtime_ns > since_ns
    except OSError:
        return True


def _sha(ref: str) -> str:
    try:
        return content_sha256(ref)
    except ImageRejected as exc:
        return exc.reason
