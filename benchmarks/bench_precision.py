"""Which precision is faster per backbone family on this machine, and how far bf16 features are from fp32.

For one member of each family it times the model alone (no decoding) on real chest X-rays (PneumoniaMNIST
images resized to the member's input size and normalised as featpipe does) in three precisions, paired and
alternating (mode order rotated every round, so load on a shared machine hits every mode alike):

- ``fp32``: float32 weights and inputs;
- ``bf16 autocast``: ``torch.autocast("cpu", bfloat16)`` with float32 weights (channels_last for the families
  that ask for it), what featpipe's ``bf16`` precision runs;
- ``bf16 weights``: weights and inputs cast to bfloat16.

It prints and writes (``--out``) a markdown table: median img/s per mode, which mode ``precision: auto``
picks for the family on this device (``featpipe.core.runtime.select_precision``), whether that is the slowest,
and the per-image cosine similarity (min / mean) of each bf16 mode's features to fp32's, raw and after
subtracting the fp32 features' mean over the batch (random networks' features share a large common
direction that makes raw cosines near 1 whatever the precision). Hugging Face
members are built at their real width and input size with ``--hf-layers`` encoder layers (default 1, as
the planted test snapshots), torchvision members in full; weights are random (seeded), not pretrained.

    python benchmarks/bench_precision.py --out benchmarks/results/precision.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

MEMBERS = ("densenet161", "resnet50", "efficientnet_b4", "vit_b_16", "medsiglip", "rad_dino")
MODES = ("fp32", "bf16 autocast", "bf16 weights")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pneumoniamnist_balanced_28.npz"


def images(spec, n: int):
    """``n`` real chest X-rays at ``spec``'s input size, normalised with its mean/std: (n, 3, S, S) float32."""
    import torch
    from PIL import Image

    pre = spec.preprocess
    if DATA.is_file():
        raw = np.load(DATA)["test_images"][:n]
    else:  # no shared data beside the repo: smooth random images (stated in the output)
        raw = (np.random.default_rng(0).random((n, 28, 28)) * 255).astype(np.uint8)
    size = pre.input_size
    arr = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
                    for im in raw])
    x = torch.from_numpy(arr)[:, None].repeat(1, 3, 1, 1)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def build(name: str, hf_layers: int):
    import torch

    from featpipe.backbones import registry
    from featpipe.backbones.model import FeatureModel

    spec = registry.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = spec.make.build(num_hidden_layers=hf_layers) if hasattr(spec.make, "build") else spec.make()
    return FeatureModel(net.eval(), spec).eval().requires_grad_(False)


def runner(name: str, hf_layers: int, mode: str):
    """A function images -> float32 features running the member (seeded: the same weights) in ``mode``."""
    import torch

    model = build(name, hf_layers)
    cl = model.spec.traits.channels_last
    if mode == "bf16 weights":
        m = model.to(torch.bfloat16)
        return lambda x: m(x.to(torch.bfloat16)).float()
    if mode == "bf16 autocast":
        m = model.to(memory_format=torch.channels_last) if cl else model

        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x.contiguous(memory_format=torch.channels_last) if cl else x).float()

        return run
    return lambda x: model(x).float()


def cosine(a, b) -> np.ndarray:
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def measure(name: str, *, batch: int, rounds: int, hf_layers: int) -> dict:
    import torch

    from featpipe.core.runtime import select_precision

    model = build(name, hf_layers)
    x = images(model.spec, batch)
    runs = {m: runner(name, hf_layers, m) for m in MODES}
    speeds = {m: [] for m in MODES}
    feats = {}
    with torch.inference_mode():
        for m in MODES:  # warm-up (oneDNN kernels, allocations); its features are the comparison
            feats[m] = runs[m](x).numpy()
        for r in range(rounds):
            for m in MODES[r % 3:] + MODES[:r % 3]:
                t0 = time.perf_counter()
                runs[m](x)
                speeds[m].append(batch / (time.perf_counter() - t0))
    med = {m: statistics.median(v) for m, v in speeds.items()}
    auto = select_precision("auto", torch.device("cpu"), model.spec.traits)
    auto_mode = {"bf16": "bf16 autocast", "fp32": "fp32"}[auto]
    mu = feats["fp32"].mean(0)  # centred: random networks' features share a large common direction
    cos = {m: (cosine(feats["fp32"], feats[m]), cosine(feats["fp32"] - mu, feats[m] - mu)) for m in MODES[1:]}
    return {"name": name, "family": model.spec.family, "size": model.spec.preprocess.input_size, "speed": med,
            "auto": auto_mode, "slowest": min(med, key=med.get), "cos": cos}


def table(rows: list[dict]) -> str:
    head = ("| member (family) | input | fp32 img/s | bf16 autocast img/s | bf16 weights img/s | auto picks | "
            "auto slowest? | cos bf16 autocast min / mean | cos bf16 weights min / mean |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        s = r["speed"]
        c = {m: f"{raw.min():.5f} / {raw.mean():.5f} (centred {cen.min():.4f} / {cen.mean():.4f})"
             for m, (raw, cen) in r["cos"].items()}
        lines.append(f"| {r['name']} ({r['family']}) | {r['size']} | {s['fp32']:.2f} | {s['bf16 autocast']:.2f} | "
                     f"{s['bf16 weights']:.2f} | {r['auto']} | {'YES' if r['auto'] == r['slowest'] else 'no'} | "
                     f"{c['bf16 autocast']} | {c['bf16 weights']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", nargs="+", default=list(MEMBERS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hf-layers", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from featpipe.core.runtime import cpu_has_bf16

    rows = []
    for name in args.members:
        rows.append(measure(name, batch=args.batch, rounds=args.rounds, hf_layers=args.hf_layers))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    md = table(rows)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), CPU bf16 (AMX/AVX-512): {cpu_has_bf16()}")
    text = (f"# Precision per backbone family (CPU)\n\n`python benchmarks/bench_precision.py "
            f"--batch {args.batch} --rounds {args.rounds} --hf-layers {args.hf_layers} --members "
            f"{' '.join(args.members)}`\n\nMachine: {machine}. Model alone on {args.batch} real chest X-rays per "
            f"batch, median of {args.rounds} paired rounds (mode order rotated), random seeded weights; Hugging "
            f"Face members at their real width and input size with {args.hf_layers} encoder layer(s).\n\n{md}\n")
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
