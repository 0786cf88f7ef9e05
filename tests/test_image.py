"""Tests for tgllava.image: loading, refusal of bad images, and preprocessing
checked against the golden `pixel_values` and against independent NumPy/PIL
computations of each mode."""

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

import golden_util
from tgllava import image
from tgllava.errors import ShapeError, TgError

GOLDEN = pathlib.Path(golden_util.GOLDEN)
SETS = golden_util.SETS
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def reference_normalize(pil_rgb):
    """float64 reference of /255 and (x - mean) / std, channel-first."""
    x = np.asarray(pil_rgb, dtype=np.float64) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def random_rgb(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("name", SETS)
def test_golden_pixel_values(name):
    folder = GOLDEN / name
    expected = np.load(folder / "io.npz")["pixel_values"]
    got = image.preprocess(folder / "image.png")
    assert got.shape == (3, 336, 336) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
    # Same through every accepted input type.
    raw = (folder / "image.png").read_bytes()
    assert np.array_equal(image.preprocess(raw), got)
    assert np.array_equal(image.preprocess(np.asarray(Image.open(folder / "image.png").convert("RGB"))), got)


def test_pad_mode_matches_independent_computation():
    im = random_rgb(50, 30, seed=1)  # landscape: pad top and bottom
    side = 50
    canvas = Image.new("RGB", (side, side), (122, 116, 104))
    canvas.paste(im, (0, (side - 30) // 2))
    expected = reference_normalize(canvas.resize((24, 24), Image.BICUBIC))
    got = image.preprocess(im, size=24)
    assert got.shape == (3, 24, 24)
    assert np.abs(got - expected).max() <= 1e-6
    # Odd padding: offset rounds down, like LLaVA's expand2square.
    im = random_rgb(31, 50, seed=2)
    canvas = Image.new("RGB", (50, 50), (122, 116, 104))
    canvas.paste(im, ((50 - 31) // 2, 0))
    expected = reference_normalize(canvas.resize((24, 24), Image.BICUBIC))
    assert np.abs(image.preprocess(im, size=24) - expected).max() <= 1e-6


def test_pad_background_follows_mean():
    mean = (0.5, 0.25, 0.0)
    im = Image.new("RGB", (40, 20), (255, 255, 255))
    got = image.preprocess(im, size=40, mean=mean, std=(1.0, 1.0, 1.0))
    # top-left corner is background: int(255*m)/255 - m
    bg = np.array([int(255 * m) for m in mean]) / 255.0 - np.array(mean)
    assert np.allclose(got[:, 0, 0], bg, atol=1e-6)


@pytest.mark.parametrize("w,h", [(60, 36), (36, 60), (67, 50), (50, 67), (40, 40), (36, 36)])
def test_crop_mode_matches_clip_image_processor_rule(w, h):
    size = 36
    im = random_rgb(w, h, seed=w * 100 + h)
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    resized = im.resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    arr = np.asarray(resized)[top:top + size, left:left + size]
    expected = reference_normalize(Image.fromarray(arr))
    got = image.preprocess(im, mode="crop", size=size)
    assert got.shape == (3, size, size)
    assert np.abs(got - expected).max() <= 1e-6


def test_resize_mode():
    im = random_rgb(70, 30, seed=3)
    expected = reference_normalize(im.resize((28, 28), Image.BICUBIC))
    got = image.preprocess(im, mode="resize", size=28)
    assert np.abs(got - expected).max() <= 1e-6


def test_square_image_pad_equals_crop():
    im = random_rgb(45, 45, seed=4)
    assert np.array_equal(image.preprocess(im, "pad", 30), image.preprocess(im, "crop", 30))


def test_hf_arithmetic():
    # rescale: uint8 * (1/255) in float64 then cast; normalise in float32.
    im = random_rgb(336, 336, seed=5)
    x = (np.asarray(im) * (1 / 255)).astype(np.float32)
    x = (x - MEAN.astype(np.float32)) / STD.astype(np.float32)
    assert np.array_equal(image.preprocess(im), x.transpose(2, 0, 1))


def test_preprocess_batch():
    ims = [random_rgb(40, 30, seed=i) for i in range(3)]
    batch = image.preprocess_batch(ims, size=32)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    for i, im in enumerate(ims):
        assert np.array_equal(batch[i], image.preprocess(im, size=32))
    assert image.preprocess_batch([], size=32).shape == (0, 3, 32, 32)
    with pytest.raises(TypeError):
        image.preprocess_batch(ims[0])


def test_preprocess_bad_arguments():
    im = random_rgb(10, 10)
    with pytest.raises(ValueError, match="mode"):
        image.preprocess(im, mode="stretch")
    with pytest.raises(ValueError, match="size"):
        image.preprocess(im, size=0)
    with pytest.raises(ValueError, match="mean"):
        image.preprocess(im, mean=(0.5, 0.5))


def test_load_image_inputs(tmp_path):
    rgb = random_rgb(20, 10, seed=6)
    path = tmp_path / "x.png"
    rgb.save(path)
    for src in (str(path), path, path.read_bytes(), bytearray(path.read_bytes()), rgb, np.asarray(rgb)):
        out = image.load_image(src)
        assert out.mode == "RGB" and out.size == (20, 10)
        assert np.array_equal(np.asarray(out), np.asarray(rgb))
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    for arr in (gray, gray[:, :, None]):
        out = np.asarray(image.load_image(arr))
        assert out.shape == (10, 20, 3) and np.array_equal(out[:, :, 1], gray)
    rgba = np.dstack([np.asarray(rgb), np.full((10, 20), 7, np.uint8)])
    assert np.array_equal(np.asarray(image.load_image(rgba)), np.asarray(rgb))
    # Non-contiguous array and untouched input.
    arr = np.asarray(random_rgb(20, 10, seed=7)).copy()
    before = arr.copy()
    view = arr[:, ::2]
    assert np.array_equal(np.asarray(image.load_image(view)), view)
    assert np.array_equal(arr, before)
    # Other PIL modes are converted.
    assert image.load_image(rgb.convert("P")).mode == "RGB"
    assert image.load_image(rgb.convert("L")).mode == "RGB"


def test_load_image_does_not_rotate(tmp_path):
    im = random_rgb(30, 10, seed=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert image.load_image(path).size == (30, 10)


def test_refuses_empty_images():
    with pytest.raises(ShapeError, match="empty"):
        image.load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ShapeError, match="empty"):
        image.load_image(Image.new("RGB", (0, 4)))


def test_refuses_too_many_pixels(monkeypatch, tmp_path):
    monkeypatch.setattr(image, "MAX_PIXELS", 99)
    with pytest.raises(ShapeError, match="MAX_PIXELS"):
        image.load_image(np.zeros((10, 10, 3), np.uint8))
    path = tmp_path / "big.png"
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(ShapeError, match="exceeds"):
        image.load_image(path)
    with pytest.raises(ShapeError):
        image.load_image(path.read_bytes())
    with pytest.raises(ShapeError):
        image.preprocess(Image.new("RGB", (10, 10)))
    assert image.load_image(np.zeros((9, 11, 3), np.uint8)).size == (11, 9)


def test_refuses_bad_arrays():
    with pytest.raises(ShapeError, match="uint8"):
        image.load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ShapeError, match="shape"):
        image.load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ShapeError, match="shape"):
        image.load_image(np.zeros((4,), np.uint8))
    with pytest.raises(TypeError):
        image.load_image(12)


def test_refuses_corrupt_data(tmp_path):
    buf = io.BytesIO()
    random_rgb(64, 64, seed=9).save(buf, format="PNG")
    data = buf.getvalue()
    for bad in (b"not an image at all", data[: len(data) // 2], b""):
        with pytest.raises(image.ImageError):
            image.load_image(bad)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(image.ImageError, match="trunc.png"):
        image.load_image(trunc)
    with pytest.raises(image.ImageError, match="no such file"):
        image.load_image(tmp_path / "missing.png")
    with pytest.raises(image.ImageError):
        image.load_image(tmp_path)
    assert issubclass(image.ImageError, TgError) and issubclass(image.ImageError, ValueError)


def test_mode_from_config():
    assert image.mode_from_config({"image_aspect_ratio": "pad"}) == "pad"
    assert image.mode_from_config({"image_aspect_ratio": "square"}) == "crop"
    assert image.mode_from_config({"image_aspect_ratio": None}) == "crop"
    assert image.mode_from_config({}) == "crop"
    assert image.mode_from_config({"image_aspect_ratio": "resize"}) == "resize"
    with pytest.raises(ValueError, match="anyres"):
        image.mode_from_config({"image_aspect_ratio": "anyres"})


# ---- preprocessing intermediates are bounded before they are allocated (issue 13)

@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("w,h", [(1, 60000), (60000, 1)])
def test_tiny_file_with_absurd_aspect_ratio_is_refused(tmp_path, mode, w, h):
    path = tmp_path / "strip.png"
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)
    assert path.stat().st_size < 2000

    def run():
        with pytest.raises(image.ImageError, match=f"{w}x{h}"):
            image.preprocess(path, mode=mode)
    assert golden_util.peak_bytes(run) < 64 << 20
    # "resize" squashes without an intermediate: fine
    assert image.preprocess(path, mode="resize").shape == (3, 336, 336)


def test_intermediate_pixel_bound_names_the_size(monkeypatch):
    monkeypatch.setattr(image, "MAX_PIXELS", 40 * 40)
    im = Image.new("RGB", (50, 20))  # 1000 pixels: the picture itself is within the limit
    with pytest.raises(image.ImageError, match=r"padded square of 50x50"):
        image.preprocess(im, mode="pad")
    with pytest.raises(image.ImageError, match=r"shortest-edge resize of 840x336"):
        image.preprocess(im, mode="crop", size=336)
    with pytest.raises(image.ImageError, match="50x50"):
        image.expand_to_square(im, (0, 0, 0))
    monkeypatch.setattr(image, "MAX_PIXELS", 10 ** 6)
    assert image.preprocess(im, mode="crop", size=8).shape == (3, 8, 8)


def test_moderate_aspect_ratios_still_work():
    for w, h in ((100, 1), (1, 100), (1200, 40)):
        for mode in ("pad", "crop"):
            assert image.preprocess(Image.new("RGB", (w, h)), mode=mode).shape == (3, 336, 336)
