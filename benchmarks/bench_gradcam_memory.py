"""Peak memory of ``featpipe gradcam --images`` at two numbers of images (issue 21: the grid held every image).

A saved head on the tiny backbone (tiny_cnn + logistic, random weights) explains N synthetic images given by path;
each size runs in its own process and reports its peak resident set (``ru_maxrss``). With ``--base DIR`` (a
checkout of featpipe without the streaming change) the same runs are made with that code for comparison.
Writes the "Grad-CAM memory (issue 21)" section of ``benchmarks/results/reliability.md``.

    python benchmarks/bench_gradcam_memory.py [--sizes 50 400] [--base /tmp/featpipe-base]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MD = ROOT / "benchmarks" / "results" / "reliability.md"
SECTION = "## Grad-CAM memory (issue 21)"

CHILD = """
import resource, sys
from featpipe.cli.main import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)
"""


def make_model(work: Path, n: int) -> tuple[Path, list[str]]:
    import torch
    from PIL import Image

    from featpipe.backbones.model import build
    from featpipe.backbones.modelinput import to_tensor_batch
    from featpipe.data.synthetic import generate
    from featpipe.heads.io import save_head
    from featpipe.heads.registry import make_head
    from featpipe.params.config import HeadsParams, SyntheticParams

    out = generate(work / "s", SyntheticParams(classes=2, images_per_class=-(-n // 2), size=64,
                                               images_per_patient=1, seed=0))
    files = sorted(out.glob("*/*.png"))
    y = np.array([0 if f.parent.name == "normal" else 1 for f in files])
    fm = build("tiny_cnn")
    fit_on = np.linspace(0, len(files) - 1, min(200, len(files))).astype(int)  # both classes
    px = np.stack([np.asarray(Image.open(files[i]))[..., None] for i in fit_on])
    with torch.no_grad():
        feats = fm(to_tensor_batch(px, fm.spec.preprocess.mean, fm.spec.preprocess.std)).numpy()
    pipe = make_head("logistic", replace(HeadsParams(), cv_folds=0), seed=0).fit(feats, y[fit_on])
    meta = {"dataset": "syn", "classes": ["normal", "finding1"], "backbone": "tiny_cnn", "weights": "default",
            "weights_id": fm.weights_id, "layer": "", "preprocess": fm.spec.preprocess.to_dict(),
            "embedding_dim": 32, "threshold": 0.5}
    order = np.random.default_rng(0).permutation(len(files))  # both classes among the first N
    return save_head(work / "m.skops", pipe, meta), [str(files[i]) for i in order]


def peak(code: Path, model: Path, files: list[str], out: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one gradcam run in its own process with featpipe from ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "FEATPIPE_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "gradcam", "--model", str(model), "--images", *files,
                           "--out", str(out), "--layer", "features.denseblock2"],
                          capture_output=True, text=True, env=env, cwd=out.parent)  # not this checkout
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("MAXRSS_KB")]
    if done.returncode != 0 or not line or line[0].split()[2] != "0":
        raise SystemExit(f"gradcam failed with {code}:\n{done.stderr[-3000:]}")
    return int(line[0].split()[1]) / 1024, time.perf_counter() - t0


def write_section(lines: list[str]) -> None:
    text = MD.read_text() if MD.exists() else "# Reliability\n"
    head, _, rest = text.partition("\n" + SECTION)
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    MD.write_text(head.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n" + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 400])
    ap.add_argument("--base", type=Path, default=None, help="a featpipe checkout without streaming, to compare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="featpipe-gcmem-") as tmp:
        work = Path(tmp)
        model, files = make_model(work, max(args.sizes))
        codes = [("streaming (this branch)", ROOT)] + ([("before (whole grid in memory)", args.base)]
                                                      if args.base else [])
        rows = []
        for label, code in codes:
            for n in args.sizes:
                mib, secs = peak(code, model, files[:n], work / f"out-{n}")
                rows.append((label, n, mib, secs))
                print(f"{label}: {n} images: peak RSS {mib:.0f} MiB, {secs:.1f} s", flush=True)
    cmd = "python benchmarks/bench_gradcam_memory.py --sizes " + " ".join(map(str, args.sizes)) + (
        f" --base {args.base}" if args.base else "")
    lines = [SECTION, "", f"`{cmd}` (tiny_cnn + logistic head, `featpipe gradcam --images` on N synthetic 64-px "
             "images, Grad-CAM at features.denseblock2; each run in its own process, peak RSS = ru_maxrss).", "",
             "| code | images | peak RSS (MiB) | seconds |", "|---|---|---|---|"]
    lines += [f"| {label} | {n} | {mib:.0f} | {secs:.1f} |" for label, n, mib, secs in rows]
    for label, _ in codes:
        mine = [(n, mib) for lb, n, mib, _ in rows if lb == label]
        if len(mine) >= 2:
            (n0, m0), (n1, m1) = mine[0], mine[-1]
            lines.append(f"\n{label}: {(m1 - m0) * 1024 / (n1 - n0):.0f} KiB more per image from {n0} to {n1} images.")
    write_section(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
