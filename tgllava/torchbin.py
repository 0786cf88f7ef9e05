"""Read PyTorch `.bin` checkpoints (torch.save zip format) without torch, safely.

A checkpoint written by `torch.save` (torch >= 1.6) is a zip archive with one top folder (any
name: `archive/`, `pytorch_model/`, ...) holding `data.pkl`, a pickle of the state dict, and
`data/<key>`, the raw bytes of each storage.  Unpickling naively runs whatever code the pickle
names, so this module unpickles with a restricted `pickle.Unpickler` whose `find_class` knows only
the globals that describe tensors (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, the
typed storage classes such as `torch.FloatStorage`, `collections.OrderedDict`); anything else is
refused with a CheckpointError naming the file and the global.  Tensors come back as NumPy arrays
built from (storage, offset, shape, stride), so views sharing a storage come out right; bfloat16
is widened to float32 (or kept as uint16 bit patterns on request), every other dtype is kept.
Sharded checkpoints are read through tgllava.checkpoint (its index reader asks `shard_path` here
whether a shard name stays in the index's folder).

Storages torch wrote uncompressed (normally all) are memory-mapped copy-on-write, not read, so a
13 GB checkpoint is never held in memory at once.  Nothing a pickle says is trusted: every load
gets its own stand-ins for the allowed globals, which refuse BUILD/SETITEM (a pickle cannot change
state another load sees); a storage's declared size is checked against its zip entry before
anything is allocated or mapped; a view may not hold more elements than its storage (no stride-0
blow-ups); nesting depth and cycles of the state dict are bounded; sharded index names may not
leave the index's folder.
"""

import collections
import dataclasses
import io
import math
import os
import pickle
import struct
import zipfile
import zlib

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


# Deepest nesting of dicts accepted in a state dict (real ones are 1-3 deep).
MAX_NESTING = 64
# A compressed storage entry may not claim to expand more than this (deflate's own limit is ~1032).
MAX_COMPRESSION_RATIO = 1100
_CRC_CHUNK = 64 << 20


class _Frozen:
    """Base of the per-load stand-ins for allowed globals: a pickle may not set state on them."""

    __slots__ = ()

    def __init__(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise CheckpointError(f"refusing to set attribute {name!r} on {self!r} (BUILD on an allowed global)")

    def __setstate__(self, state):
        raise CheckpointError(f"refusing to set state on {self!r} (BUILD on an allowed global)")

    def __setitem__(self, key, value):
        raise CheckpointError(f"refusing to set item {key!r} on {self!r} (SETITEM on an allowed global)")


class _StorageType(_Frozen):
    """Stands in for a torch storage class (torch.FloatStorage, ...); not callable, immutable."""

    __slots__ = ("name", "np_dtype", "torch_dtype")

    def __init__(self, name):
        np_dtype, torch_dtype = _STORAGE_TYPES[name]
        super().__init__(name=name, np_dtype=np_dtype, torch_dtype=torch_dtype)

    def __repr__(self):
        return f"torch.{self.name}"


class _Callable(_Frozen):
    """Stands in for an allowed function or class (torch._utils._rebuild_tensor_v2, OrderedDict, ...)."""

    __slots__ = ("qualname", "fn")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return self.qualname


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


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not _is_int(storage_offset):
        raise CheckpointError(f"tensor storage offset is a {type(storage_offset).__name__}, not an integer")
    for what, seq in (("size", size), ("stride", stride)):
        if not isinstance(seq, (tuple, list)) or not all(_is_int(v) for v in seq):
            raise CheckpointError(f"tensor {what} {seq!r} is not a tuple of integers")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter and _rebuild_parameter_with_state: the tensor itself."""
    return data


_ALLOWED_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def _fresh_globals():
    """The allowed globals as new stand-in objects: each load gets its own, so none is shared."""
    out = {key: _Callable(qualname=".".join(key), fn=fn) for key, fn in _ALLOWED_FUNCTIONS.items()}
    out.update({("torch", name): _StorageType(name) for name in _STORAGE_TYPES})
    return out


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, path):
        super().__init__(fileobj)
        self.path = path
        self.storages = {}
        self.globals = _fresh_globals()

    def find_class(self, module, name):
        try:
            return self.globals[(module, name)]
        except (KeyError, TypeError):
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
        if not isinstance(key, (str, int)) or isinstance(key, bool) or "/" in str(key) or str(key) in ("", ".", ".."):
            raise CheckpointError(f"{self.path}: storage key {key!r} is not a plain name")
        if not _is_int(numel) or numel < 0:
            raise CheckpointError(f"{self.path}: storage {key!r} declares numel {numel!r} (need an integer >= 0)")
        key = str(key)
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, stype, numel)
        elif st.numel != numel:
            raise CheckpointError(f"{self.path}: storage {key!r} declared with {st.numel} and {numel} elements")
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


def _entry_info(zf, name, path):
    try:
        return zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path}: missing archive entry {name}") from None


def _read_entry(zf, name, path):
    info = _entry_info(zf, name, path)
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt archive entry {name} ({e})") from None


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


def _check_entry_size(info, nbytes, path):
    """Refuse a storage whose declared size its zip entry cannot hold -- before anything is allocated."""
    if nbytes > info.file_size:
        raise CheckpointError(
            f"{path}: storage {info.filename} declares {nbytes} bytes but its archive entry holds {info.file_size}")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise CheckpointError(f"{path}: stored archive entry {info.filename} has inconsistent sizes")
    elif info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 4096:
        raise CheckpointError(
            f"{path}: archive entry {info.filename} claims {info.file_size} bytes from {info.compress_size} "
            "compressed bytes (implausible compression ratio)")


def _read_storage(zf, info, nbytes, path):
    """Read the first `nbytes` of a (compressed) storage entry into a writable buffer."""
    buf = bytearray(nbytes)
    try:
        with zf.open(info) as f:
            got = f.readinto(buf)  # ZipExtFile reads until the buffer is full or the entry ends
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt archive entry {info.filename} ({e})") from None
    if got < nbytes:
        raise CheckpointError(f"{path}: storage {info.filename} holds {got} bytes, {nbytes} expected")
    return buf


def _storage_array(zf, fp, info, dtype, numel, path, file_size):
    """The storage's elements as a flat array: a copy-on-write memory map when stored, else read."""
    nbytes = numel * dtype.itemsize
    _check_entry_size(info, nbytes, path)
    if numel == 0:
        return np.zeros(0, dtype)
    start = _entry_data_offset(fp, info)
    if start is not None:
        if start + nbytes > file_size:
            raise CheckpointError(f"{path}: storage {info.filename} runs past the end of the file (truncated?)")
        try:
            raw = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=(info.file_size,))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot map storage {info.filename} ({e})") from None
        crc = 0
        for i in range(0, info.file_size, _CRC_CHUNK):  # the mapped pages are clean: the OS can drop them
            crc = zlib.crc32(raw[i:i + _CRC_CHUNK], crc)
        if crc != info.CRC:
            raise CheckpointError(f"{path}: storage {info.filename} fails its CRC check (corrupt file)")
        return raw[:nbytes].view(dtype)
    return np.frombuffer(_read_storage(zf, info, nbytes, path), dtype=dtype)


