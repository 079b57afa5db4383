"""Extraction throughput, side by side on the same images (random weights: speed only).

Modes, each measured in its own fresh process (so peak memory is that mode's own):

- ``naive``: the loop the studies use: torchvision ``ImageFolder`` (PIL decode + ``convert("RGB")``),
  Resize 256 + CenterCrop 224, fp32, NCHW, DataLoader batch 32, no workers, ``torch.no_grad``;
- ``first``: ``featpipe.features.extract.extract`` from nothing (decode once into the decoded cache with the
  configured workers, then extraction, precision auto);
- ``warm``: ``extract`` again for a backbone with the decoded cache already built (features not cached);
- ``alone``: the model alone on random tensors, same batch size, precision and memory format as
  ``first``/``warm``, same number of images (first batch included, as in the other modes).

Image sets: ``real`` = the 55 real radiographs of ``../shared/data/figure1-covid-cxr/images`` (JPEG
and PNG, a few hundred to 2000+ pixels); ``large`` = large JPEGs made from them (longer side 3000 px,
quality 95) in a temporary folder; ``real4x`` = the real set listed 4 times (220 rows, for throughput
and for peak memory at 4x the images).

    python benchmarks/bench_extract.py [--models resnet50 densenet161] [--sets real large real4x] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "figure1-covid-cxr" / "images"
BATCH = 32


# --------------------------------------------------------------------------- image sets


def make_sets(work: Path) -> dict[str, list[Path]]:
    from PIL import Image

    real = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    large_dir = work / "large"
    large_dir.mkdir(parents=True, exist_ok=True)
    large = []
    for p in real:
        out = large_dir / (p.stem + ".jpg")
        if not out.exists():
            with Image.open(p) as im:
                im = im.convert("L") if im.mode in ("L", "I;16", "I", "LA") else im.convert("RGB")
                scale = 3000 / max(im.size)
                im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC).save(
                    out, quality=95)
        large.append(out)
    return {"real": real, "large": large, "real4x": real * 4}


def image_folder(files: list[Path], root: Path) -> Path:
    """An ImageFolder tree of symlinks (one class), the layout the naive loop needs."""
    cls = root / "class0"
    cls.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(files):
        link = cls / f"{i:04d}_{p.name}"
        if not link.exists():
            link.symlink_to(p)
    return root


def manifest(files: list[Path]):
    import pandas as pd

    rows = [{"id": f"{i:04d}/{p.name}", "path": str(p), "label": 0, "label_name": "x", "patient_id": p.stem,
             "source_split": "", "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "width": 0, "height": 0}
            for i, p in enumerate(files)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- one measurement (own process)


def run_one(cfg: dict) -> dict:
    import torch

    import torchvision
    from torchvision import transforms

    from featpipe.backbones.model import build
    from featpipe.params.config import ExtractParams
    from featpipe.core.runtime import select_precision
    from featpipe.features.extract import extract

    files = [Path(p) for p in cfg["files"]]
    work = Path(cfg["work"])
    n = len(files)
    table_rows = manifest(files) if cfg["mode"] in ("first", "warm") else None  # prepare's job: not timed
    t0 = time.perf_counter()  # imports done; model building, decoding and extraction are timed
    extra = {}
    if cfg["mode"] == "naive":
        net = getattr(torchvision.models, cfg["model"])(weights=None).eval()
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        ds = torchvision.datasets.ImageFolder(str(image_folder(files, work / f"folder-{cfg['set']}")), transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False, num_workers=0)
        with torch.no_grad():
            for x, _ in loader:
                net(x)
    elif cfg["mode"] in ("first", "warm"):
        cache = work / f"cache-{cfg['set']}"
        r = extract(table_rows, backbone=cfg["model"], dataset="bench", cache_dir=cache,
                    params=ExtractParams(weights="random", batch_size=BATCH), progress=False)
        extra = {"loop_img_s": r.images_per_s, "precision": r.precision}
        r.path.unlink()  # the next mode measures extraction again, not a cache hit
    else:  # alone
        model = build(cfg["model"], weights="random")
        precision = select_precision("auto", torch.device("cpu"), model.spec.traits)
        fast = precision == "bf16"
        if fast and model.spec.traits.channels_last:
            model = model.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(0)
        t1 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, BATCH):
                x = torch.randn(min(BATCH, n - s), 3, 224, 224, generator=gen)
                if fast:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
                    model(x)
        extra = {"loop_img_s": n / (time.perf_counter() - t1), "precision": precision}
    seconds = time.perf_counter() - t0
    return {**{k: cfg[k] for k in ("set", "model", "mode")}, "images": n, "seconds": seconds,
            "img_s": n / seconds, **extra,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


# --------------------------------------------------------------------------- driver


def table(rows: list[dict]) -> str:
    out = ["| set | model | mode | images | seconds | img/s (whole call) | img/s (model loop) | precision | "
           "peak RSS MB (process / largest child) | x naive |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    naive = {(r["set"], r["model"]): r["img_s"] for r in rows if r["mode"] == "naive"}
    for r in rows:
        ratio = r["img_s"] / naive[(r["set"], r["model"])] if (r["set"], r["model"]) in naive else float("nan")
        loop = f"{r['loop_img_s']:.1f}" if "loop_img_s" in r else ""
        out.append(f"| {r['set']} | {r['model']} | {r['mode']} | {r['images']} | {r['seconds']:.1f} | {r['img_s']:.1f} | "
                   f"{loop} | {r.get('precision', 'fp32')} | {r['peak_rss_mb']:.0f} / {r['peak_child_rss_mb']:.0f} | "
                   f"{ratio:.2f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "densenet161"])
    ap.add_argument("--sets", nargs="+", default=["real", "large", "real4x"])
    ap.add_argument("--modes", nargs="+", default=["naive", "first", "warm", "alone"])
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    if not IMAGES.is_dir():
        print(f"real images not found at {IMAGES}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        sets = make_sets(work)
        for set_name in args.sets:
            for model in args.models:
                for mode in args.modes:
                    cfg = {"set": set_name, "model": model, "mode": mode, "work": str(work),
                           "files": [str(p) for p in sets[set_name]]}
                    if mode == "first":  # a cold decoded cache for this set
                        for p in work.glob(f"cache-{set_name}/bench/decoded-*.h5"):
                            p.unlink()
                    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                                          text=True, cwd=ROOT, env={**os.environ, "FEATPIPE_OFFLINE": "1"})
                    if proc.returncode:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        return proc.returncode
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    r = rows[-1]
                    print(f"{set_name:7s} {model:12s} {mode:6s} {r['images']:4d} img {r['seconds']:7.1f} s "
                          f"{r['img_s']:6.1f} img/s  peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
