"""Reliability under concurrency, kills and edits, and with untrusted input (issue 12).

Real processes, real signals: two builders of one cache run at once; a main process is SIGKILLed while
its pool workers decode; extraction is SIGKILLed mid-batch, in its final write and after its rename;
the next run must finish to the same bytes as an uninterrupted one and say what it cleaned. Only the
timing is injected, by events rather than by the clock: a child holds at a chosen point (its first decoded
image, its n-th batch) after writing a file that says it got there, and goes on when the test writes the
file it waits for; a child that waits for another's lock writes a file saying so. So the races and kills
happen at the same point however slow or loaded the machine is; everything else is the shipped code path
(``featpipe.cli.main.main``).

``FEATPIPE_RELIABILITY_TRIALS=N`` repeats every race and kill scenario N times (default 1; the
figures in the README come from ``benchmarks/reliability_trials.py``, which runs them with more).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featpipe.features import cache as featcache
from featpipe.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TRIALS = int(os.environ.get("FEATPIPE_RELIABILITY_TRIALS", "1"))
N_IMAGES = 48  # per class: 96 images, 12 batches of 8

# A featpipe CLI process with events injected (and, for two scenarios, a SIGKILL at a chosen point):
# FP_HOLD_DECODE / FP_HOLD_FORWARD=<file>: at the n-th decoded image / forward batch (FP_HOLD_AT, default 1)
# write <file>.reached and wait until <file> exists (the test releases it, or kills the process there);
# FP_WAITING=<file>: write <file> when this process starts waiting for another one's build lock.
RUNNER = r"""
import os, sys, time, signal
from pathlib import Path
def holding(fn, hold):
    at, calls = int(os.environ.get("FP_HOLD_AT", "1")), [0]
    def held(*a, **k):
        calls[0] += 1
        if calls[0] == at:
            Path(hold + ".reached").write_text(str(os.getpid()))
            t0 = time.monotonic()
            while not os.path.exists(hold) and time.monotonic() - t0 < 900:
                time.sleep(0.02)
        return fn(*a, **k)
    return held
if os.environ.get("FP_HOLD_DECODE"):
    from featpipe.decoded import build as d  # where the decoding pass calls the decoder
    d.decode_sizes = holding(d.decode_sizes, os.environ["FP_HOLD_DECODE"])
if os.environ.get("FP_HOLD_FORWARD"):
    from featpipe.backbones.model import FeatureModel
    FeatureModel.forward = holding(FeatureModel.forward, os.environ["FP_HOLD_FORWARD"])
if os.environ.get("FP_WAITING"):
    from featpipe.core import locks
    _say = locks.say
    def say(msg):
        if "waiting for it to finish" in msg:
            Path(os.environ["FP_WAITING"]).write_text(msg)
        return _say(msg)
    locks.say = say
die = os.environ.get("FP_DIE_AT", "")
if die == "final-write":  # SIGKILL after the cache's temporary file is written, before its rename
    _replace = os.replace
    def dying_replace(src, dst, *a, **k):
        if ".tmp-" in str(src) and str(dst).endswith(".h5"):
            os.kill(os.getpid(), signal.SIGKILL)
        return _replace(src, dst, *a, **k)
    os.replace = dying_replace
elif die == "after-rename":  # SIGKILL after the rename, before the journal is removed
    from featpipe.features import cache as featcache
    featcache.PartialRows.remove = lambda self: os.kill(os.getpid(), signal.SIGKILL)
from featpipe.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

PARAMS = f"""
data: {{name: demo, source: synthetic, path: data/synthetic, synthetic: {{images_per_class: {N_IMAGES}, size: 32}}}}
split: {{seeds: [0], shots: [5], val_fraction: 0.2, test_fraction: 0.2}}
decode: {{workers: 2}}
extract: {{backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 8}}
fit: {{n_jobs: 1}}
"""


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A prepared synthetic project (manifest, splits), a reference decoded cache and feature cache, and a
    fitted head; tests use their own cache folders."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(PARAMS)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["prepare"]) == 0
        assert main(["extract", "--no-progress", "--cache-dir", "ref"]) == 0
        assert main(["fit", "--head", "logistic", "--shots", "5", "--seeds", "0", "--cache-dir", "ref"]) == 0
    finally:
        os.chdir(cwd)
    return root


