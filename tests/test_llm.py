"""The language model beyond the golden numbers: KV cache vs recomputation, batching, sampling, errors."""
import sys

import numpy as np
import pytest

import tgllava
from golden_util import checkpoint, io, model, tiny_llama_folder


@pytest.mark.slow
def test_kv_cache_equals_recomputation():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    toks = m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=6, eos_token_id=[])
    # greedy with the cache == argmax of a full forward over prompt + tokens so far
    ids = list(d["input_ids"])
    for t in toks:
        lg = m.logits(np.array(ids), d["pixel_values"], all_positions=False)
        assert int(np.argmax(lg[-1])) == t
        ids.append(t)


@pytest.mark.slow
def test_batch_of_different_lengths_equals_single_runs():
    name = "tg-vicuna-tiny"
    d, m = io(name), model(name)
    reqs = [dict(input_ids=d["input_ids"], pixels=d["pixel_values"], text_ids=d["text_guide_ids"]),
            dict(input_ids=[1, 5, 9, 27]),  # text only, shorter
            dict(input_ids=np.concatenate([d["input_ids"], [44, 45, 46]]), pixels=d["pixel_values"][:, ::-1].copy(),
                 text_ids=d["text_guide_ids"][:3])]
    batch = m.generate_batch(reqs, max_new_tokens=5, eos_token_id=[])
    for r, got in zip(reqs, batch):
        assert m.generate_batch([r], max_new_tokens=5, eos_token_id=[])[0] == got


def test_eos_stops_and_is_not_returned():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    g = d["generated_ids"].tolist()
    toks = m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=10, eos_token_id=g[2])
    assert toks == g[:2]


def test_streaming_callback_and_iterator():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    seen = []
    toks = m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=5, eos_token_id=[], callback=seen.append)
    assert seen == toks
    assert list(m.generate_stream(d["input_ids"], pixels=d["pixel_values"], max_new_tokens=5, eos_token_id=[])) == toks
    # a callback returning True stops the sequence
    short = m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=5, eos_token_id=[], callback=lambda t: True)
    assert short == toks[:1]


def test_callback_exception_propagates():
    name = "llava15-tiny"
    d, m = io(name), model(name)

    def boom(t):
        raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=3, callback=boom)
    assert len(m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=2, eos_token_id=[])) == 2  # still usable


# ---- sampling on a tiny vocabulary

@pytest.fixture(scope="module")
def tiny_vocab_model(tmp_path_factory):
    """A 1-layer Llama with an 8-token vocabulary, random weights, sharing the golden CLIP tower."""
    _, clip = checkpoint("llava15-tiny")
    d = tmp_path_factory.mktemp("tiny")
    tiny_llama_folder(d, vocab=8, seed=0, head_std=1.5)
    return tgllava.load(str(d), clip)


def _expected(logits, temperature, top_k, top_p):
    x = logits.astype(np.float64) / temperature
    order = np.argsort(-x, kind="stable")
    keep = order[:top_k] if top_k else order
    p = np.exp(x[keep] - x[keep].max())
    p /= p.sum()
    if top_p < 1:
        n = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        keep, p = keep[:n], p[:n] / p[:n].sum()
    out = np.zeros_like(x)
    out[keep] = p
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8)])
def test_sampling_distribution(tiny_vocab_model, temperature, top_k, top_p):
    m = tiny_vocab_model
    prompt = [3, 1, 4]
    want = _expected(m.logits(prompt)[-1], temperature, top_k, top_p)
    n = 1500
    counts = np.zeros(8)
    for seed in range(n):
        counts[m.generate(prompt, max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)[0]] += 1
    freq = counts / n
    assert np.all(freq[want == 0] == 0), "sampled a token that top-k/top-p excludes"
    assert np.abs(freq - want).max() < 0.05, (freq, want)


def test_sampling_is_reproducible(tiny_vocab_model):
    m = tiny_vocab_model
    a = m.generate([1, 2], max_new_tokens=12, temperature=1.0, seed=7)
    assert a == m.generate([1, 2], max_new_tokens=12, temperature=1.0, seed=7)
    assert any(m.generate([1, 2], max_new_tokens=12, temperature=1.0, seed=s) != a for s in range(8, 12))


def test_repetition_penalty_matches_numpy(tiny_vocab_model):
    m = tiny_vocab_model
    pen = m.generate([1, 2], max_new_tokens=10, eos_token_id=[], repetition_penalty=3.0)
    ids = [1, 2]
    for t in pen:  # HF rule on the tokens generated so far: divide positive logits, multiply negative ones
        x = m.logits(ids)[-1].astype(np.float64)
        for u in set(ids[2:]):
            x[u] = x[u] / 3.0 if x[u] > 0 else x[u] * 3.0
        assert int(np.argmax(x)) == t
        ids.append(t)
    assert pen != m.generate([1, 2], max_new_tokens=10, eos_token_id=[])


