"""GPU conformance (marker `gpu`): golden sets on the CUDA backend in float32 at the SPEC tolerances,
and in bfloat16/float16 within a stated tolerance (cosine similarity of logits >= 0.999, same greedy
first token); torch CUDA tensors in and device arrays out without copies (skipped without torch).  Skips with the reason when tgllava has no CUDA backend or no device is present."""
import numpy as np
import pytest

import tgllava
from golden_util import SETS, checkpoint, io

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def need_gpu():
    if not tgllava._C.built_with_cuda():
        pytest.skip("tgllava was built without the CUDA backend")
    try:
        tgllava._C.op_elementwise("cuda:0", "activation", np.zeros(1, np.float32), None, 0)
    except tgllava.DeviceError as e:
        pytest.skip(f"no usable CUDA device: {e}")


_models = {}


def gpu_model(name, dtype):
    if (name, dtype) not in _models:
        _models[name, dtype] = tgllava.load(*checkpoint(name), device="cuda", dtype=dtype)
    return _models[name, dtype]


@pytest.mark.parametrize("name", SETS)
def test_float32_matches_golden(name):
    d, m = io(name), gpu_model(name, "float32")
    tid = d.get("text_guide_ids")
    assert np.abs(m.vision_features(d["pixel_values"][None])[0] - d["image_features"]).max() <= 1e-3
    assert np.abs(m.visual_tokens(d["pixel_values"][None], tid)[0] - d["visual_tokens"]).max() <= 1e-3
    assert np.abs(m.logits(d["input_ids"], d["pixel_values"], tid) - d["logits"]).max() <= 2e-3
    toks = m.generate(d["input_ids"], d["pixel_values"], tid, max_new_tokens=len(d["generated_ids"]), eos_token_id=[])
    assert toks == d["generated_ids"].tolist()


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_close(name, dtype):
    d, m = io(name), gpu_model(name, dtype)
    lg = m.logits(d["input_ids"], d["pixel_values"], d.get("text_guide_ids")).astype(np.float64)
    ref = d["logits"].astype(np.float64)
    cos = (lg * ref).sum(1) / np.linalg.norm(lg, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos.min()
    assert int(np.argmax(lg[-1])) == int(d["generated_ids"][0])


def test_cpu_and_gpu_batches_agree():
    name = "tg-vicuna-tiny"
    d = io(name)
    reqs = [dict(input_ids=d["input_ids"], pixels=d["pixel_values"], text_ids=d["text_guide_ids"]), dict(input_ids=[1, 5, 9])]
    cpu = tgllava.load(*checkpoint(name)).generate_batch(reqs, max_new_tokens=6, eos_token_id=[])
    assert gpu_model(name, "float32").generate_batch(reqs, max_new_tokens=6, eos_token_id=[]) == cpu


def test_continuous_batching_on_the_gpu_equals_the_cpu():
    """generate_many on the CUDA backend (all running rows in one decode product): requests with their own
    lengths through 2 slots give the CPU's greedy tokens, and the short ones end first."""
    name = "llava15-tiny"
    d = io(name)
    reqs = [dict(input_ids=d["input_ids"], pixels=d["pixel_values"], max_new_tokens=20)] + \
        [dict(input_ids=[1, 5 + i, 9], max_new_tokens=2 + i) for i in range(4)]
    cpu = dict(tgllava.load(*checkpoint(name)).generate_many(reqs, eos_token_id=[], max_batch=2))
    got = list(gpu_model(name, "float32").generate_many(reqs, eos_token_id=[], max_batch=2))
    assert dict(got) == cpu
    assert got[-1][0] == 0  # the long request, admitted first, ends last


def test_torch_device_arrays_round_trip_without_copies():
    """Device pointers in and out (issue 25 item 11): torch CUDA tensors in (through
    __cuda_array_interface__ and through DLPack), out="device" results into torch without a copy,
    the same numbers as the host path, and another device's memory refused."""
    torch = pytest.importorskip("torch")
    name = "tg-vicuna-tiny"
    d, m = io(name), gpu_model(name, "float32")
    pix = np.ascontiguousarray(d["pixel_values"][None], dtype=np.float32)
    tid = d["text_guide_ids"]
    want = m.visual_tokens(pix, tid)
    t = torch.from_numpy(pix).cuda()
    np.testing.assert_array_equal(m.visual_tokens(t, torch.as_tensor(tid).cuda()), want)

    class DLPackOnly:  # a producer without __cuda_array_interface__ takes the DLPack path
        def __init__(self, x):
            self.x = x

        def __dlpack__(self, **kw):
            return self.x.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.x.__dlpack_device__()

    np.testing.assert_array_equal(m.visual_tokens(DLPackOnly(t), tid), want)
    dev = m.visual_tokens(t, tid, out="device")
    assert isinstance(dev, tgllava._C.DeviceArray) and dev.device == "cuda:0"
    tt = torch.from_dlpack(dev)
    assert tt.data_ptr() == dev.__cuda_array_interface__["data"][0]  # no copy
    np.testing.assert_array_equal(tt.cpu().numpy(), want)
    del dev  # torch's tensor keeps the memory alive
    np.testing.assert_array_equal(tt.cpu().numpy(), want)
    ids = d["input_ids"]
    lg = m.logits(ids, visual=tt[0], all_positions=False, out="device")
    np.testing.assert_allclose(torch.as_tensor(lg).cpu().numpy(), m.logits(ids, pix[0], tid, all_positions=False),
                               atol=1e-4)
    with pytest.raises(tgllava.ShapeError, match="not C-contiguous"):
        m.vision_features(t.transpose(2, 3))
    with pytest.raises(tgllava.ShapeError, match="expected float32"):
        m.vision_features(t.double())
    if torch.cuda.device_count() > 1:
        with pytest.raises(tgllava.DeviceError, match="cuda:1"):
            m.vision_features(t.to("cuda:1"))
