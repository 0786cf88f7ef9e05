"""Image loading and CLIP preprocessing for LLaVA-1.5 and TG-LLaVA.

`load_image` turns a path, encoded bytes, a PIL image or a uint8 NumPy array into an RGB PIL image,
refusing empty, absurdly large or undecodable pictures with a clear error.  No EXIF rotation is applied,
as in the reference (`Image.open(f).convert("RGB")`).

`preprocess` reproduces the reference pixel pipeline (SPEC section 1): mode "pad" (LLaVA-1.5's
`image_aspect_ratio = "pad"`, the default) centres the image on a square of the CLIP mean colour and
resizes it to 336x336 with PIL bicubic; mode "crop" is CLIPImageProcessor on its own (shortest edge to
336, then a centre crop), what LLaVA does for any other `image_aspect_ratio`; mode "resize" squashes the
image to 336x336.  The arithmetic is transformers' CLIPImageProcessor's (4.37): the uint8 pixels times
1/255 in float64, cast to float32, then `(x - mean) / std` in float32, within 1 float32 ulp of the golden
sets (computed in float64).
"""

import io
import os
import warnings

import numpy as np
from PIL import Image

from .errors import ShapeError, TgError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Images with more pixels than this are refused before decoding (same value
# as PIL's own decompression-bomb limit).  PIL itself still refuses images
# over twice its `Image.MAX_IMAGE_PIXELS`; raise both to go beyond that.
MAX_PIXELS = 178_956_970

# The preprocessing intermediates -- the padded square of "pad" mode, the
# shortest-edge resize of "crop" mode -- are bounded by the same pixel count,
# and pictures more elongated than MAX_ASPECT_RATIO are refused for those two
# modes: a 1 x 60000 PNG of a few hundred bytes would otherwise ask for a
# 60000 x 60000 canvas or a 336 x 20,160,000 resize (gigabytes).
MAX_ASPECT_RATIO = 100

MODES = ("pad", "crop", "resize")


class ImageError(TgError, ValueError):
    """An image could not be read: missing file, corrupt or unsupported data."""


def _check_size(width, height, what):
    if width <= 0 or height <= 0:
        raise ShapeError(f"{what}: empty image ({width}x{height} pixels)")
    if width * height > MAX_PIXELS:
        raise ShapeError(
            f"{what}: image of {width}x{height} = {width * height} pixels exceeds the limit "
            f"of {MAX_PIXELS} pixels (tgllava.image.MAX_PIXELS)"
        )


def _check_intermediate(width, height, size, mode):
    """Refuse (ImageError, before allocating) a picture whose preprocessing intermediate is too large."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side > MAX_ASPECT_RATIO * short_side:
        raise ImageError(
            f"image of {width}x{height} pixels has an aspect ratio of {long_side / short_side:.0f}:1, "
            f"beyond the limit of {MAX_ASPECT_RATIO}:1 for mode {mode!r} (tgllava.image.MAX_ASPECT_RATIO)")
    if mode == "pad":
        what, w, h = "padded square", long_side, long_side
    else:
        w, h = _shortest_edge_size(width, height, size)
        what = "shortest-edge resize"
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"image of {width}x{height} pixels needs a {what} of {w}x{h} = {w * h} pixels for mode {mode!r}, "
            f"beyond the limit of {MAX_PIXELS} pixels (tgllava.image.MAX_PIXELS)")


def _open_encoded(fp, what):
    """Decode an image file (path or file object) fully and return it as RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                _check_size(im.width, im.height, what)
                im.load()
                return im.convert("RGB")
    except (ShapeError, ImageError):
        raise
    except Image.DecompressionBombError as e:
        raise ShapeError(f"{what}: image too large ({e})") from None
    except FileNotFoundError:
        raise ImageError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{what}: is a directory, not an image file") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{what}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{what}: cannot decode image ({e})") from None


