"""featpipe.decoded.cache: the decoded-image cache (build, reuse by content, reader, DataLoader workers, CLI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featpipe.decoded.build import build, build_decoded
from featpipe.decoded.cache import (
    DecodedImages,
    DecodeOptions,
    build_stats,
    decoded_path,
)
from featpipe.core.errors import CacheError, DataError
from featpipe.imaging.base import DEFAULT_DRAFT, RESIZE_METHOD
from featpipe.imaging.decode import decode
from featpipe.backbones.modelinput import to_tensor_batch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CXR = DATA / "figure1-covid-cxr" / "images"
SIZE = 16


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _gray(path: Path, seed: int, shape=(24, 30)) -> Path:
    arr = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _rows(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"id": [p.name for p in paths], "path": [str(p) for p in paths],
                         "sha256": [_sha(p) for p in paths]})


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    folder = tmp_path / "img"
    folder.mkdir()
    paths = [_gray(folder / f"g{i}.png", i) for i in range(5)]
    Image.fromarray(np.full((40, 40), 99, np.uint8)).save(folder / "j.jpg", quality=95)
    return paths + [folder / "j.jpg"]


def _build(manifest, path, **kw):
    kw.setdefault("workers", 1)
    return build_decoded(manifest, size=SIZE, path=path, progress=False, **kw)


def test_round_trip_and_attrs(tmp_path, images):
    manifest = _rows(images)
    path = _build(manifest, decoded_path(tmp_path / "cache", "demo", SIZE))
    assert path == tmp_path / "cache" / "demo" / f"decoded-{SIZE}.h5"
    assert not path.with_name(path.name + ".partial").exists()
    reader = DecodedImages(path)
    assert list(reader.ids) == manifest["id"].tolist() and len(reader) == 6
    assert reader.channels == 1 and reader.size == SIZE
    for i, p in enumerate(images):
        np.testing.assert_array_equal(reader[i], decode(str(p), size=SIZE))
    attrs = reader.attrs
    assert attrs["size"] == SIZE and attrs["resize_method"] == RESIZE_METHOD and attrs["complete"]
    assert attrs["draft"] == DEFAULT_DRAFT is False and len(attrs["rows_sha256"]) == 64 and attrs["featpipe_version"]
    with h5py.File(path, "r") as f:  # readable without featpipe
        assert f["images"].dtype == np.uint8 and f["images"].chunks == (1, SIZE, SIZE, 1)
        assert [s.decode() for s in f["sha256"][()]] == manifest["sha256"].tolist()
    got = reader.read([4, 0, 4, 2])
    np.testing.assert_array_equal(got, np.stack([reader[4], reader[0], reader[4], reader[2]]))
    np.testing.assert_array_equal(reader.index_of(["g2.png", "g0.png"]), [2, 0])
    with pytest.raises(CacheError, match="nope"):
        reader.index_of(["nope"])
    np.testing.assert_array_equal(reader.require(manifest.iloc[[3, 1]]), [3, 1])
    stale = manifest.iloc[[1]].assign(sha256="0" * 64)
    with pytest.raises(CacheError, match="stale"):
        reader.require(stale)
    reader.close()


def _stats(manifest, path, **kw):
    kw.setdefault("workers", 1)
    opts = DecodeOptions(kw.pop("workers"), kw.pop("draft", True), progress=False)
    return build(manifest, {kw.pop("size", SIZE): path}, options=opts, **kw)


def test_incremental_reuse_by_content(tmp_path, images):
    path = tmp_path / "decoded.h5"
    assert _stats(_rows(images[:5]), path).stats[SIZE]["decoded"] == 5
    s = _stats(_rows(images[:5]), path).stats[SIZE]  # exactly these rows: the file is not even rewritten
    assert (s["decoded"], s["reused"], s["rewritten"]) == (0, 5, False)

    s = _stats(_rows(images), path).stats[SIZE]  # one added
    assert (s["decoded"], s["reused"]) == (1, 5) and build_stats(path)["decoded"] == 1

    s = _stats(_rows(images[1:]), path).stats[SIZE]  # one removed
    assert (s["decoded"], s["reused"]) == (0, 5)
    assert list(DecodedImages(path).ids) == [p.name for p in images[1:]]

    _gray(images[2], seed=99)  # content changed: new sha256
    s = _stats(_rows(images[1:]), path).stats[SIZE]
    assert (s["decoded"], s["reused"]) == (1, 4)
    np.testing.assert_array_equal(DecodedImages(path)[1], decode(str(images[2]), size=SIZE))

    assert _stats(_rows(images[1:]), path, draft=False).stats[SIZE]["decoded"] == 5  # another setting
    build_decoded(_rows(images[1:]), size=SIZE + 8, path=path, workers=1, progress=False)  # another size
    assert build_stats(path)["decoded"] == 5 and DecodedImages(path).size == SIZE + 8


def test_channels_follow_content(tmp_path, images):
    path = tmp_path / "decoded.h5"
    colour = tmp_path / "img" / "c.png"
    Image.new("RGB", (20, 20), (200, 30, 10)).save(colour)
    gray_rgb = tmp_path / "img" / "gr.png"
    Image.new("RGB", (20, 20), (50, 50, 50)).save(gray_rgb)

    _build(_rows(images + [gray_rgb]), path)
    assert build_stats(path)["channels"] == 1  # RGB with equal channels is grayscale

    _build(_rows(images + [gray_rgb, colour]), path)
    s = build_stats(path)
    assert (s["channels"], s["decoded"], s["reused"]) == (3, 1, 7)
    r = DecodedImages(path)
    np.testing.assert_array_equal(r[0], np.repeat(decode(str(images[0]), size=SIZE), 3, axis=-1))
    assert (r[7] == [200, 30, 10]).all()

    _build(_rows(images + [gray_rgb]), path)  # colour image removed: back to one channel, nothing decoded
    s = build_stats(path)
    assert (s["channels"], s["decoded"]) == (1, 0)
    np.testing.assert_array_equal(DecodedImages(path)[0], decode(str(images[0]), size=SIZE))


def test_one_pass_two_sizes_widens_after_grey_rejects_and_copies_duplicates(tmp_path, images, monkeypatch):
    from featpipe.imaging import pil as imaging

    colour = tmp_path / "img" / "c.png"
    Image.new("RGB", (20, 20), (200, 30, 10)).save(colour)
    dup = tmp_path / "img" / "dup.png"
    dup.write_bytes(images[0].read_bytes())  # same bytes, another id: copied, not decoded
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(images[1].read_bytes()[:60])
    loads = []
    real = imaging._load
    monkeypatch.setattr(imaging, "_load", lambda im, ref: (loads.append(ref), real(im, ref))[1])
    targets = {SIZE: tmp_path / "a.h5", SIZE + 8: tmp_path / "b.h5"}
    res = build(_rows(images + [colour, dup, broken]), targets, options=DecodeOptions(1, progress=False), rejects=True)
    assert res.rejects == {"broken.png": "truncated"}
    assert sorted(loads) == sorted(str(p) for p in images + [colour, broken])  # once each, for both sizes
    assert res.dims["c.png"] == (20, 20) and res.dims["dup.png"] == res.dims["g0.png"] == (30, 24)
    for size, path in targets.items():
        r = DecodedImages(path)
        assert list(r.ids) == [p.name for p in images + [colour, dup]] and r.channels == 3 and r.size == size
        np.testing.assert_array_equal(r[0], np.repeat(decode(str(images[0]), size=size), 3, axis=-1))
        assert (r[6] == [200, 30, 10]).all()
        np.testing.assert_array_equal(r[7], r[0])
        assert res.stats[size] == {"images": 8, "decoded": 8, "reused": 0, "rewritten": True, "channels": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith(".")) == ["a.h5", "b.h5"]
    assert not list(tmp_path.glob("*.partial*"))  # no partial left


def test_parallel_build_equals_serial_and_bad_image_keeps_old_cache(tmp_path, images):
    serial = _build(_rows(images), tmp_path / "a.h5")
    parallel = _build(_rows(images), tmp_path / "b.h5", workers=2)
    np.testing.assert_array_equal(DecodedImages(serial).read(range(6)), DecodedImages(parallel).read(range(6)))

    broken = tmp_path / "img" / "broken.png"
    data = images[0].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    before = Path(parallel).read_bytes()
    with pytest.raises(DataError, match="broken.png.*truncated"):
        _build(_rows(images + [broken]), parallel, workers=2)
    assert Path(parallel).read_bytes() == before
    assert not Path(str(parallel) + ".partial").exists()
    dup = _rows(images[:2] + images[:1])
    with pytest.raises(DataError, match="duplicate id"):
        _build(dup, tmp_path / "c.h5")


def test_npz_rows(tmp_path):
    arr = (np.arange(4 * 8 * 8) % 251).astype(np.uint8).reshape(4, 8, 8)
    np.savez(tmp_path / "x.npz", train_images=arr)
    manifest = pd.DataFrame({"id": [f"train/{i}" for i in range(4)],
                             "path": [f"{tmp_path / 'x.npz'}#train_images/{i}" for i in range(4)],
                             "sha256": [hashlib.sha256(a.tobytes()).hexdigest() for a in arr]})
    r = DecodedImages(_build(manifest, tmp_path / "n.h5"))
    np.testing.assert_array_equal(r[2], decode(f"{tmp_path / 'x.npz'}#train_images/2", size=SIZE))


class _Rows:
    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        return self.reader[i]


def test_two_dataloader_workers_read_the_cache(tmp_path, images):
    torch = pytest.importorskip("torch")
    reader = DecodedImages(_build(_rows(images), tmp_path / "d.h5"))
    expected = reader.read(range(len(reader)))  # opened in the parent first: workers must reopen
    loader = torch.utils.data.DataLoader(_Rows(reader), batch_size=2, num_workers=2)
    got = torch.cat([b for b in loader]).numpy()
    np.testing.assert_array_equal(got, expected)


def test_to_tensor_batch():
    torch = pytest.importorskip("torch")
    imgs = np.zeros((2, 4, 4, 1), np.uint8)
    imgs[1] = 255
    x = to_tensor_batch(imgs, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    assert x.dtype == torch.float32 and tuple(x.shape) == (2, 3, 4, 4)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    assert torch.allclose(x[1, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 1] = 51
    assert torch.allclose(to_tensor_batch(rgb, (0, 0, 0), (1, 1, 1))[0, :, 0, 0], torch.tensor([0.0, 0.2, 0.0]))
    # a one-channel backbone (torchxrayvision) gets the mean of the colour channels, as its reference does
    assert torch.allclose(to_tensor_batch(rgb, (0,), (1,), channels=1)[0, :, 0, 0], torch.tensor([0.2 / 3]))
    with pytest.raises(ValueError):
        to_tensor_batch(np.zeros((1, 2, 2, 4), np.uint8), (0,) * 3, (1,) * 3)


def test_missing_cache_is_a_one_line_error(tmp_path):
    with pytest.raises(CacheError, match="featpipe decode"):
        len(DecodedImages(tmp_path / "none.h5"))


def test_decode_command(tmp_path, images, monkeypatch, capsys):
    from featpipe.cli.main import main
    from featpipe.data.manifest import COLUMNS

    manifest = _rows(images).assign(label=0, label_name="a", patient_id=lambda d: d["id"], source_split="",
                                    width=0, height=0)[COLUMNS]
    monkeypatch.chdir(tmp_path)
    manifest.to_csv("manifest.csv", index=False)
    argv = ["decode", "--size", "12", "--manifest", "manifest.csv", "--cache-dir", "cache", "--no-progress"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert "6 images" in line and "decoded 6 new" in line and "reused 0" in line and "images/s" in line
    assert main(argv) == 0
    assert "6 images (1 channel), already current (not rewritten)" in capsys.readouterr().out
    assert DecodedImages(tmp_path / "cache" / "demo" / "decoded-12.h5").size == 12
    assert main(["decode", "--size", "12", "--manifest", "missing.csv"]) != 0


@pytest.mark.skipif(not CXR.is_dir(), reason=f"real radiographs not found at {CXR}")
def test_real_radiographs_cache(tmp_path):
    files = sorted(p for p in CXR.iterdir() if p.suffix in (".jpg", ".png"))
    manifest = _rows(files)
    path = build_decoded(manifest, size=64, path=tmp_path / "r.h5", workers=2, progress=False)
    r = DecodedImages(path)
    assert len(r) == 55 and r.channels == 1  # 4 RGB JPEGs hold gray pixels
    for i in (0, 14, 54):
        np.testing.assert_array_equal(r[i], decode(str(files[i]), size=64))
