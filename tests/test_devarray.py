"""Array inputs through DLPack and the CUDA array interface (tgllava/devarray.py), without torch:
NumPy arrays' own __dlpack__, raw DLPack capsules, and small fake producers standing in for PyTorch CPU
tensors, PyTorch/CuPy CUDA tensors (__dlpack_device__ naming a GPU) and __cuda_array_interface__ objects.
Host memory must be read in place (zero-copy), GPU memory must be refused with a DeviceError before
anything is exported, and bad dtypes or layouts are ShapeErrors; the Model methods give the same results
for a DLPack producer as for the NumPy array behind it.

The device path (_C.DeviceArray, csrc/python/devbuf.c) runs here on the CPU backend, whose backend memory
is host memory: views of fake producers pointing at NumPy memory go through the binding and the C core's
device-to-device copies, results in backend memory export through DLPack without a copy, and their
ownership (references to the array and the model) is checked.  tests/test_gpu.py does it with torch."""
import sys

import numpy as np
import pytest

from golden_util import io, model
from tgllava import devarray
from tgllava.errors import DeviceError, ShapeError


class FakeTensor:
    """A DLPack producer over a NumPy array, like a PyTorch CPU tensor (but without __array__)."""

    def __init__(self, a, device=(1, 0)):
        self._a, self._device, self.exports = a, device, 0

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        self.exports += 1
        if self._device[0] != 1:
            raise AssertionError("__dlpack__ of a GPU tensor must not be called on a CPU model")
        kw = {} if max_version is None else {"max_version": max_version}
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._device


class FakeCuda:
    """An object speaking the CUDA array interface (CuPy, Numba, torch CUDA), pointing at no real memory."""

    def __init__(self, shape=(2, 3), typestr="<f4", strides=None, mask=None, ptr=0x7F0000000000):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False), "version": 3,
                                         "strides": strides, "mask": mask, "stream": 1}


# ---- host memory: read in place ----------------------------------------------------------------

def test_ndarray_is_returned_as_is():
    a = np.ones((2, 3), np.float32)
    assert devarray.host_array(a, "x") is a
    assert devarray.float32_array(a, "x") is a


def test_dlpack_producer_on_cpu_is_zero_copy():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = FakeTensor(a)
    out = devarray.float32_array(t, "x")
    assert t.exports == 1
    assert np.shares_memory(out, a) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


def test_raw_dlpack_capsule_is_read_in_place_and_only_once():
    a = np.arange(6, dtype=np.float32)
    cap = a.__dlpack__()
    out = devarray.float32_array(cap, "x")
    assert np.shares_memory(out, a)
    with pytest.raises(ShapeError, match="DLPack capsule"):
        devarray.float32_array(cap, "x")  # a capsule is consumed by its first reader


@pytest.mark.parametrize("make", [
    lambda a: a.astype(np.float64),
    lambda a: (a * 4).astype(np.int16),
    lambda a: a.astype(np.float16),
    lambda a: np.asfortranarray(a),
    lambda a: np.repeat(a, 2, axis=1)[:, ::2],  # strided view
])
def test_dlpack_other_dtypes_and_layouts_convert_with_one_copy(make):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    src = make(a)
    out = devarray.float32_array(FakeTensor(src), "x")
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (3, 4)
    np.testing.assert_allclose(out, src.astype(np.float32))


@pytest.mark.parametrize("src", [np.array([True, False]), np.array([1 + 2j])])
def test_dlpack_non_numbers_are_shape_errors(src):
    with pytest.raises(ShapeError, match="must hold numbers"):
        devarray.float32_array(FakeTensor(src), "pixels")


def test_dlpack_nan_is_a_shape_error():
    with pytest.raises(ShapeError, match="NaN"):
        devarray.float32_array(FakeTensor(np.array([1.0, np.nan], np.float32)), "pixels")


def test_producer_errors_become_shape_errors():
    class NeedsGrad(FakeTensor):
        def __dlpack__(self, **kw):
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")

    with pytest.raises(ShapeError, match="detach"):
        devarray.float32_array(NeedsGrad(np.zeros(2, np.float32)), "pooled")

    class BadDevice(FakeTensor):
        def __dlpack_device__(self):
            return "cpu"

    with pytest.raises(ShapeError, match="__dlpack_device__"):
        devarray.host_array(BadDevice(np.zeros(2, np.float32)), "pooled")


def test_lists_and_scalars_still_work():
    np.testing.assert_array_equal(devarray.float32_array([[1, 2], [3, 4]], "x"), [[1, 2], [3, 4]])
    with pytest.raises(ShapeError, match="cannot convert"):
        devarray.host_array([[1, 2], [3]], "x")


