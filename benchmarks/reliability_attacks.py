"""Reliability trials of issue 21's attack families, N randomised trials each, on a tiny synthetic project.

Families (each trial starts from a fresh copy of one prepared, extracted and fitted project):

- feature-cache bit flips (1-256 bytes at a random place in ``features``): fit refuses in one line, extract
  rebuilds the damaged rows, features byte-identical to the original, fit runs again;
- decoded-cache bit flips (1-2048 bytes in a random image): the reader refuses, decode rebuilds, pixels identical;
- an image's bytes changed after prepare (a random image): decode refuses in one line naming it and prepare;
- SIGKILL of ``collect`` at a random moment: ``results/runs.csv`` is always there and readable, old or new;
- SIGKILL of ``sweep`` during a random fit: the finished runs are recovered by the next write to the table;
- two saves of one fine-tuned model name at once (random start offsets): sidecar and tensors always match;
- hostile ``data.name`` values and the issue's bad params: one line, exit 2, nothing written;
- a full disk (too little free space; a table write failing with ENOSPC): one line, exit 1;
- a current cache in a folder that cannot be written (lock files refused): decode, extract and fit succeed;
- a disk that fills during the feature cache's HDF5 write (ENOSPC after a random number of bytes, in a child
  process, the free-space check passed): one line, exit 1 (never a crash in libhdf5), no temporary left, the
  journal kept; the next extract computes nothing and writes byte-identical features;
- more classes than ``fit.max_classes`` (set to 1): one line before any fit, no row;
- a feature cache written before checksums (its checksums removed): fit reads it and says so in one line; extract
  rebuilds it with checksums, features identical.

Writes ``benchmarks/results/reliability_attacks.json`` and the "Attacks (issue 21)" section of
``benchmarks/results/reliability.md``.

    python benchmarks/reliability_attacks.py [--trials 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "results"

from featpipe.cli.main import main as cli_main  # noqa: E402
from featpipe.core import checksums  # noqa: E402
from featpipe.core import fileio, locks  # noqa: E402
from featpipe.decoded.cache import DecodedImages  # noqa: E402
from featpipe.evaluation import table as table_mod  # noqa: E402
from featpipe.evaluation.table import read_runs  # noqa: E402
from featpipe.finetune import checkpoint  # noqa: E402

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 24, size: 32}}\n"
          "split: {seeds: [0, 1, 2], shots: [2, 5], val_fraction: 0.2, test_fraction: 0.2}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1, heads: [logistic, prototype], save_models: false}\n")
FIT = ["fit", "--head", "logistic", "--shots", "5", "--seeds", "0"]
RUNNER = r"""
import os, sys, signal
at = os.environ.get("FP_DIE_AT", "")
if at.startswith("run-"):
    from featpipe.fewshot import fit as f
    _fit, n, count = f.fit_run, int(at[4:]), [0]
    def dying(*a, **k):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return _fit(*a, **k)
    f.fit_run = dying
limit = int(os.environ.get("FP_ENOSPC_AFTER", "-1"))
if limit >= 0:  # the disk fills after `limit` bytes of HDF5 writes (after the free-space check)
    import errno
    from featpipe.core import h5out
    from featpipe.features import cache
    cache.ensure_space = lambda *a, **k: None
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


OUTCOMES = {"collect": {"old": 0, "new": 0, "other": 0}}  # which table a killed collect left


