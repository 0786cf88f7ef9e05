"""Compact CPU weight formats (float16, bfloat16, int8, int4): ops against NumPy twins, the portable path
against the AVX2 path, batch invariance, and whole models against the float32 golden outputs.

The NumPy twins quantise exactly as csrc/cpu/quant.c is documented to (blocks of 32 input features, a float16
scale per block; int8 symmetric d = max|w|/127, int4 d = (w of largest |w|) / -8, value d * (q - 8)), so the
embedding op (which returns stored rows dequantised) can be compared value by value.  The linear op is
compared with activations(x) @ (those rows)^T, where activations() is the activation rule of backend.h
(bfloat16 / float16 rounding, q8_0 quantisation for the block formats): what is left is float rounding.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import tgllava
from tgllava import _C
from golden_util import SETS, checkpoint, io

CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "int8": 3, "int4": 4}
COMPACT = ["float16", "bfloat16", "int8", "int4"]


def f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def bf16(a):
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return (bits.astype(np.uint32) << 16).view(np.float32)


def twin(w, fmt):
    """The float32 values a weight stored in `fmt` holds."""
    w = np.asarray(w, np.float32)
    if fmt == "float32":
        return w
    if fmt == "float16":
        return f16(w)
    if fmt == "bfloat16":
        return bf16(w)
    blocks = w.reshape(w.shape[0], -1, 32)
    if fmt == "int8":
        d = f16(np.abs(blocks).max(-1) / np.float32(127))
        inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
        q = np.clip(np.rint(blocks * inv[..., None]), -127, 127)
        return (q * d[..., None]).astype(np.float32).reshape(w.shape)
    idx = np.abs(blocks).argmax(-1)
    mx = np.take_along_axis(blocks, idx[..., None], -1)[..., 0]
    d = f16(mx / np.float32(-8))
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(blocks * inv[..., None]) + 8, 0, 15)
    return ((q - 8) * d[..., None]).astype(np.float32).reshape(w.shape)


def q8_0(x):
    """Activations as the int8/int4 products take them: per 32 features d = max|x| / 127 (float32),
    q = round-half-even(x * (1 / d)) in [-127, 127]; returns d * q."""
    b = np.asarray(x, np.float32).reshape(x.shape[0], -1, 32)
    d = (np.abs(b).max(-1) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(b * inv[..., None]), -127, 127)
    return (q * d[..., None]).astype(np.float32).reshape(x.shape)


def activations(x, fmt):
    """The activation rule of backend.h: x in the precision a product with fmt weights takes it."""
    if fmt == "bfloat16":
        return bf16(x)
    if fmt == "float16":
        return f16(np.clip(x, -65504, 65504))
    if fmt in ("int8", "int4"):
        return q8_0(x)
    return np.asarray(x, np.float32)


def stored(w, fmt):
    """The rows the backend holds for w in fmt, read back through the embedding op."""
    ids = np.arange(w.shape[0], dtype=np.int32)
    return _C.op_elementwise("cpu", "embedding", np.ascontiguousarray(w, np.float32), ids, CODES[fmt])


def weights(rows, cols, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(5, size=(rows, cols)).astype(np.float32) * 0.05
    w[0, :32] = 0.0  # an all-zero block (scale 0)
    return w


@pytest.mark.parametrize("fmt", ["float32"] + COMPACT)
def test_stored_values_match_numpy_twin(fmt):
    w = weights(19, 96, 1)
    got, want = stored(w, fmt), twin(w, fmt)
    step = np.abs(want - w).max() * 2 + 1e-12
    mismatch = got != want
    # the twin rounds like the C code; a tie may round the other way, never by more than one step
    assert mismatch.mean() < 1e-3 and (np.abs(got - want) <= step).all()
    if fmt in ("float32", "float16", "bfloat16"):
        assert not mismatch.any()


@pytest.mark.parametrize("fmt", ["float32"] + COMPACT)
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 9, 16, 17, 577])
def test_linear_matches_numpy(fmt, M):
    cols = 37 if fmt in ("float32", "float16", "bfloat16") else 96  # odd widths where the format allows
    rows = 19  # not a multiple of the 24-row thread split, nor of the 8-row groups of the block formats
    w = weights(rows, cols, 2)
    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    want = activations(x, fmt).astype(np.float64) @ stored(w, fmt).astype(np.float64).T + bias
    got = _C.op_linear("cpu", x, w, bias, None, 0, CODES[fmt])
    assert np.abs(got - want).max() <= 1e-5 * (1 + np.abs(want).max())


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_blocks_need_multiple_of_32(fmt):
    with pytest.raises(tgllava.TgError, match="multiple of 32"):
        _C.op_linear("cpu", np.ones((1, 40), np.float32), np.ones((3, 40), np.float32), None, None, 0, CODES[fmt])


def test_float16_range_is_checked():
    w = np.full((2, 32), 1e5, np.float32)
    with pytest.raises(tgllava.TgError, match="float16 range"):
        stored(w, "float16")


@pytest.mark.parametrize("fmt", ["float32"] + COMPACT)
def test_rows_of_a_small_product_equal_the_row_alone(fmt):
    """Up to _C.CPU_EXACT_ROWS rows, every row of a product is bitwise that row's product alone (what makes
    a decode step of many sequences give each one its own generate() tokens)."""
    w = weights(45, 256, 5)
    x = np.random.default_rng(6).standard_normal((_C.CPU_EXACT_ROWS, 256)).astype(np.float32)
    alone = np.concatenate([_C.op_linear("cpu", x[i:i + 1], w, None, None, 0, CODES[fmt]) for i in range(len(x))])
    for M in (2, 7, 8, 9, 13, _C.CPU_EXACT_ROWS):
        assert np.array_equal(_C.op_linear("cpu", x[:M], w, None, None, 0, CODES[fmt]), alone[:M]), M


@pytest.mark.parametrize("fmt", COMPACT)
@pytest.mark.parametrize("cols", [64, 100, 2048])
def test_compact_products_are_batch_invariant_for_every_M(fmt, cols):
    """Compact formats: every row of a product of any M (prefill sizes too) is bitwise the row alone, and
    the rows of a product do not change with the thread count."""
    if fmt in ("int8", "int4") and cols % 32:
        cols = 96
    w = weights(53, cols, 8)
    x = np.random.default_rng(9).standard_normal((70, cols)).astype(np.float32)
    alone = np.concatenate([_C.op_linear("cpu", x[i:i + 1], w, None, None, 0, CODES[fmt]) for i in range(len(x))])
    for M in (3, 4, 5, 11, 17, 33, 70):
        assert np.array_equal(_C.op_linear("cpu", x[:M], w, None, None, 0, CODES[fmt]), alone[:M]), M
    # the same rows in another order and with other neighbours
    perm = np.random.default_rng(10).permutation(70)
    assert np.array_equal(_C.op_linear("cpu", x[perm], w, None, None, 0, CODES[fmt]), alone[perm])


def test_large_compact_products():
    """A product wider than the thread split and deeper than the caches, against the twin."""
    w = weights(300, 4096, 3)
    x = np.random.default_rng(4).standard_normal((20, 4096)).astype(np.float32)
    for fmt in COMPACT:
        want = activations(x, fmt).astype(np.float64) @ stored(w, fmt).astype(np.float64).T
        got = _C.op_linear("cpu", x, w, None, None, 0, CODES[fmt])
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), fmt


def test_activation_rule_edge_values():
    """float16 weights saturate activations at +-65504 (never inf); bfloat16 keeps a NaN a NaN; a block of
    activations with an inf or NaN gives NaN through the block formats (never a silent finite value)."""
    w = np.full((8, 32), 0.5, np.float32)
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 1e6
    y = _C.op_linear("cpu", x, w, None, None, 0, CODES["float16"])
    assert np.all(y == np.float32(65504 * 0.5))
    x[0, 0] = np.nan
    assert np.isnan(_C.op_linear("cpu", x, w, None, None, 0, CODES["bfloat16"])).all()
    for value in (np.inf, np.nan):
        x[0, 0] = value
        for fmt in ("int8", "int4"):
            assert np.isnan(_C.op_linear("cpu", x, w, None, None, 0, CODES[fmt])).all(), (fmt, value)


@pytest.mark.parametrize("fmt,value", [("int8", 1e7), ("int4", 6e5)])
def test_block_scale_overflow_is_refused(fmt, value):
    """A block scale beyond float16 would make every product with that block NaN: refused at load."""
    w = np.zeros((4, 64), np.float32)
    w[2, 40] = value
    with pytest.raises(tgllava.TgError, match="overflows float16"):
        stored(w, fmt)
    stored(w / 100, fmt)  # the same matrix, smaller, is fine


_PORTABLE_SCRIPT = r"""
import json, sys, numpy as np
from tgllava import _C
rng = np.random.default_rng(7)
w = (rng.standard_normal((21, 160)) * 0.1).astype(np.float32)
out = {"kernels": _C.cpu_kernels()}
for code in range(5):
    for M in (1, 4, 8, 12, 16, 40):
        x = np.random.default_rng(M).standard_normal((M, 160)).astype(np.float32)
        out[f"{code}/{M}"] = _C.op_linear("cpu", x, w, None, None, 0, code).tolist()
    out[f"emb/{code}"] = _C.op_elementwise("cpu", "embedding", w, np.arange(21, dtype=np.int32), code).tolist()
