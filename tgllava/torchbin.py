"""Read PyTorch `.bin` checkpoints (torch.save zip format) without torch, safely.

A checkpoint written by `torch.save` (torch >= 1.6) is a zip archive with one
top folder (any name: `archive/`, `pytorch_model/`, ...) holding `data.pkl`,
a pickle of the state dict, and `data/<key>`, the raw bytes of each storage.
Unpickling a checkpoint naively runs whatever code the pickle names, so this
module unpickles with a restricted `pickle.Unpickler` whose `find_class`
knows only the handful of globals needed to describe tensors
(`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, the typed storage
classes such as `torch.FloatStorage`, `collections.OrderedDict`); anything
else is refused with a CheckpointError naming the file and the global.
Tensors come back as NumPy arrays built from (storage, offset, shape,
stride), so views sharing a storage come out right.  bfloat16 is widened to
float32 (or returned as raw uint16 bit patterns on request); every other
dtype is kept.  `inspect_bin` describes the tensors without reading them,
including where each uncompressed storage lies in the file, for callers that
want to map the bytes themselves.
"""

import collections
import dataclasses
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np

from .errors import CheckpointError

# torch storage class name -> (numpy dtype, torch dtype name)
_STORAGE_TYPES = {
    "FloatStorage": ("float32", "float32"),
    "DoubleStorage": ("float64", "float64"),
    "HalfStorage": ("float16", "float16"),
    "BFloat16Storage": ("uint16", "bfloat16"),  # bit patterns; widened on request
    "LongStorage": ("int64", "int64"),
    "IntStorage": ("int32", "int32"),
    "ShortStorage": ("int16", "int16"),
    "CharStorage": ("int8", "int8"),
    "ByteStorage": ("uint8", "uint8"),
    "BoolStorage": ("bool", "bool"),
}

# First bytes of a legacy (pre-1.6, non-zip) torch.save file: pickle protocol 2
# followed by the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class _StorageType:
    """Stands in for a torch storage class (torch.FloatStorage, ...); not callable."""

    __slots__ = ("name", "np_dtype", "torch_dtype")

    def __init__(self, name):
        self.name = name
        self.np_dtype, self.torch_dtype = _STORAGE_TYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


@dataclasses.dataclass
class _Storage:
    key: str
    stype: _StorageType
    numel: int


@dataclasses.dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


@dataclasses.dataclass
class BinTensorInfo:
    """Where one tensor of a .bin checkpoint lives.

    dtype: torch dtype name ("float32", "bfloat16", ...); shape, stride and
    storage_offset in elements; storage: the zip entry holding the storage;
    file_offset: byte offset of the storage's first byte in the file when the
    entry is stored uncompressed, else None; contiguous: row-major with no
    gaps, so the tensor is the byte range
    [file_offset + storage_offset * itemsize, + nbytes).
    """

    dtype: str
    shape: tuple
    stride: tuple
    storage: str
    storage_offset: int
    file_offset: object
    itemsize: int
    nbytes: int
    contiguous: bool


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_TYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, path):
        super().__init__(fileobj)
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.path}: refusing to unpickle global {module}.{name} "
                "(only tensors and plain containers are allowed in a checkpoint)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{self.path}: storage {key!r} has unknown type {stype!r}")
        key = str(key)
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, stype, int(numel))
        elif st.stype is not stype:
            raise CheckpointError(f"{self.path}: storage {key!r} used with two dtypes")
        return st


def _open_zip(path):
    """Open a torch zip checkpoint; return (ZipFile, prefix) with prefix like 'archive/'."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    if not head.startswith(b"PK\x03\x04"):
        if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
            raise CheckpointError(
                f"{path}: legacy (non-zip) torch format not supported: re-save with torch>=1.6"
            )
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated zip archive ({e})") from None
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        zf.close()
        raise CheckpointError(f"{path}: expected exactly one <folder>/data.pkl in the archive, found {len(pkls)}")
    return zf, pkls[0][: -len("data.pkl")]


def _read_entry(zf, name, path):
    try:
        return zf.read(name)
    except KeyError:
        raise CheckpointError(f"{path}: missing archive entry {name}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt archive entry {name} ({e})") from None


def _read_storage(zf, name, nbytes, path):
    """Read the first `nbytes` of a storage entry straight into a writable buffer."""
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    try:
        with zf.open(name) as f:
            while got < nbytes:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
    except KeyError:
        raise CheckpointError(f"{path}: missing archive entry {name}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt archive entry {name} ({e})") from None
    if got < nbytes:
        raise CheckpointError(f"{path}: storage {name} holds {got} bytes, {nbytes} expected")
    return buf


def _unpickle(zf, prefix, path):
    data = _read_entry(zf, prefix + "data.pkl", path)
    up = _RestrictedUnpickler(io.BytesIO(data), path)
    try:
        obj = up.load()
    except CheckpointError:
        raise
    except Exception as e:  # malformed pickle: any error is a bad checkpoint
        raise CheckpointError(f"{path}: cannot unpickle data.pkl ({type(e).__name__}: {e})") from None
    return obj


def _flatten(obj, path, prefix=""):
    """name -> _TensorRef for every tensor in a (possibly nested) dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: top-level object is a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, _TensorRef):
            out[name] = v
        elif isinstance(v, dict):
            out.update(_flatten(v, path, name))
        # other leaves (numbers, strings, None) carry no weights and are skipped
    return out


