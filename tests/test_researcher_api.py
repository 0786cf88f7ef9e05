"""The Python API as a researcher meets it (issue 23 items 1, 2, 3, 7), on the demo checkpoint.

- Model.prepare builds chat's request (template, tokenizers, preprocessing, text guide) and every
  entry point takes it: generate / logits / generate_stream / attention_map as keywords,
  generate_batch / generate_many as a request, visual_tokens its pixels and text_ids; chat's
  tokens are those of generate(**prepare(...));
- text-only chat: chat(None, q), chat_batch with None images and `tgllava generate` without
  --image answer the template's text-only prompt (no image slot, no pixels, no text guide);
- every public function and Model method shows its real signature and a docstring, and the
  Model methods that call module functions take exactly those functions' parameters;
- bad arguments are Python errors naming the argument; an empty question is refused.
"""

import inspect
import os

import numpy as np
import pytest

import tgllava
from tgllava import attention, chat, cli, conversation, fixtures, image, tokenize
from tgllava.errors import ShapeError

QUESTION = "What is in the picture?"
NEW = 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(model, llm_dir, clip_dir, image_path) of the demo checkpoint."""
    llm_dir, clip_dir, image_path = fixtures.build(str(tmp_path_factory.mktemp("demo")))
    return tgllava.load(llm_dir, clip_dir=clip_dir, progress=False), llm_dir, clip_dir, image_path


def eos(m):
    return list(chat.tokenizers(m)[0].eos_ids)


def same_answer_tokens(answer, tokens):
    """chat cuts an answer where a stop string of the template appeared; else it has every token."""
    if answer.finish_reason == "stop":
        return tokens[:len(answer.token_ids)] == answer.token_ids
    return tokens == answer.token_ids


# ---- prepare ------------------------------------------------------------------------------

def test_prepare_is_the_manual_pipeline(demo):
    m, llm_dir, clip_dir, img = demo
    req = m.prepare(img, QUESTION)
    assert set(req) == {"input_ids", "pixels", "text_ids", "use_fom", "use_dp"}
    mode = chat.default_conv_mode(m)
    llm_tok = tokenize.LlmTokenizer.from_folder(llm_dir)
    assert req["input_ids"] == tokenize.tokenizer_image_token(conversation.build_prompt(QUESTION, mode), llm_tok)
    assert req["input_ids"].count(tgllava._C.IMAGE_TOKEN) == 1
    want_pixels = image.preprocess(img, mode=image.mode_from_config(m.config), size=m.image_size)
    assert np.array_equal(req["pixels"], want_pixels)
    assert req["text_ids"] == tokenize.ClipTokenizer.from_folder(clip_dir).encode(QUESTION)
    assert m.prepare(img, QUESTION, use_fom=False, use_dp=False)["text_ids"] is None
    vicuna = m.prepare(img, QUESTION, conv_mode="vicuna_v1")["input_ids"]
    assert vicuna == tokenize.tokenizer_image_token(conversation.build_prompt(QUESTION, "vicuna_v1"), llm_tok)


def test_prepare_feeds_every_entry_point(demo):
    m, _, _, img = demo
    req = m.prepare(img, QUESTION)
    tokens = m.generate(**req, max_new_tokens=NEW, eos_token_id=[])
    assert len(tokens) == NEW
    assert m.generate_batch([req], max_new_tokens=NEW, eos_token_id=[]) == [tokens]
    other = m.prepare(img, "Describe it.")
    both = m.generate_batch([req, other], max_new_tokens=NEW, eos_token_id=[])
    assert both[0] == tokens and both[1] == m.generate(**other, max_new_tokens=NEW, eos_token_id=[])
    assert dict(m.generate_many([req, other], max_new_tokens=NEW, eos_token_id=[])) == {0: both[0], 1: both[1]}
    assert list(m.generate_stream(**req, max_new_tokens=NEW, eos_token_id=[])) == tokens
    count = m.visual_token_count()
    logits = m.logits(**req)
    assert logits.shape == (len(req["input_ids"]) - 1 + count, m.sizes["vocab"])
    assert int(np.argmax(logits[-1])) == tokens[0]
    assert m.visual_tokens(req["pixels"], req["text_ids"]).shape == (1, count, m.sizes["hidden"])
    maps = m.attention_map(**req)
    assert np.array_equal(maps.llm, m.attention_map(img, QUESTION).llm)
    placeholder = "<image-placeholder> What is it?"  # the text guide drops the marker, as in chat
    want = m.prepare(img, placeholder)
    assert list(m.attention_map(img, placeholder).text_ids) == want["text_ids"] == m.prepare(img, "What is it?")["text_ids"]


def test_chat_runs_what_prepare_builds(demo):
    m, _, _, img = demo
    answer = m.chat(img, QUESTION, max_new_tokens=NEW)
    assert same_answer_tokens(answer, m.generate(**m.prepare(img, QUESTION), max_new_tokens=NEW, eos_token_id=eos(m)))


# ---- text only ----------------------------------------------------------------------------

def test_prepare_text_only_is_the_template_without_an_image(demo):
    m, llm_dir, _, _ = demo
    req = m.prepare(None, "Say hello.")
    assert req["pixels"] is None and req["text_ids"] is None
    prompt = conversation.build_prompt("Say hello.", chat.default_conv_mode(m), with_image=False)
    assert "<image>" not in prompt and prompt.endswith("###Assistant:")
    assert req["input_ids"] == tokenize.tokenizer_image_token(prompt, tokenize.LlmTokenizer.from_folder(llm_dir))
    assert tgllava._C.IMAGE_TOKEN not in req["input_ids"]


def test_text_only_chat(demo):
    m, _, _, img = demo
    answer = m.chat(None, "Say hello.", max_new_tokens=NEW)
    assert isinstance(answer, tgllava.Answer) and answer.conv_mode == chat.default_conv_mode(m)
    assert same_answer_tokens(answer, m.generate(**m.prepare(None, "Say hello."), max_new_tokens=NEW,
                                                 eos_token_id=eos(m)))
    # the TG modules play no part: switching them off changes nothing
    assert m.chat(None, "Say hello.", max_new_tokens=NEW, use_fom=False, use_dp=False).token_ids == answer.token_ids
    stream = m.chat(None, "Say hello.", max_new_tokens=NEW, stream=True)
    assert "".join(stream) == answer.text and stream.answer.token_ids == answer.token_ids
    pairs = [(img, QUESTION), (None, "Say hello."), (img, "Describe it.")]
    batch = m.chat_batch(pairs, max_new_tokens=NEW)
    assert [a.token_ids for a in batch] == [m.chat(i, q, max_new_tokens=NEW).token_ids for i, q in pairs]
    assert batch[1].token_ids == answer.token_ids


def test_cli_generate_without_image_is_text_only_chat(demo, capsys):
    m, llm_dir, clip_dir, _ = demo
    rc = cli.main(["generate", "--model", llm_dir, "--clip", clip_dir, "--question", "Say hello.",
                   "--max-new-tokens", str(NEW)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert out == m.chat(None, "Say hello.", max_new_tokens=NEW).text + "\n"


# ---- signatures and docstrings ------------------------------------------------------------

def public_callables():
    """(name, function) of every public top-level function and every public method of the public classes."""
    out = []
    for name in tgllava.__all__:
        obj = getattr(tgllava, name)
        if inspect.isfunction(obj):
            out.append((name, obj))
        elif inspect.isclass(obj) and not issubclass(obj, Exception):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    out.append((f"{name}.{attr}", member))
    return out


def test_public_api_has_real_signatures_and_docstrings():
    found = dict(public_callables())
    assert {"load", "tile", "read_tensors", "Model.prepare", "Model.chat", "Model.attention_map",
            "Model.generate_stream"} <= set(found)
    for name, fn in found.items():
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}, \
            f"{name}{inspect.signature(fn)} hides its parameters"
        assert inspect.getdoc(fn), f"{name} has no docstring"


def parameters(fn, drop=()):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.name not in drop]


def test_model_methods_take_the_parameters_of_the_functions_they_call():
    M = tgllava.Model
    assert parameters(M.prepare, ["self"]) == parameters(chat.prepare, ["model", "timings"])
    assert parameters(M.chat, ["self"]) == parameters(chat.chat, ["model"])
    assert parameters(M.chat_batch, ["self"]) == parameters(chat.chat_batch, ["model"])
    assert parameters(M.attention_map, ["self"]) == parameters(attention.attention_map, ["m"])
    assert parameters(M.generate_stream) == parameters(M.generate, ["callback"])
    assert str(inspect.signature(tgllava.Model.chat)).startswith("(self, image, question, conv_mode=None, ")


# ---- errors in Python's terms -------------------------------------------------------------

@pytest.mark.parametrize("kw,message", [
    (dict(max_new_tokens="ten"), "max_new_tokens must be an integer, got 'ten'"),
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (dict(temperature="hot"), "temperature must be a number"),
    (dict(top_p=None), "top_p must be a number"),
    (dict(seed="x"), "seed must be an integer or None"),
])
def test_bad_settings_name_the_argument(demo, kw, message):
    m, _, _, img = demo
    for call in (lambda: m.chat(img, QUESTION, **kw), lambda: m.chat_batch([(img, QUESTION)], **kw),
                 lambda: m.chat(None, QUESTION, stream=True, **kw)):
        with pytest.raises(ValueError, match=message):
            call()


def test_bad_questions_are_refused(demo, capsys):
    m, llm_dir, clip_dir, img = demo
    for question in ("", "  \n "):
        for call in (lambda: m.chat(img, question), lambda: m.chat(None, question), lambda: m.prepare(img, question),
                     lambda: m.chat_batch([(img, QUESTION), (img, question)])):
            with pytest.raises(ShapeError, match="question is empty"):
                call()
    with pytest.raises(TypeError, match="question must be a str"):
        m.chat(img, None)
    for marker in ("<image>", "<image-placeholder>"):  # an image marker with no image
        with pytest.raises(ShapeError, match="no image was given"):
            m.chat(None, f"{marker} What is it?")
    rc = cli.main(["generate", "--model", llm_dir, "--clip", clip_dir, "--image", img, "--question", " "])
    _, err = capsys.readouterr()
    assert rc == 1 and err == "tgllava generate: error: --question is empty: ask something\n"


def test_every_error_class_is_exported_and_listed_in_the_readme():
    assert tgllava.ImageError is image.ImageError and issubclass(tgllava.ImageError, tgllava.TgError)
    with pytest.raises(tgllava.ImageError):
        image.load_image(os.path.join(os.path.dirname(__file__), "no-such-picture.png"))
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
              encoding="utf-8") as f:
        readme = f.read()
    errors = [n for n in tgllava.__all__ if inspect.isclass(getattr(tgllava, n)) and
              issubclass(getattr(tgllava, n), Exception)]
    assert {"TgError", "CheckpointError", "ShapeError", "DeviceError", "ImageError", "OutOfMemoryError"} == set(errors)
    for name in errors:
        assert f"`{name}`" in readme or f"`tgllava.{name}`" in readme, name
