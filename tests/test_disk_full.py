"""A disk that fills during the HDF5 write itself (issue 21, failure 7): one line, exit 1, never a crash in libhdf5
(it segfaulted, exit 139, when the write failed with ENOSPC), no temporary file left, and nothing computed lost
(the extraction's journal keeps its rows: the next run resumes them and computes nothing).

The disk is filled two ways: a failing write hook on the one function that writes HDF5 bytes
(:class:`featpipe.core.h5out._Sink`), which runs everywhere, and, where the test may mount one (root with
CAP_SYS_ADMIN), a real tmpfs with almost no room left. Both run the command in a separate process, so a crash
shows as its exit status."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from featpipe.cli.main import main
from featpipe.core import h5out
from featpipe.features import cache as featcache
from tests.conftest import copy_project, extracted_project

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
          "split: {seeds: [0], shots: [5], val_fraction: 0.2, test_fraction: 0.2}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 8}\n"
          "fit: {n_jobs: 1}\n")
REPO = Path(__file__).resolve().parents[1]

# Run the CLI in a child process; the free-space check before the write is turned off (the disk fills after it,
# e.g. another writer), and with HOOK set the HDF5 byte writer fails with ENOSPC once HOOK bytes are written.
CHILD = """
import errno, os, sys
from featpipe.core import h5out
from featpipe.decoded import writer
from featpipe.features import cache
cache.ensure_space = writer.ensure_space = lambda *a, **k: None
limit = int(os.environ.get("HOOK", "-1"))
if limit >= 0:
    real, state = h5out._Sink._write, {"n": 0}
    def failing(self, data):
        state["n"] += len(data)
        if state["n"] > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, data)
    h5out._Sink._write = failing
from featpipe.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return extracted_project(tmp_path_factory.mktemp("diskfull"), PARAMS, "--no-progress")


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    return copy_project(base, tmp_path, monkeypatch)


def _child(*args: str, hook: int = -1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HOOK": str(hook)}
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, timeout=300)


def _mount_tmpfs(folder: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes on ``folder`` (True) where this process may (root, CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system, then free ``leave`` bytes (rounded up to whole pages)."""
    leave = -(-leave // 4096) * 4096
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        fh.truncate(max(0, fh.tell() - leave))


def _features(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["features"][()]


@pytest.mark.parametrize("disk", ["hook", "tmpfs"])
def test_a_disk_that_fills_during_the_feature_cache_write_is_one_line_and_loses_nothing(project, disk):
    cache = Path("cache/demo")
    target = cache / "tiny_cnn.h5"
    before = _features(target)
    journal_bytes = before.size * 4
    target.unlink()
    mounted = False
    if disk == "tmpfs":
        kept = Path("kept")
        shutil.copytree(cache, kept)
        mounted = _mount_tmpfs(cache, 4 << 20)
    try:
        print("tmpfs mounted" if mounted else "no tmpfs here: the write hook fills the disk")
        if mounted:  # room for the journal, its plan and one page of the final file (about 3 pages)
            shutil.copytree(kept, cache, dirs_exist_ok=True)
            _fill(cache, -(-journal_bytes // 4096) * 4096 + 2 * 4096)
        failed = _child("extract", "--no-progress", hook=-1 if mounted else journal_bytes // 2)
        assert failed.returncode == 1, (failed.returncode, failed.stderr[-2000:])
        err = failed.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "no space" in err.lower() and "cache/demo/tiny_cnn.h5" in err, err
        assert not target.exists() and not [p for p in cache.iterdir() if ".tmp-" in p.name]
        assert (cache / "tiny_cnn.h5.partial" / "features.f32").stat().st_size == journal_bytes
        if mounted:
            (cache / "filler").unlink()
        again = _child("extract", "--no-progress")
        assert again.returncode == 0, again.stderr[-2000:]
        assert "0 extracted" in again.stdout and f"{len(before)} resumed" in again.stdout, again.stdout
        assert np.array_equal(_features(target), before)
        featcache.verify(target)
    finally:
        if mounted:
            subprocess.run(["umount", str(cache)], check=True)


def test_a_disk_that_fills_during_the_decoded_cache_write_is_one_line(project, capsys):
    cache = Path("cache/demo")
    files = sorted(p.name for p in cache.glob("decoded-*.h5"))
    assert files
    for name in files:
        (cache / name).unlink()
    failed = _child("decode", "--no-progress", hook=20_000)
    assert failed.returncode == 1, (failed.returncode, failed.stderr[-2000:])
    err = failed.stderr.strip()
    assert len(err.splitlines()) == 1 and "no space" in err.lower() and "cache/demo/decoded-" in err, err
    assert not list(cache.glob("decoded-*")) and not list(cache.glob(".decoded-*.tmp-*"))
    capsys.readouterr()
    assert main(["decode", "--no-progress"]) == 0
    assert sorted(p.name for p in cache.glob("decoded-*.h5")) == files


def test_the_hdf5_writer_streams_and_turns_a_failed_write_into_an_oserror(tmp_path, monkeypatch):
    data = np.random.default_rng(0).random((300, 64), dtype=np.float32)
    writes: list[int] = []
    real = h5out._Sink._write

    def counting(self, view):
        writes.append(len(view))
        if sum(writes) > 40_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, view)

    monkeypatch.setattr(h5out._Sink, "_write", counting)
    with pytest.raises(OSError) as caught:
        featcache.write_features(tmp_path / "f.h5", ids=[str(i) for i in range(300)], labels=[0] * 300,
                                 features=(data[i:i + 50] for i in range(0, 300, 50)), dim=64, attrs={})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "f.h5")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(h5out._Sink, "_write", real)
    featcache.write_features(tmp_path / "f.h5", ids=[str(i) for i in range(300)], labels=[0] * 300,
                             features=data, attrs={})
    assert np.array_equal(_features(tmp_path / "f.h5"), data)
