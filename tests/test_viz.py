"""Tests for tgllava.attention (attention maps), tgllava.viz (overlays, figures,
the `viz` command) and the ablation switches of Model.visual_tokens.

The LLM map is checked against a NumPy float64 forward of the Llama decoder
of the golden llava15-tiny checkpoint (per-layer softmax probabilities,
summed over heads and layers), the DP map against a NumPy reimplementation
of the TG-DP perceiver (SPEC 2.6) of tg-vicuna-tiny, the FOM map against the
golden FOM mask.  The golden models are golden_util's, materialized and loaded
once per test session.
"""

import argparse
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import tgllava
from tgllava import viz
from tgllava.attention import attention_map, tile_mosaic
from tgllava.checkpoint import read_tensors
from tgllava.errors import ShapeError, TgError
from golden_util import GOLDEN, checkpoint, model


def golden_io(name):
    return dict(np.load(os.path.join(GOLDEN, name, "io.npz")))


# ---------------------------------------------------------------- NumPy references

def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def llama_attention_probs(W, cfg, emb):
    """NumPy Llama decoder over embeddings (n, H): (summed probs (n, n), final logits (n, V))."""
    H, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads") or heads
    hd, eps, n = H // heads, cfg["rms_norm_eps"], emb.shape[0]
    inv = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None]
    cos, sin = np.concatenate([np.cos(ang)] * 2, 1), np.concatenate([np.sin(ang)] * 2, 1)

    def rope(x):  # (heads, n, hd)
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    mask = np.triu(np.full((n, n), -np.inf), 1)
    total = np.zeros((n, n))
    x = emb.astype(np.float64)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, heads, hd).transpose(1, 0, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, kvh, hd).transpose(1, 0, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, kvh, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = heads // kvh
        k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
        probs = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask)
        total += probs.sum(axis=0)
        o = (probs @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + (silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    logits = rms(x, W["model.norm.weight"], eps) @ W["lm_head.weight"].T
    return total, logits


def perceiver_image_probs(W, tile_feats, text_hidden, heads=16, eps=1e-5):
    """NumPy TG-DP (SPEC 2.6) up to the image layer: its attention (L, 4Np + L) summed over heads."""
    pf = "model.mm_patch_encoder."
    lin = lambda x, name: x @ W[name + ".weight"].T + W[name + ".bias"]  # noqa: E731
    x = tile_feats + W[pf + "position_embedding.weight"][:tile_feats.shape[0]]
    x = lin(gelu(lin(x, pf + "pre_mlp.0")), pf + "pre_mlp.2")
    t = lin(text_hidden, pf + "resize_linear")
    lat = W[pf + "perceiver.latents"].astype(np.float64)
    L = lat.shape[0]
    probs = None
    for i, ctx in enumerate([t, x]):
        p = f"{pf}perceiver.layers.{i}."
        Wq, Wk = W[p + "self_attn.q_proj.weight"], W[p + "self_attn.k_proj.weight"]
        hd = Wq.shape[0] // heads
        kvh = Wk.shape[0] // hd
        l = rms(lat, W[p + "input_latents_norm.weight"], eps)
        c = np.concatenate([rms(ctx, W[p + "input_context_norm.weight"], eps), l], 0)
        q = (l @ Wq.T).reshape(L, heads, hd).transpose(1, 0, 2)
        k = np.repeat((c @ Wk.T).reshape(-1, kvh, hd).transpose(1, 0, 2), heads // kvh, axis=0)
        v = np.repeat((c @ W[p + "self_attn.v_proj.weight"].T).reshape(-1, kvh, hd).transpose(1, 0, 2), heads // kvh, axis=0)
        pr = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(hd))
        probs = pr.sum(axis=0)
        lat = lat + (pr @ v).transpose(1, 0, 2).reshape(L, heads * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(lat, W[p + "post_attention_layernorm.weight"], eps)
        lat = lat + (silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    return probs


# ---------------------------------------------------------------- maps against NumPy

@pytest.mark.slow
def test_llm_map_matches_numpy_llava15():
    m, d = model("llava15-tiny"), golden_io("llava15-tiny")
    ids, pix = d["input_ids"], d["pixel_values"]
    maps = attention_map(m, input_ids=ids, pixels=pix)
    pos = int(np.flatnonzero(ids == -200)[0])
    vis = m.visual_tokens(pix)[0].astype(np.float64)
    W = {k: v.astype(np.float64) for k, v in read_tensors(checkpoint("llava15-tiny")[0]).items()}
    emb = np.concatenate([W["model.embed_tokens.weight"][ids[:pos]], vis, W["model.embed_tokens.weight"][ids[pos + 1:]]])
    total, logits = llama_attention_probs(W, m.config, emb)
    assert np.abs(logits - d["logits"]).max() <= 2e-3  # the reference forward itself is right

    q0, q1 = maps.instruction
    assert (q0, q1) == (pos + 576, len(ids) - 1 + 576)
    block = total[q0:q1, pos:pos + 576]
    assert maps.llm_tokens.shape == (q1 - q0, 24, 24)
    assert np.abs(maps.llm_tokens.reshape(q1 - q0, -1) - block).max() <= 1e-4
    assert maps.llm.shape == (24, 24)
    assert np.abs(maps.llm - block.sum(0).reshape(24, 24)).max() <= 1e-4
    assert np.isclose(maps.llm_norm.sum(), 1.0, atol=1e-5)
    assert maps.dp is None and maps.fom is None


@pytest.fixture(scope="module")
def vicuna_maps():
    m, d = model("tg-vicuna-tiny"), golden_io("tg-vicuna-tiny")
    return m, d, attention_map(m, input_ids=d["input_ids"], pixels=d["pixel_values"], text_ids=d["text_guide_ids"])


@pytest.mark.slow
def test_dp_map_matches_numpy(vicuna_maps):
    m, d, maps = vicuna_maps
    feats = m.vision_features(tgllava.tile(d["pixel_values"])).reshape(-1, 1024).astype(np.float64)
    hidden = m.text_tower(d["text_guide_ids"])[0][0].astype(np.float64)
    assert np.abs(hidden - d["text_hidden"]).max() <= 1e-3
    W = {k: v.astype(np.float64) for k, v in read_tensors(checkpoint("tg-vicuna-tiny")[0]).items()
         if k.startswith("model.mm_patch_encoder.")}
    probs = perceiver_image_probs(W, feats, hidden)
    assert np.abs(m._core.dp_attention(m._sequence(d["input_ids"], d["pixel_values"], d["text_guide_ids"])) - probs).max() <= 1e-4
    expected = tile_mosaic(probs[:, :4 * 576].sum(0), 24)
    assert maps.dp.shape == (48, 48)
    assert np.abs(maps.dp - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    # the mosaic puts tile 1 (top-right) in the top-right quarter
    assert np.array_equal(tile_mosaic(np.arange(4 * 576), 24)[:24, 24:], np.arange(576, 1152).reshape(24, 24))


@pytest.mark.slow
def test_fom_map_is_mask_norm(vicuna_maps):
    _, d, maps = vicuna_maps
    expected = np.linalg.norm(d["fom_mask"].astype(np.float64), axis=1).reshape(24, 24)
    assert maps.fom.shape == (24, 24)
    assert np.abs(maps.fom - expected).max() <= 1e-3
    assert maps.llm.shape == (24, 24) and np.all(maps.llm >= 0)
    assert maps["llm"] is maps.llm and set(maps.as_dict()) == {"llm", "llm_norm", "llm_tokens", "dp", "fom"}


def test_maps_switched_off():
    m, d = model("tg-vicuna-tiny"), golden_io("tg-vicuna-tiny")
    maps = attention_map(m, input_ids=d["input_ids"], pixels=d["pixel_values"], use_fom=False, use_dp=False)
    assert maps.dp is None and maps.fom is None
    assert maps.instruction == (4 + 576, len(d["input_ids"]) - 1 + 576)


# ---------------------------------------------------------------- ablation switches

@pytest.mark.slow
def test_ablation_switches_match_golden():
    m, d = model("tg-vicuna-tiny"), golden_io("tg-vicuna-tiny")
    pix, tid = d["pixel_values"], d["text_guide_ids"]
    for key, fom, dp in (("visual_tokens_fom_only", True, False), ("visual_tokens_dp_only", False, True),
                         ("visual_tokens_baseline", False, False)):
        got = m.visual_tokens(pix, tid, use_fom=fom, use_dp=dp)[0]
        assert got.shape == d[key].shape, key
        assert np.abs(got - d[key]).max() <= 1e-3, key
    got64 = m.visual_tokens(pix, tid, n_latents=64)[0]
    assert np.abs(got64 - d["visual_tokens"]).max() <= 1e-3
    got32 = m.visual_tokens(pix, tid, n_latents=32)[0]
    assert got32.shape == (576 + 32, 256)
    assert np.abs(got32[:576] - d["visual_tokens"][:576]).max() <= 1e-3
    assert m._core.visual_token_count(True, 32) == 608 and m._core.visual_token_count(False, 32) == 576


# ---------------------------------------------------------------- overlay / figure

def test_colormap_ends():
    c = viz.colormap(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c.shape == (3, 3)
    assert c[0, 2] > 100 and c[0, 0] == 0  # blue at the bottom
    assert c[2, 0] > 100 and c[2, 2] == 0  # red at the top
    assert np.array_equal(viz.colormap(np.array([0.25]), "gray")[0], [64, 64, 64])
    with pytest.raises(ValueError, match="unknown colormap"):
        viz.colormap([0.1], "viridis_nope")


def test_overlay_sizes_and_heat():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    amap = np.zeros((24, 24))
    amap[:12, :12] = 1.0  # hot top-left
    out = viz.overlay(img, amap, alpha=1.0, colorbar=False, size=96)
    assert out.size == (96, 96) and out.mode == "RGB"
    px = np.asarray(out).astype(int)
    assert px[5, 5, 0] > 100 and px[5, 5, 1] < 30 and px[5, 5, 2] < 30  # (dark) red where the map is high
    assert px[90, 90, 2] > 100 and px[90, 90, 0] < 50  # blue where it is low
    bar = viz.overlay(img, amap, size=96)
    assert bar.size == (96 + viz.BAR_GAP + viz.BAR_WIDTH + viz.LABEL_WIDTH, 96)
    # alpha 0 gives the padded picture: mean-colour bands above and below the black image
    plain = np.asarray(viz.overlay(img, amap, alpha=0.0, colorbar=False, size=96))
    assert tuple(plain[2, 48]) == (122, 116, 104) and tuple(plain[48, 48]) == (0, 0, 0)


def test_overlay_bad_input(tmp_path):
    img = Image.new("RGB", (32, 32))
    with pytest.raises(ShapeError, match="2-D"):
        viz.overlay(img, np.zeros((4, 24, 24)))
    with pytest.raises(ShapeError, match="2-D"):
        viz.overlay(img, np.zeros((0, 5)))
    with pytest.raises(ShapeError, match="NaN"):
        viz.overlay(img, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(img, np.zeros((3, 3)), alpha=2)
    with pytest.raises(TgError, match="no_such"):
        viz.overlay(str(tmp_path / "no_such.png"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least one"):
        viz.figure([])
    with pytest.raises(TypeError, match="pairs"):
        viz.figure([("x", np.zeros((3, 3)))])


def test_figure_layout():
    a, b = Image.new("RGB", (50, 40), "red"), Image.new("RGB", (30, 60), "blue")
    fig = viz.figure([("A", a), ("B", b)], caption="Q")
    M, T = viz.MARGIN, viz.TITLE_HEIGHT
    assert fig.size == (M + 50 + M + 30 + M, M + T + T + 60 + M)
    assert fig.getpixel((M + 1, M + 2 * T + 1)) == (255, 0, 0)


def test_attention_map_bad_input():
    m, d = model("llava15-tiny"), golden_io("llava15-tiny")
    ids = d["input_ids"]
    with pytest.raises(ShapeError, match="exactly one image token"):
        attention_map(m, input_ids=ids[ids != -200], pixels=d["pixel_values"])
    with pytest.raises(ShapeError, match="no instruction tokens"):
        attention_map(m, input_ids=ids[:3], pixels=d["pixel_values"])
    with pytest.raises(ShapeError, match="pixels must be"):
        attention_map(m, input_ids=ids, pixels=np.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match="needs an image"):
        attention_map(m, question="what?", input_ids=ids)
    with pytest.raises(ValueError, match="needs a question"):
        attention_map(m, pixels=d["pixel_values"])
    # a picture and a question go through chat.prepare, with its checks on the question
    with pytest.raises(ShapeError, match="question is empty"):
        attention_map(m, question="   ", pixels=d["pixel_values"])
    with pytest.raises(TypeError, match="question must be a str"):
        attention_map(m, question=b"what?", pixels=d["pixel_values"])


# ---------------------------------------------------------------- the viz command

def _write_tokenizers(llm, clip):
    """Character-level tokenizers for a golden checkpoint (the golden sets ship none)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tgllava.tokenize import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [chr(c) for c in range(33, 127)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(llm, "tokenizer.json"))
    with open(os.path.join(llm, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>"}, f)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    with open(os.path.join(clip, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(clip, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")


@pytest.mark.slow
def test_viz_cli_writes_figure(tmp_path):
    llm, clip = checkpoint("tg-vicuna-tiny")
    _write_tokenizers(llm, clip)
    parser = argparse.ArgumentParser(prog="tgllava")
    sub = parser.add_subparsers(dest="command")
    viz.add_subparser(sub)
    out = tmp_path / "fig.png"
    image = os.path.join(GOLDEN, "tg-vicuna-tiny", "image.png")
    args = parser.parse_args(["viz", "--model", llm, "--clip", clip, "--image", image, "--question",
                              "What is in the picture?", "--out", str(out), "--compare-baseline"])
    assert args.func is viz.run_cli
    assert viz.run_cli(args) == 0
    fig = Image.open(out)
    S, M, T = 336, viz.MARGIN, viz.TITLE_HEIGHT
    panel = S + viz.BAR_GAP + viz.BAR_WIDTH + viz.LABEL_WIDTH
    # image, TG-LLaVA map, baseline map, DP map, FOM map
    assert fig.format == "PNG" and fig.size == (M + S + M + 4 * (panel + M), M + T + T + S + M)

    bad = parser.parse_args(["viz", "--model", llm, "--image", str(tmp_path / "missing.png"), "--question", "q",
                             "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        viz.run_cli(bad)
