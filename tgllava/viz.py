"""Heatmap overlays and Figure 5 style comparison figures, with PIL only.

`overlay(image, map)` colours a 2-D map with a small built-in colormap ("jet", "hot" or "gray"), resizes
it bilinearly to the picture as the model sees it (padded to a square of the CLIP mean colour, resized to
the model's input size) and blends the two, with a colour bar on the right labelled with the map's minimum
and maximum.  `figure(panels)` puts titled panels side by side in one image.  Text is PIL's default font
at `text_size` pixels, drawn word by word with a gap of a third of its height (the font's own space, 2-3
pixels wide, ran words together); bars, margins and title rows scale with the text.

`add_subparser(subparsers)` registers the `viz` command and `run_cli(args)` runs it: one PNG (panels
--size pixels wide, --dpi recorded in the file) of the picture, the TG-LLaVA LLM attention map of the
question (tgllava.attention), with --compare-baseline the same checkpoint with FOM and DP switched off,
and the DP and FOM maps when the checkpoint has them.
"""

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ShapeError
from .image import CLIP_MEAN, expand_to_square, load_image

# colormap name -> the (r, g, b) channels of values x in [0, 1]
_CHANNELS = {
    "jet": lambda x: [np.clip(1.5 - np.abs(4 * x - k), 0, 1) for k in (3, 2, 1)],
    "hot": lambda x: [np.clip(3 * x - k, 0, 1) for k in (0, 1, 2)],
    "gray": lambda x: [x, x, x],
}
CMAPS = tuple(_CHANNELS)
TEXT_SIZE = 12      # text height in pixels by default; the sizes below are for it and scale with the text
BAR_WIDTH = 14
BAR_GAP = 6
LABEL_WIDTH = 58
TITLE_HEIGHT = 22
MARGIN = 8
PANEL_SIZE = 336    # the panel side at which build_figure's text is TEXT_SIZE (larger panels: larger text)


def _check_cmap(cmap):
    if cmap not in _CHANNELS:
        raise ValueError(f"unknown colormap {cmap!r}; choose one of {', '.join(CMAPS)}")


