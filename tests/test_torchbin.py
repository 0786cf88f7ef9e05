"""Tests for tgllava.torchbin: the PyTorch-written fixtures load to the same
values as their safetensors twin, sharded indexes are refused when broken, and malicious,
truncated, legacy or malformed files are refused with CheckpointError."""

import json
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

import golden_util
from tgllava import read_tensors, torchbin
from tgllava.errors import CheckpointError

FIXTURES = pathlib.Path(golden_util.FIXTURES)

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": np.uint16}


def read_safetensors(path):
    """Minimal safetensors reader (BF16 returned widened to float32)."""
    data = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        a = np.frombuffer(body[start:end], dtype=_ST_DTYPES[meta["dtype"]]).reshape(meta["shape"])
        if meta["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out


def rewrite_zip(src, dst, rename=None, replace=None, extra=None):
    """Copy a zip entry by entry, renaming entries or replacing their bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            name = rename(info.filename) if rename else info.filename
            if replace and info.filename in replace:
                data = replace[info.filename]
            zout.writestr(name, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def test_small_bin_matches_safetensors_twin():
    got = torchbin.load_bin(FIXTURES / "small.bin")
    twin = read_safetensors(FIXTURES / "small.safetensors")
    expected = json.loads((FIXTURES / "small.expected.json").read_text())
    assert list(got) == list(expected)
    for name, meta in expected.items():
        a = got[name]
        assert list(a.shape) == meta["shape"], name
        want_dtype = {"torch.float32": np.float32, "torch.float16": np.float16,
                      "torch.bfloat16": np.float32, "torch.int64": np.int64}[meta["dtype"]]
        assert a.dtype == want_dtype, name
        assert np.array_equal(a.reshape(-1), twin[name].reshape(-1)), name
    assert got["model.e.scale"].ndim == 0
    # the two views sharing one storage come out as independent arrays
    f, g = got["model.f.weight"], got["model.g.weight"]
    assert f.flags.c_contiguous and g.flags.c_contiguous
    f[...] = 0
    assert np.array_equal(g.reshape(-1), twin["model.g.weight"].reshape(-1))


def test_bf16_raw():
    raw = torchbin.load_bin(FIXTURES / "small.bin", bf16="raw")
    wide = torchbin.load_bin(FIXTURES / "small.bin")
    assert raw["model.c.weight"].dtype == np.uint16
    assert np.array_equal((raw["model.c.weight"].astype(np.uint32) << 16).view(np.float32),
                          wide["model.c.weight"])
    assert raw["model.a.weight"].dtype == np.float32
    with pytest.raises(ValueError):
        torchbin.load_bin(FIXTURES / "small.bin", bf16="float16")


def test_sharded_index_errors(tmp_path):
    """A sharded .bin index is read by tgllava.checkpoint (the one index reader), with torchbin's
    shard_path keeping shard names inside the index's folder."""
    shard = FIXTURES / "sharded" / "pytorch_model-00001-of-00002.bin"
    (tmp_path / "s.bin").write_bytes(shard.read_bytes())
    bad = tmp_path / "index.json"
    bad.write_text(json.dumps({"weight_map": {"model.a.weight": "s.bin", "model.zzz": "s.bin"}}))
    with pytest.raises(CheckpointError, match="model.zzz"):
        read_tensors(bad)
    bad.write_text(json.dumps({"weight_map": {"model.a.weight": "missing.bin"}}))
    with pytest.raises(CheckpointError, match="missing.bin"):
        read_tensors(bad)
    bad.write_text(json.dumps({"weight_map": {"model.a.weight": "../s.bin"}}))
    with pytest.raises(CheckpointError, match="leaves the index's folder"):
        read_tensors(bad)
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="index.json"):
        read_tensors(bad)
    bad.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        read_tensors(bad)
    with pytest.raises(CheckpointError, match="no such"):
        read_tensors(tmp_path / "nope.json")


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    marker = tmp_path / "tgllava-pickle-executed"
    with pytest.raises(CheckpointError, match=r"malicious\.bin.*posix\.system"):
        torchbin.load_bin(FIXTURES / "malicious.bin")
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "evil.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": print}, protocol=2))
    with pytest.raises(CheckpointError, match=r"builtin__\.print"):
        torchbin.load_bin(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": bytearray(b"x")}, protocol=4))
    with pytest.raises(CheckpointError, match="bytearray"):
        torchbin.load_bin(path)


def test_truncated_and_corrupt_files(tmp_path):
    data = (FIXTURES / "small.bin").read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        p = tmp_path / f"trunc{cut}.bin"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"trunc{cut}.bin"):
            torchbin.load_bin(p)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a PyTorch zip"):
        torchbin.load_bin(garbage)
    with pytest.raises(CheckpointError, match="no such file"):
        torchbin.load_bin(tmp_path / "missing.bin")
    # flip bytes inside a storage: zip CRC check fails
    corrupt = bytearray(data)
    start = data.find(torchbin.load_bin(FIXTURES / "small.bin")["model.a.weight"].tobytes())
    assert start > 0
    corrupt[start:start + 8] = b"\xff" * 8
    p = tmp_path / "crc.bin"
    p.write_bytes(bytes(corrupt))
    with pytest.raises(CheckpointError, match="crc.bin"):
        torchbin.load_bin(p)


