"""High-level chat: one image (or none) and a question in, an answer's text out.

`prepare(model, image, question)` builds the generation request of one question as the LLaVA
pipeline does around a loaded `tgllava.Model`: the chat template (conversation.build_prompt, the
model's own conv mode by default), the LLM tokens with one image slot, for TG-LLaVA the CLIP text
guide (SPEC section 1) and the CLIP pixels; with image None, the template's text-only form (no
image slot, pixels or text guide: the TG modules are not used).  `chat` runs it until EOS, a stop
string of the template or `max_new_tokens`, the text cut at the stop string and stripped (LLaVA's
rule, generation.StopTracker), and returns an `Answer` (text, ids, per-stage timings);
`stream=True` returns an `AnswerStream` of text pieces that join to exactly that text.
`chat_batch` answers many (image, question) pairs with continuous batching (Model.generate_many),
each answer equal to `chat`'s for that pair alone (greedy).

Tokenizers are read once per model from its folders (model.llm_dir, model.clip_dir) and cached.
Model.prepare, Model.chat and Model.chat_batch call these functions with the same parameters.
"""

import dataclasses
import functools
import time
import weakref

import numpy as np

from . import conversation, tokenize
from . import image as image_mod
from .errors import CheckpointError, ShapeError
from .generation import StopTracker
from .model import check_sampling, resolve_seed
from .streaming import TokenStream
from .conversation import text_guide  # noqa: F401 - chat.text_guide: the CLIP text guide of a question

_TOKENIZERS = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class Answer:
    """The model's answer to one question.

    text: the answer, stop string removed and whitespace stripped;
    token_ids: the generated ids (EOS excluded);
    timings: seconds per stage: preprocess, tokenize, generate, decode, total
    (for a batch, the batch's stage times, shared by its answers);
    finish_reason: "eos", "stop" (a stop string of the template) or "length";
    conv_mode: the chat template used.
    """

    text: str
    token_ids: list
    timings: dict
    finish_reason: str = "eos"
    conv_mode: str = ""

    def __str__(self):
        return self.text


def tokenizers(model):
    """(LLM tokenizer, CLIP tokenizer or None) of a model, read from its folders once and cached."""
    if model not in _TOKENIZERS:
        reading = f"the LLM tokenizer of {model.llm_dir}"
        try:
            llm_tok = tokenize.LlmTokenizer.from_folder(model.llm_dir)
            reading = f"the CLIP tokenizer of {model.clip_dir} (TG-LLaVA needs it for the text guide)"
            clip_tok = tokenize.text_guide_tokenizer(model) if model.has_tg else None
        except CheckpointError as e:
            raise CheckpointError(f"cannot read {reading}: {e}") from None
        _TOKENIZERS[model] = (llm_tok, clip_tok)
    return _TOKENIZERS[model]


def set_tokenizers(model, llm_tokenizer=None, clip_tokenizer=None):
    """Use these tokenizers for `model` instead of the ones in its folders."""
    if llm_tokenizer is None:
        llm_tokenizer = tokenizers(model)[0]
    if clip_tokenizer is None and model.has_tg:
        clip_tokenizer = tokenizers(model)[1]
    _TOKENIZERS[model] = (llm_tokenizer, clip_tokenizer)


def default_conv_mode(model):
    """The chat template a model was trained with (conversation.guess_conv_mode)."""
    return conversation.guess_conv_mode(model.config, model.llm_dir)


def _pixels(model, img):
    """CLIP pixels (3, S, S) of an image (path, bytes, PIL image, uint8 array, or ready pixels)."""
    S = model.image_size
    if isinstance(img, np.ndarray) and img.dtype.kind == "f":
        if img.shape != (3, S, S):
            raise ShapeError(f"preprocessed pixels must have shape (3, {S}, {S}), got {img.shape}")
        return np.ascontiguousarray(img, dtype=np.float32)
    return image_mod.preprocess_for(model, img)


