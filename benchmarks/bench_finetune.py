"""Fine-tuning throughput: seconds per epoch and images/s of the real training loop.

ResNet50 ``layerwise`` (random weights: throughput does not depend on them) at k shots per class
(2 classes, so 2k images an epoch), bf16 autocast + channels_last vs fp32, images read from the
decoded-image cache vs decoded from the original files on every epoch. Images: the real radiographs
of ``../shared/data/figure1-covid-cxr`` (JPEG and PNG, a few hundred to 2000+ pixels), drawn with
replacement to fill the k-shot set; labels are arbitrary (only speed is measured). The timed epoch
is the training pass (augmentation included); the first batch of each configuration is a warm-up
and not timed. Run from the repository root::

    python benchmarks/bench_finetune.py --shots 10 100 --epochs 1 --out benchmarks/results/finetune.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featpipe.backbones.modelinput import decode_key
from featpipe.core.fileio import file_sha256
from featpipe.decoded.build import build_decoded
from featpipe.finetune.checkpoint import build_model
from featpipe.finetune.data import CachedImages, DecodingImages, Labeled, Prep
from featpipe.core.runtime import Runtime
from featpipe.finetune.loop import TrainConfig, train
from featpipe.finetune.strategies import param_groups

FIGURE1 = ROOT.parent / "shared" / "data" / "figure1-covid-cxr" / "images"


def manifest_of(folder: Path) -> pd.DataFrame:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return pd.DataFrame({"id": [p.name for p in files], "path": [str(p) for p in files],
                         "sha256": [file_sha256(p) for p in files]})


def read_seconds(source, ids, batch: int) -> float:
    """Seconds to fetch one epoch's pixels alone (no model), batch by batch as the loop does."""
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        source.read(ids[i:i + batch])
    return time.perf_counter() - t0


def one(source, ids, labels, *, backbone: str, precision: str, epochs: int, batch: int) -> dict:
    model, spec = build_model(backbone, "layerwise", 2, weights="random")
    prep = Prep.from_preprocess(spec.preprocess)
    rt = Runtime(torch.device("cpu"), precision, channels_last=precision == "bf16")
    model = model.to(memory_format=torch.channels_last) if rt.channels_last else model
    opt = torch.optim.AdamW(param_groups(model, "layerwise", lr=1e-4, backbone_lr_factor=0.1), weight_decay=1e-4)
    tr = Labeled(tuple(ids), labels)
    va = Labeled(tuple(ids[:2]), labels[:2])  # tiny val set: the val pass is not what is measured
    warm = Labeled(tuple(ids[:batch]), labels[:batch])
    train(model, source, warm, va, optimizer=opt, cfg=TrainConfig(batch_size=batch, epochs=1, patience=99),
          prep=prep, rt=rt, seed=1, n_classes=2)
    res = train(model, source, tr, va, optimizer=opt, prep=prep, rt=rt, seed=0, n_classes=2,
                cfg=TrainConfig(batch_size=batch, epochs=epochs, patience=99))
    secs = [r["train_seconds"] for r in res.history]
    return {"s_per_epoch": float(np.mean(secs)), "img_per_s": len(ids) / float(np.mean(secs))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per configuration")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--sources", nargs="+", default=["cache", "decode"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", help="write a markdown table here")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not FIGURE1.is_dir():
        print(f"real images not found at {FIGURE1}", file=sys.stderr)
        return 1
    man = manifest_of(FIGURE1)
    form = decode_key(args.backbone)  # what the decoded cache holds (resnet50: 256), random-resized-cropped to 224
    size = form.size
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = build_decoded(man, size=form, path=Path(tmp) / f"decoded-{form.label}.h5", workers=2,
                             progress=False)
        build_s = time.perf_counter() - t0
        cached = CachedImages(path)
        channels = cached.reader.channels
        decoding = DecodingImages(dict(zip(man["id"], man["path"])), size=form, channels=channels)
        rng = np.random.default_rng(0)
        rows = []
        load0 = os.getloadavg()[0]
        for k in args.shots:
            ids = [str(x) for x in rng.choice(man["id"].to_numpy(), 2 * k, replace=True)]
            labels = np.arange(2 * k, dtype=np.int64) % 2
            for prec in args.precisions:
                for src_name in args.sources:
                    src = cached if src_name == "cache" else decoding
                    r = one(src, ids, labels, backbone=args.backbone, precision=prec, epochs=args.epochs,
                            batch=args.batch)
                    r["read_s"] = read_seconds(src, ids, args.batch)
                    rows.append({"shots": k, "images/epoch": 2 * k, "precision": prec, "images from": src_name, **r})
                    print(f"k={k:4d} {prec} {src_name:6s}: {r['s_per_epoch']:7.2f} s/epoch  {r['img_per_s']:6.1f} img/s"
                          f"  (pixels alone {r['read_s']:.2f} s)", flush=True)
        load1 = os.getloadavg()[0]
    table = ["| shots/class | images/epoch | precision | images from | s/epoch | images/s | pixels alone, s/epoch |",
             "|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        src = "decoded cache" if r["images from"] == "cache" else "decoding every epoch"
        table.append(f"| {r['shots']} | {r['images/epoch']} | {r['precision']} | {src} | "
                     f"{r['s_per_epoch']:.2f} | {r['img_per_s']:.1f} | {r['read_s']:.2f} |")
    info = (f"{args.backbone} layerwise, batch {args.batch}, {args.epochs} timed epoch(s) per row; "
            f"{len(man)} figure1 radiographs decoded once to {size}px in {build_s:.1f} s ({channels} channel(s)); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
            f"load average {load0:.1f} at start, {load1:.1f} at end")
    print(info)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(table) + "\n\n" + info + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
