"""Every op of the op table (csrc/backend.h) on every available backend against the CPU backend, ggml-style.

Each op is reached through tgllava._C.op_* and run on each backend with the same inputs; the result must
match the CPU backend's within the op's own error bound (OPS below).  A backend that lacks an op answers
DeviceError("... not supported"), which fails the test: a missing op is never a pass.  A backend that is
not available here (no CUDA build, no device) is skipped with the reason.

The same tests pin the behaviours every backend must share on edge inputs (an embedding id out of range
is an error, rope refuses an odd head_dim, argmax: first max wins and the first NaN wins over numbers,
float16 weights beyond +-65504 are refused) and, for linear, the activation-precision rule of backend.h:
a batch of up to 16 rows gives every row the bits it gets alone.  GPU cases carry the `gpu` marker.
"""
import numpy as np
import pytest

from tgllava import _C, DeviceError, TgError

rng = np.random.default_rng(7)
F32, F16, BF16 = 0, 1, 2


def backends():
    out = ["cpu"]
    if _C.built_with_cuda():
        out.append(pytest.param("cuda:0", marks=pytest.mark.gpu))
    return out


def usable(dev):
    if dev == "cpu":
        return
    try:
        _C.op_elementwise(dev, "activation", np.zeros(1, np.float32), None, 0)
    except DeviceError as e:
        if "not supported" in str(e):
            raise
        pytest.skip(f"backend {dev} not available: {e}")


def run(dev, op, *args):
    try:
        return getattr(_C, op)(dev, *args)
    except DeviceError as e:
        if "not supported" in str(e):
            pytest.fail(f"{dev} does not support {op}{args[:1]}: {e}")
        raise


def f32(*shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def attention_args():
    B, Tq, Tk, nh, nkv, hd = 2, 5, 37, 4, 2, 16
    mask = (rng.random((B, Tk)) > 0.2).astype(np.int32)
    mask[:, 0] = 1
    return (f32(B, Tq, nh * hd), f32(B, Tk, nkv * hd), f32(B, Tk, nkv * hd), nh, nkv, 0.25, True,
            np.array([Tk - Tq, Tk - Tq - 3], np.int32), np.array([Tk, Tk - 4], np.int32), mask, True)


# op -> (function of _C, arguments after the device, max abs error against the CPU backend).  Every entry
# of the op table appears here (linear, layernorm, rmsnorm, attention, the elementwise family).
OPS = {
    "linear f32": ("op_linear", lambda: (f32(13, 70), f32(33, 70, scale=0.1), f32(33), f32(13, 33), 1, F32), 1e-4),
    "linear bf16": ("op_linear", lambda: (f32(5, 64), f32(40, 64, scale=0.1), f32(40), None, 3, BF16), 2e-2),
    "linear f16": ("op_linear", lambda: (f32(20, 72), f32(24, 72, scale=0.1), None, f32(20, 24), 0, F16), 2e-2),
    "layernorm": ("op_norm", lambda: (f32(7, 300, scale=3), f32(300), f32(300), 1e-5, False), 1e-4),
    "rmsnorm": ("op_norm", lambda: (f32(7, 300, scale=3), f32(300), None, 1e-6, True), 1e-4),
    "attention": ("op_attention", attention_args, 1e-4),
    "activation": ("op_elementwise", lambda: ("activation", f32(3, 257, scale=4), None, 1), 1e-5),
    "silu_mul": ("op_elementwise", lambda: ("silu_mul", f32(6, 2 * 45)), 1e-5),
    "add_bcast": ("op_elementwise", lambda: ("add_bcast", f32(4, 50), f32(50)), 0.0),
    "embedding": ("op_elementwise", lambda: ("embedding", f32(30, 12), np.array([0, 29, 5, 5], np.int32), F32), 0.0),
    "embedding bf16": ("op_elementwise", lambda: ("embedding", f32(30, 16), np.array([3, 1], np.int32), BF16), 0.0),
    "gather_rows": ("op_elementwise", lambda: ("gather_rows", f32(9, 20), np.array([8, 0, 3, 3], np.int32)), 0.0),
    "scatter_rows": ("op_elementwise", lambda: ("scatter_rows", f32(3, 20), np.array([6, 0, 2], np.int32), 7), 0.0),
    "im2col": ("op_elementwise", lambda: ("im2col", f32(2, 3, 28, 28), None, 14), 0.0),
    "upscale_tiles": ("op_elementwise", lambda: ("upscale_tiles", f32(1, 3, 14, 14)), 1e-6),
    "rope": ("op_elementwise", lambda: ("rope", f32(5, 3 * 32), np.array([0, 1, 7, 300, 4095], np.int32), 3, 1e4), 1e-4),
    "argmax": ("op_elementwise", lambda: ("argmax", f32(4, 1000)), 0.0),
}


@pytest.mark.parametrize("dev", backends())
@pytest.mark.parametrize("name", list(OPS))
def test_op_matches_the_cpu_backend(dev, name):
    usable(dev)
    fn, make, bound = OPS[name]
    args = make()
    want, got = run("cpu", fn, *args), run(dev, fn, *args)
    want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, tuple) else (got,))
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype
        err = float(np.abs(g.astype(np.float64) - w).max()) if w.size else 0.0
        assert err <= bound * max(1.0, float(np.abs(w).max())), f"{name} on {dev}: max error {err:.3g} > {bound}"