def _byteorder(zf, prefix):
    try:
        value = zf.read(prefix + "byteorder").decode().strip()
    except KeyError:
        return "<"
    return ">" if value == "big" else "<"


def _check_bounds(ref, name, path):
    if ref.offset < 0 or any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride):
        raise CheckpointError(f"{path}: tensor {name} has negative offset, size or stride")
    if len(ref.shape) != len(ref.stride):
        raise CheckpointError(f"{path}: tensor {name} has {len(ref.shape)} sizes but {len(ref.stride)} strides")
    if 0 in ref.shape:
        return
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= ref.storage.numel:
        raise CheckpointError(
            f"{path}: tensor {name} reaches element {last} of a storage of {ref.storage.numel} elements"
        )


def _is_contiguous(shape, stride):
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def load_bin(path, bf16="float32"):
    """Load a torch.save zip checkpoint as {name: numpy array}.

    float32/float16/int64/... keep their dtype; 0-d tensors are 0-d arrays;
    bfloat16 becomes float32 (bf16="float32", exact) or stays as its uint16
    bit patterns (bf16="raw").  Nested dicts are flattened with "." and
    non-tensor entries are skipped.  Raises CheckpointError for a missing,
    corrupt, truncated, legacy or unsafe file.
    """
    if bf16 not in ("float32", "raw"):
        raise ValueError(f"bf16 must be 'float32' or 'raw', got {bf16!r}")
    path = os.fspath(path)
    zf, prefix = _open_zip(path)
    with zf:
        refs = _flatten(_unpickle(zf, prefix, path), path)
        order = _byteorder(zf, prefix)
        users = collections.Counter(ref.storage.key for ref in refs.values())
        by_storage = collections.defaultdict(list)
        for name, ref in refs.items():
            _check_bounds(ref, name, path)
            by_storage[ref.storage.key].append(name)

        out = {}
        for key, names in by_storage.items():
            st = refs[names[0]].storage
            dtype = np.dtype(st.stype.np_dtype).newbyteorder(order)
            buf = _read_storage(zf, f"{prefix}data/{key}", st.numel * dtype.itemsize, path)
            flat = np.frombuffer(buf, dtype=dtype)
            for name in names:
                ref = refs[name]
                n = int(np.prod(ref.shape, dtype=np.int64))
                if (users[key] == 1 and ref.offset == 0 and n == st.numel
                        and _is_contiguous(ref.shape, ref.stride)):
                    arr = flat.reshape(ref.shape)  # sole user of the storage: no copy
                elif n == 0:
                    arr = np.zeros(ref.shape, dtype=dtype)
                else:
                    view = np.lib.stride_tricks.as_strided(
                        flat[ref.offset:], shape=ref.shape,
                        strides=tuple(s * dtype.itemsize for s in ref.stride), writeable=False)
                    arr = np.array(view, order="C")
                if order == ">":
                    arr = arr.astype(dtype.newbyteorder("="))
                if st.stype.torch_dtype == "bfloat16" and bf16 == "float32":
                    arr = _bf16_to_f32(arr)
                out[name] = arr
        # keep the checkpoint's order
        return {name: out[name] for name in refs}


def _entry_data_offset(fp, info):
    """Byte offset of a stored (uncompressed) zip entry's data, else None."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    fp.seek(info.header_offset)
    header = fp.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def inspect_bin(path):
    """Describe the tensors of a .bin checkpoint without reading their data.

    Returns {name: BinTensorInfo}; see BinTensorInfo for the fields.
    """
    path = os.fspath(path)
    zf, prefix = _open_zip(path)
    with zf:
        refs = _flatten(_unpickle(zf, prefix, path), path)
        out = {}
        offsets = {}
        with open(path, "rb") as fp:
            for name, ref in refs.items():
                _check_bounds(ref, name, path)
                entry = f"{prefix}data/{ref.storage.key}"
                if entry not in offsets:
                    try:
                        info = zf.getinfo(entry)
                    except KeyError:
                        raise CheckpointError(f"{path}: missing archive entry {entry}") from None
                    offsets[entry] = _entry_data_offset(fp, info)
                itemsize = np.dtype(ref.storage.stype.np_dtype).itemsize
                n = int(np.prod(ref.shape, dtype=np.int64))
                out[name] = BinTensorInfo(
                    dtype=ref.storage.stype.torch_dtype, shape=ref.shape, stride=ref.stride,
                    storage=entry, storage_offset=ref.offset, file_offset=offsets[entry],
                    itemsize=itemsize, nbytes=n * itemsize,
                    contiguous=_is_contiguous(ref.shape, ref.stride))
        return out


def load_bin_index(index_path, bf16="float32"):
    """Load a sharded checkpoint from its `pytorch_model.bin.index.json`.

    Every shard named in `weight_map` (relative to the index's folder) is
    loaded; each tensor the map assigns to a shard must be in it.  Returns
    one {name: array} dict with all tensors of all shards.
    """
    index_path = os.fspath(index_path)
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{index_path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{index_path}: cannot read index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no 'weight_map' in index")
    folder = os.path.dirname(index_path)
    shards = collections.defaultdict(list)
    for name, shard in weight_map.items():
        shards[shard].append(name)
    out = {}
    for shard, names in shards.items():
        shard_path = os.path.join(folder, shard)
        tensors = load_bin(shard_path, bf16=bf16)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise CheckpointError(
                f"{shard_path}: tensor {missing[0]} listed in {os.path.basename(index_path)} is not in the shard"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        out.update(tensors)
    return out
