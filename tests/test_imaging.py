"""featpipe.imaging.decode: probe (rejects) and decode (pixels) on synthetic files and the real radiographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from featpipe.core.errors import DataError
from featpipe.imaging import pil as imaging
from featpipe.imaging.base import ImageRejected, scale_to_uint8
from featpipe.imaging.decode import (
    decode,
    decode_sizes,
    probe,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CXR = DATA / "figure1-covid-cxr" / "images"
NPZ = DATA / "pneumoniamnist_balanced_28.npz"


def _save(tmp_path: Path, name: str, im: Image.Image, **kw) -> str:
    p = tmp_path / name
    im.save(p, **kw)
    return str(p)


def _reason(path: str, max_pixels: int = 10**8) -> str:
    with pytest.raises(ImageRejected) as info:
        probe(path, max_pixels=max_pixels)
    assert isinstance(info.value, DataError)
    return info.value.reason


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("top", [4095, 65535])
def test_16bit_png_is_scaled_by_bit_depth_not_clipped(tmp_path, top):
    arr = np.linspace(0, top, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    path = _save(tmp_path, "x16.png", Image.fromarray(arr))
    assert Image.open(path).mode in ("I;16", "I")
    out = decode(path, size=16)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    expected = np.rint(arr.astype(np.float64) * 255 / top).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert (out == 255).mean() < 0.01  # convert("L") would clip almost everything to white
    assert abs(out.mean() - 127.5) < 2


def test_scale_to_uint8_float_uses_actual_range():
    out = scale_to_uint8(np.array([[-1.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(out, [[0, 128, 255]])


def test_rgba_is_composited_on_black(tmp_path):
    im = Image.new("RGBA", (8, 8), (200, 100, 50, 128))
    im.putpixel((0, 0), (10, 20, 30, 255))
    im.putpixel((1, 0), (250, 250, 250, 0))
    out = decode(_save(tmp_path, "a.png", im), size=8)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[4, 4], [100, 50, 25])  # round(c * 128 / 255)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


def test_la_is_composited_to_one_channel(tmp_path):
    im = Image.new("LA", (8, 8), (200, 128))
    out = decode(_save(tmp_path, "la.png", im), size=8)
    assert out.shape == (8, 8, 1)
    assert (out == 100).all()


def test_palette_decodes_to_its_colours(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    for x in range(4, 8):
        for y in range(8):
            im.putpixel((x, y), 1)
    out = decode(_save(tmp_path, "p.png", im), size=8)
    assert out.shape == (8, 8, 3)
    assert (out[:, :4] == [255, 0, 0]).all() and (out[:, 4:] == [0, 0, 255]).all()


def test_gray_palette_is_one_channel_and_channels_can_be_forced(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([i for g in range(256) for i in (g, g, g)])
    im.paste(77, (0, 0, 8, 8))
    path = _save(tmp_path, "gp.png", im)
    assert decode(path, size=8).shape == (8, 8, 1) and (decode(path, size=8) == 77).all()
    three = decode(path, size=8, channels=3)
    assert three.shape == (8, 8, 3) and (three == 77).all()


def test_cmyk_decodes_to_rgb(tmp_path):
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    im.paste((255, 255, 0, 0), (0, 0, 8, 4))  # blue on the top half
    out = decode(_save(tmp_path, "c.tif", im), size=8)
    assert out.shape == (8, 8, 3)
    assert (out[4:] == [255, 0, 0]).all() and (out[:4] == [0, 0, 255]).all()


def test_colour_to_one_channel_is_luma(tmp_path):
    path = _save(tmp_path, "red.png", Image.new("RGB", (8, 8), (255, 0, 0)))
    out = decode(path, size=8, channels=1)
    assert out.shape == (8, 8, 1) and (out == 76).all()  # ITU-R 601: 0.299 * 255


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    arr = np.zeros((64, 64), np.uint8)
    arr[:24, :24] = 255  # marked top-left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = _save(tmp_path, "rot.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    out = decode(path, size=64)[..., 0].astype(float)
    quads = {"tl": out[:32, :32].mean(), "tr": out[:32, 32:].mean(), "bl": out[32:, :32].mean(), "br": out[32:, 32:].mean()}
    assert quads["tr"] > 100 and max(quads["tl"], quads["bl"], quads["br"]) < 10, quads
    wide = _save(tmp_path, "wide.jpg", Image.new("L", (60, 30)), exif=exif.tobytes())
    assert probe(wide, max_pixels=10**6) == (30, 60)


def test_resize_shorter_side_then_center_crop(tmp_path):
    arr = np.zeros((20, 40), np.uint8)  # 40 wide, 20 high
    arr[:, :10] = 255  # left quarter: cropped away by a 20x20 center crop after no resize
    arr[:, 15:25] = 100
    out = decode(_save(tmp_path, "w.png", Image.fromarray(arr)), size=20)[..., 0]
    assert out.shape == (20, 20)
    assert (out[:, :5] == 0).all() and (out[:, 5:15] == 100).all() and (out[:, 15:] == 0).all()
    half = decode(_save(tmp_path, "w.png", Image.fromarray(arr)), size=10)[..., 0]
    assert half.shape == (10, 10) and abs(float(half[:, 3:7].mean()) - 100) < 15


def test_draft_decoding_of_large_jpeg_stays_close(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:2048, 0:2048] / 2048.0
    arr = 120 + 80 * np.sin(6 * x) * np.cos(4 * y) + rng.normal(0, 6, (2048, 2048))
    arr[700:900, 300:1500] = 240  # a sharp-edged bright band
    path = _save(tmp_path, "big.jpg", Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), quality=90)
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    drafted = decode(path, size=128, draft=True).astype(int)
    assert calls, "draft() was not used for a 2048 px JPEG decoded to 128 px"
    calls.clear()
    full = decode(path, size=128, draft=False).astype(int)
    assert not calls
    assert np.abs(drafted - full).mean() < 1.5
    assert np.percentile(np.abs(drafted - full), 99) < 12


def test_decode_sizes_drafts_per_scale_and_still_detects_truncation(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    arr = np.clip(rng.normal(128, 40, (1200, 1600)), 0, 255).astype(np.uint8)
    path = _save(tmp_path, "big.jpg", Image.fromarray(arr), quality=90)
    loads = []
    real = imaging._load
    monkeypatch.setattr(imaging, "_load", lambda im, ref: (loads.append(im.size), real(im, ref))[1])
    pixels, dims = decode_sizes(path, (64, 128, 600), draft=True)
    assert dims == (1600, 1200)
    assert loads == [(200, 150), (400, 300), (1600, 1200)]  # 1/8 and 1/4 DCT scales, 600 px needs the full image
    for size in (64, 128, 600):
        np.testing.assert_array_equal(pixels[size], decode(path, size=size, draft=True))
    loads.clear()
    decode_sizes(path, (64, 70), draft=True)  # both drafted to the same 1/8 scale: one decode
    assert loads == [(200, 150)]
    data = Path(path).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageRejected) as err:
        decode_sizes(str(tmp_path / "cut.jpg"), (64,), draft=True)  # drafted decoding still reads the whole stream
    assert err.value.reason == "truncated"


# --------------------------------------------------------------------------- probe / rejects


def test_probe_returns_size_after_full_decode(tmp_path):
    path = _save(tmp_path, "ok.png", Image.new("L", (30, 20), 9))
    assert probe(path, max_pixels=10**6) == (30, 20)


def test_probe_rejects(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    assert _reason(str(tmp_path / "zero.png")) == "zero bytes"
    (tmp_path / "text.png").write_text("this is not a PNG\n" * 10)
    assert _reason(str(tmp_path / "text.png")) == "not an image"
    assert _reason(str(tmp_path / "nope.jpg")) == "missing"
    noise = (np.random.default_rng(1).random((256, 256)) * 255).astype(np.uint8)
    for ext in ("jpg", "png"):
        whole = tmp_path / f"whole.{ext}"
        Image.fromarray(noise).save(whole)
        data = whole.read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        assert _reason(str(tmp_path / f"cut.{ext}")) == "truncated"
    assert _reason(str(whole), max_pixels=1000) == "too large"
    Image.new("LAB", (4, 4)).save(tmp_path / "lab.tif")
    assert _reason(str(tmp_path / "lab.tif")) == "unsupported mode"
    with pytest.raises(ImageRejected):
        decode(str(tmp_path / "cut.jpg"), size=32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_becomes_too_large(tmp_path, monkeypatch):
    path = _save(tmp_path, "bomb.png", Image.new("L", (64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 > 2 * 100: Pillow raises
    assert _reason(path) == "too large"
    small = _save(tmp_path, "warn.png", Image.new("L", (12, 12)))  # 144: Pillow only warns
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        assert probe(small, max_pixels=10**6) == (12, 12)


def test_truncated_global_set_by_others_is_refused(tmp_path, monkeypatch):
    path = _save(tmp_path, "ok.png", Image.new("L", (8, 8)))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="LOAD_TRUNCATED_IMAGES"):
        probe(path, max_pixels=10**6)


# --------------------------------------------------------------------------- npz


def test_npz_reference_decodes_the_right_slice(tmp_path):
    arr = np.stack([np.full((8, 8), 10 * i, np.uint8) for i in range(5)])
    arr[3, 0, 0] = 255
    wide = (np.arange(2 * 8 * 8).reshape(2, 8, 8) * 1000).astype(np.uint16)
    np.savez(tmp_path / "x.npz", train_images=arr, deep=wide)
    ref = f"{tmp_path / 'x.npz'}#train_images/3"
    out = decode(ref, size=8)
    assert out.shape == (8, 8, 1)
    np.testing.assert_array_equal(out[..., 0], arr[3])
    assert probe(ref, max_pixels=100) == (8, 8)
    np.testing.assert_array_equal(decode(f"{tmp_path / 'x.npz'}#deep/1", size=8)[..., 0],
                                  np.rint(wide[1] * 255.0 / 65535).astype(np.uint8))
    assert _reason(f"{tmp_path / 'x.npz'}#train_images/5") == "missing"
    assert _reason(f"{tmp_path / 'x.npz'}#nope/0") == "missing"
    assert _reason(f"{tmp_path / 'gone.npz'}#train_images/0") == "missing"
    assert _reason(ref, max_pixels=63) == "too large"


@pytest.mark.skipif(not NPZ.is_file(), reason=f"real data not found at {NPZ}")
def test_real_pneumoniamnist_npz():
    arr = np.load(NPZ)["val_images"]
    ref = f"{NPZ}#val_images/12"
    assert probe(ref, max_pixels=10**6) == (28, 28)
    np.testing.assert_array_equal(decode(ref, size=28)[..., 0], arr[12])
    assert decode(ref, size=224).shape == (224, 224, 1)


# --------------------------------------------------------------------------- DICOM


def _dicom(path: Path, pixels: np.ndarray, **attrs) -> str:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_dicom_modality_then_window_then_monochrome1_inversion(tmp_path):
    raw = np.array([[100, 700, 550, 1000]] * 4, np.uint16)
    path = _dicom(tmp_path / "x.dcm", raw, PhotometricInterpretation="MONOCHROME1", RescaleSlope=2,
                  RescaleIntercept=-100, WindowCenter=1000, WindowWidth=1000)
    out = decode(path, size=4)
    assert out.shape == (4, 4, 1)
    # by hand (PS3.3 C.11.2.1.2): modality m = 2 v - 100; output range [2*0-100, 2*4095-100];
    # window LINEAR with c - 0.5, w - 1; then MONOCHROME1 inverted; then scaled to 0..255.
    lo, hi = -100.0, 8090.0
    m = 2.0 * raw[0] - 100
    y = np.where(m <= 999.5 - 499.5, lo, np.where(m > 999.5 + 499.5, hi, ((m - 999.5) / 999 + 0.5) * (hi - lo) + lo))
    expected = np.rint(((lo + hi - y) - lo) * 255 / (hi - lo))
    np.testing.assert_array_equal(out[0, :, 0], expected.astype(np.uint8))
    assert list(out[0, :, 0][[0, 3]]) == [255, 0]  # below the window: white after inversion
    assert 45 <= out[0, 1, 0] <= 56  # rescale applied before the window (without it: ~204)
    assert probe(path, max_pixels=100) == (4, 4)
    assert _reason(path, max_pixels=15) == "too large"


def test_dicom_monochrome2_without_window_uses_actual_range(tmp_path):
    raw = np.array([[0, 1000], [2000, 4000]], np.uint16)
    path = _dicom(tmp_path / "y.dcm", raw, PhotometricInterpretation="MONOCHROME2")
    np.testing.assert_array_equal(decode(path, size=2)[..., 0], [[0, 64], [128, 255]])
    pixels, dims = decode_sizes(path, (2, 4))  # one decode, several sizes
    assert dims == (2, 2) and pixels[2].shape == (2, 2, 1) and pixels[4].shape == (4, 4, 1)
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    assert _reason(str(tmp_path / "bad.dcm")) in ("not an image", "unreadable", "truncated")


# --------------------------------------------------------------------------- real radiographs


@pytest.mark.skipif(not CXR.is_dir(), reason=f"real radiographs not found at {CXR}")
def test_real_radiographs_decode_gray_and_upright():
    files = sorted(CXR.iterdir())
    pngs = [f for f in files if f.suffix == ".png"][:2]
    rgb = CXR / "COVID-00001.jpg"  # stored as RGB with equal channels
    for f in pngs + [rgb]:
        with Image.open(f) as im:
            size = im.size
        assert probe(str(f), max_pixels=10**8) == size
        out = decode(str(f), size=224)
        assert out.shape == (224, 224, 1) and 20 < out.mean() < 235
    full = decode(str(rgb), size=224, channels=3)
    assert (full[..., 0] == full[..., 2]).all()
