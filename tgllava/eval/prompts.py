"""Prompts per dataset kind and the two prompt styles.

The *user text* of a row follows what VLMEvalKit feeds its LLaVA wrapper:

* MCQ - `LLaVA.build_prompt` (vlmeval/vlm/llava/llava.py, used because
  LLaVA's use_custom_prompt is true for MCQ sets): the hint and a newline
  if there is one, the question, one ``"\\nA. text"`` line per option
  present, then ``"\\nAnswer with the option's letter from the given choices
  directly."`` - or ``"\\nAnswer the question directly."`` when the row has no
  options; the Chinese forms when the text so far contains a CJK character
  (VLMEvalKit's cn_string).
* Y/N - the dataset's own prompt, which is the bare question
  (ImageYORNDataset; AMBER adds ``"\\nPlease answer yes or no."``).
* VQA - ImageVQADataset sets (TextVQA, GQA, DocVQA, InfoVQA, ChartQA,
  OCRVQA) add ``"\\nAnswer the question using a single word or phrase."``;
  OCRBench, MathVista, LLaVABench, MMVet and unknown sets use the bare
  question (ImageBaseDataset.build_prompt).

Two styles wrap it into the LLM prompt:

* ``llava``: the checkpoint's chat template via
  `tgllava.conversation.build_prompt(text, conv_mode, with_image=True)`,
  which puts ``"<image>\\n"`` before the text in the user turn.
* ``vlmevalkit``: `LLaVA.generate_inner` - the Vicuna system sentence,
  ``"USER: "``, ``" <image> "`` per picture (concat_tilist), the text and
  ``" ASSISTANT: "``.

Which rule a dataset gets is its family's `prompt` in benchmarks.py.  The
TG-LLaVA text guide is the user text with ``<image>`` removed and
stripped, as the authors' runner builds it (SPEC 1).
"""

import re

from .errors import DatasetError
from .extract import row_choices

PROMPT_STYLES = ("llava", "vlmevalkit")

# The system sentence of VLMEvalKit's LLaVA wrapper (Vicuna v1's); it ends in a space.
VLMEVALKIT_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions. "
)

MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
MCQ_SUFFIX_CN = "\n请直接回答选项字母。"
OPEN_SUFFIX = "\nAnswer the question directly."
OPEN_SUFFIX_CN = "\n请直接回答问题。"
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
YES_NO_SUFFIX = "\nPlease answer yes or no."

_CJK = re.compile("[\u4e00-\u9fff]")


def has_cjk(s):
    """VLMEvalKit's cn_string: any character in U+4E00..U+9FFF."""
    return bool(_CJK.search(s))


def _text(v):
    return "" if v is None else str(v)


def mcq_text(row):
    """User text of an MCQ row, as VLMEvalKit's LLaVA.build_prompt builds it."""
    question = _text(row.get("question"))
    hint = row.get("hint")
    if hint is not None:
        question = f"{hint}\n{question}"
    letters = list(row_choices(row))
    question += "".join(f"\n{k}. {row[k]}" for k in letters)
    if letters:
        question += MCQ_SUFFIX_CN if has_cjk(question) else MCQ_SUFFIX
    else:
        question += OPEN_SUFFIX_CN if has_cjk(question) else OPEN_SUFFIX
    return question


def bare_question(row):
    """The question as it is (ImageBaseDataset.build_prompt, ImageYORNDataset)."""
    return _text(row.get("question"))


def short_answer_text(row):
    """ImageVQADataset's prompt: the question and the short-answer instruction."""
    return _text(row.get("question")) + SHORT_ANSWER_SUFFIX


def yes_no_text(row):
    """AMBER's prompt: the question and the yes-or-no instruction."""
    return _text(row.get("question")) + YES_NO_SUFFIX


def user_text(dataset, row):
    """The instruction text for one row of a dataset (no image marker): its family's prompt rule."""
    return dataset.benchmark.prompt(row)


def text_guide(text):
    """The TG-LLaVA text guide: the user text without <image>, stripped."""
    return text.replace("<image>", "").strip()


def wrap_vlmevalkit(text, n_images=1):
    """VLMEvalKit LLaVA.generate_inner: system + USER: + ' <image> '*n + text + ' ASSISTANT: '."""
    return VLMEVALKIT_SYSTEM + "USER: " + " <image> " * n_images + text + " ASSISTANT: "


def wrap_llava(text, conv_mode, n_images=1):
    """The checkpoint's chat template (tgllava.conversation.build_prompt).

    LLaVA's evaluation rule (model_vqa_loader.py): one ``<image>\\n`` per
    picture goes before the text, whatever the text holds
    (``n_images=..., placeholders=False``), so the prompt has one marker
    per picture plus any the dataset text itself contains.
    """
    from tgllava.conversation import build_prompt

    return build_prompt(text, conv_mode, with_image=True, n_images=n_images, placeholders=False)


def build_item_prompt(dataset, row, style, conv_mode=None, n_images=1):
    """(LLM prompt, text guide) for one row in a prompt style."""
    text = user_text(dataset, row)
    if style == "vlmevalkit":
        prompt = wrap_vlmevalkit(text, n_images)
    elif style == "llava":
        prompt = wrap_llava(text, conv_mode, n_images)
    else:
        raise DatasetError(f"unknown prompt style {style!r}; expected one of {', '.join(PROMPT_STYLES)}")
    return prompt, text_guide(text)


def default_conv_mode(model):
    """The conversation template for style 'llava' when none is given.

    `conv_mode` in the model's config wins; otherwise
    tgllava.conversation.guess_conv_mode picks it from the config (the
    authors' runner's choice: llava_v0 for TG-LLaVA on Vicuna, qwen_2,
    llama_3, vicuna_v1 for plain LLaVA-1.5).
    """
    from tgllava.conversation import guess_conv_mode

    config = getattr(model, "config", None)
    config = config if isinstance(config, dict) else {}
    return config.get("conv_mode") or guess_conv_mode(config, getattr(model, "llm_dir", None))