# ---- GPU memory: refused before anything is exported ---------------------------------------------

@pytest.mark.parametrize("device", [(2, 0), (2, 1), (10, 0)])
def test_dlpack_gpu_tensor_on_cpu_model_is_device_error(device):
    t = FakeTensor(np.zeros((2, 2), np.float32), device=device)
    with pytest.raises(DeviceError, match=r"runs on cpu.*device='cuda'") as e:
        devarray.float32_array(t, "pixels", "cpu")
    assert devarray.dlpack_device_name(*device) in str(e.value)
    assert t.exports == 0


def test_dlpack_gpu_tensor_where_only_host_memory_is_taken():
    t = FakeTensor(np.zeros((2, 2), np.float32), device=(2, 0))
    with pytest.raises(DeviceError, match="takes host memory only"):
        devarray.float32_array(t, "pixels", "cuda:0")
    assert t.exports == 0


def test_cuda_array_interface_on_cpu_model_is_device_error():
    with pytest.raises(DeviceError, match="__cuda_array_interface__"):
        devarray.float32_array(FakeCuda(), "pixels", "cpu")


def test_cuda_array_interface_wins_over_dlpack():
    class Both(FakeCuda):  # CuPy arrays and torch CUDA tensors speak both
        exports = 0

        def __dlpack__(self, **kw):
            Both.exports += 1

        def __dlpack_device__(self):
            return (2, 0)

    with pytest.raises(DeviceError):
        devarray.host_array(Both(), "pixels")
    assert Both.exports == 0


def test_cuda_array_info_reads_the_interface():
    info = devarray.cuda_array_info(FakeCuda(shape=(4, 5), typestr="<f4"), "x", dtype=np.float32)
    assert info.shape == (4, 5) and info.dtype == np.float32 and info.contiguous and info.ptr == 0x7F0000000000
    assert info.stream == 1 and not info.readonly
    explicit = devarray.cuda_array_info(FakeCuda(shape=(4, 5), strides=(20, 4)), "x")
    assert explicit.contiguous
    # a dimension of size 1 may carry any stride and still be contiguous
    assert devarray.cuda_array_info(FakeCuda(shape=(1, 5), strides=(999, 4)), "x").contiguous


@pytest.mark.parametrize("cuda, pattern", [
    (FakeCuda(shape=(4, 5), strides=(4, 16)), "not C-contiguous"),
    (FakeCuda(shape=(4, 5), strides=(40, 8)), "not C-contiguous"),
    (FakeCuda(mask=object()), "masked"),
    (FakeCuda(typestr="<f8"), "expected float32"),
    (FakeCuda(typestr="not-a-type"), "malformed"),
    (FakeCuda(shape=(3,), strides=(4, 4)), "strides for a 1-d"),
    (FakeCuda(ptr=0), "null data pointer"),
])
def test_cuda_array_info_refuses_bad_layouts(cuda, pattern):
    with pytest.raises(ShapeError, match=pattern):
        devarray.cuda_array_info(cuda, "x", dtype=np.float32)


def test_cuda_model_checks_the_layout_first():
    with pytest.raises(ShapeError, match="not C-contiguous"):
        devarray.host_array(FakeCuda(shape=(4, 5), strides=(4, 16)), "pixels", "cuda")
    with pytest.raises(DeviceError, match="takes host memory only"):
        devarray.host_array(FakeCuda(shape=(4, 5)), "pixels", "cuda")


# ---- the Model methods -----------------------------------------------------------------------------

@pytest.mark.slow
def test_model_stages_take_dlpack_producers():
    m, d = model("tg-vicuna-tiny"), io("tg-vicuna-tiny")
    pix = np.ascontiguousarray(d["pixel_values"][None], dtype=np.float32)
    tid = d["text_guide_ids"]
    np.testing.assert_array_equal(m.vision_features(FakeTensor(pix)), m.vision_features(pix))
    hidden, pooled = m.text_tower(tid)
    h2, p2 = m.text_tower(FakeTensor(np.asarray(tid, np.int64)))
    np.testing.assert_array_equal(h2, hidden)
    np.testing.assert_array_equal(m.fom(FakeTensor(pooled)), m.fom(pooled))
    np.testing.assert_array_equal(m.visual_tokens(FakeTensor(pix), FakeTensor(np.asarray(tid))),
                                  m.visual_tokens(pix, tid))
    ids = np.asarray(d["input_ids"])
    np.testing.assert_array_equal(m.logits(FakeTensor(ids), FakeTensor(pix[0]), tid, all_positions=False),
                                  m.logits(ids, pix[0], tid, all_positions=False))


