"""Prompts per dataset kind and prompt style, compared string by string."""

import os
import sys
import types

import pytest
from eval_testing import png_b64, write_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tgllava.eval.data import load_dataset
from tgllava.eval.prompts import (VLMEVALKIT_SYSTEM, build_item_prompt, default_conv_mode, text_guide,
                                  user_text)

IMG = png_b64()
MCQ_TAIL = "\nAnswer with the option's letter from the given choices directly."


def _ds(tmp_path, name, rows):
    return load_dataset(write_tsv(str(tmp_path / f"{name}.tsv"), rows))


def test_system_sentence_is_vicunas():
    assert VLMEVALKIT_SYSTEM == (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions. ")


def test_mcq_text_with_hint_and_options(tmp_path):
    ds = _ds(tmp_path, "MMStar", [
        dict(index=0, image=IMG, question="What animal is shown?", hint="Look at the ears.",
             A="cat", B="dog", C="rabbit", answer="C"),
        dict(index=1, image=IMG, question="Which colour?", A="red", B="blue", answer="A"),
    ])
    assert user_text(ds, ds.rows[0]) == (
        "Look at the ears.\nWhat animal is shown?\nA. cat\nB. dog\nC. rabbit" + MCQ_TAIL)
    # no hint; the missing C (empty cell) is not an option
    assert user_text(ds, ds.rows[1]) == "Which colour?\nA. red\nB. blue" + MCQ_TAIL


def test_mcq_without_options_and_in_chinese(tmp_path):
    ds = _ds(tmp_path, "MMMU_DEV_VAL", [
        dict(index=0, image=IMG, question="How many legs?", A="", B="", answer="4"),
        dict(index=1, image=IMG, question="图中是什么动物?", A="猫", B="狗", answer="A"),
        dict(index=2, image=IMG, question="中文问题", A="", B="", answer="x"),
    ])
    assert user_text(ds, ds.rows[0]) == "How many legs?\nAnswer the question directly."
    assert user_text(ds, ds.rows[1]) == "图中是什么动物?\nA. 猫\nB. 狗\n请直接回答选项字母。"
    assert user_text(ds, ds.rows[2]) == "中文问题\n请直接回答问题。"


def test_cells_are_read_as_pandas_reads_them(tmp_path):
    # VLMEvalKit reads TSVs with pandas: 'None' is missing, an int column with a gap is float
    ds = _ds(tmp_path, "AI2D_TEST", [
        dict(index=0, image=IMG, question="How many?", A="1", B="2", C="3", D="None", answer="A"),
        dict(index=1, image=IMG, question="How many now?", A="4", B="5", C="", D="7", answer="B"),
    ])
    assert user_text(ds, ds.rows[0]) == "How many?\nA. 1\nB. 2\nC. 3.0" + MCQ_TAIL
    assert user_text(ds, ds.rows[1]) == "How many now?\nA. 4\nB. 5\nD. 7.0" + MCQ_TAIL


def test_yes_no_and_vqa_texts(tmp_path):
    q = "Is there a dog in the image? Please answer yes or no."
    mme = _ds(tmp_path, "MME", [dict(index=0, image=IMG, question=q, answer="Yes", category="existence")])
    assert user_text(mme, mme.rows[0]) == q
    pope = _ds(tmp_path, "POPE", [dict(index=0, image=IMG, question="Is there a cat?", answer="No")])
    assert user_text(pope, pope.rows[0]) == "Is there a cat?"
    tv = _ds(tmp_path, "TextVQA_VAL", [dict(index=0, image=IMG, question="What is written?", answer="['a']")])
    assert user_text(tv, tv.rows[0]) == "What is written?\nAnswer the question using a single word or phrase."
    gqa = _ds(tmp_path, "GQA_TestDev_Balanced", [dict(index=0, image=IMG, question="Where?", answer="left")])
    assert user_text(gqa, gqa.rows[0]) == "Where?\nAnswer the question using a single word or phrase."
    for name in ("OCRBench", "MathVista_MINI", "LLaVABench", "MMVet"):
        ds = _ds(tmp_path, name, [dict(index=0, image=IMG, question="Read the sign.", answer="['stop']",
                                       category="Regular Text Recognition")])
        assert ds.kind == "VQA"
        assert user_text(ds, ds.rows[0]) == "Read the sign.", name


def test_vlmevalkit_style_string(tmp_path):
    ds = _ds(tmp_path, "MMStar", [dict(index=0, image=IMG, question="What is it?", A="cat", B="dog", answer="A")])
    prompt, guide = build_item_prompt(ds, ds.rows[0], "vlmevalkit")
    text = "What is it?\nA. cat\nB. dog" + MCQ_TAIL
    assert prompt == ("A chat between a curious human and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the human's questions. "
                      "USER:  <image> " + text + " ASSISTANT: ")
    assert guide == text
    prompt2, _ = build_item_prompt(ds, ds.rows[0], "vlmevalkit", n_images=2)
    assert "USER:  <image>  <image> What is it?" in prompt2


def test_llava_style_uses_the_chat_template(tmp_path, monkeypatch):
    calls = []

    def build_prompt(question, conv_mode, with_image=True, n_images=1, placeholders=True):
        calls.append((question, conv_mode, with_image, n_images, placeholders))
        return "SYS USER: " + "<image>\n" * n_images + question + " ASSISTANT:"

    fake = types.ModuleType("tgllava.conversation")
    fake.build_prompt = build_prompt
    monkeypatch.setitem(sys.modules, "tgllava.conversation", fake)
    ds = _ds(tmp_path, "POPE", [dict(index=0, image=IMG, question="  Is there a cat?  ", answer="No")])
    prompt, guide = build_item_prompt(ds, ds.rows[0], "llava", conv_mode="vicuna_v1")
    assert calls == [("  Is there a cat?  ", "vicuna_v1", True, 1, False)]
    assert prompt == "SYS USER: <image>\n  Is there a cat?   ASSISTANT:"
    assert guide == "Is there a cat?"
    build_item_prompt(ds, ds.rows[0], "llava", conv_mode="vicuna_v1", n_images=3)
    assert calls[-1] == ("  Is there a cat?  ", "vicuna_v1", True, 3, False)


def test_llava_style_with_the_real_template(tmp_path):
    from tgllava import conversation as conv

    ds = _ds(tmp_path, "MMStar", [dict(index=0, image=IMG, question="What is it?", A="cat", B="dog", answer="A")])
    prompt, guide = build_item_prompt(ds, ds.rows[0], "llava", conv_mode="vicuna_v1")
    assert prompt.count("<image>") == 1
    assert "<image>\n" + guide in prompt
    assert prompt == conv.build_prompt(guide, "vicuna_v1", with_image=True)
    assert prompt == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\n" + guide + " ASSISTANT:")
    prompt3, _ = build_item_prompt(ds, ds.rows[0], "llava", conv_mode="vicuna_v1", n_images=3)
    assert prompt3.count("<image>") == 3


def test_text_guide_strips_image_markers():
    assert text_guide(" <image> What is it?\n") == "What is it?"
    assert text_guide("<image>\nQ") == "Q"


def test_default_conv_mode():
    class M:
        config = {"model_type": "llava_llama"}
    assert default_conv_mode(M()) == "vicuna_v1"
    M.config = {"model_type": "llava_qwen2"}
    assert default_conv_mode(M()) == "qwen_2"
    M.config = {"conv_mode": "llava_v1"}
    assert default_conv_mode(M()) == "llava_v1"
    M.config = {"model_type": "llava_llama_text_learnable_query"}
    assert default_conv_mode(M()) == "llava_v0"


def test_unknown_style_is_a_clear_error(tmp_path):
    from tgllava.eval.errors import DatasetError
    ds = _ds(tmp_path, "POPE", [dict(index=0, image=IMG, question="Q", answer="No")])
    with pytest.raises(DatasetError, match="prompt style"):
        build_item_prompt(ds, ds.rows[0], "chatml")