def prepare(model, image, question, conv_mode=None, use_fom=True, use_dp=True, timings=None):
    """The generation request of one question about one picture, as chat builds it (Model.prepare).

    image: a path, bytes, PIL image, uint8 array or ready (3, S, S) float pixels; None asks the
    question alone (the template's text-only form: no image token, no pixels, no text guide).
    Returns the dict generate_batch / generate_many take and generate / logits / generate_stream /
    attention_map take as keywords: input_ids (the chat template's prompt as LLM ids, with one
    _C.IMAGE_TOKEN (-200) where the picture goes), pixels ((3, S, S) float32, the preprocessing the
    config asks for, or None), text_ids (TG-LLaVA's CLIP text guide ids, or None), use_fom, use_dp.
    conv_mode: chat template (default: the model's, see default_conv_mode).  `timings`, a dict, gets
    the seconds spent on "preprocess" and "tokenize" added.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if not question.strip():
        raise ShapeError("question is empty: ask something")
    if image is None and (conversation.IMAGE_TOKEN in question or conversation.IMAGE_PLACEHOLDER in question):
        raise ShapeError(f"the question holds an image marker ('{conversation.IMAGE_TOKEN}' or "
                         f"'{conversation.IMAGE_PLACEHOLDER}') but no image was given")
    conv_mode = conv_mode or default_conv_mode(model)
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    pixels = None if image is None else _pixels(model, image)
    t1 = time.perf_counter()
    llm_tok, clip_tok = tokenizers(model)
    prompt = conversation.build_prompt(question, conv_mode, with_image=image is not None)
    input_ids = tokenize.tokenizer_image_token(prompt, llm_tok)
    slots = input_ids.count(tokenize.IMAGE_TOKEN_INDEX)
    if image is not None and slots != 1:
        raise ShapeError(
            f"the prompt has {slots} image slots for one image: like the reference runner, chat puts "
            f"'<image>\\n' before the question unless it holds '{conversation.IMAGE_PLACEHOLDER}' (each one "
            f"becomes the image), and a literal '<image>' in the question is one more slot; write the "
            f"question without '<image>', or with exactly one '{conversation.IMAGE_PLACEHOLDER}'")
    text_ids = None
    if image is not None and model.has_tg and (use_fom or use_dp):
        text_ids = clip_tok.encode(text_guide(question))
    t2 = time.perf_counter()
    timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0)
    timings["tokenize"] = timings.get("tokenize", 0.0) + (t2 - t1)
    return {"input_ids": input_ids, "pixels": pixels, "text_ids": text_ids, "use_fom": use_fom, "use_dp": use_dp}


def _answers(trackers, token_lists, kw, timings, conv_mode, t_start, t_generate):
    """The Answers of finished generations (their StopTrackers and tokens; `kw`: _settings' keywords), with
    `timings` completed: generating since t_generate, decoding (trackers', answers'), total since t_start."""
    decode_time = sum(tracker.decode_time for tracker in trackers)
    timings["generate"] = time.perf_counter() - t_generate - decode_time
    timings["decode"] = decode_time
    answers = []
    for tracker, tokens in zip(trackers, token_lists):
        t0 = time.perf_counter()
        text = tracker.answer()
        timings["decode"] += time.perf_counter() - t0
        reason = "stop" if tracker.hit_stop else ("length" if len(tokens) >= kw["max_new_tokens"] else "eos")
        answers.append(Answer(text, list(tokens), timings, reason, conv_mode))
    timings["total"] = time.perf_counter() - t_start
    return answers


def _settings(model, conv_mode, max_new_tokens, temperature, top_p, seed):
    """(generate_batch's keywords for chat's settings, checked (check_sampling: a clear error naming the
    argument), the chat template's name, a function making a StopTracker of its stop strings)."""
    max_new_tokens, temperature, top_p, _, _ = check_sampling(max_new_tokens, temperature, top_p, min_new_tokens=1)
    if seed is not None:
        resolve_seed(seed)
    llm_tok = tokenizers(model)[0]
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
              eos_token_id=list(llm_tok.eos_ids) or None)
    conv_mode = conv_mode or default_conv_mode(model)
    return kw, conv_mode, functools.partial(StopTracker, llm_tok, conversation.stop_strings(conv_mode))


def chat(model, image, question, conv_mode=None, max_new_tokens=512, temperature=0.0, top_p=1.0, stream=False,
         use_fom=True, use_dp=True, seed=None):
    """Answer `question` about `image` (a path, bytes, PIL image or uint8 array; None: the question alone,
    in the template's text-only form).

    conv_mode: chat template (default: the model's, see default_conv_mode);
    max_new_tokens: the answer's length limit in tokens (at least 1);
    temperature 0 is greedy decoding, otherwise temperature / top-p sampling
    (`seed`, an integer, makes it repeatable); use_fom / use_dp switch the TG modules off.
    Returns an Answer, or with stream=True an AnswerStream of text pieces.
    """
    t_start = time.perf_counter()
    kw, conv_mode, new_tracker = _settings(model, conv_mode, max_new_tokens, temperature, top_p, seed)
    timings = {}
    req = prepare(model, image, question, conv_mode, use_fom, use_dp, timings)
    tracker = new_tracker()
    if stream:
        return AnswerStream(model, req, kw, tracker, timings, t_start, conv_mode)
    t0 = time.perf_counter()
    tokens = model.generate_batch([req], callback=lambda seq, tok: tracker.push(tok), **kw)[0]
    return _answers([tracker], [tokens], kw, timings, conv_mode, t_start, t0)[0]


class AnswerStream:
    """Iterator over the text pieces of an answer as they are generated: they join to the text of the
    non-streaming answer, and `.answer` holds that Answer once the iteration ended.  Closing it early
    (break) stops the generation; left unread, it gives the model up to the next call on it and then
    raises streaming.StreamCancelled (streaming.TokenStream)."""

    def __init__(self, model, req, kw, tracker, timings, t_start, conv_mode):
        self.answer = None
        self._iter = self._run(model, req, kw, tracker, timings, t_start, conv_mode)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iter)

    def close(self):
        """Stop the generation (what leaving a for loop over the stream early does)."""
        self._iter.close()

    def _run(self, model, req, kw, tracker, timings, t_start, conv_mode):
        tokens = TokenStream(model, lambda cb: model.generate_batch([req], callback=lambda seq, tok: cb(tok), **kw)[0],
                             on_token=tracker.push)  # the tracker sees each token in the worker: stop strings stop it
        t0 = time.perf_counter()
        try:
            for _ in tokens:
                piece = tracker.piece()
                if piece:
                    yield piece
        finally:
            tokens.close()
        self.answer = _answers([tracker], [tokens.tokens], kw, timings, conv_mode, t_start, t0)[0]
        rest = tracker.last_piece(self.answer.text)
        if rest:
            yield rest


