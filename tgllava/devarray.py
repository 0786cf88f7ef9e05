"""Array inputs from other libraries for the Model methods: NumPy, DLPack producers (PyTorch, JAX, CuPy,
...), raw DLPack capsules and CUDA array-interface objects (CuPy, Numba, PyTorch CUDA tensors).

`host_array` reads host memory without a copy: an ndarray as is, a DLPack producer on the CPU (a PyTorch
CPU tensor, a JAX CPU array) or a raw capsule (consumed, as the protocol says) through `np.from_dlpack`,
anything else through `np.asarray`.  It never reads GPU memory: `__cuda_array_interface__`, or a
`__dlpack_device__` naming a GPU (asked before `__dlpack__`, so nothing is exported), is a DeviceError
saying where the array is and what to do instead -- unless a CUDA model's `core` is given: then memory on
the model's device is copied to the host (for the small id arrays the C core reads on the host).

`device_array` is a CUDA model's device path: GPU memory on the model's device as a `_C.DeviceArray` view
that the model reads in place (None for anything else, which takes the host path).  A
`__cuda_array_interface__` comes first (checked by `cuda_array_info` without touching the memory; the
pointer's device asked of CUDA; a producer stream waited for on the model's stream without blocking the
host), else a DLPack producer is exported with `__dlpack__(stream=<the model's stream>)`, so that it orders
its work before ours, and consumed (its deleter runs when the view goes); a `_C.DeviceArray` (a result of
out="device") passes as is.  Another GPU's memory is a DeviceError, a wrong dtype or a non-contiguous
layout a ShapeError.  Device inputs are not scanned for NaN (that would read them on the host)."""
import numpy as np

from .errors import DeviceError, ShapeError

# DLPack DLDeviceType values (dlpack.h)
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_ROCM, DL_ROCM_HOST, DL_CUDA_MANAGED = 1, 2, 3, 10, 11, 13
_DL_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm",
             11: "rocm_host", 12: "ext_dev", 13: "cuda_managed", 14: "oneapi", 15: "webgpu", 16: "hexagon",
             17: "maia"}
# host-addressable memory that np.from_dlpack reads in place
_DL_HOST = (DL_CPU, DL_CUDA_HOST, DL_ROCM_HOST, DL_CUDA_MANAGED)


def dlpack_device_name(dev_type, dev_id=0):
    """'cuda:0', 'cpu', 'rocm:1', ... for a DLPack (device_type, device_id) pair."""
    name = _DL_NAMES.get(int(dev_type), f"device type {int(dev_type)}")
    return name if int(dev_type) == DL_CPU else f"{name}:{int(dev_id)}"


def _is_gpu_model(device):
    return isinstance(device, str) and device.startswith("cuda")


def _device_error(what, where, device):
    """The DeviceError for GPU memory handed where the model cannot read it."""
    if _is_gpu_model(device):
        return DeviceError(
            f"{what}: got an array in GPU memory ({where}); this argument takes host memory only: pass a host "
            f"array, e.g. tensor.cpu() or cupy.asnumpy(x)")
    return DeviceError(
        f"{what}: got an array in GPU memory ({where}) but this model runs on {device or 'cpu'}: pass a host "
        f"array (NumPy, tensor.cpu(), cupy.asnumpy(x)), or load the model with device='cuda'")


class CudaArrayInfo:
    """What a `__cuda_array_interface__` says: ptr (int), shape (tuple), dtype (np.dtype), readonly (bool),
    strides (tuple of bytes, or None for C-contiguous), contiguous (bool), stream (int or None)."""

    def __init__(self, ptr, shape, dtype, readonly, strides, contiguous, stream):
        self.ptr, self.shape, self.dtype, self.readonly = ptr, shape, dtype, readonly
        self.strides, self.contiguous, self.stream = strides, contiguous, stream

    def __repr__(self):
        return (f"CudaArrayInfo(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype}, "
                f"contiguous={self.contiguous}, readonly={self.readonly})")


def _c_contiguous(shape, strides, itemsize):
    """Whether byte strides describe a C-contiguous layout (dimensions of size 1 may have any stride)."""
    want = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != want:
            return False
        want *= n
    return True


