"""Tests for tgllava.tokenize.

Tiny tokenizers are built inside the tests (a Llama-like SentencePiece
model, Llama-3-like and Qwen2-like byte-level BPE tokenizer.json files, a
CLIP vocab.json + merges.txt and its tokenizer.json twin); expectations are
computed independently with the raw `sentencepiece` / `tokenizers`
libraries and assembled by hand."""

import json
import random
import unicodedata

import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tgllava import conversation
from tgllava import tokenize as T
from tgllava.errors import CheckpointError

CORPUS = """The quick brown fox jumps over the lazy dog. A chat between a curious user and an artificial
intelligence assistant. What is in the picture? Describe this image in detail. USER: ASSISTANT: Human: Assistant:
Hello world! Numbers 12345 and cafe, naive, more text here. The assistant gives helpful, detailed, and polite
answers to the user's questions. line two
\tTabbed  spaces  here. ### answers questions picture image detail""".splitlines() * 5

PROMPT_QUESTION = "What is in the picture?\nAnswer briefly."


# --- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A Llama-like SentencePiece model: BPE, byte fallback, identity normalizer, unk 0 bos 1 eos 2."""
    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(d / "m"), vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, minloglevel=2)
    return d / "m.model"


def make_sp_folder(path, model, **config):
    path.mkdir()
    (path / "tokenizer.model").write_bytes(model.read_bytes())
    base = {"add_bos_token": True, "add_eos_token": False,
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False},
            "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}
    base.update(config)
    (path / "tokenizer_config.json").write_text(json.dumps(base))
    return path


@pytest.fixture(scope="module")
def raw_sp(sp_model):
    return spm.SentencePieceProcessor(model_file=str(sp_model))


@pytest.fixture
def sp_tok(tmp_path, sp_model):
    return T.LlmTokenizer.from_folder(make_sp_folder(tmp_path / "sp", sp_model))


def build_bytelevel(folder, specials, bos=None, gen_eos=None, **config):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if gen_eos is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos}))
    return folder, tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture
def llama3(tmp_path):
    """Llama-3-like: post-processor adds <|begin_of_text|>, no add_bos_token in the config."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    folder, raw = build_bytelevel(tmp_path / "llama3", specials, bos="<|begin_of_text|>",
                                  bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    return T.LlmTokenizer.from_folder(folder), raw


@pytest.fixture
def qwen2(tmp_path):
    """Qwen2-like: no BOS at all, ChatML specials, eos <|im_end|>."""
    folder, raw = build_bytelevel(tmp_path / "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  gen_eos=[2, 1], bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    return T.LlmTokenizer.from_folder(folder), raw


def llava_rule(chunks, bos):
    """LLaVA's tokenizer_image_token assembly, written out by hand."""
    out = []
    keep_bos = bool(chunks and chunks[0] and chunks[0][0] == bos)
    for i, ids in enumerate(chunks):
        if i == 0:
            out += ids
        else:
            out.append(-200)
            out += ids[1:] if keep_bos else ids
    return out


# --- SentencePiece ------------------------------------------------------------------

def test_sp_encode_matches_sentencepiece(sp_tok, raw_sp):
    assert sp_tok.kind == "sentencepiece"
    assert (sp_tok.bos_id, sp_tok.eos_id, sp_tok.pad_id) == (1, 2, None)
    assert sp_tok.eos_ids == [2]
    for text in ["Hello world", "\nWhat is this?", "a  b\n\nc", "café 😀 中文", " lead", ""]:
        assert sp_tok.encode(text) == [1] + raw_sp.encode(text), text
        assert sp_tok.encode(text, add_bos=False) == raw_sp.encode(text)
    # newline is a byte piece, not a space (identity normaliser, byte fallback)
    assert raw_sp.id_to_piece(sp_tok.encode("\nA", add_bos=False)[1]) == "<0x0A>"


def test_sp_special_tokens_in_text_are_split(sp_tok, raw_sp):
    got = sp_tok.encode("Hello</s>world<s>x")
    assert got == [1] + raw_sp.encode("Hello") + [2] + raw_sp.encode("world") + [1] + raw_sp.encode("x")