def test_model_refuses_gpu_inputs_on_cpu():
    m, d = model("tg-vicuna-tiny"), io("tg-vicuna-tiny")
    gpu_pix = FakeTensor(np.zeros((1, 3, m.image_size, m.image_size), np.float32), device=(2, 0))
    with pytest.raises(DeviceError, match="pixels"):
        m.vision_features(gpu_pix)
    with pytest.raises(DeviceError, match="pixels"):
        m.visual_tokens(FakeCuda(shape=(1, 3, m.image_size, m.image_size)), d["text_guide_ids"])
    with pytest.raises(DeviceError, match="input_ids"):
        m.logits(FakeTensor(np.asarray(d["input_ids"]), device=(2, 0)))
    with pytest.raises(ShapeError, match=r"got shape \(2, 3\)"):
        m.vision_features(FakeTensor(np.zeros((2, 3), np.float32)))


# ---- the device path on the CPU backend (_C.DeviceArray) ----------------------------------------------

from tgllava import _C  # noqa: E402


class HostCuda(FakeCuda):
    """A __cuda_array_interface__ over a NumPy array's memory: on the CPU backend it is backend memory."""

    def __init__(self, a, stream=None):
        super().__init__(shape=a.shape, typestr=a.dtype.str, ptr=a.ctypes.data)
        self.__cuda_array_interface__["stream"] = stream
        self.a = a


def tiny():
    m, d = model("tg-vicuna-tiny"), io("tg-vicuna-tiny")
    return m, m._core._core, d


def test_results_in_backend_memory_export_through_dlpack_without_a_copy():
    m, core, d = tiny()
    pix = np.ascontiguousarray(d["pixel_values"][None], dtype=np.float32)
    dev = core.vision_features(pix, True)
    assert isinstance(dev, _C.DeviceArray) and dev.device == "cpu" and dev.dtype == np.float32
    assert dev.__dlpack_device__() == (1, 0) and not hasattr(dev, "__cuda_array_interface__")
    refs = sys.getrefcount(dev)
    view = np.from_dlpack(dev)  # zero-copy: the capsule holds a reference to the array
    assert sys.getrefcount(dev) == refs + 1
    np.testing.assert_array_equal(view, m.vision_features(pix))
    host = dev.numpy()
    assert not np.shares_memory(host, view)
    np.testing.assert_array_equal(host, view)
    addr = view.__array_interface__["data"][0]
    assert np.from_dlpack(dev).__array_interface__["data"][0] == addr  # the same memory every time
    del dev
    np.testing.assert_array_equal(view, host)  # the export keeps the memory alive (ASan: no use after free)


def test_device_arrays_keep_their_model_alive():
    m, core, d = tiny()
    refs = sys.getrefcount(core)
    dev = core.fom(np.zeros((1, m.sizes["t_hidden"]), np.float32), True)
    assert sys.getrefcount(core) == refs + 1
    del dev
    assert sys.getrefcount(core) == refs


@pytest.mark.slow
def test_views_of_cuda_interface_memory_are_read_in_place():
    m, core, d = tiny()
    pix = np.ascontiguousarray(d["pixel_values"][None], dtype=np.float32)
    src = HostCuda(pix)
    v = devarray.device_array(src, "pixels", core, np.float32)
    assert isinstance(v, _C.DeviceArray) and v.shape == pix.shape
    refs = sys.getrefcount(src)
    v2 = devarray.device_array(src, "pixels", core, np.float32)
    assert sys.getrefcount(src) == refs + 1  # the view keeps its producer alive
    del v2
    np.testing.assert_array_equal(core.vision_features(v), m.vision_features(pix))
    np.testing.assert_array_equal(core.vision_features(v, True).numpy(), m.vision_features(pix))
    tid = np.asarray(d["text_guide_ids"], np.int32)[None]
    np.testing.assert_array_equal(core.visual_tokens(v, tid, out_device=False), m.visual_tokens(pix, tid))


def test_dlpack_capsules_are_consumed_once():
    m, core, d = tiny()
    pooled = np.random.default_rng(0).standard_normal((2, m.sizes["t_hidden"])).astype(np.float32)
    cap = pooled.__dlpack__()
    v = _C.dlpack_view(core, cap, "pooled")
    np.testing.assert_array_equal(core.fom(v), m.fom(pooled))
    with pytest.raises(ShapeError, match="unused"):
        _C.dlpack_view(core, cap, "pooled")


@pytest.mark.parametrize("make, pattern", [
    (lambda a: a[:, ::2], "not C-contiguous"),
    (lambda a: a.astype(np.complex64), "unsupported DLPack dtype"),
])
def test_dlpack_views_refuse_layouts_and_dtypes(make, pattern):
    m, core, d = tiny()
    with pytest.raises(ShapeError, match=pattern):
        _C.dlpack_view(core, make(np.zeros((4, 6), np.float32)).__dlpack__(), "x")


