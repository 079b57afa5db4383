"""A deterministic synthetic chest-X-ray-like set, so the whole pipeline runs offline.

Class ``normal`` is smooth noise over a body-shaped gradient; class ``finding<c>`` adds bright blobs
inside a known region (the region is recorded in ``synthetic.json``, so Grad-CAM can be checked against
it). Each patient contributes ``images_per_patient`` images of one class that share their anatomy
(background), so a split by image would leak and inflate scores, as it does on real data.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_path
from featpipe.params.config import SyntheticParams

FORMAT = 1


def class_names(n: int) -> list[str]:
    return ["normal"] + [f"finding{c}" for c in range(1, n)]


def regions(n_classes: int, size: int) -> dict[str, list[int]]:
    """Class name -> [x0, y0, x1, y1] box where its signal sits (quadrants, in turn)."""
    h = size // 2
    quads = [[0, 0, h, h], [h, h, size, size], [h, 0, size, h], [0, h, h, size]]
    return {name: quads[(c - 1) % 4] for c, name in enumerate(class_names(n_classes)) if c > 0}


def _smooth(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    small = rng.standard_normal((max(2, size // scale), max(2, size // scale)))
    img = Image.fromarray(small.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _anatomy(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = 150 - 90 * ((x - 0.5) ** 2 * 2.5 + (y - 0.55) ** 2 * 1.5)  # bright centre, darker edges
    lungs = -35 * (np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.03) + np.exp(-((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.03))
    return body + lungs + 12 * _smooth(rng, size, 8)


def _blob(size: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def make_image(rng: np.random.Generator, anatomy: np.ndarray, box: list[int] | None) -> np.ndarray:
    size = anatomy.shape[0]
    img = anatomy + 6 * rng.standard_normal((size, size)) + 5 * _smooth(rng, size, 4)
    # faint distractor blobs anywhere, in every class, so that brightness alone is not the answer
    for _ in range(rng.integers(0, 3)):
        img += 25 * _blob(size, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 3.5) * size / 64)
    if box is not None:
        x0, y0, x1, y1 = box
        pad = max(1, (x1 - x0) // 5)
        for _ in range(rng.integers(1, 3)):
            cx, cy = rng.uniform(x0 + pad, x1 - pad), rng.uniform(y0 + pad, y1 - pad)
            img += 70 * _blob(size, cx, cy, rng.uniform(2.5, 4.5) * size / 64)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(out_dir: str | Path, cfg: SyntheticParams) -> Path:
    """Write ``<out_dir>/<class>/synth-p<patient>-<j>.png`` and ``synthetic.json``; reuse a matching set.

    The set is a pure function of ``cfg``: the same parameters give the same pixels on any machine.
    """
    if cfg.classes < 2:
        raise DataError("data.synthetic.classes must be at least 2")
    if cfg.images_per_class < 2 or cfg.images_per_patient < 1 or cfg.size < 16:
        raise DataError("data.synthetic needs images_per_class >= 2, images_per_patient >= 1 and size >= 16")
    out = Path(out_dir)
    meta = {"format": FORMAT, "params": asdict(cfg), "classes": class_names(cfg.classes),
            "regions": regions(cfg.classes, cfg.size)}
    meta_file = out / "synthetic.json"
    if meta_file.is_file():
        try:
            if json.loads(meta_file.read_text()) == meta:
                return out
        except json.JSONDecodeError:
            pass
    with atomic_path(out, folder=True) as tmp:
        _draw(tmp, cfg, meta)
        if out.exists():
            if not meta_file.is_file():
                raise DataError(f"{out} exists and is not a featpipe synthetic set; choose another data.path")
            shutil.rmtree(out)
    return out


def _draw(folder: Path, cfg: SyntheticParams, meta: dict) -> None:
    """The images and ``synthetic.json`` of the set into ``folder``."""
    rng = np.random.default_rng(cfg.seed)
    patient = 0
    for c, name in enumerate(meta["classes"]):
        (folder / name).mkdir()
        box = meta["regions"].get(name)
        made = 0
        while made < cfg.images_per_class:
            anatomy = _anatomy(rng, cfg.size)
            for j in range(min(cfg.images_per_patient, cfg.images_per_class - made)):
                Image.fromarray(make_image(rng, anatomy, box)).save(folder / name / f"synth-p{patient:04d}-{j}.png")
                made += 1
            patient += 1
    (folder / "synthetic.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