def test_sp_config_flags(tmp_path, sp_model, raw_sp):
    tok = T.LlmTokenizer.from_folder(make_sp_folder(tmp_path / "a", sp_model, add_bos_token=False,
                                                    add_eos_token=True, pad_token="<unk>"))
    assert tok.encode("Hello") == raw_sp.encode("Hello") + [2]
    assert tok.pad_id == 0
    assert tok.encode("Hello", add_bos=True)[0] == 1
    # no tokenizer_config.json at all: the model's own ids, BOS added
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer.model").write_bytes(sp_model.read_bytes())
    tok = T.LlmTokenizer.from_folder(tmp_path / "b")
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0) and tok.encode("Hi") == [1] + raw_sp.encode("Hi")


def test_sp_added_tokens(tmp_path, sp_model, raw_sp):
    added = {"400": {"content": "<image>", "special": True}, "401": {"content": "<pad>", "special": True}}
    tok = T.LlmTokenizer.from_folder(make_sp_folder(tmp_path / "a", sp_model, added_tokens_decoder=added,
                                                    pad_token="<pad>"))
    assert tok.vocab_size == 402 and tok.pad_id == 401
    assert tok.encode("a<image>b") == [1] + raw_sp.encode("a") + [400] + raw_sp.encode("b")
    assert tok.decode([1, 400, 401, 2]) == "<image>"
    assert tok.decode([1, 400, 401, 2], skip_special_tokens=False) == "<s><image><pad></s>"


def test_sp_legacy_false(tmp_path, sp_model, raw_sp):
    tok = T.LlmTokenizer.from_folder(make_sp_folder(tmp_path / "nl", sp_model, legacy=False))
    # plain text: same as legacy
    for text in ["Hello world", "\nWhat is this?", "USER: x ASSISTANT:"]:
        assert tok.encode(text) == [1] + raw_sp.encode(text), text
    # after a special token there is no dummy "▁" prefix
    ids = tok.encode("Hello</s>world", add_bos=False)
    assert ids[: len(raw_sp.encode("Hello"))] == raw_sp.encode("Hello")
    after = ids[ids.index(2) + 1:]
    assert not raw_sp.id_to_piece(after[0]).startswith("\u2581")
    assert raw_sp.decode(after) == "world"
    legacy_after = raw_sp.encode("world")
    assert raw_sp.id_to_piece(legacy_after[0]).startswith("\u2581")
    # a text starting with a special token does not get a lone "▁" in front
    assert tok.encode("</s>Hi", add_bos=False)[0] == 2


def test_without_dummy_prefix(raw_sp):
    patched = spm.SentencePieceProcessor()
    patched.LoadFromSerializedProto(T._without_dummy_prefix(raw_sp))
    assert raw_sp.id_to_piece(raw_sp.encode("Hello")[0]).startswith("\u2581")
    assert not patched.id_to_piece(patched.encode("Hello")[0]).startswith("\u2581")
    assert patched.get_piece_size() == raw_sp.get_piece_size()
    # only the dummy prefix changed: spaces are still escaped, runs of them kept
    for text in ["Hello world", "x  y\tz", "café 😀"]:
        assert patched.encode("\u2581" + text) == raw_sp.encode(text), text


def test_sp_decode(sp_tok):
    for text in ["Hello world", "café 😀 中文", "line two\n\tTabbed"]:
        assert sp_tok.decode(sp_tok.encode(text)) == text
    ids = sp_tok.encode("Hi") + [2]
    assert sp_tok.decode(ids) == "Hi"
    assert sp_tok.decode(ids, skip_special_tokens=False) == "<s>Hi</s>"
    assert sp_tok.decode([-200] + sp_tok.encode("Hi", add_bos=False)) == "Hi"


def test_image_token_rule_sentencepiece(sp_tok, raw_sp):
    for mode in ("vicuna_v1", "llava_v1", "llava_v0", "plain"):
        prompt = conversation.build_prompt(PROMPT_QUESTION, mode)
        chunks = [[1] + raw_sp.encode(c) for c in prompt.split("<image>")]
        expected = llava_rule(chunks, 1)
        got = T.tokenizer_image_token(prompt, sp_tok)
        assert got == expected, mode
        assert got.count(-200) == 1 and got.count(1) == 1 and got[0] == 1
    # hand-written case: BOS once, -200 between chunks, later BOS dropped
    first = raw_sp.encode("USER: ")
    second = raw_sp.encode("\nHi")
    assert T.tokenizer_image_token("USER: <image>\nHi", sp_tok) == [1] + first + [-200] + second
    # several images, prompt starting/ending with the marker, custom index
    got = T.tokenizer_image_token("<image>a<image><image>", sp_tok, image_token_index=-7)
    assert got == [1, -7] + raw_sp.encode("a") + [-7, -7]
    assert T.tokenizer_image_token("no image", sp_tok) == [1] + raw_sp.encode("no image")


