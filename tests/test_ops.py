"""Every backend op against a NumPy twin over several shapes (CPU), and against the CPU backend on a GPU.

Ops are reached through tgllava._C.op_* which upload inputs to the backend,
run one op and download the result.  GPU cases carry the `gpu` marker and
skip when no CUDA device is available.
"""
import math

import numpy as np
import pytest

from tgllava import _C, DeviceError, ShapeError, TgError

rng = np.random.default_rng(1)
ACT = {"none": 0, "gelu": 1, "quick_gelu": 2, "silu": 3, "gelu_tanh": 4}


def erf(x):
    return np.vectorize(math.erf)(x)


def act_np(x, a):
    x = x.astype(np.float64)
    return {0: x, 1: 0.5 * x * (1 + erf(x / np.sqrt(2))), 2: x / (1 + np.exp(-1.702 * x)), 3: x / (1 + np.exp(-x)),
            4: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))}[a]


def attention_np(q, k, v, nh, nkv, scale, causal=False, q_pos=None, kv_len=None, key_mask=None):
    B, Tq, _ = q.shape
    Tk = k.shape[1]
    hd = q.shape[2] // nh
    out = np.zeros(q.shape)
    probs = np.zeros((B, Tq, Tk))
    for b in range(B):
        for h in range(nh):
            kh = h // (nh // nkv)
            s = q[b, :, h * hd:(h + 1) * hd].astype(np.float64) @ k[b, :, kh * hd:(kh + 1) * hd].T * scale
            vis = np.ones((Tq, Tk), bool)
            if kv_len is not None:
                vis &= np.arange(Tk)[None] < kv_len[b]
            if causal:
                qp = q_pos[b] if q_pos is not None else Tk - Tq
                vis &= np.arange(Tk)[None] <= qp + np.arange(Tq)[:, None]
            if key_mask is not None:
                vis &= key_mask[b][None] != 0
            s = np.where(vis, s, -np.inf)
            mx = s.max(1, keepdims=True)
            p = np.where(vis, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0)
            den = p.sum(1, keepdims=True)
            p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
            probs[b] += p
            out[b, :, h * hd:(h + 1) * hd] = p @ v[b, :, kh * hd:(kh + 1) * hd]
    return out, probs


def devices():
    out = ["cpu"]
    if _C.built_with_cuda():
        out.append(pytest.param("cuda:0", marks=pytest.mark.gpu))
    return out


def need(dev):
    if dev != "cpu":
        try:
            _C.op_elementwise(dev, "activation", np.zeros(1, np.float32), None, 0)
        except DeviceError as e:
            pytest.skip(f"no usable CUDA device: {e}")


def tol(dev):
    return 2e-5 if dev == "cpu" else 1e-3


@pytest.mark.parametrize("dev", devices())
@pytest.mark.parametrize("M,N,K", [(1, 7, 5), (33, 64, 48), (130, 96, 200)])
@pytest.mark.parametrize("act", [0, 1, 2, 3, 4])
def test_linear(dev, M, N, K, act):
    need(dev)
    x = rng.normal(size=(M, K)).astype(np.float32)
    w = (rng.normal(size=(N, K)) / np.sqrt(K)).astype(np.float32)
    b = rng.normal(size=N).astype(np.float32)
    r = rng.normal(size=(M, N)).astype(np.float32)
    want = act_np(x.astype(np.float64) @ w.T + b, act) + r
    got = _C.op_linear(dev, x, w, b, r, act, 0)
    assert np.abs(got - want).max() < tol(dev) * 10
    got = _C.op_linear(dev, x, w, None, None, 0, 0)
    assert np.abs(got - x.astype(np.float64) @ w.T).max() < tol(dev) * 10


@pytest.mark.parametrize("dev", devices())
@pytest.mark.parametrize("R,D", [(1, 8), (17, 256), (5, 1000)])
def test_norms(dev, R, D):
    need(dev)
    x = rng.normal(2, 3, size=(R, D)).astype(np.float32)
    g, b = rng.normal(size=D).astype(np.float32), rng.normal(size=D).astype(np.float32)
    x64 = x.astype(np.float64)
    ln = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * g + b
    rms = x64 / np.sqrt((x64 ** 2).mean(1, keepdims=True) + 1e-6) * g
    assert np.abs(_C.op_norm(dev, x, g, b, 1e-5, False) - ln).max() < tol(dev) * 10
    assert np.abs(_C.op_norm(dev, x, g, None, 1e-6, True) - rms).max() < tol(dev) * 10


