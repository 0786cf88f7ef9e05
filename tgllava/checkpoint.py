"""Checkpoint reading: safetensors (single or sharded), PyTorch .bin via tgllava.torchbin, configs.

Python parses only headers and JSON; tensor bytes are memory-mapped with NumPy and handed to the
C core, which converts them to float32 (or the GPU dtype) once (bfloat16 of .bin files too: kept
as raw bits, never widened here).  Every problem -- a missing folder or file, a corrupt or
truncated header, a header field of the wrong type or a size that would overflow, JSON nested too
deeply, a tensor whose bytes lie outside its file, an unsupported dtype, a shard name that leaves
the index's folder, and the layouts the safetensors format forbids (a name twice in a header,
overlapping data_offsets, data bytes no tensor covers; also a tensor in two files of one
checkpoint) -- raises CheckpointError naming the file, tensor and field.
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
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


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
    def itemsize(self):
        """Bytes per stored element."""
        return np.dtype(_ST_DTYPES[self.dtype][0]).itemsize if self.dtype in _ST_DTYPES else 4

    @property
    def src_code(self):
        return _ST_DTYPES.get(self.dtype, (None, None))[1]

    def renamed(self, name):
        """The same tensor under another name."""
        return TensorRef(name, self.path, self.dtype, self.shape, self.start, self.array_fn)

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
            dups = {}  # id of a parsed JSON object -> a key it has twice (json keeps the last silently)
            header = json.loads(f.read(n), object_pairs_hook=lambda pairs: _note_duplicates(pairs, dups))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    if id(header) in dups:
        raise CheckpointError(f"{path}: tensor {dups[id(header)]}: named twice in the safetensors header")
    base, refs, spans = 8 + n, {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if id(info) in dups:
            raise CheckpointError(f"{path}: tensor {name}: header entry has '{dups[id(info)]}' twice")
        refs[name] = _header_entry(path, name, info, base, size)
        spans.append((*info["data_offsets"], name))
    _check_layout(path, sorted(spans), size - base)
    return refs


def _note_duplicates(pairs, dups):
    d = dict(pairs)
    if len(d) < len(pairs):
        seen = set()
        dups[id(d)] = next(k for k, _ in pairs if k in seen or seen.add(k))
    return d


def _check_layout(path, spans, data_size):
    """The safetensors rule on sorted (start, end, name) spans: the tensors cover the data exactly once --
    no two overlap, no byte lies between two of them or after the last."""
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise CheckpointError(f"{path}: tensor {n1}: 'data_offsets' {s1}..{e1} overlap those of tensor {n0} "
                                  f"({s0}..{e0}); safetensors tensors may not share bytes")
    pos = 0
    for s, e, name in spans:
        if s != pos:
            raise CheckpointError(f"{path}: tensor {name}: data bytes {pos}..{s} before its 'data_offsets' belong "
                                  f"to no tensor (safetensors data may have no holes)")
        pos = e
    if pos != data_size:
        last = f" (after tensor {spans[-1][2]})" if spans else ""
        raise CheckpointError(f"{path}: data bytes {pos}..{data_size}{last} belong to no tensor (safetensors data "
                              f"may have no holes or trailing bytes)")


def _header_entry(path, name, info, base, size):
    """One safetensors header entry checked field by field (plain ints, sizes without overflow)."""
    where = f"{path}: tensor {name}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: malformed header entry (not an object)")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise CheckpointError(f"{where}: header entry has no '{key}'")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise CheckpointError(f"{where}: 'shape' must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise CheckpointError(f"{where}: 'shape' {shape} has a negative size")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CheckpointError(f"{where}: 'data_offsets' must be two integers, got {offsets!r}")
    s, e = offsets
    count = 1
    for d in shape:  # Python integers: a size that would wrap int64 is simply too large
        count *= d
    nbytes = count * np.dtype(_ST_DTYPES[dtype][0]).itemsize
    if s < 0 or e < s or e - s != nbytes:
        raise CheckpointError(f"{where}: 'data_offsets' {s}..{e} does not match shape {shape} of {dtype} "
                              f"({nbytes} bytes)")
    if base + e > size:
        raise CheckpointError(f"{where}: data beyond the end of the file (truncated file?)")
    return TensorRef(name, path, dtype, shape, base + s)


def _bin_refs(path):
    """TensorRefs of a torch .bin: float32/float16 as they are, bfloat16 as raw bits ("BF16", never
    widened here), other floats as float32, integers as int64; whole storages stay memory-mapped."""
    from .torchbin import load_bin_typed  # lazily: pickled checkpoints are rarer
    refs = {}
    for name, (torch_dtype, a) in load_bin_typed(path).items():
        shape = np.shape(a)
        dt = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}.get(torch_dtype)
        if dt is None:
            a, dt = (a.astype(np.float32), "F32") if a.dtype.kind == "f" else (a.astype(np.int64), "I64")
        a = np.require(a, requirements=["C", "A"]).reshape(shape)  # require() makes 0-d arrays 1-d
        refs[name] = TensorRef(name, path, dt, shape, array_fn=(lambda a=a: a))
    return refs


def file_refs(path):
    if path.endswith(".safetensors"):
        return safetensors_refs(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return _bin_refs(path)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors or .bin)")


def _add_refs(refs, more):
    """refs.update(more), refusing a tensor that two files of one checkpoint both hold (one would win silently)."""
    for name, r in more.items():
        if name in refs:
            raise CheckpointError(f"{r.path}: tensor {name}: also in {refs[name].path} (a tensor may be in one file only)")
        refs[name] = r


def index_refs(index_path):
    idx = read_json(index_path)
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index_path}: no weight_map")
    from .torchbin import shard_path
    refs = {}
    for shard in sorted(set(wm.values()), key=str):
        p = shard_path(index_path, shard)  # refuses names that leave the index's folder
        if not os.path.exists(p):
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        _add_refs(refs, file_refs(p))
    missing = [k for k in wm if k not in refs]
    if missing:
        raise CheckpointError(f"{index_path}: tensor {missing[0]} is listed but absent from its shard")
    return refs


def folder_refs(folder):
    """name -> TensorRef for every tensor of a checkpoint folder (or a single file / index json)."""
    folder = os.fspath(folder)
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
        _add_refs(refs, file_refs(os.path.join(folder, n)))
    return refs


def read_tensors(path):
    """All tensors of a .safetensors / .bin file or index json as NumPy arrays (bfloat16 widened to float32)."""
    return {k: np.array(r.float32()) for k, r in folder_refs(path).items()}