# --- tokenizer.json -------------------------------------------------------------------

def test_llama3_like(llama3):
    tok, raw = llama3
    bos = raw.token_to_id("<|begin_of_text|>")
    assert tok.kind == "tokenizers" and tok.bos_id == bos and tok.add_bos_token
    assert raw.token_to_id("<|eot_id|>") in tok.eos_ids and raw.token_to_id("<|end_of_text|>") in tok.eos_ids
    assert tok.eos_ids[0] == tok.eos_id == raw.token_to_id("<|end_of_text|>")
    for text in ["Hello world", "café 😀", ""]:
        assert tok.encode(text) == raw.encode(text, add_special_tokens=True).ids
        assert tok.encode(text, add_bos=False) == raw.encode(text, add_special_tokens=False).ids
    # the llama_3 template has a literal <|begin_of_text|>, and the tokenizer adds one too:
    # LLaVA's rule keeps both (the reference input starts with two BOS tokens)
    prompt = conversation.build_prompt(PROMPT_QUESTION, "llama_3")
    chunks = [raw.encode(c, add_special_tokens=True).ids for c in prompt.split("<image>")]
    got = T.tokenizer_image_token(prompt, tok)
    assert got == llava_rule(chunks, bos)
    assert got[:2] == [bos, bos] and got.count(-200) == 1
    assert tok.decode(got) == prompt.replace("<image>", "").replace("<|begin_of_text|>", "") \
        .replace("<|start_header_id|>", "").replace("<|end_header_id|>", "").replace("<|eot_id|>", "")


def test_qwen2_like(qwen2):
    tok, raw = qwen2
    assert tok.bos_id is None and not tok.add_bos_token
    im_end, eot = raw.token_to_id("<|im_end|>"), raw.token_to_id("<|endoftext|>")
    assert tok.eos_id == im_end and tok.pad_id == eot
    prompt = conversation.build_prompt(PROMPT_QUESTION, "qwen_2")
    chunks = [raw.encode(c).ids for c in prompt.split("<image>")]
    assert T.tokenizer_image_token(prompt, tok) == chunks[0] + [-200] + chunks[1]
    with pytest.raises(T.TgError, match="BOS"):
        tok.encode("x", add_bos=True)


