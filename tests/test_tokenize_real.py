"""Token ids on the real tokenizer files (../shared/tokenizers), against the reference (issue 14).

The expected ids in tests/data/tokenize_reference.json were made once with transformers 4.37.2
and the reference scripts (see its "_about"); the tests only read them, so they need neither
transformers nor a network.  Covered: image markers in questions (TG-LLaVA's runner rule and
LLaVA's evaluation rule, every template its models use, the CLIP text guide), Qwen2's skipped
"#" merges, Llama-3's clean-up of spaces when decoding, and streamed text that must join to the
one-shot decode even for broken UTF-8 byte runs.

The tokenizer folder is $TGLLAVA_SHARED/tokenizers, else ../shared/tokenizers beside the
checkout; when neither exists the tests fail and say where they looked.
"""

import gzip
import json
import os
import random
import shutil

import numpy as np
import pytest

from tgllava import chat, conversation
from tgllava import tokenize as T
from tgllava.errors import ShapeError
from tgllava.eval.prompts import wrap_llava

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
with open(os.path.join(HERE, "data", "tokenize_reference.json"), encoding="utf-8") as _f:
    REF = json.load(_f)


def find_tokenizers():
    """The real tokenizer folder: $TGLLAVA_SHARED/tokenizers, else ../shared/tokenizers beside the checkout."""
    env = os.environ.get("TGLLAVA_SHARED")
    root = env or os.path.join(CHECKOUT, "..", "shared")
    path = os.path.normpath(os.path.join(root, "tokenizers"))
    if os.path.isfile(os.path.join(path, "SOURCES.md")):
        return path
    where = f"$TGLLAVA_SHARED={env}" if env else f"../shared relative to the checkout {CHECKOUT} ($TGLLAVA_SHARED unset)"
    pytest.fail(f"real tokenizer files not found: no {path}/SOURCES.md ({where})")


def test_missing_tokenizer_folder_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TGLLAVA_SHARED", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="real tokenizer files not found.*TGLLAVA_SHARED="):
        find_tokenizers()


@pytest.fixture(scope="module")
def shared():
    return find_tokenizers()


def _folder(dst, files):
    """A tokenizer folder made of (source path, name) pairs; .gz sources are unpacked."""
    os.makedirs(dst, exist_ok=True)
    for src, name in files:
        if src.endswith(".gz"):
            with gzip.open(src, "rb") as f, open(os.path.join(dst, name), "wb") as out:
                shutil.copyfileobj(f, out)
        else:
            shutil.copyfile(src, os.path.join(dst, name))
    return dst


@pytest.fixture(scope="module")
def toks(shared, tmp_path_factory):
    """The four LLM tokenizers of the reference table, by the names the JSON uses."""
    tmp = tmp_path_factory.mktemp("tok")
    s = lambda *p: os.path.join(shared, *p)  # noqa: E731
    llava_cfg = [(s("llava15", "tokenizer_config.json"), "tokenizer_config.json"),
                 (s("llava15", "special_tokens_map.json"), "special_tokens_map.json")]
    l2_slow = _folder(str(tmp / "llama2_slow"), [(s("llama2", "tokenizer.model"), "tokenizer.model")] + llava_cfg)
    l2_fast = _folder(str(tmp / "llama2_fast"), [(s("derived", "llama2", "tokenizer.json.gz"), "tokenizer.json")]
                      + llava_cfg)
    l3 = _folder(str(tmp / "llama3"), [(s("derived", "llama3", n), n.replace(".gz", ""))
                                       for n in ("tokenizer.json.gz", "tokenizer_config.json",
                                                 "special_tokens_map.json")])
    out = {"llama2_slow": T.LlmTokenizer.from_folder(l2_slow), "llama2_fast": T.LlmTokenizer.from_folder(l2_fast),
           "qwen2": T.LlmTokenizer.from_folder(s("qwen2")), "llama3": T.LlmTokenizer.from_folder(l3)}
    assert [out[k].kind for k in out] == ["sentencepiece", "tokenizers", "tokenizers", "tokenizers"]
    return out


