"""Pictures of Grad-CAM maps: one PNG per image (original | overlay, with true and predicted class and
probability), one grid per run (``grid.png``), and an index of what was rendered (``index.csv`` and
``index.json``), all under ``<out>/<run>/``. Matplotlib is used without pyplot (no global state).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from featpipe.core.fileio import atomic_write
from featpipe.core.names import short_part

ALPHA = 0.45  # overlay opacity of the heat map
CMAP = "jet"


@dataclass(frozen=True)
class Example:
    """One rendered image: what the model said and which class the map explains."""

    id: str
    outcome: str  # TP/TN/FP/FN, correct:<class>/incorrect:<class>, or "" for images given by path
    true: str  # class name, "" when unknown
    pred: str
    p_pred: float  # probability of the predicted class
    p_true: float  # probability of the true class (nan when unknown)
    target: str  # the class the map explains
    file: str = ""  # PNG, relative to the run folder


def slug(text: str) -> str:
    """A file-name part of ``text`` (:func:`featpipe.core.names.short_part`: long class names and ids are cut
    and end in a hash, so every file name stays far below the file system's limit)."""
    return short_part(text) if str(text).strip() else "image"


def _gray(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, C]) -> (H, W) or (H, W, 3) floats in [0, 1] for imshow."""
    img = np.asarray(img, dtype=np.float32) / 255.0
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return img


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """RGB float (H, W, 3): the image in gray (or colour) with the jet-coloured map blended on top."""
    from matplotlib import colormaps

    base = _gray(image)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    heat = colormaps[CMAP](np.clip(cam, 0, 1))[..., :3]
    return np.clip((1 - alpha) * base + alpha * heat, 0, 1)


def _caption(ex: Example) -> str:
    lines = [f"{ex.outcome}  " if ex.outcome else ""]
    lines[0] += f"pred {ex.pred} ({ex.p_pred:.2f})"
    lines.append(f"true {ex.true}" + (f" ({ex.p_true:.2f})" if np.isfinite(ex.p_true) else "") if ex.true
                 else "true: unknown")
    if ex.target != ex.pred:
        lines.append(f"map of {ex.target}")
    return "\n".join(lines)


def _pair(fig, spec, image, cam, ex: Example, *, title_size: float) -> None:
    ax0, ax1 = fig.add_subplot(spec[0]), fig.add_subplot(spec[1])
    if float(np.max(cam)) <= 0:  # Grad-CAM's ReLU left nothing: no region speaks for this class
        ax1.text(0.5, 0.06, "empty map: no region\nraises this class", transform=ax1.transAxes, ha="center",
                 va="bottom", fontsize=title_size * 0.85, color="white",
                 bbox={"facecolor": "black", "alpha": 0.55, "pad": 2, "edgecolor": "none"})
    g = _gray(image)
    ax0.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax1.imshow(overlay(image, cam), interpolation="nearest")
    ax0.set_title(_short(ex.id), fontsize=title_size * 0.85)
    ax1.set_title(_caption(ex), fontsize=title_size, loc="left")
    for ax in (ax0, ax1):
        ax.set_xticks([])
        ax.set_yticks([])


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _save(fig, path: Path) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, buf.getvalue())


def render_image(path: str | Path, image: np.ndarray, cam: np.ndarray, ex: Example) -> Path:
    """One PNG: original | overlay, captioned."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.2))
    gs = fig.add_gridspec(1, 2, wspace=0.05)
    _pair(fig, [gs[0, 0], gs[0, 1]], image, cam, ex, title_size=9)
    _save(fig, Path(path))
    return Path(path)


def render_grid(path: str | Path, images: Sequence[np.ndarray], cams: Sequence[np.ndarray],
                examples: Sequence[Example], *, title: str = "", per_row: int = 2) -> Path:
    """All examples as original | overlay pairs, ``per_row`` pairs per row (rows follow the outcome order)."""
    from matplotlib.figure import Figure

    n = len(examples)
    rows = max(1, -(-n // per_row))
    fig = Figure(figsize=(4.6 * per_row, 3.0 * rows + (0.5 if title else 0)))
    gs = fig.add_gridspec(rows, 2 * per_row, wspace=0.06, hspace=0.55)
    for k, (img, cam, ex) in enumerate(zip(images, cams, examples)):
        r, c = divmod(k, per_row)
        _pair(fig, [gs[r, 2 * c], gs[r, 2 * c + 1]], img, cam, ex, title_size=9)
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, Path(path))
    return Path(path)


def write_run(out_dir: str | Path, run: str, images: Sequence[np.ndarray], cams: np.ndarray,
              examples: Sequence[Example], *, info: dict | None = None, per_row: int = 2) -> dict:
    """Write ``<out_dir>/<run>/``: one PNG per example, ``grid.png``, ``maps.npz``, ``index.csv`` and
    ``index.json``; returns the index (a dict with ``run``, ``info``, ``images`` and ``grid``)."""
    import pandas as pd

    folder = Path(out_dir) / slug(run)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (img, cam, ex) in enumerate(zip(images, cams, examples)):
        stem = ex.id.rsplit(".", 1)[0] if re.search(r"\.[A-Za-z]{3,4}$", ex.id) else ex.id
        name = f"{k:03d}-{slug(ex.outcome or 'image')}-{slug(stem)}.png"
        render_image(folder / name, img, cam, ex)
        rows.append(asdict(ex) | {"file": name})
    info = info or {}
    title = run + (f"\nGrad-CAM at {info['layer']}" if info.get("layer") else "")
    if info.get("grid"):
        title += f" ({info['grid'][0]}x{info['grid'][1]} grid)"
    if info.get("threshold") is not None:
        title += f"; decision: p({info['classes'][1]}) >= {info['threshold']:.3f}"
    render_grid(folder / "grid.png", images, cams, examples, title=title, per_row=per_row)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.array([e.id for e in examples], dtype=str), maps=np.asarray(cams, np.float16))
    atomic_write(folder / "maps.npz", buf.getvalue())
    atomic_write(folder / "index.csv", pd.DataFrame(rows, columns=list(asdict(examples[0]).keys()) if examples
                                                    else ["id"]).to_csv(index=False))
    clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows]
    index = {"run": run, "info": info or {}, "grid": "grid.png", "maps": "maps.npz", "images": clean}
    atomic_write(folder / "index.json", json.dumps(index, indent=1, default=_json_default))
    return index


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