def colormap(values, cmap="jet"):
    """Values in [0, 1] (any shape) -> uint8 RGB of shape values.shape + (3,)."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    _check_cmap(cmap)
    return np.round(np.stack(_CHANNELS[cmap](x), axis=-1) * 255).astype(np.uint8)


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


def _font(text_size):
    try:
        return ImageFont.load_default(size=text_size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _scaled(n, text_size):
    """Layout size `n` (for TEXT_SIZE) at `text_size`."""
    return max(1, round(n * text_size / TEXT_SIZE))


def _check_text_size(text_size):
    if isinstance(text_size, bool) or not isinstance(text_size, int) or text_size < 1:
        raise ValueError(f"text_size must be a positive integer, got {text_size!r}")


def _word_gap(draw, font, text_size):
    return max(draw.textlength(" ", font=font), text_size / 3)


def _text_width(draw, text, font, text_size):
    """The width draw_text gives `text`."""
    words = str(text).split(" ")
    return sum(draw.textlength(w, font=font) for w in words) + _word_gap(draw, font, text_size) * (len(words) - 1)


def _draw_text(draw, xy, text, font, text_size):
    """Black `text` at xy, word by word with a gap of at least a third of the text height."""
    x, y = xy
    gap = _word_gap(draw, font, text_size)
    for word in str(text).split(" "):
        draw.text((x, y), word, fill="black", font=font)
        x += draw.textlength(word, font=font) + gap


def overlay(image, amap, alpha=0.5, cmap="jet", size=None, colorbar=True, text_size=TEXT_SIZE):
    """RGB PIL image: `amap` as a heatmap over `image` (padded and resized as the model sees it).

    image: anything tgllava.image.load_image accepts (path, bytes, PIL, uint8 array).
    amap: 2-D array (e.g. 24x24 or 48x48), stretched over the whole picture.
    alpha: heatmap weight in [0, 1]; size: side in pixels (default 336);
    colorbar: draw a colour bar on the right labelled with the map's min and max, in text of
    text_size pixels (the bar's width scales with it).
    """
    a = _check_map(amap)
    _check_text_size(text_size)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_cmap(cmap)
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

    bar_gap, bar_width = _scaled(BAR_GAP, text_size), _scaled(BAR_WIDTH, text_size)
    out = Image.new("RGB", (size + bar_gap + bar_width + _scaled(LABEL_WIDTH, text_size), size), "white")
    out.paste(blended, (0, 0))
    ramp = np.linspace(1.0, 0.0, size)[:, None].repeat(bar_width, axis=1)
    x0 = size + bar_gap
    out.paste(Image.fromarray(colormap(ramp, cmap), "RGB"), (x0, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle([x0, 0, x0 + bar_width - 1, size - 1], outline="black")
    font = _font(text_size)
    tx = x0 + bar_width + _scaled(4, text_size)
    draw.line([x0 + bar_width, 0, tx - 1, 0], fill="black")
    draw.line([x0 + bar_width, size - 1, tx - 1, size - 1], fill="black")
    draw.text((tx, 0), f"{hi:.3g}", fill="black", font=font)
    bbox = draw.textbbox((0, 0), f"{lo:.3g}", font=font)
    draw.text((tx, size - 1 - (bbox[3] - bbox[1]) - 2), f"{lo:.3g}", fill="black", font=font)
    return out


def figure(panels, caption=None, text_size=TEXT_SIZE):
    """One RGB PIL image with `panels` (a list of (title, PIL image)) side by side, titles above each
    (a panel's column is as wide as its title when that is wider), in text of text_size pixels."""
    panels = list(panels)
    if not panels:
        raise ValueError("figure needs at least one panel")
    for item in panels:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Image.Image)):
            raise TypeError("figure panels must be (title, PIL image) pairs")
    _check_text_size(text_size)
    font = _font(text_size)
    margin, title_height = _scaled(MARGIN, text_size), _scaled(TITLE_HEIGHT, text_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    columns = [max(im.width, int(np.ceil(_text_width(measure, title, font, text_size)))) for title, im in panels]
    top = margin + (title_height if caption else 0)
    width = margin + sum(c + margin for c in columns)
    if caption:
        width = max(width, 2 * margin + int(np.ceil(_text_width(measure, caption, font, text_size))))
    height = top + title_height + max(im.height for _, im in panels) + margin
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    if caption:
        _draw_text(draw, (margin, margin), caption, font, text_size)
    x = margin
    for (title, im), column in zip(panels, columns):
        _draw_text(draw, (x, top + _scaled(4, text_size)), title, font, text_size)
        out.paste(im.convert("RGB"), (x, top + title_height))
        x += column + margin
    return out


# ---------------------------------------------------------------- command line

def add_subparser(subparsers):
    """Register `viz` on an argparse subparsers object; returns the new parser."""
    from .cli import add_options, command_parser

    p = command_parser(
        subparsers, "viz", "attention maps of a question over a picture (paper Figure 5)",
        "Write a PNG with the picture as the model sees it, the LLM attention map of the question's tokens over "
        "the image patches and, when the checkpoint has them, the TG-DP and TG-FOM maps.",
        ["tgllava viz --model demo/llm --image demo/image.png --question 'What is in this image?' --out fig.png",
         "tgllava viz --model LLM_DIR --image cat.jpg --question 'Where is the cat?' --out fig.png --size 672 "
         "--dpi 300"], run_cli)
    add_options(p, "--model", "--clip")
    p.add_argument("--image", required=True, metavar="PATH", help="input picture")
    p.add_argument("--question", required=True, metavar="TEXT", help="the question whose attention is drawn")
    p.add_argument("--out", required=True, metavar="PNG", help="output image file")
    p.add_argument("--compare-baseline", action="store_true",
                   help="add the map of the same checkpoint with FOM and DP switched off")
    add_options(p, "--device", "--conv-mode")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity from 0 to 1 (default 0.5)")
    p.add_argument("--cmap", default="jet", choices=CMAPS, help="colormap (default jet)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="side of each panel in pixels (default: the model's input size, 336 for CLIP "
                        f"ViT-L/14-336); text and colour bars grow with panels above {PANEL_SIZE}")
    p.add_argument("--dpi", type=int, default=None, metavar="N",
                   help="resolution recorded in the PNG, for print layout (a 336-pixel panel at --dpi 300 is "
                        "1.12 inches wide; default: none recorded)")
    return p


def build_figure(m, image, question, conv_mode=None, compare_baseline=False, alpha=0.5, cmap="jet", size=None,
                 **inputs):
    """The Figure 5 style PIL image for one model, picture and question (see run_cli).

    size: the side of each panel in pixels (default the model's input size, m.image_size); text,
    colour bars and margins grow with panels larger than PANEL_SIZE.  For print, record a resolution
    when saving: fig.save("fig.png", dpi=(300, 300)).
    """
    from .attention import attention_map

    size = m.image_size if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    text_size = max(TEXT_SIZE, round(TEXT_SIZE * size / PANEL_SIZE))
    img = load_image(image)
    maps = attention_map(m, img, question, conv_mode=conv_mode, **inputs)
    name = "TG-LLaVA" if m.has_tg else "LLaVA"
    heat = functools.partial(overlay, img, alpha=alpha, cmap=cmap, size=size, text_size=text_size)
    panels = [("image", model_view(img, size)), (f"{name}: LLM attention", heat(maps.llm))]
    if compare_baseline:
        base = attention_map(m, img, question, conv_mode=conv_mode, use_fom=False, use_dp=False,
                             **{k: v for k, v in inputs.items() if k != "text_ids"})
        panels.append(("baseline (FOM, DP off)", heat(base.llm)))
    tg_maps = (("DP latents -> tiles", maps.dp), ("FOM mask norm", maps.fom))
    panels += [(title, heat(amap)) for title, amap in tg_maps if amap is not None]
    return figure(panels, caption=f"Q: {question}", text_size=text_size)


def run_cli(args):
    """Run `tgllava viz` from parsed arguments; writes args.out and returns 0."""
    from .cli import load_model

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out {args.out}: folder {out_dir} does not exist")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {args.size}")
    if args.dpi is not None and args.dpi < 1:
        raise ValueError(f"--dpi must be positive, got {args.dpi}")
    m = load_model(args, image=args.image)
    fig = build_figure(m, args.image, args.question, conv_mode=args.conv_mode, compare_baseline=args.compare_baseline,
                       alpha=args.alpha, cmap=args.cmap, size=args.size)
    fig.save(args.out, format="PNG", **({"dpi": (args.dpi, args.dpi)} if args.dpi else {}))
    print(f"wrote {args.out} ({fig.width}x{fig.height})")
    return 0
