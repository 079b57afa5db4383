"""The GPU benchmark is ready for the day a GPU is lent: its reduced mode runs on the CPU and writes its tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_quick_mode_writes_every_table(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--models", "tiny_cnn", "tiny_siglip", "--out", str(tmp_path / "gpu.md")])
    text = out.read_text()
    assert "Device: " in text and "no GPU" in text  # the device is named
    rows = [line for line in text.splitlines() if line.startswith("| tiny_")]
    assert len(rows) == 4  # model-only and loop rows for both members
    for line in rows:
        assert "n/a" not in line and float(line.split("|")[2].split()[0].replace(",", "")) > 0
    assert "real radiographs" in text and "images/s" in text