def cli(*args: str) -> tuple[int, str, str]:
    """featpipe in this process: (exit code, stdout, stderr); an escaping exception is exit 99 + traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(list(args))
        except BaseException:  # noqa: BLE001 - a traceback is what the trial looks for
            rc, _ = 99, err.write(traceback.format_exc())
    return rc, out.getvalue(), err.getvalue()


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def spawn(*args: str, die_at: str = "", enospc_after: int = -1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FP_DIE_AT": die_at, "FEATPIPE_OFFLINE": "1",
           "FP_ENOSPC_AFTER": str(enospc_after)}
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def flip(path: Path, dataset: str, rng: np.random.Generator, max_bytes: int) -> None:
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        n_chunks = ds.id.get_num_chunks()
        info = ds.id.get_chunk_info(int(rng.integers(n_chunks)))
    n = int(rng.integers(1, min(max_bytes, info.size) + 1))
    at = info.byte_offset + int(rng.integers(0, info.size - n + 1))
    with open(path, "r+b") as fh:
        fh.seek(at)
        data = np.frombuffer(fh.read(n), np.uint8) ^ rng.integers(1, 256, n, dtype=np.uint8)
        fh.seek(at)
        fh.write(data.tobytes())


def array(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][()]


# --------------------------------------------------------------------------- the attacks: True = as required


def feature_flip(rng) -> bool:
    cache = next(Path("cache/demo").glob("tiny_cnn*.h5"))
    good = array(cache, "features")
    flip(cache, "features", rng, 256)
    rc, _, err = cli(*FIT)
    refused = rc == 1 and one_line(err) and "damaged" in err
    rc2, _, _ = cli("extract", "--no-progress")
    return refused and rc2 == 0 and np.array_equal(array(cache, "features"), good) and cli(*FIT)[0] == 0


def decoded_flip(rng) -> bool:
    cache = next(Path("cache/demo").glob("decoded-*.h5"))
    good = array(cache, "images")
    flip(cache, "images", rng, 2048)
    try:
        with DecodedImages(cache) as d:
            d.read(np.arange(len(d)))
        refused = False
    except Exception as exc:  # noqa: BLE001
        refused = "damaged" in str(exc)
    rc, _, _ = cli("decode", "--no-progress")
    return refused and rc == 0 and np.array_equal(array(cache, "images"), good)


def changed_image(rng) -> bool:
    files = sorted(Path("data/synthetic").rglob("*.png"))
    victim = files[int(rng.integers(len(files)))]
    size = Image.open(victim).size
    Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(victim)
    shutil.rmtree("cache/demo")
    rc, _, err = cli("decode", "--no-progress")
    return rc == 1 and one_line(err) and victim.name in err and "re-run 'featpipe prepare'" in err


def collect_kill(rng) -> bool:
    assert cli("fit", "--head", "prototype", "--shots", "2", "--seeds", "0", "1", "--results", "results/fit")[0] == 0
    old = Path("results/runs.csv").read_bytes()
    proc = spawn("collect", "results/fit")
    time.sleep(float(rng.uniform(1.0, 6.0)))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    try:
        now = Path("results/runs.csv").read_bytes()
        read_runs("results/runs.csv")
    except Exception:  # noqa: BLE001
        return False
    new = len(read_runs("results/runs.csv")) == len(read_runs(Path("results/fit/runs.csv"))) + 1
    OUTCOMES["collect"]["old" if now == old else "new" if new else "other"] += 1
    return now == old or new


def sweep_kill(rng) -> bool:
    n = int(rng.integers(2, 12))  # the grid has 12 runs: die during run n
    proc = spawn("sweep", "--results", "swept", die_at=f"run-{n}")
    proc.communicate()
    rc, _, err = cli("fit", "--head", "svc", "--shots", "5", "--seeds", "2", "--results", "swept")
    rows = read_runs("swept/runs.csv")
    return proc.returncode == -9 and rc == 0 and f"recovered {n - 1} row(s)" in err and len(rows) == n


def concurrent_save(rng) -> bool:
    import torch

    models, metas = {}, {}
    for who, seed in (("a", 1), ("b", 2)):
        models[who], spec = checkpoint.build_model("tiny_cnn", "head", 2, weights="random", seed=seed)
        metas[who] = {"backbone": "tiny_cnn", "layer": None, "strategy": "head", "classes": ["a", "b"],
                      "preprocess": spec.preprocess.to_dict(), "threshold": 0.5, "precision": "fp32",
                      "family": spec.family, "weights_id": "random", "who": who}
    stem = Path("models/finetune/demo/demo-tiny_cnn-head-k2-s0-0000aaaa")
    delays = rng.uniform(0, 0.05, 2)
    threads = [threading.Thread(target=lambda w=w, d=d: (time.sleep(d), checkpoint.save_finetuned(
        models[w], metas[w], stem))) for w, d in zip("ab", delays)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model, meta = checkpoint.load_finetuned(stem)
    want = models[meta["who"]].state_dict()
    return all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


HOSTILE = ["../../X", "/tmp/featpipe-attack", "a/b", "..", "x" * 200, "./demo", "dem o/../../y", "~root"]
BAD = ["split.seeds=[-5]", "heads.svc.C=-1", "heads.svc.C=0", "heads.logistic.max_iter=-1",
       "heads.prototype.temperature=0", "fit.n_jobs=0", "extract.batch_size=0", "finetune.batch_size=0",
       "finetune.lr=nan", "report.metric=nope", "finetune.lr=-1", "finetune.epochs=0", "compare.bootstrap=-5"]


def hostile_params(rng) -> bool:
    before = set(Path("..").iterdir())
    ok = True
    for item in [f"data.name={n}" for n in HOSTILE] + BAD:
        rc, _, err = cli("prepare", "-S", item)
        ok &= rc == 2 and one_line(err)
    return ok and set(Path("..").iterdir()) == before and not Path("/tmp/featpipe-attack").exists()


def disk_full(rng) -> bool:
    real_usage, real_write = fileio.shutil.disk_usage, table_mod.atomic_write
    shutil.rmtree("cache/demo")
    fileio.shutil.disk_usage = lambda p: real_usage(p)._replace(free=int(rng.integers(1, 8)) << 20)
    try:
        rc1, _, err1 = cli("extract", "--no-progress")
    finally:
        fileio.shutil.disk_usage = real_usage

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    assert cli("extract", "--no-progress")[0] == 0
    table_mod.atomic_write = full
    try:
        rc2, _, err2 = cli(*FIT)
    finally:
        table_mod.atomic_write = real_write
    return rc1 == 1 and one_line(err1) and "free space" in err1 and rc2 == 1 and one_line(err2) and "no space" in err2


def read_only_cache(rng) -> bool:
    cache = str(Path("cache").resolve())
    real_open = open

    def ro(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and os.path.abspath(str(file)).startswith(cache):
            raise PermissionError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *a, **k)

    locks.open = ro
    try:
        return all(cli(*args)[0] == 0 for args in (["decode", "--no-progress"], ["extract", "--no-progress"], FIT))
    finally:
        del locks.open


def hdf5_disk_full(rng) -> bool:
    cache = Path("cache/demo/tiny_cnn.h5")
    before, size = array(cache, "features"), cache.stat().st_size
    cache.unlink()
    child = spawn("extract", "--no-progress", enospc_after=int(rng.integers(0, size)))
    _, err = child.communicate(timeout=600)
    journal = cache.with_name(cache.name + ".partial") / "features.f32"
    ok = (child.returncode == 1 and one_line(err) and "no space" in err.lower() and not cache.exists()
          and not [p for p in cache.parent.iterdir() if ".tmp-" in p.name] and journal.stat().st_size == before.nbytes)
    rc, out, _ = cli("extract", "--no-progress")
    return ok and rc == 0 and " 0 extracted" in out and np.array_equal(array(cache, "features"), before)


def many_classes(rng) -> bool:
    rows = len(read_runs(Path("results/runs.csv")))
    rc, _, err = cli(*FIT, "-S", f"fit.max_classes={int(rng.integers(1, 2))}")
    return rc == 1 and one_line(err) and "fit.max_classes" in err and len(read_runs(Path("results/runs.csv"))) == rows


def unchecked_cache(rng) -> bool:
    cache = Path("cache/demo/tiny_cnn.h5")
    before = array(cache, "features")
    with h5py.File(cache, "a") as f:
        del f["features" + checksums.SUFFIX]
    checksums._SAID.clear()
    rc1, _, err1 = cli(*FIT)
    rc2, _, err2 = cli("extract", "--no-progress")
    with h5py.File(cache) as f:
        rebuilt = checksums.bad_blocks(f, "features") == []
    return (rc1 == 0 and err1.count("no checksums") == 1 and rc2 == 0 and "no checksums" in err2 and rebuilt
            and np.array_equal(array(cache, "features"), before))


ATTACKS = [
    ("feature-cache bit flips (1-256 bytes)", feature_flip, "fit refused in one line; extract rebuilt byte-identical"),
    ("decoded-cache bit flips (1-2048 bytes)", decoded_flip, "read refused; decode rebuilt byte-identical"),
    ("image bytes changed after prepare", changed_image, "decode refused in one line naming the file and prepare"),
    ("SIGKILL of collect at 1-6 s", collect_kill, "runs.csv present and readable, old or new"),
    ("SIGKILL of sweep during fit 2-11 of 12", sweep_kill, "finished runs recovered by the next write"),
    ("two saves of one fine-tuned name", concurrent_save, "sidecar describes the tensors on disk"),
    ("hostile data.name (8) and bad params (13)", hostile_params, "each one line, exit 2, nothing written"),
    ("disk full (free-space check; ENOSPC on a table write)", disk_full, "one line, exit 1, no traceback"),
    ("current cache in an unwritable folder", read_only_cache, "decode, extract and fit succeed"),
    ("disk fills during the feature cache's HDF5 write", hdf5_disk_full,
     "one line, exit 1, no crash, no temporary, journal kept; next extract computes nothing, features identical"),
    ("more classes than fit.max_classes", many_classes, "one line, exit 1, before any fit, no row"),
    ("feature cache without checksums (older featpipe)", unchecked_cache,
     "fit says so in one line; extract rebuilds it with checksums, features identical"),
]


def build_base(root: Path) -> None:
    root.mkdir()
    (root / "params.yaml").write_text(PARAMS)
    os.chdir(root)
    for args in (["prepare", "--no-progress"], ["extract", "--no-progress"], FIT):
        rc, _, err = cli(*args)
        if rc != 0:
            raise SystemExit(f"setting up the project failed: featpipe {' '.join(args)}: {err}")


def run_trials(trials: int, seed: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="featpipe-attacks-") as tmp:
        base = Path(tmp) / "base"
        build_base(base)
        for a, (name, fn, rule) in enumerate(ATTACKS):
            ok, seconds = 0, time.perf_counter()
            for t in range(trials):
                work = Path(tmp) / f"a{a}-t{t}" / "p"
                shutil.copytree(base, work, symlinks=True)
                os.chdir(work)
                try:
                    ok += bool(fn(np.random.default_rng([seed, a, t])))
                except Exception:  # noqa: BLE001 - counted as not as required
                    traceback.print_exc()
                os.chdir(tmp)
                shutil.rmtree(work.parent, ignore_errors=True)
            rows.append({"attack": name, "trials": trials, "as_required": ok, "required": rule,
                         "seconds": round(time.perf_counter() - seconds, 1)})
            print(f"{name}: {ok}/{trials}", flush=True)
    return rows


def write(rows: list[dict], args, seconds: float) -> None:
    cmd = f"python benchmarks/reliability_attacks.py --trials {args.trials} --seed {args.seed}"
    body = {"command": cmd, "machine": platform.platform(), "cpus": os.cpu_count(), "seconds": round(seconds, 1),
            "load_average_5min": round(os.getloadavg()[1], 1), "attacks": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reliability_attacks.json").write_text(json.dumps(body, indent=1) + "\n")
    section = ["## Attacks (issue 21)", "",
               f"`{cmd}` on {body['machine']}, {body['cpus']} CPUs shared with other jobs (5-minute load average "
               f"{body['load_average_5min']} at the end), {seconds:.0f} s. Each trial starts from a fresh copy of one "
               "prepared, extracted and fitted synthetic project; randomness (offsets, sizes, kill times, images) "
               "is seeded per (attack, trial).", "",
               "| attack | trials | as required | required |", "|---|---|---|---|"]
    section += [f"| {r['attack']} | {r['trials']} | {r['as_required']} | {r['required']} |" for r in rows]
    c = OUTCOMES["collect"]
    section += ["", f"Killed collects left the old table {c['old']} times and the new one {c['new']} times "
                "(killed before or after its rename)."]
    body["collect_outcomes"] = c
    (OUT / "reliability_attacks.json").write_text(json.dumps(body, indent=1) + "\n")
    md = OUT / "reliability.md"
    text = md.read_text() if md.exists() else ""
    head, _, rest = text.partition("\n## Attacks (issue 21)")
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""  # later sections (other benchmarks) kept
    md.write_text(head.rstrip("\n") + "\n\n" + "\n".join(section) + "\n" + tail)
    print("\n".join(section))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["FEATPIPE_OFFLINE"] = "1"
    cwd = os.getcwd()
    t0 = time.perf_counter()
    try:
        rows = run_trials(args.trials, args.seed)
    finally:
        os.chdir(cwd)
    write(rows, args, time.perf_counter() - t0)
    return 0 if all(r["trials"] == r["as_required"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