def _from_array(a):
    if a.dtype != np.uint8:
        raise ShapeError(f"image array must be uint8, got {a.dtype}")
    channels = {2: 1, 3: a.shape[-1]}.get(a.ndim)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise ShapeError(f"image array must have shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    _check_size(a.shape[1], a.shape[0], "image array")
    a = np.ascontiguousarray(a.reshape(a.shape[:2]) if mode == "L" else a)
    return Image.fromarray(a, mode=mode).convert("RGB")


def load_image(src):
    """Return `src` as an RGB PIL image.

    `src` may be a path (str or os.PathLike), encoded image bytes (bytes,
    bytearray, memoryview), a PIL image, or a uint8 NumPy array of shape
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).  Raises ShapeError for an
    empty or too large image (see MAX_PIXELS) or a badly shaped array, and
    ImageError for a missing, corrupt or undecodable file.
    """
    if isinstance(src, Image.Image):
        _check_size(src.width, src.height, "PIL image")
        try:
            return src.convert("RGB")
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot convert PIL image of mode {src.mode!r} to RGB ({e})") from None
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageError("image bytes: empty")
        return _open_encoded(io.BytesIO(data), "image bytes")
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        return _open_encoded(path, f"image file {path!r}")
    raise TypeError(
        "load_image expects a path, bytes, a PIL image or a uint8 NumPy array, "
        f"got {type(src).__name__}"
    )


def expand_to_square(image, background):
    """Centre `image` on a square canvas of colour `background` (LLaVA's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    _check_intermediate(width, height, None, "pad")  # before the canvas is allocated
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _shortest_edge_size(width, height, size):
    """CLIPImageProcessor's target: shortest edge to `size`, the other int(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _normalize(pixels, mean, std):
    """uint8 (H, W, 3) -> float32 (3, H, W), with transformers' rescale/normalise arithmetic."""
    x = (pixels * (1 / 255)).astype(np.float32)  # float64 product, then cast (HF rescale)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image, mode="pad", size=336, mean=CLIP_MEAN, std=CLIP_STD):
    """Turn one image into the (3, size, size) float32 array the vision tower takes.

    `image` is anything `load_image` accepts.  `mode` is "pad" (LLaVA-1.5
    default: pad to a square of the mean colour, then resize), "crop"
    (CLIPImageProcessor default: shortest edge to `size`, centre crop) or
    "resize" (plain bicubic resize to size x size).  Raises ImageError,
    before allocating, when the padded square or the resize target would be
    too large (MAX_PIXELS) or the picture is too elongated (MAX_ASPECT_RATIO).
    """
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std must have 3 values (one per RGB channel)")
    image = load_image(image)
    if mode != "resize":
        _check_intermediate(image.width, image.height, size, mode)

    if mode == "pad":
        image = expand_to_square(image, tuple(int(255 * m) for m in mean))
    if mode == "resize":
        image = image.resize((size, size), Image.BICUBIC)
    else:  # CLIPImageProcessor: shortest edge to `size`, then a centre crop
        image = image.resize(_shortest_edge_size(*image.size, size), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return _normalize(np.asarray(image), mean, std)


def preprocess_batch(images, mode="pad", size=336, mean=CLIP_MEAN, std=CLIP_STD):
    """Preprocess a sequence of images into one (B, 3, size, size) float32 array."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, np.ndarray)):
        raise TypeError("preprocess_batch expects a list of images; use preprocess() for one image")
    arrays = [preprocess(im, mode=mode, size=size, mean=mean, std=std) for im in images]
    if not arrays:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return np.stack(arrays)


def preprocess_for(model, image):
    """preprocess() as a loaded `model` takes its images: the mode its config asks for (mode_from_config),
    its tower's side, CLIP's mean/std, or for a SigLIP vision tower SigLIP's rules (siglip.image_rules:
    mean = std = 0.5, so "pad" pads with 127, and "resize" where CLIP would centre-crop)."""
    from . import siglip

    mode, mean, std = mode_from_config(model.config), CLIP_MEAN, CLIP_STD
    if siglip.family(model, "vision") == "siglip":
        mode, mean, std = siglip.image_rules(mode)
    return preprocess(image, mode=mode, size=model.image_size, mean=mean, std=std)


def mode_from_config(cfg):
    """The preprocessing mode a LLaVA-style model config asks for.

    LLaVA's `process_images` pads when `image_aspect_ratio == "pad"` and
    otherwise ("square", missing, None, anything else) hands the image
    straight to CLIPImageProcessor, i.e. mode "crop".  "resize" is accepted as an
    explicit tgllava extension.  "anyres" (LLaVA-NeXT) is not supported.
    """
    ratio = (cfg or {}).get("image_aspect_ratio")
    if ratio in ("pad", "resize"):
        return ratio
    if isinstance(ratio, str) and ratio.startswith("anyres"):
        raise ValueError(f"image_aspect_ratio {ratio!r} (LLaVA-NeXT tiling) is not supported")
    return "crop"
