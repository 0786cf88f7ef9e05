"""End-to-end tests of the front end: chat (plain, streaming, batched), read_tensors on
PyTorch .bin fixtures, and llava-hf folders loaded through tgllava.load.

Golden checkpoints (SPEC 5) are materialized once per process with tokenizer
files the tests write (tests/_frontend_golden.py).  The TG-LLaVA full path
(FOM + DP: five vision-tower passes) is the slow part on a small CPU, so
most TG comparisons switch DP off and the full path runs once; answers are
cached per process and shared with test_cli.py.  Stop-string handling is tested on a scripted
fake model so it does not depend on what random weights happen to emit.
"""

import json
import os

import numpy as np
import pytest
from _frontend_golden import FIXTURES, GOLDEN, QUESTION, cached_chat, golden_model, golden_set, second_image

import tgllava
from tgllava import chat, conversation, fixtures, image, tokenize
from tgllava.checkpoint import read_tensors
from tgllava.errors import CheckpointError

L15, TGV = "llava15-tiny", "tg-vicuna-tiny"
NEW = 8  # max_new_tokens of the golden runs


# --- read_tensors ------------------------------------------------------------------

def _fixtures():
    assert os.path.isdir(FIXTURES), f"the golden fixtures are missing: {FIXTURES}"
    return FIXTURES


def test_read_tensors_bin_matches_safetensors_twin():
    fx = _fixtures()
    got = read_tensors(os.path.join(fx, "small.bin"))
    twin = read_tensors(os.path.join(fx, "small.safetensors"))
    with open(os.path.join(fx, "small.expected.json")) as f:
        expected = json.load(f)
    assert set(got) == set(twin) == set(expected)
    for name, a in got.items():
        assert list(a.shape) == expected[name]["shape"], name
        want = twin[name]
        assert a.size == want.size, name
        np.testing.assert_array_equal(a.reshape(-1), want.reshape(-1).astype(a.dtype), err_msg=name)
        kind = "i" if "int" in expected[name]["dtype"] else "f"
        assert a.dtype.kind == kind, name


def test_read_tensors_sharded_index_and_folder():
    fx = _fixtures()
    index = os.path.join(fx, "sharded", "pytorch_model.bin.index.json")
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    by_index = read_tensors(index)
    by_folder = read_tensors(os.path.join(fx, "sharded"))
    assert set(by_index) == set(by_folder) == set(weight_map)
    small = read_tensors(os.path.join(fx, "small.bin"))
    for name in by_index:
        np.testing.assert_array_equal(by_index[name], by_folder[name])
        if name in small and small[name].shape == by_index[name].shape:
            np.testing.assert_array_equal(by_index[name], small[name])


def test_read_tensors_refuses_malicious_bin():
    with pytest.raises(CheckpointError):
        read_tensors(os.path.join(_fixtures(), "malicious.bin"))


def test_read_tensors_is_exported():
    assert tgllava.read_tensors is read_tensors


# --- chat on golden checkpoints ------------------------------------------------------

def test_chat_answer_object():
    m = golden_model(L15)
    a = cached_chat(L15, golden_set(L15)[2], max_new_tokens=NEW)
    assert isinstance(a, chat.Answer)
    assert isinstance(a.text, str) and a.text == a.text.strip()
    assert 0 < len(a.token_ids) <= NEW
    assert set(a.timings) == {"preprocess", "tokenize", "generate", "decode", "total"}
    assert all(v >= 0 for v in a.timings.values())
    assert a.timings["total"] >= a.timings["generate"]
    assert a.conv_mode == "vicuna_v1" == chat.default_conv_mode(m)
    assert a.finish_reason in ("eos", "stop", "length")
    assert str(a) == a.text


def test_chat_matches_manual_pipeline_llava15():
    m = golden_model(L15)
    llm_dir, _, img = golden_set(L15)
    a = cached_chat(L15, img, max_new_tokens=NEW)
    tok = tokenize.LlmTokenizer.from_folder(llm_dir)
    ids = tokenize.tokenizer_image_token(conversation.build_prompt(QUESTION, "vicuna_v1"), tok)
    assert ids.count(-200) == 1 and ids[0] == tok.bos_id
    pixels = image.preprocess(img, mode="pad", size=336)
    want = m.generate(ids, pixels, max_new_tokens=NEW, eos_token_id=tok.eos_ids)
    assert a.token_ids == want
    assert a.text == tok.decode(want).strip()


