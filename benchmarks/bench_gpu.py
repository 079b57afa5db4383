"""GPU benchmark, one command: model-only throughput, featpipe's extraction loop from the decoded cache, and decode
throughput on the machine's CPU cores. Results in ``benchmarks/results/gpu.md`` with the device named.

    python benchmarks/bench_gpu.py                 # on the GPU machine (about 5-8 minutes on an H100/H200)
    python benchmarks/bench_gpu.py --quick         # CPU smoke run (tiny members, seconds; what CI runs)
    python benchmarks/bench_gpu.py --models resnet50 medsiglip --batches 128 256 --out /tmp/gpu.md

1. **Model only**: each backbone at its real width and depth (random weights: speed only; nothing downloaded) on
   random input tensors already on the device, in fp32, bf16 autocast and bf16 autocast + ``torch.compile``;
   channels_last for the CNNs (as featpipe runs them under bf16). Batch sizes are swept (a size that runs out of
   memory ends the sweep); the best img/s per mode is reported with its batch size. Targets (published model-only
   figures on consumer and workstation GPUs, to beat on an H100/H200-class GPU): densenet161 >= 4,000 img/s,
   resnet50 >= 10,000, vit_b_16 >= 5,000, rad_dino (518 px) >= 600, medsiglip (448 px) >= 200.
2. **featpipe's loop**: :func:`featpipe.features.extract.extract` (the code ``featpipe extract`` runs: decoded-cache
   reads and normalisation in a reading thread, pinned memory and non-blocking copies on CUDA) on a synthetic
   decoded cache of ``--images`` images at each backbone's decoded size, bf16 autocast, the best model-only batch
   size; reported as img/s and as a share of the model-only figure (target >= 90%).
3. **Decode**: the real radiographs of ``../shared/data/figure1-covid-cxr`` decoded into a decoded cache with as many
   worker processes as the machine has cores (images/s), the first pass every study starts with.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featpipe.backbones.model import build  # noqa: E402
from featpipe.backbones.registry import get  # noqa: E402
from featpipe.core.runtime import Runtime  # noqa: E402
from featpipe.decoded.build import build_decoded  # noqa: E402
from featpipe.features.extract import extract  # noqa: E402
from featpipe.imaging.decode import content_sha256  # noqa: E402
from featpipe.params.config import DecodeParams, ExtractParams  # noqa: E402

FIGURE1 = ROOT.parent / "shared" / "data" / "figure1-covid-cxr" / "images"
MODELS = ("densenet161", "resnet50", "vit_b_16", "rad_dino", "medsiglip")
QUICK_MODELS = ("tiny_cnn", "tiny_vit", "tiny_dino", "tiny_siglip")
TARGETS = {"densenet161": 4000, "resnet50": 10000, "vit_b_16": 5000, "rad_dino": 600, "medsiglip": 200}


def device_name(torch) -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"
    cpu = platform.processor() or "CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} cores, no GPU), torch {torch.__version__}"


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(name: str, *, mode: str, batch: int, seconds: float, device: str) -> float:
    """img/s of ``name`` alone on random inputs on the device: ``mode`` fp32 | bf16 | bf16+compile."""
    import torch

    spec = get(name)
    rt = Runtime.resolve(device, "fp32" if mode == "fp32" else "bf16", traits=spec.traits)
    model = rt.prepare(build(name, weights="random"))
    if mode.endswith("compile"):
        model = torch.compile(model)
    side = spec.preprocess.input_size
    x = rt.inputs(torch.randn(batch, spec.preprocess.channels, side, side))
    with torch.inference_mode(), rt.autocast():
        for _ in range(2):  # warm-up (compilation, cudnn autotune)
            model(x)
        _sync(torch, rt.device)
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
            if rt.device.type == "cuda" and n % (batch * 8) == 0:
                _sync(torch, rt.device)
        _sync(torch, rt.device)
    return n / (time.perf_counter() - t0)


def sweep_batches(name: str, mode: str, batches: list[int], seconds: float, device: str) -> tuple[float, int]:
    """(best img/s, its batch size) over ``batches``; running out of memory ends the sweep."""
    import torch

    best = (0.0, 0)
    for b in batches:
        try:
            speed = model_only(name, mode=mode, batch=b, seconds=seconds, device=device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        except Exception as exc:  # e.g. torch.compile unavailable on this platform: say so, keep going
            print(f"  {name} {mode} batch {b}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
            break
        print(f"  {name} {mode} batch {b}: {speed:,.0f} img/s", flush=True)
        best = max(best, (speed, b))
    return best


def synthetic_manifest(tmp: Path, n: int, side: int) -> pd.DataFrame:
    """``n`` random grey images of ``side`` px in one npz (references ``<file>#images/<i>``)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    path = tmp / "synthetic.npz"
    np.savez(path, images=images)
    ids = [f"img{i:06d}" for i in range(n)]
    refs = [f"{path}#images/{i}" for i in range(n)]
    return pd.DataFrame({"id": ids, "path": refs, "label": [i % 2 for i in range(n)],
                         "label_name": [("a", "b")[i % 2] for i in range(n)], "patient_id": ids, "source_split": "",
                         "sha256": [content_sha256(r) for r in refs], "width": side, "height": side})


def loop(name: str, manifest: pd.DataFrame, tmp: Path, *, batch: int, device: str, precision: str) -> float:
    """img/s of featpipe's extraction (decoded cache already built, features not cached)."""
    params = ExtractParams(weights="random", batch_size=batch, device=device, precision=precision)
    decode = DecodeParams(workers=os.cpu_count() or 1)
    extract(manifest, backbone=name, dataset="bench", cache_dir=tmp / "cache", params=params, decode=decode,
            progress=False)  # builds the decoded cache and warms up
    for f in (tmp / "cache" / "bench").glob("*.h5"):
        if not f.name.startswith("decoded-"):
            f.unlink()
    return extract(manifest, backbone=name, dataset="bench", cache_dir=tmp / "cache", params=params, decode=decode,
                   progress=False).images_per_s


def decode_speed(tmp: Path, files: list[Path]) -> tuple[int, float]:
    from featpipe.core.fileio import file_sha256

    manifest = pd.DataFrame({"id": [f.name for f in files], "path": [str(f) for f in files],
                             "sha256": [file_sha256(f) for f in files]})
    t0 = time.perf_counter()
    build_decoded(manifest, size=224, path=tmp / "decoded.h5", workers=os.cpu_count() or 1, progress=False)
    return len(files), len(files) / (time.perf_counter() - t0)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny members, tiny batches, fp32 and bf16 only (CPU, CI)")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--batches", nargs="*", type=int)
    ap.add_argument("--seconds", type=float, help="timed seconds per measurement")
    ap.add_argument("--images", type=int, help="images in the synthetic decoded cache of the loop measurement")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.md")
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and a.device in ("auto", "cuda")
    models = a.models or (QUICK_MODELS if a.quick else MODELS)
    batches = a.batches or ([4, 8] if a.quick else [64, 128, 256, 512] if cuda else [16, 32])
    seconds = a.seconds or (0.2 if a.quick else 3.0 if cuda else 2.0)
    images = a.images or (32 if a.quick else 4096 if cuda else 128)
    modes = ["fp32", "bf16"] if a.quick or not cuda else ["fp32", "bf16", "bf16+compile"]
    dev = device_name(torch)
    print(f"device: {dev}", flush=True)
    rows, loops = [], []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for name in models:
            best = {m: sweep_batches(name, m, batches, seconds, a.device) for m in modes}
            rows.append((name, best))
            (tmp / name).mkdir()
            manifest = synthetic_manifest(tmp / name, images, get(name).preprocess.decoding.size)
            speed = loop(name, manifest, tmp / name, batch=best["bf16"][1] or batches[0], device=a.device,
                         precision="bf16")
            loops.append((name, speed, best["bf16"][0]))
            print(f"  {name} featpipe loop (bf16): {speed:,.0f} img/s", flush=True)
        files = sorted(FIGURE1.glob("*"))[: 8 if a.quick else None] if FIGURE1.is_dir() else []
        decoded = decode_speed(tmp, files) if files else (0, 0.0)
    lines = [f"# GPU benchmark (`python benchmarks/bench_gpu.py{' --quick' if a.quick else ''}`)", "",
             f"Device: {dev}. Random weights at each backbone's real width and depth; {seconds:g} s per measurement;",
             f"batch sizes tried: {', '.join(map(str, batches))}.", "",
             "## Model only (img/s, best batch size)", "",
             "| backbone | " + " | ".join(modes) + " | target |", "|---|" + "---|" * len(modes) + "---|"]
    for name, best in rows:
        cells = [f"{s:,.0f} (b{b})" if b else "n/a" for s, b in (best[m] for m in modes)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {TARGETS.get(name, '-')} |")
    lines += ["", f"## featpipe's extraction loop from the decoded cache ({images} images, bf16)", "",
              "| backbone | loop img/s | model-only bf16 img/s | share (target >= 90%) |", "|---|---|---|---|"]
    for name, speed, alone in loops:
        lines.append(f"| {name} | {speed:,.0f} | {alone:,.0f} | {speed / alone:.0%} |" if alone else
                     f"| {name} | {speed:,.0f} | n/a | n/a |")
    lines += ["", f"## Decode ({os.cpu_count()} worker processes)", "",
              f"{decoded[0]} real radiographs (Figure 1 set) to 224 px: {decoded[1]:,.1f} images/s", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return a.out


if __name__ == "__main__":
    main()