def cuda_array_info(x, what="array", require_contiguous=True, dtype=None):
    """Read and check x.__cuda_array_interface__ (no device memory is touched).

    ShapeError for a malformed, masked or (with require_contiguous) non-C-contiguous interface, and for a
    dtype other than `dtype` when one is given."""
    try:
        cai = x.__cuda_array_interface__
    except Exception as e:  # noqa: BLE001 - the producer's own error, reported as ours
        raise ShapeError(f"{what}: cannot read __cuda_array_interface__ ({e})") from None
    if not isinstance(cai, dict):
        raise ShapeError(f"{what}: __cuda_array_interface__ is a {type(cai).__name__}, not a dict")
    try:
        shape = tuple(int(n) for n in cai["shape"])
        dt = np.dtype(cai["typestr"])
        ptr, readonly = cai["data"]
        ptr, readonly = int(ptr or 0), bool(readonly)
    except (KeyError, TypeError, ValueError) as e:
        raise ShapeError(f"{what}: malformed __cuda_array_interface__ ({type(e).__name__}: {e})") from None
    if any(n < 0 for n in shape):
        raise ShapeError(f"{what}: __cuda_array_interface__ has a negative dimension in shape {shape}")
    if cai.get("mask") is not None:
        raise ShapeError(f"{what}: masked CUDA arrays are not supported")
    strides = cai.get("strides")
    if strides is not None:
        try:
            strides = tuple(int(s) for s in strides)
        except (TypeError, ValueError):
            raise ShapeError(f"{what}: malformed strides {cai.get('strides')!r} in __cuda_array_interface__") from None
        if len(strides) != len(shape):
            raise ShapeError(f"{what}: {len(strides)} strides for a {len(shape)}-d shape {shape}")
    contiguous = strides is None or _c_contiguous(shape, strides, dt.itemsize)
    if require_contiguous and not contiguous:
        raise ShapeError(f"{what}: the CUDA array of shape {shape} is not C-contiguous (byte strides {strides}); "
                         f"make it contiguous first (e.g. tensor.contiguous(), cupy.ascontiguousarray(x))")
    if dtype is not None and dt != np.dtype(dtype):
        raise ShapeError(f"{what}: the CUDA array has dtype {dt}, expected {np.dtype(dtype)}")
    if ptr == 0 and int(np.prod(shape, dtype=np.int64)) > 0:
        raise ShapeError(f"{what}: __cuda_array_interface__ has a null data pointer for shape {shape}")
    stream = cai.get("stream")
    if stream is not None and (not isinstance(stream, int) or stream == 0):
        raise ShapeError(f"{what}: __cuda_array_interface__ has stream {stream!r}: the protocol wants None, 1, 2 "
                         f"or a cudaStream_t (0 is ambiguous and disallowed)")
    return CudaArrayInfo(ptr, shape, dt, readonly, strides, contiguous, None if stream is None else int(stream))


