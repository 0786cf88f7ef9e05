"""Attention maps of a loaded model, for the paper's Figure 5 style pictures.

`attention_map(m, image, question)` runs one prompt through the model and returns three spatial maps as
NumPy arrays (grid g = sqrt(num_patches), 24 for CLIP-L/336):

- `llm` (g, g): how much the LLM looks at each main image patch while it reads the instruction: every
  spliced position after the visual tokens up to the end of the prompt (the rest of the user turn and the
  template text up to where the answer starts, e.g. " ASSISTANT:").  The LLM's softmax attention
  probabilities from those tokens to the Np main image tokens (the DP tokens left out) are summed over
  heads, layers and tokens.  `llm_norm` is `llm / llm.sum()`; `llm_tokens` keeps the per-token maps
  (n_instruction, g, g).
- `dp` (2g, 2g): the TG-DP perceiver's attention in its image layer, from all its latents (`n_latents`
  does not change it) to the patches of the four 2x-upscaled tiles, summed over heads and latents, laid
  out as the 2x2 tile mosaic so that it lines up with the picture.  None without DP or with use_dp off.
- `fom` (g, g): the L2 norm over channels of the TG-FOM mask added to each patch feature.  None without
  FOM or with use_fom off.

The prompt is a picture and a question, made into a request as chat does it (chat.prepare: the model's
cached tokenizers, its chat template unless `conv_mode` is given), or explicit `input_ids` / `pixels` /
`text_ids`, as the tests drive golden checkpoints without tokenizer files.  Only the Model's public
methods are used (visual_token_count, llm_attention, dp_attention, text_tower, fom).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from . import _C, chat
from .errors import ShapeError
from .image import preprocess_for


@dataclass
class AttentionMaps:
    """The result of attention_map(); also readable as a dict (maps["llm"])."""

    llm: np.ndarray
    llm_norm: np.ndarray
    llm_tokens: np.ndarray
    dp: np.ndarray = None
    fom: np.ndarray = None
    grid: int = 0
    image_pos: int = 0
    instruction: tuple = (0, 0)
    input_ids: np.ndarray = field(default=None, repr=False)
    text_ids: np.ndarray = field(default=None, repr=False)
    pixels: np.ndarray = field(default=None, repr=False)

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return ["llm", "llm_norm", "llm_tokens", "dp", "fom"]

    def as_dict(self):
        return {k: getattr(self, k) for k in self.keys()}


def tile_mosaic(per_tile, g):
    """(4*g*g,) values in tile order TL, TR, BL, BR -> the (2g, 2g) mosaic of the four tiles."""
    t = np.asarray(per_tile).reshape(4, g, g)
    return np.block([[t[0], t[1]], [t[2], t[3]]])


def prepare_inputs(m, image=None, question=None, conv_mode=None, use_fom=True, use_dp=True, input_ids=None,
                   text_ids=None, pixels=None):
    """(input_ids, pixels, text_ids) of one prompt: the explicit arrays given, the rest as chat.prepare builds
    them from the picture and the question."""
    if pixels is None and image is None:
        raise ValueError("attention_map needs an image (or pixels=...)")
    pixels = np.asarray(preprocess_for(m, image) if pixels is None else pixels, dtype=np.float32)
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.shape != (3, m.image_size, m.image_size):
        raise ShapeError(f"pixels must be (3, {m.image_size}, {m.image_size}), got shape {pixels.shape}")

    if input_ids is None or (m.has_tg and (use_fom or use_dp) and text_ids is None):
        if question is None:
            raise ValueError("attention_map needs a question (or input_ids=... and text_ids=...)")
        request = chat.prepare(m, pixels, question, conv_mode, use_fom, use_dp)
        input_ids = request["input_ids"] if input_ids is None else input_ids
        text_ids = request["text_ids"] if text_ids is None else text_ids
    input_ids = np.asarray(input_ids).reshape(-1).astype(np.int64)
    n_images = int(np.sum(input_ids == _C.IMAGE_TOKEN))
    if n_images != 1:
        raise ShapeError(f"input_ids must hold exactly one image token ({_C.IMAGE_TOKEN}), found {n_images}")
    if text_ids is not None:
        text_ids = np.asarray(text_ids).reshape(-1).astype(np.int64)
    return input_ids, pixels, text_ids


def attention_map(m, image=None, question=None, conv_mode=None, use_fom=True, use_dp=True, n_latents=None,
                  input_ids=None, text_ids=None, pixels=None):
    """LLM, DP and FOM attention maps of one prompt (see the module docstring); returns AttentionMaps."""
    input_ids, pixels, text_ids = prepare_inputs(m, image, question, conv_mode, use_fom, use_dp, input_ids,
                                                 text_ids, pixels)
    Np = m.num_patches  # a square grid of g x g patches
    g = math.isqrt(Np)
    count = m.visual_token_count(use_dp, n_latents)
    pos = int(np.flatnonzero(input_ids == _C.IMAGE_TOKEN)[0])
    q0, q1 = pos + count, min(len(input_ids) - 1 + count, m.sizes["max_len"])
    if q0 >= q1:
        raise ShapeError("the prompt has no instruction tokens after the image (put the question after <image>)")

    per_token = np.asarray(m.llm_attention(input_ids, pixels, text_ids, queries=(q0, q1), keys=(pos, pos + Np),
                                           use_fom=use_fom, use_dp=use_dp, n_latents=n_latents), dtype=np.float32)
    llm = per_token.sum(axis=0).reshape(g, g)
    total = float(llm.sum())
    llm_norm = llm / total if total > 0 else np.zeros_like(llm)

    dp = None
    if m.has_dp and use_dp:
        probs = np.asarray(m.dp_attention(pixels, text_ids))
        dp = tile_mosaic(probs[:, :4 * Np].sum(axis=0), g).astype(np.float32)

    fom = None
    if m.has_fom and use_fom:
        _, pooled = m.text_tower(text_ids)
        mask = np.asarray(m.fom(pooled))[0]
        if mask.shape[0] != Np:
            raise ShapeError(f"the FOM mask has {mask.shape[0]} rows, expected {Np} patches")
        fom = np.linalg.norm(mask.astype(np.float64), axis=1).reshape(g, g).astype(np.float32)

    return AttentionMaps(llm=llm, llm_norm=llm_norm.astype(np.float32), llm_tokens=per_token.reshape(-1, g, g), dp=dp,
                         fom=fom, grid=g, image_pos=pos, instruction=(q0, q1), input_ids=input_ids, text_ids=text_ids,
                         pixels=pixels)