def test_legacy_format_is_refused(tmp_path):
    p = tmp_path / "legacy.bin"
    p.write_bytes(b"\x80\x02\x8a\x0a" + bytes.fromhex("6cfc9c46f9206aa85019") + b".\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match=r"legacy \(non-zip\) torch format not supported: re-save with torch>=1.6"):
        torchbin.load_bin(p)


def test_any_top_folder_name(tmp_path):
    p = tmp_path / "renamed.bin"
    rewrite_zip(FIXTURES / "small.bin", p, rename=lambda n: "whatever_name/" + n.split("/", 1)[1])
    a = torchbin.load_bin(p)
    b = torchbin.load_bin(FIXTURES / "small.bin")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_archive_structure(tmp_path):
    p = tmp_path / "nopkl.bin"
    rewrite_zip(FIXTURES / "small.bin", p, rename=lambda n: n.replace("data.pkl", "other.pkl"))
    with pytest.raises(CheckpointError, match="data.pkl"):
        torchbin.load_bin(p)
    p = tmp_path / "badpkl.bin"
    rewrite_zip(FIXTURES / "small.bin", p, replace={"small/data.pkl": b"\x80\x02garbage"})
    with pytest.raises(CheckpointError, match="unpickle"):
        torchbin.load_bin(p)
    p = tmp_path / "short.bin"
    rewrite_zip(FIXTURES / "small.bin", p, replace={"small/data/5": b"\x00" * 16})
    with pytest.raises(CheckpointError, match="data/5"):
        torchbin.load_bin(p)
    p = tmp_path / "nostorage.bin"
    with zipfile.ZipFile(FIXTURES / "small.bin") as zin, zipfile.ZipFile(p, "w") as zout:
        for n in zin.namelist():
            if n != "small/data/0":
                zout.writestr(n, zin.read(n))
    with pytest.raises(CheckpointError, match="data/0"):
        torchbin.load_bin(p)


def test_big_endian_archive(tmp_path):
    zf, prefix = torchbin._open_zip(str(FIXTURES / "small.bin"))
    with zf:  # each storage entry's element size, from the pickle's storage types
        itemsize = {f"{prefix}data/{r.storage.key}": np.dtype(r.storage.stype.np_dtype).itemsize
                    for r in torchbin._read_refs(zf, prefix, "small.bin").values()}
    with zipfile.ZipFile(FIXTURES / "small.bin") as z:
        swapped = {}
        for entry, size in itemsize.items():
            a = np.frombuffer(z.read(entry), dtype=f"<u{size}" if size > 1 else "u1")
            swapped[entry] = a.byteswap().tobytes()
    p = tmp_path / "big.bin"
    rewrite_zip(FIXTURES / "small.bin", p, replace=swapped, extra={"small/byteorder": b"big"})
    a = torchbin.load_bin(p)
    b = torchbin.load_bin(FIXTURES / "small.bin")
    for k in b:
        assert a[k].dtype.isnative and a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


# --- hand-written pickles: parameters, nested dicts, out-of-range views --------

def _u(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(v):
    return b"J" + struct.pack("<i", v)


def _tup(*items):
    return b"(" + b"".join(items) + b"t"


def _tensor(key, stype, numel, offset, shape, stride, parameter=False):
    od = b"ccollections\nOrderedDict\n)R"
    t = (b"ctorch._utils\n_rebuild_tensor_v2\n("
         + _tup(_u("storage"), b"ctorch\n" + stype.encode() + b"\n", _u(key), _u("cpu"), _i(numel)) + b"Q"
         + _i(offset) + _tup(*map(_i, shape)) + _tup(*map(_i, stride)) + b"\x89" + od + b"tR")
    if parameter:
        t = b"ctorch._utils\n_rebuild_parameter\n(" + t + b"\x88" + od + b"tR"
    return t


def _write_ckpt(path, pkl, storages):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)


def test_parameters_nested_dicts_and_slices(tmp_path):
    storage = np.arange(12, dtype=np.float32)
    pkl = (b"\x80\x02}" + _u("p") + _tensor("0", "FloatStorage", 12, 2, (2, 3), (3, 1), parameter=True) + b"s"
           + _u("sub") + b"}" + _u("t") + _tensor("0", "FloatStorage", 12, 1, (3,), (4,)) + b"s" + b"s"
           + _u("step") + _i(7) + b"s"
           + _u("empty") + _tensor("1", "LongStorage", 0, 0, (0, 4), (4, 1)) + b"s" + b".")
    p = tmp_path / "hand.bin"
    _write_ckpt(p, pkl, {"0": storage.tobytes(), "1": b""})
    got = torchbin.load_bin(p)
    assert list(got) == ["p", "sub.t", "empty"]
    assert np.array_equal(got["p"], storage[2:8].reshape(2, 3))
    assert np.array_equal(got["sub.t"], storage[1:12:4])
    assert got["empty"].shape == (0, 4) and got["empty"].dtype == np.int64


def test_view_outside_storage_is_refused(tmp_path):
    pkl = b"\x80\x02}" + _u("w") + _tensor("0", "FloatStorage", 4, 2, (2, 2), (2, 1)) + b"s."
    p = tmp_path / "oob.bin"
    _write_ckpt(p, pkl, {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="tensor w"):
        torchbin.load_bin(p)


def test_top_level_must_be_a_dict(tmp_path):
    p = tmp_path / "list.bin"
    _write_ckpt(p, b"\x80\x02](" + _i(1) + b"e.", {})
    with pytest.raises(CheckpointError, match="state dict"):
        torchbin.load_bin(p)


# --- hostile files (issue 13): poisoning, size bombs, escaping shards, malformed fields ------

def _storage_global(name="FloatStorage"):
    return b"ctorch\n" + name.encode() + b"\n"


def _legit_float32(tmp_path):
    pkl = b"\x80\x02}" + _u("w") + _tensor("0", "FloatStorage", 4, 0, (4,), (1,)) + b"s."
    p = tmp_path / "legit.bin"
    _write_ckpt(p, pkl, {"0": np.arange(4, dtype=np.float32).tobytes()})
    return p


@pytest.mark.parametrize("state", [
    b"N}" + _u("np_dtype") + _u("float16") + b"s\x86",   # (None, slotstate): setattr on the object
    b"}" + _u("np_dtype") + _u("float16") + b"s",        # plain state dict
])
def test_pickle_cannot_poison_later_loads(tmp_path, state):
    legit = _legit_float32(tmp_path)
    assert np.array_equal(torchbin.load_bin(legit)["w"], [0, 1, 2, 3])
    # BUILD on the allow-listed storage type, then on an allowed function
    for target in (_storage_global(), b"ctorch._utils\n_rebuild_tensor_v2\n", b"ccollections\nOrderedDict\n"):
        p = tmp_path / "poison.bin"
        _write_ckpt(p, b"\x80\x02}" + _u("x") + target + state + b"bs.", {})
        with pytest.raises(CheckpointError, match="poison.bin"):
            torchbin.load_bin(p)
        assert np.array_equal(torchbin.load_bin(legit)["w"], [0, 1, 2, 3])
    # SETITEM on an allowed global
    p = tmp_path / "setitem.bin"
    _write_ckpt(p, b"\x80\x02}" + _u("x") + _storage_global() + _u("np_dtype") + _u("float16") + b"ss.", {})
    with pytest.raises(CheckpointError, match="setitem.bin"):
        torchbin.load_bin(p)
    assert np.array_equal(torchbin.load_bin(legit)["w"], [0, 1, 2, 3])


def test_stride_zero_view_larger_than_its_storage_is_refused(tmp_path):
    n = 1 << 24  # 64 MB if materialised
    pkl = b"\x80\x02}" + _u("w") + _tensor("0", "FloatStorage", 1, 0, (n,), (0,)) + b"s."
    p = tmp_path / "stride0.bin"
    _write_ckpt(p, pkl, {"0": np.ones(1, np.float32).tobytes()})
    assert p.stat().st_size < 1000

    def load():
        with pytest.raises(CheckpointError, match=r"stride0\.bin.*tensor w.*more than its storage"):
            torchbin.load_bin(p)
    assert golden_util.peak_bytes(load) < 8 << 20


def test_declared_storage_larger_than_its_entry_is_refused_before_allocating(tmp_path):
    n = 1 << 28  # 1 GB declared, 4 bytes present
    pkl = b"\x80\x02}" + _u("w") + _tensor("0", "FloatStorage", n, 0, (1,), (1,)) + b"s."
    p = tmp_path / "short.bin"
    _write_ckpt(p, pkl, {"0": np.ones(1, np.float32).tobytes()})

    def load():
        with pytest.raises(CheckpointError, match=r"short\.bin.*declares 1073741824 bytes.*holds 4"):
            torchbin.load_bin(p)
    assert golden_util.peak_bytes(load) < 8 << 20


def test_negative_numel_and_non_integer_fields(tmp_path):
    p = tmp_path / "neg.bin"
    _write_ckpt(p, b"\x80\x02}" + _u("w") + _tensor("0", "FloatStorage", -1, 0, (0,), (1,)) + b"s.", {"0": b""})
    with pytest.raises(CheckpointError, match=r"neg\.bin.*numel -1"):
        torchbin.load_bin(p)
    # a size given as a float
    t = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + _tup(_u("storage"), _storage_global(), _u("0"), _u("cpu"), _i(4))
         + b"Q" + _i(0) + _tup(b"G" + struct.pack(">d", 4.0)) + _tup(_i(1)) + b"\x89ccollections\nOrderedDict\n)RtR")
    p = tmp_path / "floatsize.bin"
    _write_ckpt(p, b"\x80\x02}" + _u("w") + t + b"s.", {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match=r"floatsize\.bin.*size"):
        torchbin.load_bin(p)


def test_self_referencing_and_deeply_nested_state_dicts(tmp_path):
    p = tmp_path / "cycle.bin"
    _write_ckpt(p, b"\x80\x02}q\x00" + _u("self") + b"h\x00s.", {})  # d["self"] = d
    with pytest.raises(CheckpointError, match=r"cycle\.bin.*itself.*self"):
        torchbin.load_bin(p)
    depth = 5000
    p = tmp_path / "deep.bin"
    _write_ckpt(p, b"\x80\x02" + (b"}" + _u("a")) * depth + b"}" + b"s" * depth + b".", {})
    with pytest.raises(CheckpointError, match=r"deep\.bin.*nests deeper"):
        torchbin.load_bin(p)


def test_shard_names_may_not_leave_the_folder(tmp_path):
    from tgllava.checkpoint import folder_refs
    shard = (FIXTURES / "sharded" / "pytorch_model-00001-of-00002.bin").read_bytes()
    (tmp_path / "outside.bin").write_bytes(shard)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "s.bin").write_bytes(shard)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "linked_dir").symlink_to(tmp_path / "elsewhere")
    index = ckpt / "pytorch_model.bin.index.json"
    for name in ("../outside.bin", str(tmp_path / "outside.bin"), "sub/../../outside.bin", "linked_dir/s.bin"):
        index.write_text(json.dumps({"weight_map": {"model.a.weight": name}}))
        with pytest.raises(CheckpointError, match="leaves the index's folder|absolute path"):
            folder_refs(str(ckpt))
    # inside the folder, and a shard file that is itself a symlink (the Hugging Face cache): fine
    (ckpt / "blob.bin").symlink_to(tmp_path / "outside.bin")
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "s.bin").write_bytes(shard)
    for name in ("blob.bin", "sub/s.bin", "./sub/../blob.bin"):
        index.write_text(json.dumps({"weight_map": {"model.a.weight": name}}))
        assert "model.a.weight" in read_tensors(index)


