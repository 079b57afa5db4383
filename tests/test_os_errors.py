"""Every operating-system failure is one line, never a traceback (issue 21, failures 7, 8, 11 and 12): a full
disk (checked before the big HDF5 writes, and any write that fails with ENOSPC), read-only and wrong-type
paths, names too long; a current cache in a folder that cannot be written stays usable; temporary files of
dead writers are removed where the next run writes, and reported; long names are shortened with a hash."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from featpipe.cli.main import main
from featpipe.core import fileio, locks
from featpipe.core.names import short_part
from featpipe.evaluation import table
from tests.conftest import copy_project, extracted_project

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
          "split: {seeds: [0], shots: [5], val_fraction: 0.2, test_fraction: 0.2}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1}\n")
FIT = ["fit", "--head", "logistic", "--shots", "5", "--seeds", "0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return extracted_project(tmp_path_factory.mktemp("oserr"), PARAMS, "--no-progress")


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    return copy_project(base, tmp_path, monkeypatch)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_too_little_free_space_is_refused_before_the_hdf5_write(project, monkeypatch, capsys):
    shutil.rmtree("cache/demo")
    real = shutil.disk_usage
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    capsys.readouterr()
    assert main(["extract", "--no-progress"]) == 1
    err = _one_line(capsys)
    assert "not enough free space" in err and "cache/demo/decoded" in err
    assert not [p for p in Path("cache/demo").iterdir() if p.suffix == ".h5"]


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES", "EROFS", "EDQUOT"])
def test_a_failed_write_of_the_table_is_one_line(project, monkeypatch, capsys, code):
    def failing(path, data):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(path))

    monkeypatch.setattr(table, "atomic_write", failing)
    capsys.readouterr()
    assert main(FIT) == 1
    err = _one_line(capsys)
    assert "results/" in err and {"ENOSPC": "no space", "EACCES": "permission denied",
                                          "EROFS": "read-only", "EDQUOT": "quota"}[code] in err


def test_wrong_type_and_too_long_paths_are_one_line(project, capsys):
    Path("afile").write_text("x")
    assert main([*FIT, "--results", "afile/results"]) == 1
    assert "not a folder" in _one_line(capsys)
    Path("r/runs.csv").mkdir(parents=True)
    assert main([*FIT, "--results", "r"]) == 1
    assert "folder where a file was expected" in _one_line(capsys)
    assert main([*FIT, "--results", "x" * 300]) == 1
    assert "file name too long" in _one_line(capsys)


def _read_only_mount(folder: Path) -> bool:
    """``folder`` replaced by a read-only tmpfs holding the same files (True) where this process may mount one
    (root with CAP_SYS_ADMIN); else False and nothing changed."""
    import subprocess

    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    kept = folder.with_name(folder.name + "-kept")
    shutil.copytree(folder, kept, symlinks=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True).returncode:
        shutil.rmtree(kept)
        return False
    shutil.copytree(kept, folder, symlinks=True, dirs_exist_ok=True)
    if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode:
        subprocess.run(["umount", str(folder)], check=True)
        shutil.rmtree(kept)
        return False
    return True


@pytest.mark.parametrize("medium", ["mount", "patched-open"])
def test_a_current_cache_in_a_folder_that_cannot_be_written_is_usable(project, monkeypatch, capsys, medium):
    """A real read-only mount where the test may make one (root ignores permissions, so chmod proves
    nothing); else, and in the second case everywhere, writes under cache/ refused as a read-only mount would."""
    import subprocess

    cache = Path("cache").resolve()
    mounted = medium == "mount" and _read_only_mount(cache)
    if not mounted:
        real_open = open

        def read_only(file, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and os.path.abspath(str(file)).startswith(str(cache)):
                raise PermissionError(errno.EROFS, "Read-only file system", str(file))
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr(locks, "open", read_only, raising=False)
    try:
        if mounted:
            with pytest.raises(OSError):
                (cache / "probe").write_text("x")  # it is really read-only
        capsys.readouterr()
        assert main(["decode", "--no-progress"]) == 0
        assert main(["extract", "--no-progress"]) == 0
        assert "reused" in capsys.readouterr().out
        assert main(FIT) == 0
    finally:
        if mounted:
            subprocess.run(["umount", str(cache)], check=True)


def _dead_pid() -> int:
    pid = 4_000_000
    while locks.pid_alive(pid):
        pid += 1
    return pid


def test_leftovers_of_dead_writers_are_removed_and_reported(project, capsys):
    dead = _dead_pid()
    left = [Path(f"results/.runs.csv.tmp-{dead}-abc"), Path(f"results/predictions/.x.csv.gz.tmp-{dead}-d"),
            Path(f"models/.tiny_cnn-logistic.skops.tmp-{dead}-e")]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    alive = Path(f"results/.runs.csv.tmp-{os.getpid()}-live")
    alive.write_text("mine")
    capsys.readouterr()
    assert main(FIT) == 0
    err = capsys.readouterr().err
    assert not any(p.exists() for p in left) and alive.exists()
    assert f".runs.csv.tmp-{dead}-abc" in err and "leftover" in err


def test_long_names_are_shortened_with_a_hash_and_written(tmp_path):
    long_a, long_b = "a" * 200 + "-one", "a" * 200 + "-two"
    assert len(short_part(long_a)) <= 60 and short_part(long_a) != short_part(long_b)
    assert short_part("finding1") == "finding1"
    path = tmp_path / ("x" * 240 + ".png")  # a legal name whose temporary name used to be too long
    fileio.atomic_write(path, b"png")
    assert path.read_bytes() == b"png"


def test_a_results_folder_that_cannot_be_written_fails_before_any_fit(project, monkeypatch, capsys):
    from featpipe.fewshot import fit as fitmod

    calls, real_fit, real_open = [], fitmod.fit_run, open
    monkeypatch.setattr(fitmod, "fit_run", lambda *a, **k: calls.append(1) or real_fit(*a, **k))

    def read_only(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and "results" in str(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(table, "open", read_only, raising=False)
    capsys.readouterr()
    assert main(["sweep"]) == 1
    err = _one_line(capsys)
    assert calls == [] and "results/.runs.csv.journal" in err and "permission denied" in err