def test_eos_ids(qwen2):
    tok, raw = qwen2
    im_end, im_start, eot = (raw.token_to_id(t) for t in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"))
    assert (eot, im_start, im_end) == (0, 1, 2)
    # own EOS, then generation_config.json's eos_token_id [2, 1], then <|endoftext|>; no repeats
    assert tok.eos_ids == [im_end, im_start, eot]


def test_qwen2_slow_folder(tmp_path):
    """vocab.json + merges.txt + added_tokens_decoder, as a slow Qwen2Tokenizer saves them."""
    pattern = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
    ref = tokenizers.Tokenizer(models.BPE())
    ref.normalizer = normalizers.NFC()
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    ref.decoder = decoders.ByteLevel()
    ref.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=450, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(ref.to_str())["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    n = len(vocab)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    ref.add_special_tokens(specials)
    assert [ref.token_to_id(t) for t in specials] == [n, n + 1, n + 2]
    folder = tmp_path / "qwen_slow"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    added = {str(n + i): {"content": t, "special": True} for i, t in enumerate(specials)}
    config = {"added_tokens_decoder": added, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = T.LlmTokenizer.from_folder(folder)
    assert tok.kind == "tokenizers" and tok.bos_id is None and tok.eos_id == n + 2 and tok.pad_id == n
    for text in ["Hello world!\n\nWhat's  this?", "café 😀 中文 12345", conversation.build_prompt("Hi?", "qwen_2")]:
        assert tok.encode(text) == ref.encode(text).ids, text
        assert tok.decode(tok.encode(text)) == ref.decode(ref.encode(text).ids)
    assert tok.encode("<|im_start|>user\nx<|im_end|>")[0] == n + 1
    config["tokenizer_class"] = "GPT2Tokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Qwen2Tokenizer"):
        T.LlmTokenizer.from_folder(folder)


def test_explicit_add_bos_token_overrides_post_processor(tmp_path):
    folder, raw = build_bytelevel(tmp_path / "t", ["<s>", "</s>"], bos="<s>",
                                  add_bos_token=False, bos_token={"content": "<s>"}, eos_token="</s>")
    tok = T.LlmTokenizer.from_folder(folder)
    assert not tok.add_bos_token and tok.encode("Hi") == raw.encode("Hi", add_special_tokens=False).ids
    assert tok.encode("Hi", add_bos=True)[0] == raw.token_to_id("<s>")


def test_stream_decoder(sp_tok, llama3):
    for tok in (sp_tok, llama3[0]):
        text = "Hello café 😀 中文 wörld!\nok then"
        ids = tok.encode(text, add_bos=False) + [tok.eos_id]
        sd = T.StreamDecoder(tok)
        pieces = [sd.push(i) for i in ids]
        pieces.append(sd.flush())
        assert "".join(pieces) == tok.decode(ids) == text
        assert not any("\ufffd" in p for p in pieces)
        assert sd.text == text
        # multi-byte characters split over byte tokens: some pushes emit nothing
        assert "" in pieces[:-1]


def test_clean_up_tokenization_rule():
    """transformers' clean_up_tokenization, rules applied in its order (outputs of transformers 4.37.2)."""
    cases = {"a . b ? c ! d , e": "a. b? c! d, e", "do n't": "don't", "don 't": "don 't",
             "I 'm it 's we 've they 're": "I'm it's we've they're", "a ' b": "a'b", "  ' s": "'s",
             " n ' t": "n't", "x ' 's": "x''s", "  ' ve": "'ve", ". . .": "...", "end .": "end.",
             "a ; b : c 'll": "a ; b : c 'll"}
    for text, want in cases.items():
        assert T.clean_up_tokenization(text) == want, text


def test_clean_up_setting():
    s = T._clean_up_setting
    assert s({}, "tokenizers") is True  # PreTrainedTokenizerFast's default
    assert s({"tokenizer_class": "PreTrainedTokenizerFast"}, "tokenizers") is True
    for cls in ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "Qwen2Tokenizer", "Qwen2TokenizerFast"):
        assert s({"tokenizer_class": cls}, "tokenizers") is False, cls
    assert s({}, "sentencepiece") is False
    assert s({"tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": True}, "sentencepiece") is True
    assert s({"clean_up_tokenization_spaces": False}, "tokenizers") is False


def test_stream_decoder_with_a_plain_tokenizer_object():
    """Any object with decode(ids, skip_special_tokens=...) works; byte runs are then judged by U+FFFD."""
    class Bytes:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    data = "Hé 😀!".encode("utf-8") + b"\xe4\xb8" + b"x\x80"
    sd = T.StreamDecoder(Bytes())
    pieces = [sd.push(b) for b in data] + [sd.flush()]
    assert "".join(pieces) == data.decode("utf-8", errors="replace")
    assert pieces[:2] == ["H", ""] and pieces[2] == "é"


def test_from_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json, tokenizer.model or vocab.json"):
        T.LlmTokenizer.from_folder(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        T.LlmTokenizer.from_folder(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        T.LlmTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        T.LlmTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        T.LlmTokenizer.from_folder(tmp_path)


# --- CLIP ------------------------------------------------------------------------------

CLIP_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>"), ("w", "o"),
               ("r", "l"), ("wo", "rl"), ("worl", "d</w>"), ("i", "s</w>"), ("t", "h"),
               ("th", "is</w>"), ("'", "s</w>"), ("c", "a"), ("ca", "t</w>")]


def write_clip_vocab(folder):
    b2u = T.bytes_to_unicode()
    vocab = {}
    for c in b2u.values():
        vocab.setdefault(c, len(vocab))
    for c in b2u.values():
        vocab.setdefault(c + "</w>", len(vocab))
    for a, b in CLIP_MERGES:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in CLIP_MERGES) + "\n")
    return vocab