@pytest.fixture(scope="module")
def clips(shared, tmp_path_factory):
    """The CLIP tokenizer twice: built from vocab.json + merges.txt, and the tokenizer.json transformers wrote."""
    tj = _folder(str(tmp_path_factory.mktemp("clip")),
                 [(os.path.join(shared, "derived", "clip", "tokenizer.json.gz"), "tokenizer.json"),
                  (os.path.join(shared, "clip", "tokenizer_config.json"), "tokenizer_config.json"),
                  (os.path.join(shared, "clip", "special_tokens_map.json"), "special_tokens_map.json")])
    return [T.ClipTokenizer.from_folder(os.path.join(shared, "clip")), T.ClipTokenizer.from_folder(tj)]


def ref_prompt_ids(rule, mode, tok_name, i):
    key = f"{mode}|{tok_name}"
    return REF["prefix"][key] + REF["prompt_ids"][f"{rule}|{mode}|{tok_name}|{i}"] + REF["suffix"][key]


# --- 1. image markers in the question ------------------------------------------------

@pytest.mark.parametrize("rule", ["runner", "loader"])
def test_prompt_ids_match_the_reference_for_every_question(toks, rule):
    """Every question of the table, every template each tokenizer's models use, both question rules."""
    checked = 0
    for tok_name, modes in REF["pairs"].items():
        for mode in modes:
            for i, question in enumerate(REF["questions"]):
                prompt = conversation.build_prompt(question, mode, placeholders=(rule == "runner"))
                got = T.tokenizer_image_token(prompt, toks[tok_name])
                assert got == ref_prompt_ids(rule, mode, tok_name, i), (rule, mode, tok_name, question)
                checked += 1
    assert checked == 16 * 12


def test_question_holding_image_gets_a_second_slot(toks):
    """The reference puts "<image>\\n" in front even when the question holds <image>: two -200."""
    q = "<image>\nWhat is in this image?"
    i = REF["questions"].index(q)
    for kw, rule in (({}, "runner"), ({"placeholders": False}, "loader")):
        ids = T.tokenizer_image_token(conversation.build_prompt(q, "vicuna_v1", **kw), toks["llama2_slow"])
        assert ids == ref_prompt_ids(rule, "vicuna_v1", "llama2_slow", i)
        assert ids.count(T.IMAGE_TOKEN_INDEX) == 2


def test_placeholder_becomes_the_image_and_leaves_the_text_guide(toks, clips):
    q = "Describe <image-placeholder> briefly."
    i = REF["questions"].index(q)
    ids = T.tokenizer_image_token(conversation.build_prompt(q, "llava_v0"), toks["llama2_fast"])
    assert ids == ref_prompt_ids("runner", "llava_v0", "llama2_fast", i) and ids.count(-200) == 1
    assert chat.text_guide(q) == conversation.text_guide(q) == "Describe  briefly."
    for clip in clips:
        assert clip.encode(chat.text_guide(q)) == REF["text_guide_ids"][i] == [49406, 10967, 26980, 269, 49407]


def test_text_guide_ids_match_the_runner(clips):
    for i, question in enumerate(REF["questions"]):
        for clip in clips:
            assert clip.encode(conversation.text_guide(question)) == REF["text_guide_ids"][i], question


def test_clip_from_vocab_merges_is_the_transformers_tokenizer(clips):
    """The tokenizer built from vocab.json + merges.txt is the one transformers converts them to, on odd text too:
    unicode (final sigma, ligatures, combining marks, emoji), whitespace runs, upper case, special tokens
    written in the text, html entities, and texts cut to 77 ids."""
    built, ref = clips
    for part in ("normalizer", "pre_tokenizer", "added_tokens", "model"):
        assert json.loads(built._backend.to_str())[part] == json.loads(ref._backend.to_str())[part], part
    rng = random.Random(0)
    alphabet = list("abcdehlorstwHELLOW0123456789 .,!?'\"-&;:\t\n\r\x0b\x0c") + \
        list("éüßİΣςﬁÅ中文😀\u0301\u00a0\u2003\u3000\u200b\u2028\u0085٣") + \
        ["'s", "'ll", "'D", "&amp;", "cat", "hello", "world", "  ", "<|endoftext|>", "<|STARTOFTEXT|>"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(500)]
    for text in texts + [" ".join(["Hello"] * 100), "", " \t\n "]:
        ids = ref.encode(text)
        assert built.encode(text) == ids, repr(text)
        assert len(ids) <= 77 and ids[0] == 49406
    assert built.encode("ΣΑΣ") == ref.encode("σασ") != ref.encode("ΣΑΣ".lower())  # no final sigma, unlike str.lower
    assert built.decode(built.encode("Hello,  World!")) == "hello , world !"


