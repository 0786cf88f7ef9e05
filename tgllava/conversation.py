"""Chat templates: the prompt text LLaVA-1.5 and TG-LLaVA models were trained on.

Each template reproduces, character for character, the `Conversation` object of the same name
in the reference code (AIDC-AI/TG-LLaVA `tg_llava/conversation.py`, whose vicuna_v1, llava_v1,
llava_v0 and plain entries are identical to haotian-liu/LLaVA `llava/conversation.py`):

  vicuna_v1  "<system> USER: <msg> ASSISTANT:"           (LLaVA-1.5 eval scripts)
  llava_v1   same, with the "curious human" system text (VLMEvalKit's LLaVA)
  llava_v0   "<system>###Human: <msg>###Assistant:"     (TG-LLaVA runner default)
  llama_3    TG-LLaVA's Llama-3 header format; the system text itself starts
             with a literal <|begin_of_text|>
  qwen_2     TG-LLaVA's ChatML variant: its own system text and no newline
             after <|im_end|>
  plain      "<msg>\\n" (pre-training format)

`build_prompt` renders one user turn and stops where the answer begins, with the image markers
`user_message` puts in (the reference scripts' two rules: TG-LLaVA's runner, LLaVA's evaluation
scripts; several pictures are asked for with `n_images`, never by writing `<image>` into the text).
`text_guide` is the runner's CLIP text guide: the user turn without `<image>`, stripped.
`guess_conv_mode` picks a template from a model config; `stop_strings` gives the text that ends
an answer (LLaVA: sep2 for two-separator templates, else sep).
"""

import dataclasses
import os

IMAGE_TOKEN = "<image>"
IMAGE_PLACEHOLDER = "<image-placeholder>"


@dataclasses.dataclass(frozen=True)
class Template:
    """One chat format.  `style` is how turns are joined:

    single   system + sep, then "Role: msg" + sep per turn; an open turn is "Role:"
    two      as single, but the separator alternates sep (after user) and sep2
    header   system + sep, then role + msg + sep; an open turn is just role
    plain    system, then msg + sep per turn; an open turn adds nothing
    """

    name: str
    system: str
    roles: tuple
    style: str
    sep: str
    sep2: str = None

    def render(self, messages):
        """Render alternating user/assistant messages; None marks the open turn."""
        ret = self.system if self.style == "plain" else self.system + self.sep
        for i, message in enumerate(messages):
            role = self.roles[i % 2]
            sep = self.sep2 if i % 2 == 1 and self.sep2 is not None else self.sep
            if self.style in ("single", "two"):
                ret += f"{role}: {message}{sep}" if message else f"{role}:"
            elif self.style == "header":
                ret += role + message + sep if message else role
            elif self.style == "plain":
                ret += message + sep if message else ""
            else:
                raise ValueError(f"template {self.name}: unknown style {self.style!r}")
        return ret


_VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                     "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")

TEMPLATES = {
    "vicuna_v1": Template("vicuna_v1", _VICUNA_V1_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>"),
    "llava_v1": Template("llava_v1", _LLAVA_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>"),
    "llava_v0": Template("llava_v0", _LLAVA_SYSTEM, ("Human", "Assistant"), "single", "###"),
    "llama_3": Template(
        "llama_3",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, "
        "and assist the user with a variety of tasks using natural language.",
        ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "header", "<|eot_id|>"),
    "qwen_2": Template(
        "qwen_2",
        "<|im_start|>system\n"
        "A conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers.",
        ("<|im_start|>user\n", "<|im_start|>assistant\n"),
        "header", "<|im_end|>"),
    "plain": Template("plain", "", ("", ""), "plain", "\n"),
}


def get_template(name):
    """The Template called `name`; ValueError listing the known names otherwise."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown conversation mode {name!r}; known modes: {', '.join(sorted(TEMPLATES))}"
        ) from None


def user_message(question, n_images=1, placeholders=True):
    """The user turn of `question` shown with `n_images` pictures, with its image markers.

    placeholders=True (TG-LLaVA's runner, LLaVA's run_llava.py): if the
    question holds "<image-placeholder>", each one becomes "<image>" and
    nothing is added; otherwise "<image>\\n" per picture goes in front.
    placeholders=False (LLaVA's model_vqa_loader.py): "<image>\\n" per
    picture always goes in front and the text is left as it is.
    A literal "<image>" already in the question is kept in both rules, so
    it becomes one more image slot, exactly as in the reference.
    n_images=0 returns the question unchanged.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images must be a whole number >= 0, got {n_images!r}")
    if n_images == 0:
        return question
    if placeholders and IMAGE_PLACEHOLDER in question:
        return question.replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN)
    return (IMAGE_TOKEN + "\n") * n_images + question


def build_prompt(question, conv_mode, with_image=True, n_images=1, placeholders=True):
    """The full prompt for one user turn, ending where the assistant's answer starts: the user turn is
    `user_message(question, n_images, placeholders)`, or with with_image=False the question alone."""
    template = get_template(conv_mode)
    message = user_message(question, n_images if with_image else 0, placeholders)
    return template.render([message, None])


def text_guide(question, placeholders=True):
    """The CLIP text guide of TG-LLaVA's runner: the user turn without "<image>", stripped, made after
    the image markers were put in (so "<image-placeholder>" disappears too; `placeholders` as in
    user_message)."""
    return user_message(question, 1, placeholders).replace(IMAGE_TOKEN, "").strip()


def stop_strings(conv_mode):
    """Strings that end an answer in this format (LLaVA's KeywordsStoppingCriteria rule)."""
    template = get_template(conv_mode)
    return [template.sep2 if template.style == "two" else template.sep]


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _tokenizer_mentions(tokenizer_dir, text):
    files = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
    return bool(tokenizer_dir) and any(text in _read_text(os.path.join(tokenizer_dir, f)) for f in files)


def guess_conv_mode(config, tokenizer_dir=None):
    """Pick the chat template for a model from its config.json dict.

    - Qwen2 models (model_type / architectures / text_config mention qwen): "qwen_2"
    - Llama-3 (vocab_size >= 128000, or the tokenizer knows <|begin_of_text|>): "llama_3"
    - TG-LLaVA on Vicuna (`llava_llama_text_learnable_query`): "llava_v0", the
      default of the authors' runner (tg_llava/deploy/runner.py) for models
      that are neither qwen2 nor llama3
    - plain LLaVA-1.5 (`llava_llama`, llava-hf `llava`) and anything else:
      "vicuna_v1", what LLaVA's own evaluation scripts pass as --conv-mode
    """
    config = config or {}
    text_config = config.get("text_config") or {}
    model_type = str(config.get("model_type") or "").lower()
    archs = " ".join(str(a) for a in (config.get("architectures") or [])).lower()
    text_type = str(text_config.get("model_type") or "").lower()
    if "qwen" in model_type or "qwen" in archs or "qwen" in text_type:
        return "qwen_2"
    vocab = config.get("vocab_size") or text_config.get("vocab_size") or 0
    if int(vocab) >= 128000 or _tokenizer_mentions(tokenizer_dir, "<|begin_of_text|>"):
        return "llama_3"
    if model_type == "llava_llama_text_learnable_query" or "textlearnablequery" in archs:
        return "llava_v0"
    return "vicuna_v1"