ATTN_CASES = [
    # B, Tq, Tk, nh, nkv, hd, causal, with q_pos, kv_len, key_mask
    (1, 577, 577, 4, 4, 16, False, False, False, False),
    (2, 9, 9, 4, 2, 8, True, False, False, True),
    (2, 64, 70, 16, 4, 12, False, False, False, True),
    (3, 1, 40, 4, 1, 16, True, True, True, False),
    (2, 3, 50, 2, 2, 32, True, True, False, False),
    (1, 200, 200, 2, 2, 64, True, False, False, False),
]


@pytest.mark.parametrize("dev", devices())
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention(dev, case):
    need(dev)
    B, Tq, Tk, nh, nkv, hd, causal, use_qpos, use_len, use_mask = case
    q = rng.normal(size=(B, Tq, nh * hd)).astype(np.float32)
    k = rng.normal(size=(B, Tk, nkv * hd)).astype(np.float32)
    v = rng.normal(size=(B, Tk, nkv * hd)).astype(np.float32)
    q_pos = np.array([Tk - Tq - i for i in range(B)], np.int32) if use_qpos else None
    kv_len = np.array([Tk - 2 * i for i in range(B)], np.int32) if use_len else None
    mask = (rng.random((B, Tk)) > 0.3).astype(np.int32) if use_mask else None
    if mask is not None:
        mask[:, 0] = 1
    scale = 1 / np.sqrt(hd)
    want, wprobs = attention_np(q, k, v, nh, nkv, scale, causal, q_pos, kv_len, mask)
    out, probs = _C.op_attention(dev, q, k, v, nh, nkv, scale, causal, q_pos, kv_len, mask, True)
    assert np.abs(out - want).max() < tol(dev) * 10
    assert np.abs(probs - wprobs).max() < tol(dev) * 10
    assert np.array_equal(_C.op_attention(dev, q, k, v, nh, nkv, scale, causal, q_pos, kv_len, mask, False), out)


@pytest.mark.parametrize("act", [2, 3, 4])
def test_cpu_sigmoid_activations_over_the_whole_range(act):
    """vmath.c's exp rule: within 1e-6 relative of float64 from -100 to 100, 0 or x at the far ends, NaN kept."""
    x = np.concatenate([np.linspace(-100, 100, 40001), [-1e30, -88.0, -87.5, 87.5, 88.5, 1e30, 0.0, -0.0, 1e-30]])
    x = x.astype(np.float32)
    got = _C.op_elementwise("cpu", "activation", x, None, act).astype(np.float64)
    with np.errstate(over="ignore"):  # e^(1.7e30) in the reference: inf, so its sigmoid is 0
        want = act_np(x, act)
    assert np.all(np.abs(got - want) <= 1e-6 * np.maximum(np.abs(want), 1e-2)), np.abs(got - want).max()
    nan = _C.op_elementwise("cpu", "activation", np.array([np.nan] * 9, np.float32), None, act)
    assert np.all(np.isnan(nan))


def test_cpu_softmax_of_far_scores_is_exact_zero():
    """A key 1000 below the best one gets probability 0, not e^-87 (the exp rule flushes below -87.3)."""
    q = np.ones((1, 6, 8), np.float32)
    k = np.ones((1, 6, 8), np.float32)
    k[0, 3] = -1000 / 8
    _, probs = _C.op_attention("cpu", q, k, k, 1, 1, 1.0, False, None, None, None, True)
    assert np.all(probs[0, :, 3] == 0) and np.allclose(probs[0, :, [0, 1, 2, 4, 5]], 0.2, atol=1e-6)


def test_attention_fully_masked_row_is_zero():
    q = rng.normal(size=(1, 6, 8)).astype(np.float32)
    k = rng.normal(size=(1, 6, 8)).astype(np.float32)
    mask = np.array([[0, 1, 1, 1, 1, 1]], np.int32)
    out = _C.op_attention("cpu", q, k, k, 1, 1, 1.0, True, None, None, mask, False)
    assert np.all(out[0, 0] == 0) and np.all(np.isfinite(out))


@pytest.mark.parametrize("dev", devices())
@pytest.mark.parametrize("act", [1, 2, 3, 4])
def test_activation(dev, act):
    need(dev)
    x = rng.normal(0, 4, size=(3, 1001)).astype(np.float32)
    assert np.abs(_C.op_elementwise(dev, "activation", x, None, act) - act_np(x, act)).max() < tol(dev)


