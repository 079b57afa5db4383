"""One ``fit --head prototype`` on a task of many classes (issue 21, item 9): wall, CPU and peak memory.

    python benchmarks/bench_many_classes.py                                  # 1,000 classes, this checkout
    python benchmarks/bench_many_classes.py --classes 1000 2000 --code before=/tmp/before after=.

For each class count C: a synthetic project (C classes x 4 images of 16 px: 2 train, 2 test per class, k = 2,
tiny_cnn features) made by ``featpipe prepare`` and ``extract``, then ``featpipe fit --head prototype --shots 2
--seeds 0 -S fit.max_classes=C`` in its own process with each ``--code`` (a label and a folder whose ``featpipe``
package is used, e.g. an older commit unpacked with ``git archive <commit> featpipe | tar -x -C /tmp/before``),
measured with ``wait4`` (peak RSS, user + system CPU). The machine may be shared: CPU seconds are given beside wall.
Writes the "Many classes (issue 21)" section of ``benchmarks/results/reliability.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MD = ROOT / "benchmarks" / "results" / "reliability.md"
SECTION = "## Many classes (issue 21)"
PARAMS = ("data: {{name: many, source: synthetic, path: data/synthetic, synthetic: {{classes: {c}, images_per_class: 4, "
          "size: 16}}}}\nsplit: {{seeds: [0], shots: [2], val_fraction: 0.25, test_fraction: 0.25}}\n"
          "decode: {{workers: 1}}\nextract: {{backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 256}}\n"
          "fit: {{n_jobs: 1, heads: [prototype], max_classes: {c}}}\n")
FIT = ["fit", "--head", "prototype", "--shots", "2", "--seeds", "0"]


def run(folder: Path, argv: list[str], code: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MiB) of ``featpipe <argv>`` in ``folder`` with ``code``'s package."""
    env = dict(os.environ, FEATPIPE_OFFLINE="1", PYTHONPATH=str(code))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "featpipe", *argv], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"featpipe {' '.join(argv)} failed: {err[-1] if err else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def write_section(lines: list[str]) -> None:
    text = MD.read_text() if MD.exists() else "# Reliability\n"
    head, _, rest = text.partition("\n" + SECTION)
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    MD.write_text(head.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n" + tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[1000])
    ap.add_argument("--code", nargs="+", default=["this checkout=."], help="label=folder holding a featpipe package")
    args = ap.parse_args()
    codes = [(c.split("=", 1)[0], Path(c.split("=", 1)[1]).resolve()) for c in args.code]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.classes:
            folder = Path(tmp) / f"c{c}"
            folder.mkdir()
            (folder / "params.yaml").write_text(PARAMS.format(c=c))
            for argv in (["prepare", "--no-progress"], ["extract", "--no-progress"]):
                run(folder, argv, ROOT)
            for label, code in codes:
                for sub in ("results", "models"):
                    subprocess.run(["rm", "-rf", str(folder / sub)], check=True)
                wall, cpu, rss = run(folder, FIT, code)
                rows.append(f"| {label} | {c:,} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")
                print(rows[-1], flush=True)
    load = os.getloadavg()[1]
    write_section([SECTION, "", f"`python benchmarks/bench_many_classes.py {' '.join(sys.argv[1:])}`: one "
                   "`featpipe fit --head prototype --shots 2 --seeds 0` on a synthetic task of C classes x 4 images "
                   f"(2 train, 2 test per class, tiny_cnn features), in its own process; {os.cpu_count()} CPUs shared "
                   f"with other jobs (5-minute load average {load:.1f} at the end).", "",
                   "| code | classes | wall (s) | CPU (s) | peak RSS (MiB) |", "|---|---|---|---|---|", *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