def test_device_inputs_are_checked_like_numpy_inputs():
    m, core, d = tiny()
    S = m.image_size
    with pytest.raises(ShapeError, match="expected float32"):
        devarray.device_array(HostCuda(np.zeros((1, 3, S, S))), "pixels", core, np.float32)
    ints = devarray.device_array(HostCuda(np.zeros((1, 3, S, S), np.int32)), "pixels", core)
    with pytest.raises(ShapeError, match="pixels must have dtype"):
        core.vision_features(ints)
    with pytest.raises(ShapeError, match="dimension 1 is 4"):
        core.vision_features(devarray.device_array(HostCuda(np.zeros((1, 4, S, S), np.float32)), "pixels", core))
    with pytest.raises(ShapeError, match="not C-contiguous"):
        devarray.device_array(FakeCuda(shape=(4, 5), strides=(4, 16)), "pixels", core)
    with pytest.raises(ShapeError, match="stream 0"):
        devarray.device_array(HostCuda(np.zeros(3, np.float32), stream=0), "pixels", core)
    with pytest.raises(ShapeError, match="cannot reshape"):
        core.fom(devarray.device_array(HostCuda(np.zeros(6, np.float32)), "x", core).reshape((4,)))


def test_one_call_takes_host_or_device_floats_not_both():
    m, core, d = tiny()
    Np, Dv, Dt = m.num_patches, m.sizes["v_hidden"], m.sizes["t_hidden"]
    f = np.zeros((1, 4 * Np, Dv), np.float32)
    t = np.zeros((1, 3, Dt), np.float32)
    with pytest.raises(ShapeError, match="mix host arrays and device arrays"):
        core.dp(devarray.device_array(HostCuda(f), "f", core), t)
    both = core.dp(devarray.device_array(HostCuda(f), "f", core), devarray.device_array(HostCuda(t), "t", core))
    np.testing.assert_array_equal(both, m.dp(f, t))


@pytest.mark.slow
def test_sequences_take_device_pixels_and_visual_tokens():
    m, core, d = tiny()
    ids = np.asarray(d["input_ids"], np.int32)
    pix = np.ascontiguousarray(d["pixel_values"], dtype=np.float32)
    tid = np.asarray(d["text_guide_ids"], np.int32)
    want = m.logits(ids, pix, tid, all_positions=False)
    seq = {"ids": ids, "pixels": devarray.device_array(HostCuda(pix), "pixels", core), "text_ids": tid}
    np.testing.assert_array_equal(core.logits(seq, False), want)
    np.testing.assert_array_equal(core.logits(seq, False, True).numpy(), want)
    vis = core.visual_tokens(pix[None], tid[None], out_device=True).reshape(
        tuple(m.visual_tokens(pix, tid).shape[1:]))
    np.testing.assert_array_equal(core.logits({"ids": ids, "visual": vis}, False), want)
    np.testing.assert_array_equal(m.logits(ids, visual=m.visual_tokens(pix, tid)[0], all_positions=False), want)


def test_out_device_needs_a_cuda_model():
    m, d = model("tg-vicuna-tiny"), io("tg-vicuna-tiny")
    pix = d["pixel_values"][None]
    with pytest.raises(DeviceError, match="needs a CUDA model"):
        m.vision_features(pix, out="device")
    with pytest.raises(ValueError, match="'host' or 'device'"):
        m.vision_features(pix, out="gpu")


class FakeCudaCore:
    """Stands in for a CUDA model's _C.Model where only its device and stream are read."""
    device, stream = "cuda:0", 0x5EED


class StreamTensor(FakeTensor):
    def __dlpack__(self, stream=None, **kw):
        self.exports += 1
        self.stream = stream
        return self._a.__dlpack__()


@pytest.mark.parametrize("device", [(2, 1), (10, 0), (4, 0)])
def test_dlpack_other_devices_are_refused_before_export(device):
    t = StreamTensor(np.zeros(2, np.float32), device=device)
    with pytest.raises(DeviceError, match="model runs on cuda:0"):
        devarray.device_array(t, "pixels", FakeCudaCore())
    assert t.exports == 0


def test_dlpack_on_the_model_gpu_is_exported_on_the_model_stream():
    t = StreamTensor(np.zeros(2, np.float32), device=(2, 0))
    with pytest.raises(TypeError, match="_C.Model"):  # the fake core is no model: stop before reading memory
        devarray.device_array(t, "pixels", FakeCudaCore())
    assert t.exports == 1 and t.stream == FakeCudaCore.stream