class _FakeModel:
    """Just enough of tgllava.Model for chat.chat: records the request, generates nothing."""

    image_size = 336
    has_tg = True
    config = {}

    def __init__(self):
        self.requests = []

    def generate_batch(self, requests, callback=None, **kw):
        self.requests.extend(requests)
        return [[] for _ in requests]


def test_chat_builds_ids_and_guide_like_the_runner(toks, clips):
    m = _FakeModel()
    chat.set_tokenizers(m, toks["llama2_fast"], clips[0])
    pixels = np.zeros((3, 336, 336), np.float32)
    for q in ("Describe <image-placeholder> briefly.", "<image-placeholder>\nWhat is in this image?", "### Human: hi"):
        i = REF["questions"].index(q)
        chat.chat(m, pixels, q, conv_mode="llava_v0", max_new_tokens=1)
        req = m.requests[-1]
        assert list(req["input_ids"]) == ref_prompt_ids("runner", "llava_v0", "llama2_fast", i), q
        assert list(req["text_ids"]) == REF["text_guide_ids"][i], q
    # the reference would build two image slots for one image here; chat says why instead
    for q in ("<image>\nWhat is in this image?", "First <image-placeholder> then <image-placeholder> again"):
        with pytest.raises(ShapeError, match="image slots for one image.*<image-placeholder>"):
            chat.chat(m, pixels, q, conv_mode="llava_v0", max_new_tokens=1)


def test_wrap_llava_asks_for_several_images_explicitly(toks):
    """Eval prompts: LLaVA's model_vqa_loader rule, one "<image>\\n" per picture, text left alone."""
    q = "Describe <image-placeholder> briefly."
    i = REF["questions"].index(q)
    one = wrap_llava(q, "vicuna_v1")
    assert T.tokenizer_image_token(one, toks["llama2_slow"]) == ref_prompt_ids("loader", "vicuna_v1", "llama2_slow", i)
    three = wrap_llava("What is in this image?", "vicuna_v1", n_images=3)
    assert three == conversation.build_prompt("What is in this image?", "vicuna_v1", n_images=3, placeholders=False)
    assert "USER: <image>\n<image>\n<image>\nWhat is in this image? ASSISTANT:" in three
    assert T.tokenizer_image_token(three, toks["llama2_slow"]).count(-200) == 3


# --- 2. Qwen2: merges.txt lines starting with "#" ---------------------------------------

def test_qwen2_skips_merges_starting_with_hash(shared, toks):
    tok = toks["qwen2"]
    for text, ids in REF["qwen2_encode"]:
        assert tok.encode(text) == ids, text
    assert tok.encode("### Human: hi") == [2, 2, 2, 11097, 25, 15588]
    merges = T._read_qwen2_merges(os.path.join(shared, "qwen2", "merges.txt"))
    with open(os.path.join(shared, "qwen2", "merges.txt"), encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line]
    hashed = [line for line in lines if line.startswith("#")]
    assert len(hashed) == 97 and hashed[0].startswith("#version")  # the header and 96 real merges
    assert len(merges) == len(lines) - 97 == 151387 - 96
    assert not any(a.startswith("#") for a, _ in merges) and ("#", "#") not in merges


# --- 3. Llama-3: clean_up_tokenization_spaces ------------------------------------------

