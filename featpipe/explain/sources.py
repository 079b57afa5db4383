"""The images a Grad-CAM run explains, read lazily in batches (memory flat in the number of images).

An :class:`ImageSource` names its images (test ids of the splits, or file paths) and decodes any subset of them
on demand, at the model's input size (decoded as extraction decodes them, centre-cropped): test images are read
from the decoded-image cache (made current first); images given by path, and test images whose file changed
or no longer decodes since prepare, are decoded from their files (a file that cannot be decoded is a reject,
named, never fatal). :func:`featpipe.explain.run.prepare` classifies them batch by batch; only the images picked
for rendering are read again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from featpipe.backbones.modelinput import centre_crop, decode_files, ensure_decoded, same_channels
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import DataError
from featpipe.data.manifest import read_manifest
from featpipe.data.splits import load_splits
from featpipe.decoded.cache import DecodedImages, DecodeOptions
from featpipe.imaging.base import ImageRejected
from featpipe.imaging.decode import content_sha256
from featpipe.predict import image_files


@dataclass
class ImageSource:
    """Images ``refs`` (ids or paths) with ``labels`` (or None), decoded on demand by :meth:`read`: from
    ``cache`` rows ``cache_rows`` when given, else from the files ``paths``."""

    refs: list[str]
    labels: Optional[np.ndarray]
    preprocess: Preprocess
    paths: list[str]
    cache: Optional[Path] = None
    cache_rows: Optional[np.ndarray] = None
    max_pixels: Optional[int] = None
    rejects: list = field(default_factory=list)  # [{"path", "reason"}]: found so far, skipped

    def read(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(the positions that decoded, their uint8 pixels (n, S, S, C) at the input size); a file that does not
        decode is added to :attr:`rejects`."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.cache is not None:
            with DecodedImages(self.cache) as r:
                return positions, centre_crop(np.asarray(r.read(self.cache_rows[positions])), self.preprocess)
        ok, pixels, bad = decode_files([self.paths[i] for i in positions], self.preprocess.decoding,
                                       max_pixels=self.max_pixels)
        self.rejects += bad
        if not ok:
            return positions[:0], np.zeros((0, 1, 1, 1), np.uint8)
        good = set(ok)
        keep = np.array([self.paths[i] in good for i in positions], dtype=bool)
        return positions[keep], centre_crop(same_channels(pixels), self.preprocess)


def test_images(preprocess: Preprocess, *, manifest: str | Path, splits: str | Path, cache_dir: str | Path = "cache",
                dataset: Optional[str] = None, options=None) -> ImageSource:
    """Every test image of ``splits`` with its label (read from the decoded cache when it holds them current)."""
    for p in (manifest, splits):
        if not Path(p).is_file():
            raise DataError(f"{p} not found: run 'featpipe prepare' first (or pass --images)")
    sp = load_splits(splits)
    if dataset and sp.dataset != dataset:
        raise DataError(f"the model was trained on data set '{dataset}' but {splits} is for '{sp.dataset}'")
    m = read_manifest(manifest).set_index("id", drop=False)
    ids = [i for i in sp.test if i in m.index]
    if len(ids) != len(sp.test):
        raise DataError(f"{len(sp.test) - len(ids)} test ids of {splits} are not in {manifest}: re-run 'featpipe prepare'")
    if not ids:
        raise DataError(f"{splits} has no test images")
    rows = m.loc[ids]
    try:
        path = _decoded_cache(m, preprocess, cache_dir=cache_dir, dataset=sp.dataset, options=options)
        with DecodedImages(path) as r:
            at = np.asarray(r.require(rows))
        return ImageSource(ids, rows["label"].to_numpy(dtype=np.int64), preprocess,
                           rows["path"].astype(str).tolist(), cache=path, cache_rows=at)
    except DataError:  # a test image changed or no longer decodes since prepare: skipped and named, cache untouched
        rows, rejects = _unchanged(rows)
        return ImageSource(rows["id"].astype(str).tolist(), rows["label"].to_numpy(dtype=np.int64), preprocess,
                           rows["path"].astype(str).tolist(), rejects=rejects)


def _unchanged(rows):
    """(the rows whose image still has the manifest's sha256, a reject entry for each one that changed)."""
    keep, rejects = [], []
    for path, sha in zip(rows["path"].astype(str), rows["sha256"].astype(str)):
        try:
            same = content_sha256(path) == sha
        except ImageRejected:
            same = True  # missing or unreadable: decoding names it with its reason
        keep.append(same)
        if not same:
            rejects.append({"path": path, "reason": "changed since prepare"})
    return rows[np.asarray(keep, dtype=bool)], rejects


def _decoded_cache(manifest, preprocess: Preprocess, *, cache_dir, dataset: str, options) -> Path:
    """The decoded cache of the model's decoded form (size and filter), made current for the manifest (decoding only what
    it lacks, as every stage does through :func:`featpipe.backbones.modelinput.ensure_decoded`)."""
    res = ensure_decoded(manifest.reset_index(drop=True), [preprocess], cache_dir=cache_dir, dataset=dataset,
                         options=options or DecodeOptions(progress=False))
    return res.paths[preprocess.decoding]


def path_images(paths: Sequence[str | Path], preprocess: Preprocess, *, max_pixels: int | None = None) -> ImageSource:
    """Images given by path (no labels); those that do not decode are found (and named) as they are read."""
    refs, rejects = image_files(paths)
    return ImageSource(list(refs), None, preprocess, list(refs), max_pixels=max_pixels, rejects=list(rejects))