def chat_batch(model, pairs, conv_mode=None, max_new_tokens=512, temperature=0.0, top_p=1.0,
               use_fom=True, use_dp=True, seed=None, max_batch=None):
    """Answers for many (image, question) pairs, generated together (continuous batching, at most
    `max_batch` at once: Model.generate_many's default when None); an image may be None.

    Returns a list of Answer in the order of `pairs`, each (greedy) equal to chat(model, image,
    question) run alone, with the timings of the whole batch."""
    t_start = time.perf_counter()
    pairs = list(pairs)
    if not pairs:
        return []
    if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise TypeError("chat_batch takes (image, question) pairs; evaluation items (dicts) go through "
                        "tgllava.eval.run, or tgllava.eval.adapter.ModelAdapter(model).chat_batch")
    kw, conv_mode, new_tracker = _settings(model, conv_mode, max_new_tokens, temperature, top_p, seed)
    timings = {}
    reqs = [prepare(model, img, q, conv_mode, use_fom, use_dp, timings) for img, q in pairs]
    trackers = [new_tracker() for _ in pairs]
    t0 = time.perf_counter()
    outs = dict(model.generate_many(reqs, callback=lambda i, tok: trackers[i].push(tok), max_batch=max_batch, **kw))
    return _answers(trackers, [outs[i] for i in range(len(pairs))], kw, timings, conv_mode, t_start, t0)