def test_llama3_decode_cleans_up_spaces(toks):
    tok = toks["llama3"]
    assert tok.decode([119998, 75505, 77755]) == " Orta entrepreneurship!!}"
    assert tok.clean_up_tokenization_spaces is True  # tokenizer_config.json says true
    for ids, cleaned, raw in REF["llama3_decode"]:
        assert tok.decode(ids) == cleaned
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == raw


def test_clean_up_follows_the_config(toks, tmp_path):
    # Llama-2 (llava15) and Qwen2 configs say false: " ," stays
    for name in ("llama2_slow", "llama2_fast", "qwen2"):
        tok = toks[name]
        assert tok.clean_up_tokenization_spaces is False
        assert tok.decode(tok.encode("a , b ?", add_bos=False)) == "a , b ?"
    l3 = toks["llama3"].folder
    for value, expect in ((False, " Orta entrepreneurship !!}"), (None, " Orta entrepreneurship!!}")):
        folder = tmp_path / f"l3_{value}"
        folder.mkdir()
        os.symlink(os.path.join(l3, "tokenizer.json"), folder / "tokenizer.json")
        with open(os.path.join(l3, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        config.pop("clean_up_tokenization_spaces")
        if value is not None:
            config["clean_up_tokenization_spaces"] = value
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        # absent: PreTrainedTokenizerFast's default (true in transformers 4.37)
        assert T.LlmTokenizer.from_folder(folder).decode([119998, 75505, 77755]) == expect


# --- 4. streamed text joins to the one-shot decode ---------------------------------------

def _random_ids(rng, tok, n):
    """n random sequences: half byte-fallback / low ids (broken UTF-8 runs), half anything."""
    out = []
    for _ in range(n):
        out.append([rng.randrange(3, 259) if rng.random() < 0.5 else rng.randrange(tok.vocab_size)
                    for _ in range(rng.randint(1, 30))])
    return out


def _stream(tok, ids, **kw):
    sd = T.StreamDecoder(tok, **kw)
    pieces = [sd.push(i) for i in ids]
    pieces.append(sd.flush())
    return pieces, sd


def test_stream_joins_to_decode_on_llama_tokenizer_json(toks):
    tok = toks["llama2_fast"]
    rng = random.Random(14)
    for ids in _random_ids(rng, tok, 300):
        pieces, sd = _stream(tok, ids)
        assert "".join(pieces) == sd.text == tok.decode(ids), ids


@pytest.mark.parametrize("name", ["llama2_slow", "llama3", "qwen2"])
@pytest.mark.parametrize("skip", [True, False])
def test_stream_joins_to_decode_on_other_tokenizers(toks, name, skip):
    tok = toks[name]
    rng = random.Random(f"{name}-{skip}")
    specials = sorted(tok._added)[:20] + sorted(tok._skip_ids)
    seqs = _random_ids(rng, tok, 100)
    for ids in seqs[:50]:  # some special tokens in the middle of byte runs
        ids.insert(rng.randrange(len(ids) + 1), rng.choice(specials))
    for ids in seqs:
        pieces, sd = _stream(tok, ids, skip_special_tokens=skip)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip), ids


def test_stream_with_clean_up_and_split_characters(toks):
    tok = toks["llama3"]
    text = "It's a cat , isn't it ? I 'm sure ' s fine ! 中文 😀 naïve ."
    ids = tok.encode(text, add_bos=False)
    pieces, sd = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == "It's a cat, isn't it? I'm sure's fine! 中文 😀 naïve."
    assert len(pieces[-1]) <= 4  # text comes out while streaming, only a short tail waits for the end
    # a character split over byte-fallback pieces (Llama-2): nothing until it is whole, then all of it
    l2 = toks["llama2_fast"]
    emoji = [l2.token_to_id(f"<0x{b:02X}>") for b in "😀".encode("utf-8")]
    hi = l2.encode("Hi", add_bos=False)
    pieces, _ = _stream(l2, hi + emoji + l2.encode("there", add_bos=False))  # "▁there"
    assert "".join(pieces[:len(hi)]) == "Hi" and pieces[len(hi):len(hi) + 4] == ["", "", "", ""]
    assert "".join(pieces) == "Hi😀 there"