def write_clip_tokenizer_json(folder, vocab):
    """The tokenizer.json transformers' CLIP converter writes, built with `tokenizers`."""
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=CLIP_MERGES, continuing_subword_prefix="",
                                          end_of_word_suffix="</w>", fuse_unk=False, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=True)  # as transformers writes them
                            for t in ("<|startoftext|>", "<|endoftext|>")])
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", vocab["<|endoftext|>"]), ("<|startoftext|>", vocab["<|startoftext|>"]),
        add_prefix_space=False, trim_offsets=False)
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return tok


@pytest.fixture
def clip(tmp_path):
    vocab = write_clip_vocab(tmp_path / "py")
    raw = write_clip_tokenizer_json(tmp_path / "tj", vocab)
    return (T.ClipTokenizer.from_folder(tmp_path / "py"), T.ClipTokenizer.from_folder(tmp_path / "tj"),
            vocab, raw)


def test_clip_hand_computed(clip):
    py, tj, vocab, _ = clip
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (py.bos_id, py.eos_id, py.pad_id) == (bos, eos, eos)
    expected = [bos, vocab["hello</w>"], vocab["world</w>"], vocab["!</w>"], eos]
    for text in ["Hello   World!", "hello world!", "  HELLO\n\tworld !  "]:
        assert py.encode(text) == expected, text
        assert tj.encode(text) == expected, text
    # contraction, digits one by one, unknown merges fall back to bytes
    assert py.tokenize("This cat's 42") == ["this</w>", "cat</w>", "'s</w>", "4</w>", "2</w>"]
    b2u = T.bytes_to_unicode()
    assert py.tokenize("é") == [b2u[0xC3], b2u[0xA9] + "</w>"]  # UTF-8 bytes C3 A9, no merge
    assert py.decode(py.encode("Hello world!")) == "hello world !"


def test_clip_vocab_merges_matches_tokenizer_json(clip):
    py, tj, _, raw = clip
    rng = random.Random(0)
    alphabet = list("abcdehlorstwHELLOW0123456789 .,!?'\"-&;:\t\n\r\x0b\x0c") + \
        list("éüßİΣςﬁÅ中文😀\u0301\u00a0\u2003\u3000\u200b\u2028\u0085٣") + \
        ["'s", "'ll", "'D", "&amp;", "cat", "hello", "world", "<|endoftext|>", "<|STARTOFTEXT|>"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    for text in texts:
        assert py.encode(text) == tj.encode(text) == raw.encode(text).ids[:77], repr(text)


def test_clip_truncation_loses_eos(clip):
    py, tj, vocab, _ = clip
    long = " ".join(["hello"] * 100)
    for tok in (py, tj):
        ids = tok.encode(long)
        assert len(ids) == 77 and ids[0] == vocab["<|startoftext|>"]
        assert ids[-1] == vocab["hello</w>"] and vocab["<|endoftext|>"] not in ids
    exact = " ".join(["hello"] * 75)
    assert py.encode(exact)[-1] == vocab["<|endoftext|>"] and len(py.encode(exact)) == 77
    assert py.encode_batch(["hello", "world"]) == [py.encode("hello"), py.encode("world")]
    assert py.encode("") == [vocab["<|startoftext|>"], vocab["<|endoftext|>"]]


def test_clip_html_unescape_option(clip):
    py, tj, vocab, _ = clip
    assert py.tokenize("&amp;") == ["&</w>", "a", "m", "p</w>", ";</w>"]  # no unescaping by default
    py.html_unescape = tj.html_unescape = True
    assert py.encode("&amp;amp;") == py.encode("&") == tj.encode(" &amp;amp; ")


def test_clip_normalizer():
    normalizer, _ = T.clip_pipeline()
    assert normalizer.normalize_str("  A\u00a0\u2003B\n\nC  ") == " a b c "
    assert normalizer.normalize_str("e\u0301") == unicodedata.normalize("NFC", "e\u0301")


def test_clip_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no CLIP tokenizer"):
        T.ClipTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(CheckpointError, match="BOS"):
        T.ClipTokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(CheckpointError, match="bad merge line"):
        T.ClipTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        T.ClipTokenizer.from_folder(tmp_path)
