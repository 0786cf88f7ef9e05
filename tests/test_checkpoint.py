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