def test_gather_and_scatter_rows_on_the_cpu():
    src = f32(9, 5)
    idx = np.array([8, 0, 3, 3], np.int32)
    assert np.array_equal(_C.op_elementwise("cpu", "gather_rows", src, idx), src[idx])
    rows = f32(3, 5)
    out = _C.op_elementwise("cpu", "scatter_rows", rows, np.array([6, 0, 2], np.int32), 7)
    want = np.zeros((7, 5), np.float32)
    want[[6, 0, 2]] = rows
    assert np.array_equal(out, want)
    with pytest.raises(TgError, match="outside"):
        _C.op_elementwise("cpu", "gather_rows", src, np.array([9], np.int32))


# ---- one behaviour on edge inputs, every backend ----------------------------------------------------

@pytest.mark.parametrize("dev", backends())
def test_edge_inputs_behave_the_same(dev):
    usable(dev)
    table = f32(30, 8)
    with pytest.raises(TgError, match="out of range"):
        run(dev, "op_elementwise", "embedding", table, np.array([1, 30], np.int32), F32)
    with pytest.raises(TgError, match="out of range"):
        run(dev, "op_elementwise", "embedding", table, np.array([-1], np.int32), BF16)
    with pytest.raises(TgError, match="odd"):
        run(dev, "op_elementwise", "rope", f32(2, 2 * 7), np.array([0, 1], np.int32), 2, 1e4)
    nan, inf = np.nan, np.inf
    rows = np.array([[nan, 1, 3, 2], [1, nan, 3, nan], [1, 3, 3, 0], [-inf, -inf, -inf, -inf], [2, 5, nan, 5]],
                    np.float32)
    assert run(dev, "op_elementwise", "argmax", rows).tolist() == [0, 1, 1, 0, 2] == np.argmax(rows, 1).tolist()
    w = f32(4, 8)
    w[2, 3] = 70000.0
    with pytest.raises(TgError, match="float16 range"):
        run(dev, "op_linear", f32(1, 8), w, None, None, 0, F16)


# ---- linear: activation precision and batched == alone -------------------------------------------------

def round_act(x, dtype):
    """backend.h's rule: activations rounded like the weights (nearest even), float16 saturating."""
    x = np.asarray(x, np.float32)
    if dtype == F16:
        return np.clip(x, -65504, 65504).astype(np.float16).astype(np.float32)
    if dtype == BF16:
        u = x.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return x


@pytest.mark.parametrize("dev", backends())
@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("K", [64, 70])
def test_batched_rows_equal_rows_alone(dev, dtype, K):
    """Every M the scheduler uses for a decode chunk (1..16): each row gets the bits it gets alone."""
    usable(dev)
    x, w, b = f32(16, K), f32(48, K, scale=0.1), f32(48)
    alone = np.concatenate([run(dev, "op_linear", x[i:i + 1], w, b, None, 3, dtype) for i in range(16)])
    for M in range(1, 17):
        got = run(dev, "op_linear", x[:M], w, b, None, 3, dtype)
        assert np.array_equal(got, alone[:M]), f"M={M}: rows differ from the rows alone"


@pytest.mark.gpu
@pytest.mark.parametrize("dev", [d for d in backends() if d != "cpu"])  # the CPU's own tests pin it there
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("M", [1, 9, 16, 40])
def test_activation_precision_rule(dev, dtype, M):
    usable(dev)
    K, N = 96, 24
    x, w = f32(M, K, scale=3), f32(N, K, scale=0.1)
    x[0, :4] = [1e5, -7e4, 65519, np.float32(1) + np.float32(2 ** -12)]  # f16: saturates, no inf
    wr = round_act(w, dtype)
    want = round_act(x, dtype).astype(np.float64) @ wr.astype(np.float64).T
    got = run(dev, "op_linear", x, w, None, None, 0, dtype)
    assert np.all(np.isfinite(got))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---- threads: the shared per-device backends are driven by one thread at a time ------------------------

def test_ops_keep_the_gil_so_one_thread_drives_a_shared_backend():
    """_C.op_* share one backend per device between all callers, and a backend has no lock (the CUDA plan
    cache and scratch, the CPU panels): an op must keep the GIL, so no other Python thread runs during it."""
    import threading
    import time

    x, w = f32(16, 512), f32(512, 512)
    stamps, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=ticker)
    t.start()
    try:
        time.sleep(0.05)
        t0 = time.perf_counter()
        _C.op_linear("cpu", x, w, None, None, 0, F32, 2000)  # a few tenths of a second in one call
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    d = t1 - t0
    assert d > 0.1, "the op was too short to tell"
    inside = [s for s in stamps if t0 + 0.2 * d < s < t1 - 0.2 * d]
    assert not inside, f"another thread ran {len(inside)} times during the op"