x = np.random.default_rng(3).normal(0, 6, 1003).astype(np.float32)
for act in (2, 3, 4):  # vmath.c: the same exp rule on both paths
    out[f"act/{act}"] = _C.op_elementwise("cpu", "activation", x, None, act).tolist()
q = np.random.default_rng(4).normal(0, 3, (1, 9, 16)).astype(np.float32)
out["attn"] = _C.op_attention("cpu", q, q, q, 2, 2, 0.25, True, None, None, None, False).tolist()
json.dump(out, sys.stdout)
"""


def _run_kernels(env_value):
    env = dict(os.environ)
    env.pop("TGLLAVA_CPU_KERNELS", None)
    if env_value:
        env["TGLLAVA_CPU_KERNELS"] = env_value
    # run outside the checkout, so the child imports the tested (installed) tgllava, not the source tree
    r = subprocess.run([sys.executable, "-c", _PORTABLE_SCRIPT], env=env, capture_output=True, text=True, check=True,
                       cwd=tempfile.gettempdir())
    return json.loads(r.stdout)


def test_portable_path_gives_the_same_results():
    fast, portable = _run_kernels(None), _run_kernels("portable")
    assert portable["kernels"] == "portable"
    assert fast["kernels"] in ("avx2", "portable")
    for key, v in fast.items():
        if key == "kernels":
            continue
        a, b = np.array(v), np.array(portable[key])
        if key.startswith(("emb/", "act/", "attn")) or key[0] in "34":
            # dequantisation is exact on both paths; the block formats' products are one fma per block on both;
            # activations and softmax follow vmath.c's one exp rule on both
            assert np.array_equal(a, b), key
        else:
            assert np.abs(a - b).max() <= 1e-6 * (1 + np.abs(a).max()), key  # only the summation order differs


# ---- whole models against the float32 golden outputs

# The bars of the activation rule (backend.h): bfloat16 rounds activations to 8 significant bits, float16
# to 11, int8/int4 quantise them per 32 features (q8_0).  int4 measures ~0.99 on the golden sets (uniform
# random weights, where no 4-bit block variant tried does better: the error is the 4-bit step itself).
COSINE = {"float16": 0.99995, "bfloat16": 0.9999, "int8": 0.9995, "int4": 0.98}


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def compact_models():
    cache = {}

    def get(name, fmt):
        if (name, fmt) not in cache:
            llm, clip = checkpoint(name)
            cache[name, fmt] = tgllava.load(llm, clip, dtype=fmt)
        return cache[name, fmt]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("fmt", COMPACT)
@pytest.mark.parametrize("name", SETS)
def test_golden_logits_in_compact_formats(name, fmt, compact_models):
    d, m = io(name), compact_models(name, fmt)
    lg = m.logits(d["input_ids"], d["pixel_values"], d.get("text_guide_ids"))
    assert cosine(lg, d["logits"]) >= COSINE[fmt]
    if fmt != "int4":
        assert int(np.argmax(lg[-1])) == int(np.argmax(d["logits"][-1]))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_unblockable_matrix_falls_back_to_float16(fmt, compact_models):
    m = compact_models("llava15-tiny", fmt)
    st = m.storage()
    assert "vision_model.embeddings.patch_embedding.weight" in st["float16"]  # 3*14*14 = 588 columns
    assert "model.embed_tokens.weight" in st[fmt]
    assert "lm_head.weight" in st["int8"]  # an int4 model keeps its output head in int8
    assert "model.norm.weight" in st["float32"]


def test_compact_weights_are_smaller(compact_models):
    sizes = {fmt: compact_models("tg-vicuna-tiny", fmt).weight_bytes for fmt in COMPACT}
    full = tgllava.load(*checkpoint("tg-vicuna-tiny"), dtype="float32").weight_bytes
    assert sizes["bfloat16"] < 0.55 * full and sizes["int8"] < 0.35 * full and sizes["int4"] < 0.2 * full


def test_default_dtype_rule():
    from tgllava.loader import default_dtype
    from tgllava.checkpoint import TensorRef

    def refs(n, dt="BF16"):
        return {"w": TensorRef("w", "x", dt, (int(n),))}
    assert default_dtype("cpu", refs(1e6)) == "float32"
    assert default_dtype("cpu", refs(3e9, "F16")) == "float16"
    assert default_dtype("cpu", refs(3e9, "BF16")) == "bfloat16"
    assert default_dtype("cpu", refs(7e9)) == "int8"
    assert default_dtype("cuda", refs(1e6)) == "bfloat16"


def test_cpu_formats_refused_on_gpu():
    with pytest.raises(ValueError, match="CPU format"):
        tgllava.load("nowhere", device="cuda", dtype="int4")
