"""Heatmap overlays and Figure 5 style comparison figures, with PIL only.

`overlay(image, map)` colours a 2-D map with a small built-in colormap
("jet", "hot" or "gray", computed in NumPy), resizes it bilinearly to the
picture as the model sees it (padded to a square with the CLIP mean colour
and resized to the model's input size) and blends the two, with a colour
bar on the right labelled with the map's minimum and maximum.
`figure(panels)` puts titled panels side by side in one image.

`add_subparser(subparsers)` registers the `viz` command and `run_cli(args)`
runs it: the picture, the TG-LLaVA LLM attention map of the question (see
tgllava.attention), with --compare-baseline the same checkpoint with FOM
and DP switched off, and the DP and FOM maps when the checkpoint has them,
written as one PNG.
"""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ShapeError
from .image import CLIP_MEAN, expand_to_square, load_image

CMAPS = ("jet", "hot", "gray")
BAR_WIDTH = 14
BAR_GAP = 6
LABEL_WIDTH = 58
TITLE_HEIGHT = 22
MARGIN = 8


def colormap(values, cmap="jet"):
    """Values in [0, 1] (any shape) -> uint8 RGB of shape values.shape + (3,)."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    if cmap == "jet":
        r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
        g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
        b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    elif cmap == "hot":
        r = np.clip(3 * x, 0, 1)
        g = np.clip(3 * x - 1, 0, 1)
        b = np.clip(3 * x - 2, 0, 1)
    elif cmap == "gray":
        r = g = b = x
    else:
        raise ValueError(f"unknown colormap {cmap!r}; choose one of {', '.join(CMAPS)}")
    return np.round(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def model_view(image, size=336, mean=CLIP_MEAN):
    """The picture as the model sees it: centred on a square of the CLIP mean colour, resized to size x size."""
    img = load_image(image)
    background = tuple(int(255 * c) for c in mean)
    return expand_to_square(img, background).resize((size, size), Image.BICUBIC)


def _check_map(amap):
    a = np.asarray(amap)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ShapeError(f"an attention map must be a non-empty 2-D array, got shape {a.shape}")
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise ShapeError(f"an attention map must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ShapeError("the attention map holds NaN or infinite values")
    return a


def _label(value):
    return f"{value:.3g}"


def overlay(image, amap, alpha=0.5, cmap="jet", size=None, colorbar=True):
    """RGB PIL image: `amap` as a heatmap over `image` (padded and resized as the model sees it).

    image: anything tgllava.image.load_image accepts (path, bytes, PIL, uint8 array).
    amap: 2-D array (e.g. 24x24 or 48x48), stretched over the whole picture.
    alpha: heatmap weight in [0, 1]; size: side in pixels (default 336);
    colorbar: draw a colour bar on the right labelled with the map's min and max.
    """
    a = _check_map(amap)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cmap not in CMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose one of {', '.join(CMAPS)}")
    size = int(size or 336)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    base = model_view(image, size)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    big = Image.fromarray(scaled.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    heat = Image.fromarray(colormap(np.asarray(big), cmap), "RGB")
    blended = Image.blend(base, heat, float(alpha))
    if not colorbar:
        return blended

    out = Image.new("RGB", (size + BAR_GAP + BAR_WIDTH + LABEL_WIDTH, size), "white")
    out.paste(blended, (0, 0))
    ramp = np.linspace(1.0, 0.0, size)[:, None].repeat(BAR_WIDTH, axis=1)
    x0 = size + BAR_GAP
    out.paste(Image.fromarray(colormap(ramp, cmap), "RGB"), (x0, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle([x0, 0, x0 + BAR_WIDTH - 1, size - 1], outline="black")
    font = ImageFont.load_default()
    tx = x0 + BAR_WIDTH + 4
    draw.line([x0 + BAR_WIDTH, 0, tx - 1, 0], fill="black")
    draw.line([x0 + BAR_WIDTH, size - 1, tx - 1, size - 1], fill="black")
    draw.text((tx, 0), _label(hi), fill="black", font=font)
    bbox = draw.textbbox((0, 0), _label(lo), font=font)
    draw.text((tx, size - 1 - (bbox[3] - bbox[1]) - 2), _label(lo), fill="black", font=font)
    return out


def figure(panels, caption=None):
    """One RGB PIL image with `panels` (a list of (title, PIL image)) side by side, titles above each."""
    panels = list(panels)
    if not panels:
        raise ValueError("figure needs at least one panel")
    for item in panels:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Image.Image)):
            raise TypeError("figure panels must be (title, PIL image) pairs")
    font = ImageFont.load_default()
    top = MARGIN + (TITLE_HEIGHT if caption else 0)
    width = MARGIN + sum(im.width + MARGIN for _, im in panels)
    height = top + TITLE_HEIGHT + max(im.height for _, im in panels) + MARGIN
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    if caption:
        draw.text((MARGIN, MARGIN), str(caption), fill="black", font=font)
    x = MARGIN
    for title, im in panels:
        draw.text((x, top + 4), str(title), fill="black", font=font)
        out.paste(im.convert("RGB"), (x, top + TITLE_HEIGHT))
        x += im.width + MARGIN
    return out


# ---------------------------------------------------------------- command line

def add_subparser(subparsers):
    """Register `viz` on an argparse subparsers object; returns the new parser."""
    p = subparsers.add_parser("viz", help="attention maps of a question over an image (paper Figure 5)",
                              description="Write a PNG with the image, the LLM attention map of the question's "
                                          "tokens over the image patches and, when present, the DP and FOM maps.")
    p.add_argument("--model", required=True, metavar="DIR", help="LLM checkpoint folder")
    p.add_argument("--clip", metavar="DIR", help="CLIP tower folder (default: from the model config)")
    p.add_argument("--image", required=True, metavar="PATH", help="input picture")
    p.add_argument("--question", required=True, metavar="TEXT", help="the instruction")
    p.add_argument("--out", required=True, metavar="PNG", help="output image file")
    p.add_argument("--compare-baseline", action="store_true",
                   help="add the map of the same checkpoint with FOM and DP switched off")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--conv-mode", default=None, help="chat template (default: guessed from the config)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default 0.5)")
    p.add_argument("--cmap", default="jet", choices=CMAPS, help="colormap (default jet)")
    p.set_defaults(func=run_cli)
    return p


def build_figure(m, image, question, conv_mode=None, compare_baseline=False, alpha=0.5, cmap="jet", **inputs):
    """The Figure 5 style PIL image for one model, picture and question (see run_cli)."""
    from .attention import attention_map

    img = load_image(image)
    size = m.image_size
    maps = attention_map(m, img, question, conv_mode=conv_mode, **inputs)
    name = "TG-LLaVA" if m.has_tg else "LLaVA"
    panels = [("image", model_view(img, size)),
              (f"{name}: LLM attention", overlay(img, maps.llm, alpha, cmap, size))]
    if compare_baseline:
        base = attention_map(m, img, question, conv_mode=conv_mode, use_fom=False, use_dp=False,
                             **{k: v for k, v in inputs.items() if k != "text_ids"})
        panels.append(("baseline (FOM, DP off)", overlay(img, base.llm, alpha, cmap, size)))
    if maps.dp is not None:
        panels.append(("DP latents -> tiles", overlay(img, maps.dp, alpha, cmap, size)))
    if maps.fom is not None:
        panels.append(("FOM mask norm", overlay(img, maps.fom, alpha, cmap, size)))
    return figure(panels, caption=f"Q: {question}")


def run_cli(args):
    """Run `tgllava viz` from parsed arguments; writes args.out and returns 0."""
    import tgllava

    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"--image {args.image}: no such file")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out {args.out}: folder {out_dir} does not exist")
    m = tgllava.load(args.model, getattr(args, "clip", None), device=getattr(args, "device", "cpu") or "cpu")
    fig = build_figure(m, args.image, args.question, conv_mode=getattr(args, "conv_mode", None),
                       compare_baseline=getattr(args, "compare_baseline", False),
                       alpha=getattr(args, "alpha", 0.5), cmap=getattr(args, "cmap", "jet"))
    fig.save(args.out, format="PNG")
    print(f"wrote {args.out} ({fig.width}x{fig.height})")
    return 0