@pytest.mark.slow
def test_chat_matches_manual_pipeline_tg_with_text_guide():
    m = golden_model(TGV)
    llm_dir, clip_dir, img = golden_set(TGV)
    question = "<image-placeholder>\n  Is there a red ball?  "
    a = cached_chat(TGV, img, question, max_new_tokens=NEW, use_dp=False)
    assert a.conv_mode == "llava_v0"
    tok = tokenize.LlmTokenizer.from_folder(llm_dir)
    text_ids = tokenize.ClipTokenizer.from_folder(clip_dir).encode("Is there a red ball?")
    assert text_ids[0] == 1022 and text_ids[-1] == 1023 and max(text_ids) < 1024
    ids = tokenize.tokenizer_image_token(conversation.build_prompt(question, "llava_v0"), tok)
    pixels = image.preprocess(img, mode="pad", size=336)
    want = m.generate(ids, pixels, text_ids, max_new_tokens=NEW, eos_token_id=tok.eos_ids, use_dp=False)
    if a.finish_reason == "stop":  # cut where "###" appeared
        assert want[:len(a.token_ids)] == a.token_ids
    else:
        assert a.token_ids == want


def test_text_guide_rule():
    assert chat.text_guide("<image>\nWhat is this? ") == "What is this?"
    assert chat.text_guide("  Count <image> the cats") == "Count  the cats"


@pytest.mark.slow
def test_chat_full_tg_path():
    img = golden_set(TGV)[2]
    full = cached_chat(TGV, img, max_new_tokens=NEW)
    assert 0 < len(full.token_ids) <= NEW
    assert full.timings["generate"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [(L15, {}), (TGV, {"use_dp": False})])
def test_stream_pieces_join_to_text(name, kw):
    img = golden_set(name)[2]
    whole = cached_chat(name, img, max_new_tokens=NEW, **kw)
    stream = chat.chat(golden_model(name), img, QUESTION, max_new_tokens=NEW, stream=True, **kw)
    pieces = list(stream)
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == whole.text
    assert stream.answer.text == whole.text
    assert stream.answer.token_ids == whole.token_ids
    assert set(stream.answer.timings) == set(whole.timings)


def test_stream_can_be_abandoned():
    img = golden_set(L15)[2]
    stream = chat.chat(golden_model(L15), img, QUESTION, max_new_tokens=NEW, stream=True)
    stream.close()  # before any piece: the worker stops and the model is usable again
    again = chat.chat(golden_model(L15), img, QUESTION, max_new_tokens=NEW)
    assert again.token_ids == cached_chat(L15, img, max_new_tokens=NEW).token_ids


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [(L15, {}), (TGV, {"use_dp": False})])
def test_batch_equals_single(name, kw):
    img, img2 = golden_set(name)[2], second_image(name)
    q2 = "Is there a red ball in the picture? Answer yes or no."
    answers = chat.chat_batch(golden_model(name), [(img, QUESTION), (img2, q2)], max_new_tokens=NEW, **kw)
    assert len(answers) == 2
    singles = [cached_chat(name, img, QUESTION, max_new_tokens=NEW, **kw),
               cached_chat(name, img2, q2, max_new_tokens=NEW, **kw)]
    for got, want in zip(answers, singles):
        assert got.token_ids == want.token_ids
        assert got.text == want.text
    assert chat.chat_batch(golden_model(name), []) == []


def test_chat_errors():
    m = golden_model(L15)
    with pytest.raises(TypeError):
        chat.chat(m, golden_set(L15)[2], 42)
    with pytest.raises(image.ImageError):
        chat.chat(m, "/nonexistent/picture.png", QUESTION)
    with pytest.raises(ValueError):
        chat.chat(m, golden_set(L15)[2], QUESTION, conv_mode="no_such_mode")
    with pytest.raises(ValueError):
        chat.chat(m, golden_set(L15)[2], QUESTION, max_new_tokens=0)
    with pytest.raises(TypeError):
        chat.chat_batch(m, [golden_set(L15)[2]])


@pytest.mark.slow
def test_chat_is_attached_to_model():
    a = golden_model(L15).chat(golden_set(L15)[2], QUESTION, max_new_tokens=NEW)
    assert a.token_ids == cached_chat(L15, golden_set(L15)[2], max_new_tokens=NEW).token_ids


# --- stop strings on a scripted model --------------------------------------------------

class ScriptedModel:
    """Looks like a tgllava.Model to chat(); "generates" a fixed token script."""

    def __init__(self, folder, script):
        self.config = {"model_type": "llava_llama", "image_aspect_ratio": "pad"}
        self.llm_dir = self.clip_dir = folder
        self.has_tg = False
        self.image_size = 336
        self.script = script
        self.requests = None

    def generate_batch(self, requests, max_new_tokens=256, callback=None, **kw):
        self.requests = requests
        out = []
        for b, _ in enumerate(requests):
            toks = []
            for t in self.script[:max_new_tokens]:
                toks.append(t)
                if callback is not None and callback(b, t):
                    break
            out.append(toks)
        return out


