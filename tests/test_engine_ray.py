"""The Ray engine (--engine ray) on a local 2-CPU cluster gives what the local engine gives.

One cluster for the module (started once, shut down at the end); small data so the module stays fast.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
from PIL import Image

from featpipe.features import cache as featcache
from featpipe.cli.main import main
from featpipe.engine.ray import RayExecutor
from featpipe.evaluation.table import read_curves, read_predictions
from featpipe.params.config import DecodeParams, ExtractParams
from featpipe.features.extract import extract

REPO = Path(__file__).resolve().parents[1]
RAY = RayExecutor()
ONE_WORKER = DecodeParams(workers=1)
pytestmark = pytest.mark.xdist_group("ray")  # under -n 2 the module runs on one worker: one cluster, as above


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _manifest(root: Path, n: int) -> Path:
    rows = []
    for s in range(n):
        p = root / "img" / f"{s:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(s).integers(0, 255, (36 + s % 5, 40), dtype=np.uint8)
        Image.fromarray(arr).save(p)
        rows.append({"id": f"img/{s:03d}.png", "path": str(p), "label": s % 2, "label_name": "ab"[s % 2],
                     "patient_id": f"p{s}", "source_split": "", "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                     "width": 40, "height": 36 + s % 5})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def _same_cache(a: Path, b: Path) -> None:
    """Same ids, order, labels, sha256 and attributes; values equal within bf16 tolerance."""
    fa, fb = featcache.read_features(a), featcache.read_features(b)
    assert fa.ids.tolist() == fb.ids.tolist() and fa.labels.tolist() == fb.labels.tolist()
    assert fa.sha256.tolist() == fb.sha256.tolist()
    assert fa.attrs == fb.attrs  # backbone, weights identity, precision, device, provenance, versions, complete
    scale = float(np.abs(fa.features).max())
    np.testing.assert_allclose(fb.features, fa.features, rtol=2e-2, atol=1e-2 * scale)


def test_extract_on_ray_writes_the_local_cache_and_reuses_the_decoded_cache(cluster, tmp_path):
    m = _manifest(tmp_path, 26)  # 26 = 6 batches of 4 + a short last batch
    params = ExtractParams(batch_size=4, precision="auto")
    cache = tmp_path / "cache"
    local = extract(m, backbone="tiny_cnn", dataset="t", cache_dir=cache, params=params, decode=ONE_WORKER,
                    progress=False)
    (tmp_path / "local.h5").write_bytes(local.path.read_bytes())
    decoded = cache / "t" / "decoded-32.h5"
    before = decoded.stat().st_mtime_ns
    local.path.unlink()
    r = extract(m, backbone="tiny_cnn", dataset="t", cache_dir=cache, params=params, decode=ONE_WORKER,
                progress=False, engine=RAY)
    assert (r.path, r.images, r.extracted, r.reused) == (local.path, 26, 26, 0)
    assert r.precision == local.precision and r.device == "cpu"
    assert decoded.stat().st_mtime_ns == before  # decode tasks read the decoded cache, nothing decoded again
    _same_cache(tmp_path / "local.h5", r.path)
    assert not list((cache / "t").glob("*.partial"))
    again = extract(m, backbone="tiny_cnn", dataset="t", cache_dir=cache, params=params, decode=ONE_WORKER,
                    progress=False, engine=RAY)
    assert (again.extracted, again.reused) == (0, 26)  # same validity rules as local: an up-to-date cache is kept


def test_extract_cli_on_ray_builds_a_missing_decoded_cache_on_the_cluster(cluster, tmp_path):
    m = _manifest(tmp_path, 10)
    (tmp_path / "p.yaml").write_text("data:\n  name: t\ndecode:\n  workers: 1\n")
    args = ["extract", "--manifest", str(m), "--backbone", "tiny_cnn", "--precision", "fp32", "--batch-size", "3",
            "--params", str(tmp_path / "p.yaml"), "--no-progress"]
    assert main([*args, "--cache-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--cache-dir", str(tmp_path / "b"), "--engine", "ray"]) == 0
    assert (tmp_path / "b" / "t" / "decoded-32.h5").is_file()
    _same_cache(tmp_path / "a" / "t" / "tiny_cnn.h5", tmp_path / "b" / "t" / "tiny_cnn.h5")


def _descendants(pid: int) -> list[int]:
    """Processes under ``pid`` (this test's own Ray cluster: raylet -> workers)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _kill_embedding_actor() -> bool:
    for p in _descendants(os.getpid()):
        try:
            title = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"Embedder" in title:
            os.kill(p, signal.SIGKILL)
            return True
    return False


def test_killed_ray_extraction_resumes_and_a_lost_actor_costs_its_batch_only(cluster, tmp_path):
    n, batch = 120, 2
    m = _manifest(tmp_path, n)
    (tmp_path / "p.yaml").write_text(f"data:\n  name: t\ndecode:\n  workers: 1\nengine:\n  address: '{cluster}'\n")
    cache = tmp_path / "cache"
    journal = cache / "t" / "tiny_cnn.h5.partial" / "features.f32"

    def journaled() -> int:
        return journal.stat().st_size // (4 * 32) if journal.exists() else 0

    # the driver holds after its 4th journaled batch (it writes `reached` first): killed there, however fast or
    # slow the machine is
    reached = tmp_path / "reached"
    runner = ("import sys, time\nfrom pathlib import Path\nfrom featpipe.features import cache\n"
              "_append, n = cache.PartialRows.append, [0]\n"
              "def append(self, rows):\n    _append(self, rows)\n    n[0] += 1\n"
              f"    if n[0] == 4:\n        Path({str(reached)!r}).touch()\n        time.sleep(900)\n"
              "cache.PartialRows.append = append\nfrom featpipe.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    cmd = [sys.executable, "-c", runner, "extract", "--manifest", str(m), "--backbone", "tiny_cnn",
           "--precision", "fp32", "--batch-size", str(batch), "--cache-dir", str(cache),
           "--params", str(tmp_path / "p.yaml"), "--no-progress", "--engine", "ray"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # against a hang only
    while time.monotonic() < deadline and proc.poll() is None and not reached.exists():
        time.sleep(0.05)
    assert proc.poll() is None, f"the extraction ended before it could be killed: {proc.stderr.read().decode()[-800:]}"
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
    proc.wait()
    proc.stderr.close()
    rows = journaled()
    assert not (cache / "t" / "tiny_cnn.h5").exists() and 0 < rows < n

    params = ExtractParams(batch_size=batch, precision="fp32")
    killed, append = [], featcache.PartialRows.append

    def append_then_kill(self, new_rows):  # after 4 more journaled batches an embedding actor dies, mid-run:
        append(self, new_rows)  # Ray restarts it and retries its batch
        if not killed and journaled() >= rows + 4 * batch:
            killed.append(_kill_embedding_actor())

    featcache.PartialRows.append = append_then_kill
    try:
        r = extract(m, backbone="tiny_cnn", dataset="t", cache_dir=cache, params=params, decode=ONE_WORKER,
                    progress=False, engine=RAY)
    finally:
        featcache.PartialRows.append = append
    assert killed == [True] and r.resumed >= rows and r.resumed % batch == 0 and r.resumed + r.extracted == n, r.summary()
    ref = extract(m, backbone="tiny_cnn", dataset="t", cache_dir=tmp_path / "ref",  # fp32 rows do not depend on
                  params=ExtractParams(batch_size=40, precision="fp32"), decode=ONE_WORKER, progress=False)  # batching
    fa, fb = featcache.read_features(ref.path), featcache.read_features(r.path)
    assert fa.ids.tolist() == fb.ids.tolist()
    np.testing.assert_allclose(fb.features, fa.features, rtol=1e-4, atol=1e-5)
    assert not journal.parent.exists()


def test_sweep_on_ray_writes_byte_identical_results(cluster, tmp_path):
    from test_fit import write_fixture

    write_fixture(tmp_path, backbone="toy")
    (tmp_path / "p.yaml").write_text("heads:\n  mlp:\n    epochs: 30\nfit:\n  n_jobs: 2\n  seeds: [0, 2]\n"
                                     "  shots: [2, 10]\n")
    common = ["sweep", "--splits", str(tmp_path / "data/splits.json"), "--cache-dir", str(tmp_path / "cache"),
              "--models", str(tmp_path / "models"), "--backbones", "toy", "--heads", "svc", "logistic", "mlp",
              "prototype", "--params", str(tmp_path / "p.yaml")]
    assert main([*common, "--results", str(tmp_path / "local")]) == 0
    assert main([*common, "--results", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    a, b = (tmp_path / "local" / "runs.csv").read_bytes(), (tmp_path / "ray" / "runs.csv").read_bytes()
    assert len(pd.read_csv(tmp_path / "ray" / "runs.csv")) == 4 * 2 * 2  # heads x shots x seeds
    assert a == b  # every metric, threshold and model path, byte for byte
    for name in ("metrics.json", "summary.json"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    curves = read_curves(tmp_path / "ray")
    assert curves == read_curves(tmp_path / "local") and len(curves) == 16
    key = ["run_id", "split", "id"]  # runs finish in another order on ray: the same rows, bit for bit
    pd.testing.assert_frame_equal(read_predictions(tmp_path / "ray").sort_values(key).reset_index(drop=True),
                                  read_predictions(tmp_path / "local").sort_values(key).reset_index(drop=True),
                                  check_exact=True)


def test_engine_ray_without_ray_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    (tmp_path / "p.yaml").write_text("data:\n  name: t\n")
    code = main(["sweep", "--splits", str(tmp_path / "none.json"), "--params", str(tmp_path / "p.yaml"),
                 "--engine", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "pip install 'featpipe[ray]'" in err and err.startswith("featpipe: error:")


def test_engine_params_are_validated_and_named(tmp_path):
    from featpipe.params.config import load_params
    from featpipe.core.errors import ConfigError

    p = load_params(REPO / "params.yaml", ["engine.kind=ray", "engine.address=auto", "engine.embed_gpus=0.5"])
    assert (p.engine.kind, p.engine.address, p.engine.embed_gpus) == ("ray", "auto", 0.5)
    with pytest.raises(ConfigError, match="engine.kind"):
        load_params(None, ["engine.kind=spark"])
    with pytest.raises(ConfigError, match="engine.gpus"):
        load_params(None, ["engine.gpus=1"])


def test_finetune_on_ray_gives_the_local_rows(cluster, tmp_path):
    from featpipe.params.config import load_params
    from featpipe.data.prepare import prepare

    sets = [f"data.path={tmp_path / 'synthetic'}", "data.synthetic.images_per_class=20", "data.synthetic.size=32",
            "split.seeds=[0]", "split.shots=[2]", "split.val_fraction=0.25", "split.test_fraction=0.25",
            "decode.workers=1", "finetune.backbones=[tiny_cnn]", "finetune.strategies=[head,scratch]",
            "finetune.shots=[2]", "finetune.seeds=[0]", "finetune.epochs=2", "finetune.patience=2",
            "finetune.precision=fp32", "finetune.device=cpu", "finetune.threads=1", "finetune.save_models=false"]
    (tmp_path / "none.yaml").write_text("{}\n")
    prepare(load_params(None, sets), manifest_path=tmp_path / "manifest.csv", splits_path=tmp_path / "splits.json")
    common = ["finetune", "--manifest", str(tmp_path / "manifest.csv"), "--splits", str(tmp_path / "splits.json"),
              "--cache-dir", str(tmp_path / "cache"), "--models", str(tmp_path / "models"), "--quiet",
              "--params", str(tmp_path / "none.yaml"), *[a for s in sets for a in ("-S", s)]]
    assert main([*common, "--results", str(tmp_path / "local")]) == 0
    assert main([*common, "--results", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    a, b = (pd.read_csv(tmp_path / d / "runs.csv").drop(columns="train_seconds") for d in ("local", "ray"))
    assert len(a) == 2 and list(a["head"]) == ["finetune:head", "finetune:scratch"]
    pd.testing.assert_frame_equal(a, b)  # the same rows: every metric, threshold, best epoch


def test_a_task_s_own_error_stays_one_line(cluster, tmp_path, capsys):
    m = _manifest(tmp_path, 3)
    (tmp_path / "p.yaml").write_text("data:\n  name: t\n")
    code = main(["extract", "--manifest", str(m), "--backbone", "tiny_cnn", "--device", "cuda:3", "--no-progress",
                 "--cache-dir", str(tmp_path / "c"), "--params", str(tmp_path / "p.yaml"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "RayTaskError" not in err
    assert err.strip().splitlines()[-1].startswith("featpipe: error:") and "cuda:3" in err
    assert not (tmp_path / "c" / "t" / "tiny_cnn.h5").exists()


def test_networks_of_your_own_run_on_ray_workers(cluster, tmp_path):
    """A network defined in params (``networks:``) is rebuilt in every Ray worker from its definition: extraction
    (Ray Data actors) and fine-tuning (Ray tasks) give what the local engine gives."""
    from featpipe.backbones import registry
    from featpipe.data.prepare import prepare
    from featpipe.params.config import load_params

    net = "networks=[{name: raynet, factory: simple_cnn, channels: [4, 8], input_size: 32}]"
    sets = [net, f"data.path={tmp_path / 'synthetic'}", "data.synthetic.images_per_class=12", "data.synthetic.size=32",
            "split.seeds=[0]", "split.shots=[2]", "split.val_fraction=0.25", "split.test_fraction=0.25",
            "decode.workers=1", "extract.precision=fp32", "extract.device=cpu", "finetune.strategies=[scratch]",
            "finetune.backbones=[raynet]", "finetune.shots=[2]", "finetune.seeds=[0]", "finetune.epochs=1",
            "finetune.precision=fp32", "finetune.device=cpu", "finetune.threads=1", "finetune.save_models=false"]
    (tmp_path / "none.yaml").write_text("{}\n")
    prepare(load_params(None, sets), manifest_path=tmp_path / "manifest.csv", splits_path=tmp_path / "splits.json")
    flags = ["--manifest", str(tmp_path / "manifest.csv"), "--params", str(tmp_path / "none.yaml"),
             *[a for s in sets for a in ("-S", s)]]
    for where, engine in (("local", []), ("ray", ["--engine", "ray"])):
        assert main(["extract", "--backbone", "raynet", "--no-progress", "--cache-dir", str(tmp_path / where),
                     *flags, *engine]) == 0
        assert main(["finetune", "--quiet", "--splits", str(tmp_path / "splits.json"), "--cache-dir",
                     str(tmp_path / where), "--results", str(tmp_path / where / "results"), *flags, *engine]) == 0
    assert "raynet" in registry.names()
    local, on_ray = (next((tmp_path / w).rglob("raynet.h5")) for w in ("local", "ray"))
    _same_cache(local, on_ray)
    a, b = (pd.read_csv(tmp_path / w / "results" / "runs.csv").drop(columns="train_seconds") for w in ("local", "ray"))
    assert len(a) == 1 and a["weights_id"].str.match(r"^random:seed0@custom:[0-9a-f]{12}$").all()
    pd.testing.assert_frame_equal(a, b)