@pytest.mark.parametrize("dev", devices())
def test_silu_mul_add_bcast_argmax_embedding(dev):
    need(dev)
    gu = rng.normal(size=(7, 2 * 33)).astype(np.float32)
    want = act_np(gu[:, :33], 3) * gu[:, 33:]
    assert np.abs(_C.op_elementwise(dev, "silu_mul", gu) - want).max() < tol(dev)
    y, x = rng.normal(size=(4, 50)).astype(np.float32), rng.normal(size=50).astype(np.float32)
    assert np.abs(_C.op_elementwise(dev, "add_bcast", y, x) - (y + x)).max() < 1e-6
    lg = rng.normal(size=(5, 1000)).astype(np.float32)
    lg[2, 10] = lg[2, 20] = 100.0  # first max wins
    am = _C.op_elementwise(dev, "argmax", lg)
    assert am.tolist() == np.argmax(lg, 1).tolist() and am[2] == 10
    table = rng.normal(size=(30, 12)).astype(np.float32)
    ids = np.array([0, 29, 5, 5], np.int32)
    assert np.array_equal(_C.op_elementwise(dev, "embedding", table, ids, 0), table[ids])
    with pytest.raises(TgError, match="out of range"):  # the backend's own check (test_op_backends.py)
        _C.op_elementwise(dev, "embedding", table, np.array([30], np.int32), 0)


@pytest.mark.parametrize("dev", devices())
def test_rope(dev):
    need(dev)
    R, nh, hd, theta = 6, 3, 8, 10000.0
    x = rng.normal(size=(R, nh * hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 100, 700, 5], np.int32)
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))
    xr = x.reshape(R, nh, hd).astype(np.float64)
    rot = np.concatenate([-xr[..., hd // 2:], xr[..., :hd // 2]], -1)
    want = (xr * cos[:, None] + rot * sin[:, None]).reshape(R, -1)
    assert np.abs(_C.op_elementwise(dev, "rope", x, pos, nh, theta) - want).max() < 1e-3


@pytest.mark.parametrize("dev", devices())
@pytest.mark.parametrize("B,C,S,P", [(1, 3, 28, 14), (2, 3, 42, 14), (1, 2, 8, 4)])
def test_im2col(dev, B, C, S, P):
    need(dev)
    x = rng.normal(size=(B, C, S, S)).astype(np.float32)
    G = S // P
    want = x.reshape(B, C, G, P, G, P).transpose(0, 2, 4, 1, 3, 5).reshape(B * G * G, C * P * P)
    assert np.array_equal(_C.op_elementwise(dev, "im2col", x, None, P), want)


def bilinear2x_np(x):
    """PyTorch F.interpolate(scale_factor=2, mode='bilinear', align_corners=False), in float64."""
    S = x.shape[-1]
    src = np.maximum((np.arange(2 * S) + 0.5) / 2 - 0.5, 0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, S - 1)
    l1 = src - i0
    rows = x[..., i0, :] * (1 - l1)[:, None] + x[..., i1, :] * l1[:, None]
    return rows[..., i0] * (1 - l1) + rows[..., i1] * l1


@pytest.mark.parametrize("dev", devices())
@pytest.mark.parametrize("B,C,S", [(1, 3, 14), (2, 3, 336), (1, 1, 5)])
def test_upscale_tiles(dev, B, C, S):
    need(dev)
    x = rng.normal(size=(B, C, S, S)).astype(np.float32)
    up = bilinear2x_np(x.astype(np.float64))
    want = np.stack([up[..., :S, :S], up[..., :S, S:], up[..., S:, :S], up[..., S:, S:]], 1)
    assert np.abs(_C.op_elementwise(dev, "upscale_tiles", x) - want).max() < 1e-5


def test_op_argument_errors():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match="inconsistent"):
        _C.op_linear("cpu", x, np.zeros((4, 5), np.float32), None, None, 0, 0)
    with pytest.raises(ShapeError, match="dtype"):
        _C.op_linear("cpu", x.astype(np.float64), np.zeros((4, 3), np.float32), None, None, 0, 0)
    with pytest.raises(ShapeError, match="contiguous"):
        _C.op_norm("cpu", np.zeros((4, 6), np.float32)[:, ::2], np.ones(3, np.float32), None, 1e-5, True)
    with pytest.raises(ShapeError, match="unknown device"):
        _C.op_elementwise("tpu", "activation", x, None, 1)
    if not _C.built_with_cuda():
        with pytest.raises(DeviceError, match="without CUDA"):
            _C.op_elementwise("cuda:0", "activation", x, None, 1)