@pytest.fixture(scope="module")
def scripted_tokenizer(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("scripted-tok"))
    fixtures.write_llm_tokenizer(folder, vocab_size=400)
    return folder, tokenize.LlmTokenizer.from_folder(folder)


@pytest.mark.parametrize("text,conv_mode,want,reason", [
    ("  Hello there ### more text", "llava_v0", "Hello there", "stop"),
    ("A red ball.\n", "vicuna_v1", "A red ball.", "eos"),
    ("x # y ## z", "llava_v0", "x # y ## z", "eos"),
    ("two##", "llava_v0", "two##", "eos"),
])
def test_stop_strings_and_streaming(scripted_tokenizer, text, conv_mode, want, reason):
    from PIL import Image

    folder, tok = scripted_tokenizer
    per_char = [i for c in text for i in tok.encode(c, add_bos=False)]  # one token per character
    for script in (tok.encode(text, add_bos=False), per_char):
        model = ScriptedModel(folder, script)
        chat.set_tokenizers(model, tok)
        img = Image.new("RGB", (40, 30), (200, 10, 10))
        a = chat.chat(model, img, "What?", conv_mode=conv_mode, max_new_tokens=100)
        assert a.text == want and a.finish_reason == reason
        if reason == "stop":
            assert "###" in tok.decode(a.token_ids) and len(a.token_ids) < len(script)
        stream = chat.chat(model, img, "What?", conv_mode=conv_mode, max_new_tokens=100, stream=True)
        assert "".join(stream) == want
        assert stream.answer.token_ids == a.token_ids
        assert chat.chat(model, img, "What?", conv_mode=conv_mode, max_new_tokens=2).finish_reason in ("length", "stop")


# --- llava-hf layout --------------------------------------------------------------

def _make_llava_hf(out, newer_layout=False):
    llm_dir, clip_dir, _ = golden_set(L15)
    with open(os.path.join(llm_dir, "config.json")) as f:
        llm_cfg = json.load(f)
    with open(os.path.join(clip_dir, "config.json")) as f:
        clip_cfg = json.load(f)
    llm, clip = read_tensors(llm_dir), read_tensors(clip_dir)
    lm = "model.language_model." if newer_layout else "language_model.model."
    head = "lm_head." if newer_layout else "language_model.lm_head."
    proj = "model.multi_modal_projector." if newer_layout else "multi_modal_projector."
    tower = "model.vision_tower." if newer_layout else "vision_tower."
    tensors = {}
    for name, a in llm.items():
        if name.startswith("model.mm_projector."):
            idx, rest = name[len("model.mm_projector."):].split(".", 1)
            tensors[f"{proj}linear_{1 if idx == '0' else 2}.{rest}"] = a
        elif name.startswith("lm_head."):
            tensors[head + name[len("lm_head."):]] = a
        else:
            tensors[lm + name[len("model."):]] = a
    for name, a in clip.items():
        if name.startswith("vision_model."):
            tensors[tower + name] = a
    os.makedirs(out, exist_ok=True)
    fixtures.save_safetensors(os.path.join(out, "model.safetensors"), tensors)
    text_keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
                 "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings", "hidden_act")
    config = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": dict({k: llm_cfg[k] for k in text_keys}, model_type="llama"),
        "vision_config": clip_cfg["vision_config"], "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
        "image_token_index": 32000, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    fixtures.write_llm_tokenizer(out, vocab_size=1000)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("newer_layout", [False, True])
def test_llava_hf_gives_official_logits(tmp_path, newer_layout):
    folder = _make_llava_hf(str(tmp_path / "llava-hf"), newer_layout)
    hf = tgllava.load(folder, progress=False)
    official = golden_model(L15)
    io = np.load(os.path.join(GOLDEN, L15, "io.npz"))
    got = hf.logits(io["input_ids"], io["pixel_values"])
    want = official.logits(io["input_ids"], io["pixel_values"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(got - io["logits"]).max() <= 2e-3
    assert not hf.has_tg and hf.image_size == 336 and hf.clip_dir == folder
    assert chat.default_conv_mode(hf) == "vicuna_v1"
    if not newer_layout:  # chat works on it, with the tokenizer from the same folder
        a = chat.chat(hf, golden_set(L15)[2], QUESTION, max_new_tokens=4)
        assert len(a.token_ids) <= 4