def test_storages_are_memory_mapped_and_bf16_stays_raw_for_the_loader():
    from tgllava.checkpoint import folder_refs

    def mapped(a):
        while a is not None:
            if isinstance(a, np.memmap):
                return True
            a = getattr(a, "base", None)
        return False
    arrays = torchbin.load_bin(FIXTURES / "small.bin", bf16="raw")
    assert mapped(arrays["model.a.weight"]) and mapped(arrays["model.c.weight"])
    arrays["model.a.weight"][0, 0] = 123.0  # copy-on-write: the file is not changed
    assert torchbin.load_bin(FIXTURES / "small.bin")["model.a.weight"][0, 0] != 123.0
    refs = folder_refs(str(FIXTURES / "small.bin"))
    c = refs["model.c.weight"]
    assert c.dtype == "BF16" and c.src_code == 2
    raw = c.raw()
    assert raw.dtype == np.uint16 and raw.shape == (2, 3, 4) and mapped(raw)
    assert np.array_equal(c.float32(), torchbin.load_bin(FIXTURES / "small.bin")["model.c.weight"])
    assert refs["model.a.weight"].dtype == "F32" and refs["model.b.weight"].dtype == "F16"
    assert refs["model.d.position_ids"].dtype == "I64"


def test_bfloat16_bin_checkpoint_loads_without_widening_in_python(tmp_path):
    """A bfloat16 .bin reaches the C core as raw bf16 bits: same logits as float32 weights holding the
    bf16-rounded values (bf16 -> f32 is exact)."""
    import os
    import shutil
    import sys

    import tgllava
    from tgllava.checkpoint import folder_refs
    sys.path.insert(0, golden_util.GOLDEN)
    from weights import load_safetensors, save_safetensors

    llm, clip = golden_util.checkpoint("llava15-tiny")
    tensors = load_safetensors(os.path.join(llm, "model.safetensors"))
    bits = {k: (np.ascontiguousarray(v, np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
    pkl = b"\x80\x02}"
    storages = {}
    for i, (name, b) in enumerate(bits.items()):
        shape = b.shape
        stride = tuple(int(np.prod(shape[j + 1:])) for j in range(len(shape)))
        pkl += _u(name) + _tensor(str(i), "BFloat16Storage", b.size, 0, shape, stride) + b"s"
        storages[str(i)] = b.tobytes()
    binary = tmp_path / "bin"
    shutil.copytree(llm, binary, ignore=shutil.ignore_patterns("*.safetensors*"))
    with zipfile.ZipFile(binary / "pytorch_model.bin", "w") as z:  # stored, like torch.save
        z.writestr("archive/data.pkl", pkl + b".")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    refs = folder_refs(str(binary))
    assert {r.dtype for r in refs.values()} == {"BF16"}
    assert all(r.raw().dtype == np.uint16 for r in refs.values())
    rounded = tmp_path / "f32"
    shutil.copytree(llm, rounded, ignore=shutil.ignore_patterns("*.safetensors*"))
    save_safetensors(str(rounded / "model.safetensors"),
                     {k: (b.astype(np.uint32) << 16).view(np.float32) for k, b in bits.items()})
    ids = [1, 8, 9, 10]
    a = tgllava.load(str(binary), clip).logits(ids)
    b = tgllava.load(str(rounded), clip).logits(ids)
    assert np.array_equal(a, b)
