"""Loading: corrupt, truncated, mis-shaped or incomplete checkpoints raise CheckpointError naming file and tensor."""
import json
import os
import shutil
import struct
import sys

import numpy as np
import pytest

import tgllava
from tgllava.checkpoint import read_tensors
from golden_util import GOLDEN, checkpoint

sys.path.insert(0, GOLDEN)
from weights import load_safetensors, save_safetensors  # noqa: E402


@pytest.fixture()
def llava(tmp_path):
    llm, clip = checkpoint("llava15-tiny")
    shutil.copytree(llm, tmp_path / "llm")
    return str(tmp_path / "llm"), clip


def test_missing_folder():
    with pytest.raises(tgllava.CheckpointError, match="no such"):
        tgllava.load("/nonexistent/folder")


def test_truncated_file(llava):
    llm, clip = llava
    f = os.path.join(llm, "model.safetensors")
    data = open(f, "rb").read()
    open(f, "wb").write(data[: len(data) // 2])
    with pytest.raises(tgllava.CheckpointError, match="model.safetensors.*(truncated|beyond)"):
        tgllava.load(llm, clip)


def test_corrupt_header(llava):
    llm, clip = llava
    f = os.path.join(llm, "model.safetensors")
    open(f, "wb").write(struct.pack("<Q", 10) + b"{not json!")
    with pytest.raises(tgllava.CheckpointError, match="corrupt"):
        tgllava.load(llm, clip)
    open(f, "wb").write(struct.pack("<Q", 1 << 40))
    with pytest.raises(tgllava.CheckpointError, match="corrupt"):
        tgllava.load(llm, clip)


def test_missing_tensor(llava):
    llm, clip = llava
    f = os.path.join(llm, "model.safetensors")
    t = load_safetensors(f)
    del t["model.layers.1.mlp.up_proj.weight"]
    save_safetensors(f, t)
    with pytest.raises(tgllava.CheckpointError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
        tgllava.load(llm, clip)


def test_wrong_shape(llava):
    llm, clip = llava
    f = os.path.join(llm, "model.safetensors")
    t = load_safetensors(f)
    t["model.norm.weight"] = np.ones(255, np.float32)
    save_safetensors(f, t)
    with pytest.raises(tgllava.CheckpointError, match=r"model.safetensors.*model.norm.weight has shape \(255,\), expected \(256,\)"):
        tgllava.load(llm, clip)


def test_wrong_dtype(llava):
    llm, clip = llava
    f = os.path.join(llm, "model.safetensors")
    t = load_safetensors(f)
    t["model.norm.weight"] = np.ones(256, np.int64)
    save_safetensors(f, t)
    with pytest.raises(tgllava.CheckpointError, match="model.norm.weight has dtype I64"):
        tgllava.load(llm, clip)


def test_float16_and_sharded(llava, tmp_path):
    llm, clip = llava
    t = load_safetensors(os.path.join(llm, "model.safetensors"))
    os.remove(os.path.join(llm, "model.safetensors"))
    names = sorted(t)
    half = {k: t[k].astype(np.float16) for k in names[: len(names) // 2]}
    rest = {k: t[k] for k in names[len(names) // 2:]}
    save_safetensors(os.path.join(llm, "model-00001-of-00002.safetensors"), half)
    save_safetensors(os.path.join(llm, "model-00002-of-00002.safetensors"), rest)
    wm = {k: "model-00001-of-00002.safetensors" for k in half}
    wm.update({k: "model-00002-of-00002.safetensors" for k in rest})
    json.dump({"weight_map": wm}, open(os.path.join(llm, "model.safetensors.index.json"), "w"))
    m = tgllava.load(llm, clip)
    ref = tgllava.load(*checkpoint("llava15-tiny"))
    ids = [1, 8, 9, 10]
    assert np.abs(m.logits(ids) - ref.logits(ids)).max() < 0.05  # fp16-rounded weights
    got = read_tensors(os.path.join(llm, "model.safetensors.index.json"))
    assert got["model.norm.weight"].dtype == np.float32 and set(got) == set(t)


def test_bad_device_and_dtype(llava):
    llm, clip = llava
    with pytest.raises(ValueError):
        tgllava.load(llm, clip, device="tpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        tgllava.load(llm, clip, dtype="int3")
    with pytest.raises(ValueError, match="CPU format"):
        tgllava.load(llm, clip, device="cuda", dtype="int8")  # int8/int4 blocks exist on the CPU only


# ---- malformed safetensors headers (issue 13): CheckpointError naming file, tensor and field

def _raw_safetensors(path, header, data=b"\x00" * 16):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    return str(path)


@pytest.mark.parametrize("entry,field", [
    ({"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}, "data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 32]}, "data_offsets"),
    ({"dtype": "F32", "shape": "12", "data_offsets": [0, 8]}, "shape"),
    ({"dtype": "F32", "shape": [2, True], "data_offsets": [0, 8]}, "shape"),
    ({"dtype": "F32", "shape": [2 ** 32, 2 ** 32], "data_offsets": [0, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2 ** 62, 4], "data_offsets": [0, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "shape"),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, "dtype"),
    ({"shape": [2], "data_offsets": [0, 8]}, "dtype"),
    ([1, 2, 3], "malformed"),
])
def test_malformed_header_fields(tmp_path, entry, field):
    from tgllava.checkpoint import safetensors_refs
    p = _raw_safetensors(tmp_path / "bad.safetensors", {"w": entry})
    with pytest.raises(tgllava.CheckpointError, match=rf"bad\.safetensors: tensor w: .*{field}"):
        safetensors_refs(p)


def test_infinite_shape_and_deep_json(tmp_path):
    from tgllava.checkpoint import read_json, safetensors_refs
    p = _raw_safetensors(tmp_path / "inf.safetensors", b'{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 8]}}')
    with pytest.raises(tgllava.CheckpointError, match=r"inf\.safetensors: tensor w: .*shape"):
        safetensors_refs(p)
    deep = b"[" * 200000 + b"]" * 200000
    p = _raw_safetensors(tmp_path / "deep.safetensors", deep)
    with pytest.raises(tgllava.CheckpointError, match=r"deep\.safetensors: corrupt safetensors header"):
        safetensors_refs(p)
    (tmp_path / "deep.json").write_bytes(b'{"weight_map": ' + deep + b"}")
    with pytest.raises(tgllava.CheckpointError, match=r"deep\.json: not valid JSON"):
        read_json(str(tmp_path / "deep.json"))



# ---- layouts the safetensors format forbids (issue 21 item 6): refused, naming file and tensor

def _rewrite_header(path, change):
    """Rewrite the header of a .safetensors file with change(header); the data bytes stay as they are."""
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    change(header)
    h = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data[8 + n:])


def test_load_refuses_a_tensor_pointing_at_another_tensors_bytes(llava):
    llm, clip = llava
    f = os.path.join(llm, "model.safetensors")
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"

    def alias(h):
        h[k]["data_offsets"] = h[q]["data_offsets"]

    _rewrite_header(f, alias)
    with pytest.raises(tgllava.CheckpointError, match=rf"model\.safetensors: tensor .*(k|q)_proj.weight: .*overlap .*"
                                                      rf"tensor .*(q|k)_proj\.weight"):
        tgllava.load(llm, clip)


F4 = {"dtype": "F32", "shape": [4]}  # 16 bytes


@pytest.mark.parametrize("header,data,match", [
    (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
     b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 16, r"tensor w: named twice"),
    (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "dtype": "F16"}}', 16,
     r"tensor w: header entry has 'dtype' twice"),
    ({"a": {**F4, "data_offsets": [0, 16]}, "b": {**F4, "data_offsets": [8, 24]}}, 24,
     r"tensor b: 'data_offsets' 8..24 overlap those of tensor a \(0..16\)"),
    ({"a": {**F4, "data_offsets": [0, 16]}, "b": {**F4, "data_offsets": [0, 16]}}, 32, r"tensor b: .*overlap .*tensor a"),
    ({"a": {**F4, "data_offsets": [0, 16]}, "b": {**F4, "data_offsets": [24, 40]}}, 40,
     r"tensor b: data bytes 16..24 before its 'data_offsets' belong to no tensor"),
    ({"a": {**F4, "data_offsets": [8, 24]}}, 24, r"tensor a: data bytes 0..8 "),
    ({"a": {**F4, "data_offsets": [0, 16]}}, 20, r"data bytes 16..20 \(after tensor a\) belong to no tensor"),
    ({}, 4, r"data bytes 0..4 belong to no tensor"),
])
def test_forbidden_safetensors_layouts(tmp_path, header, data, match):
    from tgllava.checkpoint import safetensors_refs
    p = _raw_safetensors(tmp_path / "bad.safetensors", header, b"\x00" * data)
    with pytest.raises(tgllava.CheckpointError, match=r"bad\.safetensors: " + match):
        safetensors_refs(p)


def test_allowed_safetensors_layouts(tmp_path):
    """Zero-size tensors (anywhere, sharing an offset), entries in any order and no tensor at all are valid."""
    from tgllava.checkpoint import safetensors_refs
    header = {"b": {**F4, "data_offsets": [16, 32]}, "e": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]},
              "a": {**F4, "data_offsets": [0, 16]}, "z": {"dtype": "F32", "shape": [2, 0], "data_offsets": [32, 32]},
              "__metadata__": {"format": "pt"}}
    data = np.arange(8, dtype=np.float32).tobytes()
    refs = safetensors_refs(_raw_safetensors(tmp_path / "ok.safetensors", header, data))
    assert sorted(refs) == ["a", "b", "e", "z"] and refs["b"].float32().tolist() == [4, 5, 6, 7]
    assert safetensors_refs(_raw_safetensors(tmp_path / "empty.safetensors", {}, b"")) == {}


def test_a_tensor_in_two_files_of_one_checkpoint_is_refused(tmp_path):
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_safetensors(str(tmp_path / name), {"w": np.zeros(2, np.float32), name[6:11]: np.ones(1, np.float32)})
    with pytest.raises(tgllava.CheckpointError, match=r"00002-of-00002\.safetensors: tensor w: also in .*00001-of"):
        read_tensors(str(tmp_path))
    wm = {"w": "model-00001-of-00002.safetensors", "00001": "model-00001-of-00002.safetensors",
          "00002": "model-00002-of-00002.safetensors"}
    json.dump({"weight_map": wm}, open(tmp_path / "model.safetensors.index.json", "w"))
    with pytest.raises(tgllava.CheckpointError, match=r"tensor w: also in"):
        read_tensors(str(tmp_path))
