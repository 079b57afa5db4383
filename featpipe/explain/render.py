"""Pictures of Grad-CAM maps: one PNG per image (original | overlay, with true and predicted class and
probability), one grid per run (``grid.png``: the same tiles, composed as they are rendered), the maps
(``maps.npz``) and an index of what was rendered (``index.csv`` and ``index.json``), all under ``<out>/<run>/``,
written image by image by :class:`RunWriter` (memory flat in the number of images). Matplotlib is used without
pyplot (no global state).
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
from featpipe.explain.stream import GridPNG, MapsNPZ

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


TILE_INCHES, DPI = (5.2, 3.2), 110  # one original | overlay pair: 572 x 352 px, the grid's cell


def _pixels(fig) -> np.ndarray:
    """The figure drawn as uint8 RGB (h, w, 3) (its size in inches times :data:`DPI`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def render_tile(image: np.ndarray, cam: np.ndarray, ex: Example) -> np.ndarray:
    """One original | overlay pair, captioned, as uint8 RGB of a fixed size (every tile of a grid alike)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=TILE_INCHES, dpi=DPI)
    gs = fig.add_gridspec(1, 2, wspace=0.05, left=0.02, right=0.98, bottom=0.03, top=0.74)
    _pair(fig, [gs[0, 0], gs[0, 1]], image, cam, ex, title_size=9)
    return _pixels(fig)


def render_image(path: str | Path, image: np.ndarray, cam: np.ndarray, ex: Example) -> Path:
    """One PNG: original | overlay, captioned (the grid's tile)."""
    atomic_write(path, _png(render_tile(image, cam, ex)))
    return Path(path)


def _title_strip(title: str, width: int) -> np.ndarray:
    from matplotlib.figure import Figure

    lines = title.count("\n") + 1
    fig = Figure(figsize=(width / DPI, 0.28 * lines + 0.2), dpi=DPI)
    fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=11)
    strip = _pixels(fig)
    return strip[:, :width] if strip.shape[1] >= width else np.pad(
        strip, ((0, 0), (0, width - strip.shape[1]), (0, 0)), constant_values=255)


def _grid_title(run: str, info: dict) -> str:
    title = run + (f"\nGrad-CAM at {info['layer']}" if info.get("layer") else "")
    if info.get("grid"):
        title += f" ({info['grid'][0]}x{info['grid'][1]} grid)"
    if info.get("threshold") is not None:
        title += f"; decision: p({info['classes'][1]}) >= {info['threshold']:.3f}"
    return title


class RunWriter:
    """``<out_dir>/<run>/`` written image by image: one PNG per example, ``grid.png`` (composed tile by tile,
    :class:`featpipe.explain.stream.GridPNG`), ``maps.npz`` (:class:`~featpipe.explain.stream.MapsNPZ`),
    ``index.csv`` and ``index.json``. Memory holds one row of the grid, whatever ``n``; the grid and the maps
    appear when :meth:`close` succeeds, and :meth:`abort` removes their temporaries."""

    def __init__(self, out_dir: str | Path, run: str, *, ids: Sequence[str], map_shape: tuple[int, int],
                 info: dict | None = None, per_row: int = 2):
        self.run, self.info, self.n = run, dict(info or {}), len(ids)
        self.folder = Path(out_dir) / slug(run)
        self.folder.mkdir(parents=True, exist_ok=True)
        tile = (int(TILE_INCHES[1] * DPI), int(TILE_INCHES[0] * DPI))
        self.rows: list[dict] = []
        self.grid = GridPNG(self.folder / "grid.png", n=self.n, tile=tile, per_row=per_row,
                            title=_title_strip(_grid_title(run, self.info), per_row * tile[1]))
        try:
            self.maps = MapsNPZ(self.folder / "maps.npz", list(ids), map_shape)
        except BaseException:
            self.grid.abort()
            raise

    def add(self, image: np.ndarray, cam: np.ndarray, ex: Example) -> None:
        k = len(self.rows)
        stem = ex.id.rsplit(".", 1)[0] if re.search(r"\.[A-Za-z]{3,4}$", ex.id) else ex.id
        name = f"{k:03d}-{slug(ex.outcome or 'image')}-{slug(stem)}.png"
        tile = render_tile(image, cam, ex)
        atomic_write(self.folder / name, _png(tile))
        self.grid.add(tile)
        self.maps.add(np.asarray(cam)[None])
        self.rows.append(asdict(ex) | {"file": name})

    def abort(self) -> None:
        self.grid.abort()
        self.maps.abort()

    def close(self) -> dict:
        """Finish the grid and the maps, write the index; returns it (``run``, ``info``, ``images``, ``grid``)."""
        import pandas as pd

        self.grid.close()
        self.maps.close()
        columns = list(self.rows[0]) if self.rows else ["id"]
        atomic_write(self.folder / "index.csv", pd.DataFrame(self.rows, columns=columns).to_csv(index=False))
        clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                 for r in self.rows]
        index = {"run": self.run, "info": self.info, "grid": "grid.png", "maps": "maps.npz", "images": clean}
        atomic_write(self.folder / "index.json", json.dumps(index, indent=1, default=_json_default))
        return index


def write_run(out_dir: str | Path, run: str, images: Sequence[np.ndarray], cams: np.ndarray,
              examples: Sequence[Example], *, info: dict | None = None, per_row: int = 2) -> dict:
    """:class:`RunWriter` over examples held in memory; returns the index."""
    cams = np.asarray(cams)
    w = RunWriter(out_dir, run, ids=[e.id for e in examples], map_shape=cams.shape[1:], info=info, per_row=per_row)
    try:
        for img, cam, ex in zip(images, cams, examples):
            w.add(img, cam, ex)
        return w.close()
    except BaseException:
        w.abort()
        raise


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
