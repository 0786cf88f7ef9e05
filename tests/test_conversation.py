"""Tests for tgllava.conversation: exact prompt strings for every template
(as produced by the reference `Conversation.get_prompt` of AIDC-AI/TG-LLaVA
and haotian-liu/LLaVA), stop strings and the conv-mode guess."""

import json

import pytest

from tgllava import conversation as conv

Q = "What is in the picture?"

EXPECTED = {
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\nWhat is in the picture? ASSISTANT:"
    ),
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions. "
        "USER: <image>\nWhat is in the picture? ASSISTANT:"
    ),
    "llava_v0": (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
        "###Human: <image>\nWhat is in the picture?###Assistant:"
    ),
    "llama_3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural "
        "language.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is in the picture?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen_2": (
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>"
        "<|im_start|>assistant\n"
    ),
    "plain": "<image>\nWhat is in the picture?\n",
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_prompt_strings(mode):
    assert conv.build_prompt(Q, mode) == EXPECTED[mode]


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_without_image(mode):
    assert conv.build_prompt(Q, mode, with_image=False) == EXPECTED[mode].replace("<image>\n", "")


def test_image_marker_already_in_question():
    """Both reference rules put "<image>\\n" in front of a question that already holds <image>."""
    two = EXPECTED["vicuna_v1"].replace("USER: <image>\n", "USER: <image>\n<image>\n")
    assert conv.build_prompt("<image>\n" + Q, "vicuna_v1") == two
    assert conv.build_prompt("<image>\n" + Q, "vicuna_v1", placeholders=False) == two
    p = conv.build_prompt("Compare <image> with the text.", "llava_v0")
    assert p.count("<image>") == 2 and "Human: <image>\nCompare <image> with the text.###" in p


def test_image_placeholder_rules():
    # TG-LLaVA's runner (the default): every placeholder becomes <image>, nothing is added
    p = conv.build_prompt("Compare <image-placeholder> with the text.", "llava_v0")
    assert "###Human: Compare <image> with the text.###" in p and p.count("<image>") == 1
    assert conv.user_message("a <image-placeholder> b <image-placeholder>") == "a <image> b <image>"
    assert conv.user_message("<image-placeholder>", n_images=3) == "<image>"
    # LLaVA's model_vqa_loader: always "<image>\\n" in front, the text as it is
    assert conv.user_message("a <image-placeholder>", placeholders=False) == "<image>\na <image-placeholder>"
    # several pictures are asked for explicitly
    assert conv.user_message(Q, n_images=3) == "<image>\n<image>\n<image>\n" + Q
    assert conv.build_prompt(Q, "plain", n_images=2) == "<image>\n<image>\n" + Q + "\n"
    assert conv.user_message("x <image-placeholder>", n_images=0) == "x <image-placeholder>"
    assert conv.build_prompt("x <image-placeholder>", "plain", with_image=False) == "x <image-placeholder>\n"
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_images"):
            conv.user_message(Q, n_images=bad)


def test_text_guide_is_the_runners():
    assert conv.text_guide("<image>\nWhat is this? ") == "What is this?"
    assert conv.text_guide("Describe <image-placeholder> briefly.") == "Describe  briefly."
    assert conv.text_guide("<image-placeholder>\n  Is there a ball?  ") == "Is there a ball?"
    # the runner replaces the placeholder by <image>, then removes <image> once over the text
    assert conv.text_guide("<<image-placeholder>image>>") == "<image>>"
    assert conv.text_guide("a <image-placeholder", placeholders=False) == "a <image-placeholder"


def test_templates_table():
    assert set(conv.TEMPLATES) == set(EXPECTED)
    for name, t in conv.TEMPLATES.items():
        assert conv.get_template(name) is t and t.name == name


def test_multi_turn_render():
    t = conv.get_template("vicuna_v1")
    p = t.render(["<image>\nHi", "Hello.", "More?", None])
    assert p.endswith(" USER: <image>\nHi ASSISTANT: Hello.</s>USER: More? ASSISTANT:")
    t = conv.get_template("llava_v0")
    assert t.render(["a", "b", "c", None]).endswith("###Human: a###Assistant: b###Human: c###Assistant:")
    t = conv.get_template("qwen_2")
    assert t.render(["a", "b", "c", None]).endswith(
        "<|im_start|>user\na<|im_end|><|im_start|>assistant\nb<|im_end|>"
        "<|im_start|>user\nc<|im_end|><|im_start|>assistant\n")
    assert conv.get_template("plain").render(["a", "b"]) == "a\nb\n"


def test_stop_strings():
    assert conv.stop_strings("vicuna_v1") == ["</s>"]
    assert conv.stop_strings("llava_v1") == ["</s>"]
    assert conv.stop_strings("llava_v0") == ["###"]
    assert conv.stop_strings("llama_3") == ["<|eot_id|>"]
    assert conv.stop_strings("qwen_2") == ["<|im_end|>"]
    assert conv.stop_strings("plain") == ["\n"]


def test_unknown_mode():
    with pytest.raises(ValueError, match="known modes: .*llava_v0.*vicuna_v1"):
        conv.get_template("chatgpt")
    with pytest.raises(ValueError, match="unknown conversation mode"):
        conv.build_prompt(Q, "v2")
    with pytest.raises(ValueError):
        conv.stop_strings(None)
    with pytest.raises(TypeError):
        conv.build_prompt(None, "plain")


def test_guess_conv_mode(tmp_path):
    g = conv.guess_conv_mode
    assert g({"model_type": "llava_qwen_text_learnable_query"}) == "qwen_2"
    assert g({"model_type": "llava", "text_config": {"model_type": "qwen2"}}) == "qwen_2"
    assert g({"architectures": ["LlavaQwen2ForCausalLM"], "model_type": "x"}) == "qwen_2"
    assert g({"model_type": "llava_llama_text_learnable_query", "vocab_size": 128256}) == "llama_3"
    assert g({"model_type": "llava_llama_text_learnable_query", "vocab_size": 32000}) == "llava_v0"
    assert g({"architectures": ["LlavaLlamaTextLearnableQueryForCausalLM"]}) == "llava_v0"
    assert g({"model_type": "llava_llama", "vocab_size": 32000}) == "vicuna_v1"
    assert g({"model_type": "llava", "text_config": {"vocab_size": 32064}}) == "vicuna_v1"
    assert g({}) == "vicuna_v1"
    # tokenizer folder with <|begin_of_text|> -> llama_3 even with a small vocab
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
    assert g({"model_type": "llava_llama", "vocab_size": 1000}, tokenizer_dir=tmp_path) == "llama_3"
    assert g({"model_type": "llava_llama", "vocab_size": 1000}, tokenizer_dir=tmp_path / "none") == "vicuna_v1"