class _Capsule:
    """Lets np.from_dlpack read a raw DLPack capsule (it takes producers, not capsules).  The device is
    not known without parsing the capsule: NumPy itself refuses one that is not in host memory."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        return self._capsule

    def __dlpack_device__(self):
        return (DL_CPU, 0)


def _is_capsule(x):
    return type(x).__name__ == "PyCapsule" and type(x).__module__ == "builtins"


def _from_dlpack(x, what, label):
    try:
        return np.from_dlpack(x)
    except Exception as e:  # noqa: BLE001 - BufferError, TypeError, RuntimeError, ValueError from producers
        msg = str(e) or type(e).__name__
        low, hint = msg.lower(), ""
        if "dtype" in low or "bfloat" in low:
            hint = " (NumPy has no bfloat16: convert to float32 first, e.g. tensor.float())"
        elif "grad" in low:
            hint = " (call tensor.detach() first)"
        if "device" in low:
            raise DeviceError(f"{what}: {label} is not in host memory: {msg}") from None
        raise ShapeError(f"{what}: cannot read {label} as an array: {msg}{hint}") from None


def host_array(x, what="array", device="cpu", core=None):
    """x as a NumPy array, without a copy when x is in host memory (see the module text).

    `device` is the model's device ('cpu', 'cuda', 'cuda:1'); it shapes the DeviceError's advice.  With the
    `core` of a CUDA model, GPU memory on its device is copied to the host instead of refused."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple, int, float, np.generic)):
        return _asarray(x, what)
    if core is not None and _is_gpu_model(device):
        d = device_array(x, what, core)
        if d is not None:
            return d.numpy()
    # CUDA array interface first: CuPy arrays and PyTorch CUDA tensors have __dlpack__ too, and
    # asking for it would export the tensor (and synchronize streams) for nothing
    if _has_cai(x):
        if _is_gpu_model(device):  # the layout is what a device path will need: check it now
            info = cuda_array_info(x, what)
            raise _device_error(what, f"__cuda_array_interface__, shape {info.shape}, dtype {info.dtype}", device)
        raise _device_error(what, "an object with __cuda_array_interface__", device)
    dev = _dlpack_device(x, what)
    if dev is not None:
        name = dlpack_device_name(*dev)
        if dev[0] not in _DL_HOST:
            raise _device_error(what, f"DLPack device {name}", device)
        return _from_dlpack(x, what, f"a DLPack tensor on {name}")
    if hasattr(x, "__dlpack__") and not hasattr(x, "__array__") and not hasattr(x, "__array_interface__"):
        raise ShapeError(f"{what}: {type(x).__name__} has __dlpack__ but no __dlpack_device__, so its device is "
                         f"unknown; pass a NumPy array or a DLPack producer implementing both")
    if _is_capsule(x):
        return _from_dlpack(_Capsule(x), what, "the DLPack capsule")
    return _asarray(x, what)


def device_array(x, what, core, dtype=None):
    """x as a _C.DeviceArray on the CUDA model `core`'s device, or None when x is not GPU memory (see the
    module text).  `dtype`, when given, is the dtype the array must have."""
    from . import _C
    if isinstance(x, _C.DeviceArray):
        d = x
    elif _has_cai(x):
        info = cuda_array_info(x, what)
        d = _C.device_view(core, info.ptr, info.shape, info.dtype.num, x, info.stream)
    else:
        dev = _dlpack_device(x, what)
        if dev is None or dev[0] in _DL_HOST:
            return None
        if dev[0] != DL_CUDA or dev[1] != int(core.device.partition(":")[2] or 0):
            raise DeviceError(f"{what}: the array is on {dlpack_device_name(*dev)} but the model runs on "
                              f"{core.device}: move it first (e.g. tensor.to('{core.device}'))")
        try:
            capsule = x.__dlpack__(stream=core.stream)
        except Exception as e:  # noqa: BLE001 - the producer's own error, reported as ours
            raise ShapeError(f"{what}: __dlpack__ failed on {dlpack_device_name(*dev)}: {e}") from None
        d = _C.dlpack_view(core, capsule, what)
    if dtype is not None and d.dtype != np.dtype(dtype):
        raise ShapeError(f"{what}: the device array has dtype {d.dtype}, expected {np.dtype(dtype)} "
                         f"(convert it on the device first, e.g. tensor.float())")
    return d


def _has_cai(x):
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - a property that raises something other than AttributeError
        return False


def _dlpack_device(x, what):
    """(device type, id) of a DLPack producer (checked before __dlpack__ is called), None for others."""
    dl_device = getattr(x, "__dlpack_device__", None)
    if dl_device is None or not hasattr(x, "__dlpack__"):
        return None
    try:
        dev_type, dev_id = dl_device()
        return int(dev_type), int(dev_id)
    except Exception as e:  # noqa: BLE001
        raise ShapeError(f"{what}: __dlpack_device__() failed or is malformed ({e})") from None


def _asarray(x, what):
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001
        raise ShapeError(f"{what}: cannot convert {type(x).__name__} to an array ({e})") from None


def float32_array(x, what="array", device="cpu"):
    """x as a C-contiguous float32 NumPy array of finite numbers: zero-copy when x already is one in host
    memory (NumPy or DLPack), else one converting copy.  ShapeError for non-numbers, NaN or infinity."""
    a = host_array(x, what, device)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise ShapeError(f"{what} must hold numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ShapeError(f"{what} holds NaN or infinite values")
    return a


__all__ = ["host_array", "float32_array", "device_array", "cuda_array_info", "CudaArrayInfo", "dlpack_device_name"]