def _spawn(project: Path, *args: str, **env: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO), **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=project, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    """Until ``cond()`` (an event a child announces by a file); a generous timeout only against a hang."""
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before the condition (rc {proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie that only waits to be reaped by init does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _decoded(path: Path) -> tuple[list, np.ndarray]:
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"])
        return [s.decode() for s in f["ids"][()]], f["images"][()]


def _no_traceback(*errs: str) -> None:
    for err in errs:
        assert "Traceback" not in err, err[-3000:]


def _both_succeed(a: subprocess.Popen, b: subprocess.Popen) -> tuple[str, str, str, str]:
    """Both processes exit 0 without a traceback; returns (out a, err a, out b, err b)."""
    (ra, oa, ea), (rb, ob, eb) = _finish(a), _finish(b)
    assert (ra, rb) == (0, 0), ea + eb
    _no_traceback(ea, eb)
    return oa, ea, ob, eb


def _as_reference(project: Path, cache: str, *, features: bool = True) -> None:
    """The cache folder holds exactly what the uninterrupted, unraced reference build holds."""
    ids, images = _decoded(project / cache / "demo" / "decoded-32.h5")
    ref_ids, ref_images = _decoded(project / "ref" / "demo" / "decoded-32.h5")
    assert ids == ref_ids and np.array_equal(images, ref_images)
    if features:
        ref = featcache.read_features(project / "ref" / "demo" / "tiny_cnn.h5")
        got = featcache.read_features(project / cache / "demo" / "tiny_cnn.h5")
        assert np.array_equal(got.features, ref.features) and np.array_equal(got.ids, ref.ids)


def _events(project: Path, name: str) -> tuple[str, str]:
    """(the file a held child waits for, the file a waiting child writes) of one scenario."""
    folder = project / "events"
    folder.mkdir(exist_ok=True)
    return str(folder / f"{name}-go"), str(folder / f"{name}-waiting")


DECODE = ("decode", "--no-progress", "--size", "32")
EXTRACT = ("extract", "--no-progress")


# --------------------------------------------------------------------------- 1. concurrent builders


@pytest.mark.parametrize("trial", range(TRIALS))
def test_two_decodes_of_one_cache_coordinate(project, trial):
    cache = f"race-dd-{trial}"
    hold, waiting = _events(project, cache)
    a = _spawn(project, *DECODE, "--cache-dir", cache, FP_HOLD_DECODE=hold)
    _wait_for(Path(hold + ".reached").exists, a)  # a holds the lock, decoding its first image
    b = _spawn(project, *DECODE, "--cache-dir", cache, FP_WAITING=waiting)
    _wait_for(Path(waiting).exists, b)  # b found a's build and waits for it
    Path(hold).touch()
    _, ea, _, eb = _both_succeed(a, b)
    assert "waiting for it to finish" in eb  # b waited, and said so
    _as_reference(project, cache, features=False)
    assert not list((project / cache / "demo").glob("*.partial"))


@pytest.mark.parametrize("trial", range(TRIALS))
def test_decode_while_extract_builds_the_decoded_cache(project, trial):
    cache = f"race-ed-{trial}"
    hold, waiting = _events(project, cache)
    a = _spawn(project, *EXTRACT, "--cache-dir", cache, FP_HOLD_DECODE=hold)
    _wait_for(Path(hold + ".reached").exists, a)  # the extraction is building the decoded cache now
    b = _spawn(project, *DECODE, "--cache-dir", cache, FP_WAITING=waiting)
    _wait_for(Path(waiting).exists, b)
    Path(hold).touch()
    _, _, _, eb = _both_succeed(a, b)
    assert "waiting for it to finish" in eb
    _as_reference(project, cache)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_two_extracts_of_one_feature_cache_coordinate(project, trial):
    cache = f"race-ee-{trial}"
    hold, waiting = _events(project, cache)
    a = _spawn(project, *EXTRACT, "--cache-dir", cache, FP_HOLD_FORWARD=hold)
    _wait_for(Path(hold + ".reached").exists, a)  # a holds the feature cache's lock, at its first batch
    b = _spawn(project, *EXTRACT, "--cache-dir", cache, FP_WAITING=waiting)
    _wait_for(Path(waiting).exists, b)
    Path(hold).touch()
    oa, ea, ob, eb = _both_succeed(a, b)
    n = 2 * N_IMAGES
    summaries = sorted([oa, ob], key=lambda s: "0 extracted" in s)
    assert f"{n} extracted, 0 reused" in summaries[0]  # one built it ...
    assert f"0 extracted, {n} reused" in summaries[1]  # ... the other waited and reused it whole
    assert "waiting for it to finish" in ea + eb
    _as_reference(project, cache)


# --------------------------------------------------------------------------- 2. kills: no orphan, resume


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_of_decode_leaves_no_orphan_worker_and_the_next_run_cleans_up(project, trial, capsys, monkeypatch):
    cache = f"kill-d-{trial}"
    partial = project / cache / "demo" / "decoded-32.h5.partial"
    hold, _ = _events(project, cache)
    a = _spawn(project, *DECODE, "--cache-dir", cache, FP_HOLD_DECODE=hold, FP_HOLD_AT=2 + trial)
    _wait_for(partial.exists, a)
    _wait_for(lambda: len(_children(a.pid)) == 2, a)  # the decode pool, at work
    _wait_for(Path(hold + ".reached").exists, a)  # a worker holds mid-decode (never released: killed there)
    workers = _children(a.pid)
    os.kill(a.pid, signal.SIGKILL)
    assert _finish(a)[0] == -signal.SIGKILL
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=120)  # pool workers die with their parent
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main([*DECODE, "--cache-dir", cache]) == 0
    assert "decoded-32.h5.partial (left by an interrupted decode)" in capsys.readouterr().err
    assert not partial.exists()
    _as_reference(project, cache, features=False)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_pool_and_loky_workers_die_with_a_sigkilled_parent(tmp_path, trial):
    """The mechanism every pool uses (decode/prepare: ProcessPoolExecutor initializer; sweep: joblib workers)."""
    script = r"""
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from joblib import Parallel, delayed
from featpipe.core.workers import die_with_parent, pool_kwargs
out = sys.argv[1]
def park(tag, parent=None):
    if parent is not None:
        die_with_parent(parent, pdeathsig=False)  # as fit._worker does in joblib's workers
    open(os.path.join(out, f"{tag}-{os.getpid()}"), "w").close()
    time.sleep(120)
pool = ProcessPoolExecutor(max_workers=2, **pool_kwargs())
for i in range(2):
    pool.submit(park, "pool")
Parallel(n_jobs=2)(delayed(park)("loky", os.getpid()) for _ in range(2))
"""
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(lambda: len(list(tmp_path.iterdir())) >= 4, proc, timeout=60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    pids = [int(p.name.split("-")[1]) for p in tmp_path.iterdir()]
    _wait_for(lambda: not any(_alive(p) for p in pids), timeout=60)  # they park 120 s: only their death ends it


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_of_extract_mid_batch_resumes_to_identical_features(project, trial, capsys, monkeypatch):
    cache = f"kill-e-{trial}"
    data = project / cache / "demo" / "tiny_cnn.h5.partial" / "features.f32"
    hold, _ = _events(project, cache)
    at = 3 + int(np.random.default_rng(trial).integers(0, 6))  # killed in the forward pass of batch `at`
    a = _spawn(project, *EXTRACT, "--cache-dir", cache, FP_HOLD_FORWARD=hold, FP_HOLD_AT=at)
    _wait_for(Path(hold + ".reached").exists, a)
    _wait_for(lambda: data.exists() and data.stat().st_size > 0, a)
    os.kill(a.pid, signal.SIGKILL)
    assert _finish(a)[0] == -signal.SIGKILL
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main([*EXTRACT, "--cache-dir", cache]) == 0
    line = capsys.readouterr().out
    resumed = int(line.split(" resumed")[0].rsplit(" ", 1)[1])
    assert resumed >= 8 and resumed % 8 == 0, line  # whole batches taken from the journal
    _as_reference(project, cache)
    assert not data.parent.exists()


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("where, leftover, said", [
    ("final-write", ".tiny_cnn.h5.tmp-", "leftover temporary file"),
    ("after-rename", "tiny_cnn.h5.partial", "journal of a run killed after its cache was written"),
])
def test_sigkill_around_the_final_write_leaves_leftovers_the_next_run_removes(project, where, leftover, said, trial,
                                                                              capsys, monkeypatch):
    cache = f"kill-w-{where}-{trial}"
    a = _spawn(project, *EXTRACT, "--cache-dir", cache, FP_DIE_AT=where)
    rc, _, err = _finish(a)
    assert rc == -signal.SIGKILL, err[-2000:]
    folder = project / cache / "demo"
    assert [p for p in os.listdir(folder) if p.startswith(leftover)]
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main([*EXTRACT, "--cache-dir", cache]) == 0
    assert said in capsys.readouterr().err  # cleaned, and reported
    assert not [p for p in os.listdir(folder) if p.startswith(leftover)]
    _as_reference(project, cache)


# --------------------------------------------------------------------------- 3. edits: no stale reuse


def test_decoder_and_dtype_edits_re_extract_and_say_why(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    cache = "edits"
    assert main([*EXTRACT, "--cache-dir", cache]) == 0
    path = project / cache / "demo" / "tiny_cnn.h5"
    ref = featcache.read_features(path).features
    capsys.readouterr()
    # float32 -> float16 -> float32: the file ends as a fresh float32 run, never float16-rounded values
    assert main([*EXTRACT, "--cache-dir", cache, "-S", "extract.feature_dtype=float16"]) == 0
    assert "(re-extracted: feature_dtype 'float32' != requested 'float16')" in capsys.readouterr().out
    assert main([*EXTRACT, "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "feature_dtype 'float16' != requested 'float32'" in out and "96 extracted" in out
    with h5py.File(path, "r") as f:
        assert f["features"].dtype == np.float32 and f.attrs["feature_dtype"] == "float32"
    assert np.array_equal(featcache.read_features(path).features, ref)
    # another Pillow (it changes resampled pixels) recorded in the cache: re-extracted, said why
    with h5py.File(path, "a") as f:
        dec = json.loads(f.attrs["decoder"])
        f.attrs["decoder"] = json.dumps({**dec, "pillow_version": "9.0.0"}, sort_keys=True)
    assert main([*EXTRACT, "--cache-dir", cache]) == 0
    assert "(re-extracted: decoder pillow_version '9.0.0' != requested" in capsys.readouterr().out
    assert np.array_equal(featcache.read_features(path).features, ref)
    # decode.draft changed (default off): the decoded cache is rebuilt with it and the features re-extracted
    assert main([*EXTRACT, "--cache-dir", cache, "-S", "decode.draft=true"]) == 0
    assert "(re-extracted: decoder draft False != requested True)" in capsys.readouterr().out
    assert featcache.read_attrs(path)["decoder"]["draft"] is True
    with h5py.File(project / cache / "demo" / "decoded-32.h5", "r") as f:
        assert bool(f.attrs["draft"])  # the decoded cache was rebuilt with the setting, not reused
    assert main([*EXTRACT, "--cache-dir", cache, "-S", "decode.draft=true"]) == 0
    assert "0 extracted, 96 reused" in capsys.readouterr().out  # and then it is current


def _head(project: Path) -> Path:
    return next((project / "models").rglob("tiny_cnn-logistic-k5-s0-*.skops"))


def _finetuned(project: Path, tmp_path: Path) -> Path:
    from featpipe.backbones.model import build
    from featpipe.finetune.checkpoint import build_model, save_finetuned

    model, spec = build_model("tiny_cnn", "head", 2, weights="random", seed=0)
    meta = {"backbone": "tiny_cnn", "layer": None, "strategy": "head", "classes": ["normal", "finding1"],
            "preprocess": spec.preprocess.to_dict(), "threshold": 0.5, "precision": "fp32", "family": spec.family,
            "weights_id": build(spec, weights="random").weights_id}
    return save_finetuned(model, meta, tmp_path / "ft" / "tiny_cnn-head-k5-s0")


def _edit(side: Path, change) -> None:
    meta = json.loads(side.read_text())
    change(meta)
    side.write_text(json.dumps(meta, indent=1))


def _images(project: Path, n: int = 4) -> list[str]:
    from featpipe.data.manifest import read_manifest

    return read_manifest(project / "data" / "manifest.csv")["path"].head(n).tolist()


HEAD_EDITS = {
    "threshold": lambda m: m.update(threshold=0.01),
    "class order": lambda m: m.update(classes=m["classes"][::-1]),
    "preprocessing mean": lambda m: m["preprocess"].update(mean=[0.0, 0.0, 0.0]),
    "backbone weights identity": lambda m: m.update(weights_id="sha256:" + "0" * 64),
    "no sidecar hash": lambda m: m.pop("sidecar_sha256"),
}
FT_EDITS = {
    "no tensors hash": lambda m: m.pop("tensors_sha256"),
    "mean/std": lambda m: m["preprocess"].update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]),
    "input size": lambda m: m["preprocess"].update(input_size=28),
    "layer": lambda m: m.update(layer="features.transition1"),
    "classes": lambda m: m.update(classes=["finding1", "normal"]),
}


def _refused(capsys, argv, *, names: str) -> str:
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("featpipe: error:") and names in err, err
    return err


def test_edited_saved_models_are_refused_in_one_line(project, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(project)
    imgs = _images(project)
    head = _head(project)
    ft = _finetuned(project, tmp_path)
    for model in (head, ft):  # untouched: they work
        assert main(["predict", "--model", str(model), "--out", str(tmp_path / "p.csv"), *imgs]) == 0
    for name, change in HEAD_EDITS.items():
        copy = tmp_path / "heads" / name.replace(" ", "_") / head.name
        copy.parent.mkdir(parents=True)
        shutil.copy(head, copy)
        shutil.copy(head.with_suffix(".json"), copy.with_suffix(".json"))
        _edit(copy.with_suffix(".json"), change)
        _refused(capsys, ["predict", "--model", str(copy), *imgs], names=copy.with_suffix(".json").name)
    for name, change in FT_EDITS.items():
        copy = tmp_path / "fts" / name.replace(" ", "_") / ft.name
        copy.parent.mkdir(parents=True)
        shutil.copy(ft, copy)
        shutil.copy(ft.with_suffix(".json"), copy.with_suffix(".json"))
        _edit(copy.with_suffix(".json"), change)
        _refused(capsys, ["predict", "--model", str(copy), *imgs], names=copy.stem)
    # a file that is not what it claims (a re-sealed sidecar that matches it): one line, no traceback
    from featpipe.core.fileio import file_sha256, seal

    fake = tmp_path / "fake" / ft.name
    fake.parent.mkdir()
    fake.write_bytes(b"\x80\x04K\x01." * 50)  # a pickle named .safetensors
    meta = json.loads(ft.with_suffix(".json").read_text())
    meta["tensors_sha256"] = file_sha256(fake)
    fake.with_suffix(".json").write_text(seal(meta))
    assert "not a readable safetensors file" in _refused(capsys, ["predict", "--model", str(fake), *imgs],
                                                         names=fake.name)
    bad_json = tmp_path / "fake" / "x.skops"
    bad_json.write_bytes(b"PK")
    bad_json.with_suffix(".json").write_text("[1, 2]")
    _refused(capsys, ["predict", "--model", str(bad_json), *imgs], names="x.json")


# --------------------------------------------------------------------------- 4. untrusted files


def _dicom(path: Path, photometric: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    arr = (np.random.default_rng(3).integers(0, 4095, (40, 40))).astype(np.uint16)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 40, 40, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def _corpus(root: Path) -> tuple[set, dict]:
    """A class-per-folder tree of good odd files and bad files; returns (good ids, bad id -> reason part)."""
    rng = np.random.default_rng(0)
    good, bad = set(), {}

    def img(rel, arr, mode=None, **save):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode).save(p, **save) if mode else Image.fromarray(arr).save(p, **save)
        good.add(rel)
        return p

    for c in ("normal", "finding"):
        for i in range(8):
            img(f"{c}/plain{i}.png", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    img("normal/sixteen.png", rng.integers(0, 65535, (40, 40)).astype(np.uint16))
    img("normal/rgba.png", rng.integers(0, 255, (40, 40, 4), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("CMYK").save(root / "finding/cmyk.jpg")
    good.add("finding/cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    img("finding/rotated.jpg", rng.integers(0, 255, (30, 50), dtype=np.uint8), exif=exif)
    img("finding/ünïcødé ñame.png", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    _dicom(root / "normal" / "scan0001", "MONOCHROME1")  # DICOM with no extension: known by content
    _dicom(root / "finding" / "scan0002.dcm", "MONOCHROME2")
    good |= {"normal/scan0001", "finding/scan0002.dcm"}

    def bad_file(rel, data, reason):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        bad[rel] = reason

    bad_file("normal/zero.png", b"", "zero bytes")
    full = (root / "normal" / "plain0.png").read_bytes()
    bad_file("normal/truncated.png", full[: len(full) // 2], "truncated")
    bad_file("normal/notes.png", b"just text, not pixels", "not an image")
    bad_file("finding/readme.txt", b"hello", "not an image (extension .txt)")
    bad_file("finding/.hidden.png", full, "hidden file")
    (root / "finding" / ".cache").mkdir()
    (root / "finding" / ".cache" / "inside.png").write_bytes(full)
    bad["finding/.cache"] = "hidden folder"  # the folder is the reject line, not scanned
    Image.new("1", (4000, 4000)).save(root / "finding" / "bomb.png")  # 16 Mpx in a few KB
    bad["finding/bomb.png"] = "too large"
    os.mkfifo(root / "normal" / "pipe.png")
    bad["normal/pipe.png"] = "not a regular file (fifo)"
    os.symlink("loop_b.png", root / "normal" / "loop_a.png")
    os.symlink("loop_a.png", root / "normal" / "loop_b.png")
    bad["normal/loop_a.png"] = bad["normal/loop_b.png"] = "unreadable"
    os.symlink("gone.png", root / "normal" / "dangling.png")
    bad["normal/dangling.png"] = "missing"
    os.symlink(root / "finding", root / "normal" / "linked_dir")
    bad["normal/linked_dir"] = "symbolic link to a folder"
    (root / "normal" / "locked").mkdir()
    bad["normal/locked"] = "unreadable folder"
    return good, bad


def _lock_folder(monkeypatch, folder: Path) -> None:
    """``folder`` cannot be listed (as after chmod 000 for a non-root user; the suite may run as root)."""
    real = os.scandir

    def scandir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_bad_files_are_named_never_fatal_in_prepare_predict_and_gradcam(project, tmp_path, capsys, monkeypatch):
    data = tmp_path / "corpus"
    good, bad = _corpus(data)
    _lock_folder(monkeypatch, data / "normal" / "locked")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        f"data: {{name: corpus, source: folder, path: {data}, max_image_pixels: 10000000, "
        "class_names: [normal, finding]}\n"
        "split: {seeds: [0], shots: [1], val_fraction: 0.2, test_fraction: 0.2}\n")
    assert main(["prepare"]) == 0
    rejects = pd.read_csv("data/rejects.csv", dtype=str, keep_default_na=False).set_index("id")["reason"]
    for rel, reason in bad.items():
        assert rel in rejects.index, f"{rel} is neither in the manifest nor in rejects.csv"
        assert reason in rejects[rel], (rel, rejects[rel])
    manifest = pd.read_csv("data/manifest.csv", dtype=str)
    assert set(manifest["id"]) == good
    # predict and gradcam on the same folder: the good files get results, the bad ones are listed
    capsys.readouterr()
    assert main(["predict", "--model", str(_head(project)), "--out", "pred.csv", str(data)]) == 0
    out, err = capsys.readouterr()
    pred = pd.read_csv("pred.csv")
    assert {str(Path(p).relative_to(data)) for p in pred["path"]} == good
    rej = pd.read_csv("pred.rejects.csv", dtype=str).set_index("path")["reason"]
    assert {str(Path(p).relative_to(data)) for p in rej.index} == set(bad)
    assert f"{len(good)} images classified" in out and f"{len(bad)} file(s) rejected" in out
    _no_traceback(err)
    assert main(["gradcam", "--model", str(_head(project)), "--images", str(data), "--out", "gc"]) == 0
    index = json.loads(next(Path("gc").rglob("index.json")).read_text())
    assert len(index["images"]) == len(good)
    assert {str(Path(r["path"]).relative_to(data)) for r in index["info"]["rejects"]} == set(bad)


def test_csv_paths_outside_the_root_are_rejected_unless_allowed(tmp_path):
    from featpipe.params.config import CsvParams
    from featpipe.data.sources import scan_csv

    root = tmp_path / "root"
    for rel in ("in/a.png", "in/b.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(root / rel)
    Image.new("L", (8, 8)).save(tmp_path / "outside.png")
    csv = root / "labels.csv"
    csv.write_text(f"path,label\nin/a.png,x\nin/../in/b.png,y\n../outside.png,x\n{tmp_path / 'outside.png'},y\n")
    recs = {r.id: r.reject for r in scan_csv(csv, CsvParams())}
    assert recs["in/a.png"] is None and recs["in/../in/b.png"] is None
    outside = [k for k, v in recs.items() if v and "outside data.csv.root" in v]
    assert sorted(outside) == sorted(["../outside.png", str(tmp_path / "outside.png")])
    allowed = {r.id: r.reject for r in scan_csv(csv, CsvParams(allow_outside_root=True))}
    assert not any(allowed.values())


# --------------------------------------------------------------------------- 5. user situations: one line


def test_user_situations_are_one_line_errors(project, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(project)
    bad_device = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    err = _refused(capsys, [*EXTRACT, "--cache-dir", "dev", "--device", bad_device], names=f"--device {bad_device}")
    assert "CUDA" in err
    # default ImageNet weights missing offline: said before any image is decoded
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    _refused(capsys, [*EXTRACT, "--cache-dir", "w", "--backbone", "resnet18"], names="resnet18")
    assert not list((project / "w").rglob("decoded-*")) and not list((project / "w").rglob("*.partial"))
    # output piped into a reader that went away (`| head`): one line, exit 141, no traceback
    proc = subprocess.Popen([sys.executable, "-m", "featpipe", "backbones"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err.strip() == "featpipe: error: the output pipe was closed before all output " \
                                                 "was written", err
