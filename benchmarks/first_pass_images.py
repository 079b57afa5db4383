"""Benchmark image sets for ``bench_first_pass.py``, written under /tmp (never in the repository).

- ``png``: large real PNGs: each radiograph of ``../shared/data/figure1-covid-cxr/images`` upscaled (bicubic) to a longer side of 2400 px and saved as an RGB-mode PNG
  (grey content, as the Actualmed images are) at zlib levels 1, 3, 6 and 9 (so every file's bytes
  differ), until ``--png`` files exist;
- ``jpeg``: the Figure 1 JPEGs re-encoded at qualities 95, 90, 85, 80, ... (bytes differ, sizes kept)
  until ``--jpeg`` files exist.

    python benchmarks/first_pass_images.py --out /tmp/fp-bench --png 176 --jpeg 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "figure1-covid-cxr" / "images"
PNG_LEVELS = (1, 3, 6, 9)
JPEG_QUALITIES = (95, 90, 85, 80, 75, 70)


def make_png(out: Path, n: int, long_side: int = 2400) -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for p in sorted(IMAGES.iterdir()):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            sources.append(p)
    files = []
    for level in PNG_LEVELS:
        for p in sources:
            if len(files) == n:
                return files
            dst = out / f"{p.stem}-z{level}.png"
            if not dst.exists():
                with Image.open(p) as im:
                    g = im.convert("L")
                    s = long_side / max(g.size)
                    g = g.resize((round(g.width * s), round(g.height * s)), Image.Resampling.BICUBIC)
                    tmp = dst.with_suffix(".tmp")
                    g.convert("RGB").save(tmp, format="PNG", compress_level=level)
                    tmp.rename(dst)
            files.append(dst)
    if len(files) < n:
        raise SystemExit(f"only {len(files)} large PNGs can be made from {IMAGES}")
    return files


def make_jpeg(out: Path, n: int) -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    files = []
    for q in JPEG_QUALITIES:
        for p in sources:
            if len(files) == n:
                return files
            dst = out / f"{p.stem}-q{q}.jpg"
            if not dst.exists():
                with Image.open(p) as im:
                    tmp = dst.with_suffix(".tmp")
                    im.save(tmp, format="JPEG", quality=q)
                    tmp.rename(dst)
            files.append(dst)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/fp-bench")
    ap.add_argument("--png", type=int, default=176)
    ap.add_argument("--jpeg", type=int, default=200)
    a = ap.parse_args()
    png = make_png(Path(a.out) / "png", a.png)
    jpg = make_jpeg(Path(a.out) / "jpeg", a.jpeg)
    print(f"{len(png)} PNGs, {len(jpg)} JPEGs under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
