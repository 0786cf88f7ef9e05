"""One public door into the model (issue 12, section 4).

- tgllava.attention works through Model's public methods only: it runs on a view of the model
  that refuses every private attribute, and the public accessors (visual_token_count,
  llm_attention, dp_attention) give exactly what the C core gives;
- Model.chat_batch is the plain engine's (image, question) batch; evaluation items go through
  tgllava.eval.adapter.ModelAdapter, whose answers equal the manual pipeline and whose vision
  cache runs the tower once per picture;
- tgllava.load recognises a llava-hf folder whether or not a CLIP folder is passed.
"""

import numpy as np
import pytest
from _frontend_golden import QUESTION, golden_model, golden_set, second_image
from eval_testing import FakeModel
from golden_util import io, model
from PIL import Image

import tgllava
from tgllava import conversation, image, tokenize
from tgllava.attention import attention_map
from tgllava.eval.adapter import ModelAdapter, as_eval_model
from tgllava.eval.errors import EvalError
from tgllava.errors import ShapeError

L15, TGV = "llava15-tiny", "tg-vicuna-tiny"


class PublicOnly:
    """A view of a Model that refuses every attribute starting with an underscore."""

    def __init__(self, m):
        self._m = m

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(f"private attribute {name} used through the public door")
        return getattr(self._m, name)


@pytest.mark.slow
def test_attention_maps_use_only_the_public_api():
    m, d = model(TGV), io(TGV)
    ids, pix, tid = d["input_ids"], d["pixel_values"], d["text_guide_ids"]
    maps = attention_map(PublicOnly(m), input_ids=ids, pixels=pix, text_ids=tid)
    pos = int(np.flatnonzero(ids == -200)[0])
    count = m.visual_token_count()
    assert count == 576 + 64 and maps.instruction == (pos + count, len(ids) - 1 + count)
    assert maps.llm.shape == (24, 24) and maps.dp.shape == (48, 48) and maps.fom.shape == (24, 24)


def test_public_accessors_equal_the_core():
    m, d = model(L15), io(L15)
    ids, pix = d["input_ids"], d["pixel_values"]
    pos = int(np.flatnonzero(ids == -200)[0])
    q0, q1 = pos + 576, len(ids) - 1 + 576
    core = m._core.llm_attention(m._sequence(ids, pix), q0, q1, pos, pos + 576)
    assert np.array_equal(m.llm_attention(ids, pix, queries=(q0, q1), keys=(pos, pos + 576)), core)
    maps = attention_map(PublicOnly(m), input_ids=ids, pixels=pix)
    assert np.array_equal(maps.llm_tokens.reshape(q1 - q0, -1), core)
    assert maps.dp is None and maps.fom is None


def test_public_attention_accessors_check_their_input():
    m, d = model(L15), io(L15)
    assert m.visual_token_count() == 576 == m.visual_token_count(use_dp=True, n_latents=32)
    t = model(TGV)
    assert t.visual_token_count(True, 32) == 608 and t.visual_token_count(False, 32) == 576
    with pytest.raises(ShapeError, match="no TG-DP"):
        m.dp_attention(d["pixel_values"], [1, 2])
    with pytest.raises(ShapeError, match="text_ids"):
        t.dp_attention(d["pixel_values"], None)
    with pytest.raises(ShapeError, match="ranges"):
        m.llm_attention(d["input_ids"], d["pixel_values"], queries=5, keys=(0, 1))
    with pytest.raises(ShapeError):
        m.llm_attention(d["input_ids"], d["pixel_values"], queries=(0, 10 ** 6), keys=(0, 1))


def test_model_chat_batch_takes_pairs_only():
    m = golden_model(L15)
    with pytest.raises(TypeError, match="tgllava.eval"):
        m.chat_batch([{"image": None, "prompt": "<image>", "text_guide": "", "image_key": "k"}])
    assert m.chat_batch([]) == []
    assert not hasattr(m, "_feature_cache")


def test_eval_adapter_answers_and_caches_per_image_key(monkeypatch):
    m = golden_model(L15)
    llm_dir, _, img = golden_set(L15)
    pil = Image.open(img).convert("RGB")
    prompts = [conversation.build_prompt(q, "vicuna_v1") for q in (QUESTION, "Is there a red ball?")]
    calls = []
    original = m.cacheable_features

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(m, "cacheable_features", counting)
    adapter = as_eval_model(m)
    assert isinstance(adapter, ModelAdapter) and adapter.config is m.config and adapter.llm_dir == m.llm_dir
    items = [dict(image=pil, prompt=p, text_guide=q, image_key="picture-1")
             for p, q in zip(prompts, (QUESTION, "Is there a red ball?"))]
    answers = adapter.chat_batch(items, max_new_tokens=8)
    assert len(calls) == 1  # the second row shows the same picture: the tower ran once

    tok = tokenize.LlmTokenizer.from_folder(llm_dir)
    pixels = image.preprocess(pil, mode="pad", size=336)
    for got, prompt in zip(answers, prompts):
        ids = tokenize.tokenizer_image_token(prompt, tok)
        want = m.generate(ids, pixels, max_new_tokens=8, eos_token_id=tok.eos_ids, seed=0)
        assert got == tok.decode(want).strip()
    assert adapter.chat_batch([dict(items[0], image=[pil])], max_new_tokens=8) == answers[:1]  # a list of one
    assert len(calls) == 1
    small = ModelAdapter(m, feature_cache_bytes=original(pixels).nbytes)  # room for one picture
    other = Image.open(second_image(L15)).convert("RGB")
    small.chat_batch([dict(items[0], image=pil), dict(items[0], image=other), dict(items[0], image=pil)],
                     max_new_tokens=1)
    assert len(calls) == 1 + 3  # the first picture fell out of the cache when the second came
    assert small.chat_batch([]) == []


def test_as_eval_model_passes_other_models_through():
    fake = FakeModel()
    assert as_eval_model(fake) is fake
    with pytest.raises(EvalError, match="chat_batch"):
        as_eval_model(object())


def test_load_recognises_llava_hf_with_or_without_a_clip_folder(tmp_path):
    from test_frontend_e2e import _make_llava_hf

    folder = _make_llava_hf(str(tmp_path / "hf"))
    d = io(L15)
    a = tgllava.load(folder, progress=False)
    b = tgllava.load(folder, clip_dir=golden_set(L15)[1], progress=False)
    assert a.clip_dir == b.clip_dir == folder and not a.has_tg
    assert np.array_equal(a.logits(d["input_ids"], d["pixel_values"]), b.logits(d["input_ids"], d["pixel_values"]))