def _unpickle(zf, prefix, path):
    data = _read_entry(zf, prefix + "data.pkl", path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    except Exception as e:  # malformed pickle (also RecursionError): any error is a bad checkpoint
        raise CheckpointError(f"{path}: cannot unpickle data.pkl ({type(e).__name__}: {e})") from None


def _flatten(obj, path, prefix="", depth=0, active=None):
    """name -> _TensorRef for every tensor in a (possibly nested) dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: top-level object is a {type(obj).__name__}, not a state dict")
    if depth > MAX_NESTING:
        raise CheckpointError(f"{path}: state dict nests deeper than {MAX_NESTING} levels at {prefix!r}")
    active = set() if active is None else active
    if id(obj) in active:
        raise CheckpointError(f"{path}: state dict contains itself at {prefix!r} (a reference cycle)")
    active.add(id(obj))
    out = {}
    for k, v in obj.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, _TensorRef):
            found = {name: v}
        elif isinstance(v, dict):
            found = _flatten(v, path, name, depth + 1, active)
        else:
            continue  # other leaves (numbers, strings, None) carry no weights
        for sub, ref in found.items():
            if sub in out:
                raise CheckpointError(f"{path}: tensor name {sub!r} occurs twice")
            out[sub] = ref
    active.discard(id(obj))
    return out


def _byteorder(zf, prefix):
    try:
        value = zf.read(prefix + "byteorder").decode(errors="replace").strip()
    except KeyError:
        return "<"
    return ">" if value == "big" else "<"


def _check_bounds(ref, name, path):
    """The view (offset, shape, stride) must lie inside its storage and be no larger than it."""
    if ref.offset < 0 or any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride):
        raise CheckpointError(f"{path}: tensor {name} has negative offset, size or stride")
    if len(ref.shape) != len(ref.stride):
        raise CheckpointError(f"{path}: tensor {name} has {len(ref.shape)} sizes but {len(ref.stride)} strides")
    if len(ref.shape) > 32:
        raise CheckpointError(f"{path}: tensor {name} has {len(ref.shape)} dimensions (at most 32 supported)")
    n = math.prod(ref.shape)  # Python integers: no overflow
    if n == 0:
        return
    if n > ref.storage.numel:
        raise CheckpointError(
            f"{path}: tensor {name} of shape {ref.shape} has {n} elements, more than its storage of "
            f"{ref.storage.numel} (overlapping or broadcast views are not supported in checkpoints)")
    last = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride))
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


def _read_refs(zf, prefix, path):
    """name -> _TensorRef of a checkpoint, every view checked against its storage."""
    refs = _flatten(_unpickle(zf, prefix, path), path)
    for name, ref in refs.items():
        _check_bounds(ref, name, path)
    return refs


def load_bin(path, bf16="float32"):
    """Load a torch.save zip checkpoint as {name: numpy array}.

    float32/float16/int64/... keep their dtype; 0-d tensors are 0-d arrays; bfloat16 becomes
    float32 (bf16="float32", exact) or stays as its uint16 bit patterns (bf16="raw").  Nested dicts
    are flattened with "." and non-tensor entries are skipped.  A tensor that is a whole stored
    storage comes back as a copy-on-write memory map of the file (writes stay private); views and
    byte-swapped tensors are copies.  Raises CheckpointError for a missing, corrupt, truncated,
    legacy or unsafe file.
    """
    if bf16 not in ("float32", "raw"):
        raise ValueError(f"bf16 must be 'float32' or 'raw', got {bf16!r}")
    return _load(os.fspath(path), bf16)[1]


def _load(path, bf16):
    """(refs, {name: array}) of a checkpoint; see load_bin."""
    zf, prefix = _open_zip(path)
    with zf, open(path, "rb") as fp:
        file_size = os.fstat(fp.fileno()).st_size
        refs = _read_refs(zf, prefix, path)
        order = _byteorder(zf, prefix)
        by_storage = collections.defaultdict(list)
        for name, ref in refs.items():
            by_storage[ref.storage.key].append(name)

        out = {}
        for key, names in by_storage.items():
            st = refs[names[0]].storage
            dtype = np.dtype(st.stype.np_dtype).newbyteorder(order)
            info = _entry_info(zf, f"{prefix}data/{key}", path)
            flat = _storage_array(zf, fp, info, dtype, st.numel, path, file_size)
            for name in names:
                ref = refs[name]
                if (len(names) == 1 and ref.offset == 0 and math.prod(ref.shape) == st.numel
                        and _is_contiguous(ref.shape, ref.stride)):
                    arr = flat.reshape(ref.shape)  # sole user of the storage: no copy
                else:  # (an empty view reads no element, wherever its offset points)
                    view = np.lib.stride_tricks.as_strided(
                        flat[ref.offset:], shape=ref.shape,
                        strides=tuple(s * dtype.itemsize for s in ref.stride), writeable=False)
                    arr = np.array(view, order="C")
                if order == ">":
                    arr = arr.astype(dtype.newbyteorder("="))
                if st.stype.torch_dtype == "bfloat16" and bf16 == "float32":
                    arr = (arr.astype(np.uint32) << 16).view(np.float32)
                out[name] = arr
        # keep the checkpoint's order
        return refs, {name: out[name] for name in refs}


def load_bin_typed(path):
    """Like load_bin(path, bf16="raw"), but as {name: (torch dtype name, array)}.

    bfloat16 tensors stay uint16 bit patterns, tagged "bfloat16", so callers can hand them on unwidened.
    """
    refs, arrays = _load(os.fspath(path), "raw")
    return {name: (refs[name].storage.stype.torch_dtype, a) for name, a in arrays.items()}


def shard_path(index_path, shard):
    """The file a sharded index names, refused (CheckpointError) when the name leaves the index's folder.

    A shard name must be a relative path (no drive, no leading "/") whose folders, with `..` and
    symlinked folders resolved, stay inside the index's folder.  The shard file itself may be a
    symlink (the Hugging Face cache links snapshot files to its blob store).
    """
    index_path = os.fspath(index_path)
    if not isinstance(shard, str) or not shard or "\x00" in shard:
        raise CheckpointError(f"{index_path}: shard name {shard!r} is not a file name")
    if os.path.isabs(shard) or os.path.splitdrive(shard)[0] or shard.startswith(("/", "\\")):
        raise CheckpointError(f"{index_path}: shard name {shard!r} is an absolute path; it must lie in the index's folder")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(index_path)))
    joined = os.path.join(folder, shard)
    parent = os.path.realpath(os.path.dirname(joined))
    base = os.path.basename(joined)
    if base in ("", ".", "..") or os.path.commonpath([folder, parent]) != folder:
        raise CheckpointError(f"{index_path}: shard name {shard!r} leaves the index's folder {folder}")
    return os.path.join(parent, base)
