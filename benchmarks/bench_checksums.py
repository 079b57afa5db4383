"""Cost of the caches' per-block checksums (issue 21): writing them, and checking them on read.

A decoded-image cache of N random 224-px colour images and a feature cache of N x 768 float32 rows are
written through featpipe's writers; the script times the checksum pass of the decoded writer, a decoded
reader's random batches with and without checking (checking touches each 64-row block once per process),
and ``read_features`` with and without its check. Writes ``benchmarks/results/checksums.md``.

    python benchmarks/bench_checksums.py [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featpipe.core import checksums  # noqa: E402
from featpipe.decoded.cache import DecodedImages  # noqa: E402
from featpipe.decoded.writer import Writer  # noqa: E402
from featpipe.features import cache as featcache  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    n, s, rng = args.n, 224, np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decoded-224.h5"
        w = Writer(path, size=s, n=n, attrs={})
        for r in range(n):
            w.put(r, rng.integers(0, 255, (s, s, 3), dtype=np.uint8))
        with h5py.File(w.tmp, "r") as f:
            rows.append(("decoded cache: checksum pass at the end of a build",
                         f"{timed(lambda: checksums.of_dataset(f['images'], 64)):.2f} s"))
        w.finish(np.ones(n, bool), [str(i) for i in range(n)], ["x"] * n, {})
        batches = [rng.choice(n, 32, replace=False) for _ in range(200)]
        r = DecodedImages(path)
        checked = timed(lambda: [r.read(b) for b in batches])
        r._sums = None
        plain = timed(lambda: [r.read(b) for b in batches])
        rows.append(("decoded reader: 200 random batches of 32, checking (first pass over the file)",
                     f"{checked:.2f} s"))
        rows.append(("decoded reader: the same batches, checking off", f"{plain:.2f} s"))
        fpath = featcache.write_features(Path(tmp) / "f.h5", ids=[str(i) for i in range(n)],
                                         features=rng.normal(size=(n, 768)).astype(np.float32),
                                         labels=np.zeros(n, np.int64), attrs={})
        with_check = timed(lambda: featcache.read_features(fpath), 5)
        with h5py.File(fpath, "a") as f:
            del f["features_crc32"]
        without = timed(lambda: featcache.read_features(fpath), 5)
        rows.append(("read_features of N x 768 float32, checking", f"{with_check * 1000:.1f} ms"))
        rows.append(("read_features, no checksums in the file", f"{without * 1000:.1f} ms"))
    size = n * s * s * 3 / 2**20
    lines = ["# Cache checksums: cost", "",
             f"`python benchmarks/bench_checksums.py --n {n}` on {platform.platform()}, {os.cpu_count()} CPUs "
             f"shared with other jobs; decoded cache {size:.0f} MiB, feature cache {n * 768 * 4 / 2**20:.1f} MiB "
             "(page cache warm).", "", "| what | time |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    out = REPO / "benchmarks" / "results" / "checksums.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
