"""Checkpoint reading: safetensors (single or sharded), PyTorch .bin via tgllava.torchbin, configs.

Python parses only headers and JSON; tensor bytes are memory-mapped with
NumPy and handed to the C core, which converts them to float32 (or the GPU
dtype) once.  Every problem -- a missing folder or file, a corrupt or
truncated header, a tensor whose byte range lies outside its file, an
unsupported dtype -- raises CheckpointError naming the file and tensor.
"""
import json
import os
import struct

import numpy as np

from .errors import CheckpointError

# safetensors dtype -> (numpy storage dtype, source code for the C core or None)
_ST_DTYPES = {
    "F32": (np.float32, 0), "F16": (np.float16, 1), "BF16": (np.uint16, 2),
    "F64": (np.float64, None), "I64": (np.int64, None), "I32": (np.int32, None),
    "I16": (np.int16, None), "I8": (np.int8, None), "U8": (np.uint8, None), "BOOL": (np.bool_, None),
}
MAX_HEADER = 100 * 1024 * 1024


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


class TensorRef:
    """One tensor of a checkpoint: where its bytes are and how to view them."""

    __slots__ = ("name", "path", "dtype", "shape", "start", "array_fn")

    def __init__(self, name, path, dtype, shape, start=0, array_fn=None):
        self.name, self.path, self.dtype, self.shape, self.start, self.array_fn = name, path, dtype, tuple(shape), start, array_fn

    def raw(self):
        """The stored values (bfloat16 as uint16 bits), memory-mapped when possible."""
        if self.array_fn is not None:
            return self.array_fn()
        npdt = _ST_DTYPES[self.dtype][0]
        count = int(np.prod(self.shape)) if self.shape else 1
        if count == 0:
            return np.zeros(self.shape, npdt)
        return np.memmap(self.path, dtype=npdt, mode="r", offset=self.start, shape=self.shape)

    @property
    def src_code(self):
        return _ST_DTYPES.get(self.dtype, (None, None))[1]

    def float32(self):
        a = np.asarray(self.raw())
        if self.dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32) if a.dtype.kind == "f" else a


def safetensors_refs(path):
    """name -> TensorRef for one .safetensors file, after checking its header against the file size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated file (no safetensors header)")
            n = struct.unpack("<Q", head)[0]
            if n > MAX_HEADER or n > size - 8:
                raise CheckpointError(f"{path}: corrupt safetensors header length {n} (file has {size} bytes)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    base, refs = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (s, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name}: malformed header entry") from None
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        count = int(np.prod(shape)) if shape else 1
        if any(d < 0 for d in shape) or e - s != count * np.dtype(_ST_DTYPES[dtype][0]).itemsize or s < 0:
            raise CheckpointError(f"{path}: tensor {name}: byte range {s}..{e} does not match shape {shape} of {dtype}")
        if base + e > size:
            raise CheckpointError(f"{path}: tensor {name}: data beyond the end of the file (truncated file?)")
        refs[name] = TensorRef(name, path, dtype, shape, base + s)
    return refs


def _bin_refs(path):
    from .torchbin import load_bin  # lazily: pickled checkpoints are rarer
    tensors = load_bin(path)
    refs = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a).reshape(np.shape(a))  # ascontiguousarray makes 0-d arrays 1-d
        dt = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}.get(a.dtype)
        if dt is None:
            a32 = a.astype(np.float32) if a.dtype.kind == "f" else a
            dt = "F32" if a32.dtype == np.float32 else "I64"
            a = a32
        refs[name] = TensorRef(name, path, dt, a.shape, array_fn=(lambda a=a: a))
    return refs


def file_refs(path):
    if path.endswith(".safetensors"):
        return safetensors_refs(path)
    if path.endswith(".bin") or path.endswith(".pt") or path.endswith(".pth"):
        return _bin_refs(path)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors or .bin)")


def index_refs(index_path):
    idx = read_json(index_path)
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index_path}: no weight_map")
    folder, refs = os.path.dirname(index_path), {}
    for shard in sorted(set(wm.values())):
        p = os.path.join(folder, shard)
        if not os.path.exists(p):
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        refs.update(file_refs(p))
    missing = [k for k in wm if k not in refs]
    if missing:
        raise CheckpointError(f"{index_path}: tensor {missing[0]} is listed but absent from its shard")
    return refs


def folder_refs(folder):
    """name -> TensorRef for every tensor of a checkpoint folder (or a single file / index json)."""
    if os.path.isfile(folder):
        return index_refs(folder) if folder.endswith(".json") else file_refs(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    names = sorted(os.listdir(folder))
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if idx in names:
            return index_refs(os.path.join(folder, idx))
    st = [n for n in names if n.endswith(".safetensors")]
    others = [n for n in names if n.endswith(".safetensors.index.json")]
    if others and not st:
        return index_refs(os.path.join(folder, others[0]))
    files = st or [n for n in names if n.endswith(".bin") and not n.startswith("training_args")]
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors or .bin weights found")
    refs = {}
    for n in files:
        refs.update(file_refs(os.path.join(folder, n)))
    return refs


def read_tensors(path):
    """All tensors of a .safetensors / .bin file or index json as NumPy arrays (bfloat16 widened to float32)."""
    return {k: np.array(r.float32()) for k, r in folder_refs(path).items()}