# ---- bad input

def test_bad_ids_and_shapes():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    with pytest.raises(tgllava.ShapeError, match="outside"):
        m.logits([1, 2, 1000])
    with pytest.raises(tgllava.ShapeError):
        m.logits([1, -5, 3])
    with pytest.raises(tgllava.ShapeError, match="more than one image"):
        m.logits([1, -200, 3, -200], d["pixel_values"])
    with pytest.raises(tgllava.ShapeError, match="no image token"):
        m.logits([1, 2, 3], d["pixel_values"])
    with pytest.raises(tgllava.ShapeError, match="no image was given"):
        m.logits([1, -200, 3])
    with pytest.raises(tgllava.ShapeError, match="pixels"):
        m.logits([1, -200, 3], np.zeros((3, 100, 100), np.float32))
    with pytest.raises(tgllava.ShapeError):
        m.vision_features(np.zeros((1, 3, 336), np.float32))
    with pytest.raises(tgllava.ShapeError, match="NaN"):
        m.vision_features(np.full((1, 3, 336, 336), np.nan, np.float32))
    with pytest.raises(tgllava.ShapeError):
        m.logits([])
    with pytest.raises(ValueError):
        m.generate([1, 2], max_new_tokens=2, top_p=0.0)


def test_over_long_prompt_is_cut_to_max_len():
    name = "llava15-tiny"
    m = model(name)
    n = m.sizes["max_len"]
    lg = m.logits(np.ones(n + 50, np.int64), all_positions=True)
    assert lg.shape == (n, m.sizes["vocab"])


def test_tg_checkpoint_needs_text_ids():
    name = "tg-vicuna-tiny"
    d, m = io(name), model(name)
    with pytest.raises(tgllava.ShapeError, match="text_ids"):
        m.logits(d["input_ids"], d["pixel_values"])
    with pytest.raises(tgllava.ShapeError, match="outside"):
        m.text_tower([[1, 5, 99999]])
    # switched off, no text guide is needed
    assert m.logits(d["input_ids"], d["pixel_values"], use_fom=False, use_dp=False).shape[0] == len(d["input_ids"]) - 1 + 576


def test_inputs_not_modified_and_no_leaks():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    pix = d["pixel_values"][None].copy()
    before = pix.copy()
    ids = d["input_ids"].copy()
    refs = sys.getrefcount(pix), sys.getrefcount(ids)
    for _ in range(3):
        m.vision_features(pix)
        m.logits(ids, pix[0])
    assert np.array_equal(pix, before) and np.array_equal(ids, d["input_ids"])
    assert (sys.getrefcount(pix), sys.getrefcount(ids)) == refs


@pytest.mark.slow
def test_cached_vision_features_give_the_same_answer():
    name = "tg-vicuna-tiny"
    d, m = io(name), model(name)
    feats = m.cacheable_features(d["pixel_values"])
    assert feats.shape == (5, 576, 1024)
    base = dict(input_ids=d["input_ids"], pixels=d["pixel_values"], text_ids=d["text_guide_ids"])
    plain = m.generate_batch([base], max_new_tokens=4, eos_token_id=[])
    cached = m.generate_batch([dict(base, features=feats), dict(base, text_ids=d["text_guide_ids"][:3], features=feats)],
                              max_new_tokens=4, eos_token_id=[])
    assert cached[0] == plain[0]
    assert cached[1] == m.generate_batch([dict(base, text_ids=d["text_guide_ids"][:3])], max_new_tokens=4, eos_token_id=[])[0]
    with pytest.raises(tgllava.ShapeError, match="cached vision features"):
        m.generate_batch([dict(base, features=feats[:1])], max_new_tokens=1)


def test_concurrent_calls_from_threads():
    import threading
    name = "llava15-tiny"
    d, m = io(name), model(name)
    want = m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=4, eos_token_id=[])
    got, errors = [], []

    def work():
        try:
            got.append(m.generate(d["input_ids"], d["pixel_values"], max_new_tokens=4, eos_token_id=[]))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [want] * 3


def test_large_text_batch_equals_single_runs():
    """A static batch above _C.CPU_EXACT_ROWS sequences decodes through sgemm instead of the GEMV: same
    tokens, rounding-level logits."""
    m = model("llava15-tiny")
    reqs = [dict(input_ids=list(range(1 + i, 6 + 2 * i))) for i in range(19)]
    toks, last = m.generate_batch(reqs, max_new_tokens=6, eos_token_id=[], return_last_logits=True)
    for i, r in enumerate(reqs):
        one, one_last = m.generate_batch([r], max_new_tokens=6, eos_token_id=[], return_last_logits=True)
        assert one[0] == toks[i]
        assert np.abs(one_last[0] - last[i]).max() < 1e-4
