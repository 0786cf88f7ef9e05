"""Tokenizers: the LLM's (tokenizer.json or SentencePiece) and CLIP's BPE, without transformers.

`LlmTokenizer` gives the ids `transformers.AutoTokenizer(...)(text).input_ids` gives for the model
folders LLaVA/TG-LLaVA use:

- tokenizer.json runs in the `tokenizers` library; BOS/EOS are added as `add_bos_token` /
  `add_eos_token` in tokenizer_config.json say (as LlamaTokenizerFast does), else as the file's
  own post-processor adds them (Llama-3 adds <|begin_of_text|>, Qwen2 nothing).
- a slow Qwen2Tokenizer folder (vocab.json + merges.txt, as TG-LLaVA saves Qwen2 checkpoints) is
  rebuilt as transformers 4.37.2 converts it, with its quirk of dropping every merges.txt line
  that starts with "#" (the weights were trained so).
- tokenizer.model runs in `sentencepiece` as the slow `LlamaTokenizer` (LLaVA's use_fast=False)
  runs it: special and added tokens in the text are split out first; `legacy` (default true, as
  in transformers 4.37) decides how the text after them is encoded; BOS is added unless
  `add_bos_token` is false.

`tokenizer_image_token` is LLaVA's rule for prompts containing "<image>": tokenize each chunk, keep
a single leading BOS, and put IMAGE_TOKEN_INDEX (-200) between chunks.  `decode` applies
transformers' clean-up of spaces (" ," -> ",", ...) when tokenizer_config.json's
`clean_up_tokenization_spaces` (or the class default) asks for it, as Llama-3's does.
`StreamDecoder` turns generated ids into text incrementally; its pieces join to exactly the
one-shot decode.  `ClipTokenizer` produces the TG-LLaVA text-guide ids: <|startoftext|> + CLIP BPE
+ <|endoftext|>, cut to 77 positions (so a long question loses its EOS, a reference quirk), from
tokenizer.json, else from vocab.json + merges.txt built as transformers' CLIP converter builds
them (NFC, whitespace collapse, lower case, CLIP's split pattern, byte-level, "</w>" word ends).
"""

import functools
import html
import json
import os
import re

from . import _C
from .errors import CheckpointError, TgError

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = _C.IMAGE_TOKEN  # the id the image slot gets (LLaVA's name for the C core's TG_IMAGE_TOKEN)

# Extra end-of-turn tokens that stop generation when the vocabulary has them.
EXTRA_STOP_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")

_SPIECE_UNDERLINE = "\u2581"


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from None


def _token_text(value):
    """A special token as written in tokenizer_config.json: a string, a dict, or None."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _special(name, *sources):
    """Special token `name` from the first of the dicts `sources` that names one (a string), else None."""
    return next((t for t in (_token_text(src.get(name)) for src in sources) if t), None)


def _added_tokens(config, folder, special_default):
    """{id: (content, special)} from tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    added = {}
    for key, info in (config.get("added_tokens_decoder") or {}).items():
        content = _token_text(info)
        if content is not None:
            special = info.get("special", special_default) if isinstance(info, dict) else special_default
            added[int(key)] = (content, bool(special))
    extra = _read_json(os.path.join(folder, "added_tokens.json")) if folder else None
    for content, idx in (extra or {}).items():
        added.setdefault(int(idx), (content, special_default))
    return added


def _load_tokenizer_json(path):
    """A tokenizer.json run by the `tokenizers` library."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load tokenizer ({e})") from None


def _read_merges(path, skip):
    """The (left, right) pairs of a merges.txt, without blank lines and lines starting with `skip`."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().split("\n")]
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read merges ({e})") from None
    merges = []
    for line in lines:
        if line and not line.startswith(skip):
            pair = tuple(line.split())
            if len(pair) != 2:
                raise CheckpointError(f"{path}: bad merge line {line!r}")
            merges.append(pair)
    return merges


def _special_splitter(tokens):
    """A regex that splits text on any of `tokens` (longest first), keeping them."""
    tokens = sorted({t for t in tokens if t}, key=len, reverse=True)
    if not tokens:
        return None
    return re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")")


# --- the clean-up of spaces in decoded text --------------------------------------

# transformers' `clean_up_tokenization`, applied in this order to the whole text.
_CLEAN_UP_RULES = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def clean_up_tokenization(text):
    """transformers' clean-up of decoded text: drop the space before . ? ! , 'm 's 've 're n't, and around ' ."""
    for old, new in _CLEAN_UP_RULES:
        text = text.replace(old, new)
    return text


def _clean_up_setting(config, kind):
    """Whether decode cleans up spaces, decided as transformers 4.37 does.

    `clean_up_tokenization_spaces` in tokenizer_config.json wins (Meta's
    Llama-3 files say true); without it the Llama and Qwen2 tokenizer
    classes default to false and every other class (e.g. the plain
    PreTrainedTokenizerFast of Llama-3) to true.
    """
    value = config.get("clean_up_tokenization_spaces")
    if value is not None:
        return bool(value)
    cls_name = str(config.get("tokenizer_class") or "")
    return not (kind == "sentencepiece" or cls_name.startswith(("Llama", "CodeLlama", "Qwen2")))


# --- the LLM tokenizer -----------------------------------------------------------

class LlmTokenizer:
    """The language model's tokenizer, loaded from a model or tokenizer folder.

    Use `LlmTokenizer.from_folder(path)`.  `encode` returns the ids
    `tokenizer(text).input_ids` would (BOS included by default when the
    model's tokenizer adds one); `decode` turns ids back into text.
    """

    def __init__(self, backend, kind, config, folder="", generation_config=None, special_tokens_map=None):
        self._backend = backend
        self.kind = kind  # "tokenizers" or "sentencepiece"
        self.folder = folder
        self.config = dict(config or {})
        stm = special_tokens_map or {}
        self._added = _added_tokens(self.config, folder, special_default=False)  # {id: (content, special)}
        self._added_by_text = {content: idx for idx, (content, _) in self._added.items()}

        if kind == "sentencepiece":
            sp = backend
            self.bos_token = _special("bos_token", self.config, stm) or _sp_piece(sp, sp.bos_id())
            self.eos_token = _special("eos_token", self.config, stm) or _sp_piece(sp, sp.eos_id())
            self.unk_token = _special("unk_token", self.config, stm) or _sp_piece(sp, sp.unk_id())
            self.pad_token = _special("pad_token", self.config, stm) or _sp_piece(sp, sp.pad_id())
            self.legacy = bool(self.config.get("legacy", True))
            if self.legacy is False:
                self._sp_nodummy = _load_sp(model_proto=_without_dummy_prefix(sp))
                self._unk_text = self.unk_token or "<unk>"
                self._unk_len = len(self._sp_nodummy.encode(self._unk_text))
            add_bos = bool(self.config.get("add_bos_token", True))
            add_eos = bool(self.config.get("add_eos_token", False))
        else:
            self.bos_token = _special("bos_token", self.config, stm)
            self.eos_token = _special("eos_token", self.config, stm)
            self.unk_token = _special("unk_token", self.config, stm)
            self.pad_token = _special("pad_token", self.config, stm)
            # without add_bos_token / add_eos_token: what the file's post-processor adds
            prefix, suffix = self._probe_post_processor()
            add_bos = bool(self.config.get("add_bos_token", prefix))
            add_eos = bool(self.config.get("add_eos_token", suffix))
            if "add_bos_token" not in self.config and prefix and self.bos_token is None:
                self.bos_token = backend.id_to_token(prefix[-1])
            if "add_eos_token" not in self.config and suffix and self.eos_token is None:
                self.eos_token = backend.id_to_token(suffix[0])

        self.bos_id = self.token_to_id(self.bos_token)
        self.eos_id = self.token_to_id(self.eos_token)
        self.unk_id = self.token_to_id(self.unk_token)
        self.pad_id = self.token_to_id(self.pad_token)
        self.add_bos_token = add_bos and self.bos_id is not None
        self.add_eos_token = add_eos and self.eos_id is not None

        # SentencePiece: special and added tokens written in the text are split
        # out before encoding (the slow tokenizer's "no split" tokens).
        specials = [self.bos_token, self.eos_token, self.unk_token, self.pad_token]
        specials += [content for content, _ in self._added.values()]
        self._splitter = _special_splitter([t for t in specials if self.token_to_id(t) is not None])

        gen_eos = (generation_config or {}).get("eos_token_id")
        stops = [self.eos_id] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])
        stops += [self.token_to_id(t) for t in EXTRA_STOP_TOKENS]
        self.eos_ids = list(dict.fromkeys(int(i) for i in stops if i is not None))

        # "special" ids in transformers' sense (skipped by decode): the named
        # special tokens and additional_special_tokens.
        named = [self.bos_id, self.eos_id, self.unk_id, self.pad_id]
        extra = self.config.get("additional_special_tokens") or stm.get("additional_special_tokens") or []
        named += [self.token_to_id(_token_text(t)) for t in extra]
        self._skip_ids = {i for i in named if i is not None}
        self.clean_up_tokenization_spaces = _clean_up_setting(self.config, kind)

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_folder(cls, folder):
        """Load tokenizer.json (preferred) or tokenizer.model from `folder`."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise CheckpointError(f"{folder}: tokenizer folder does not exist")
        config = _read_json(os.path.join(folder, "tokenizer_config.json")) or {}
        stm = _read_json(os.path.join(folder, "special_tokens_map.json")) or {}
        gen = _read_json(os.path.join(folder, "generation_config.json")) or {}
        tj = os.path.join(folder, "tokenizer.json")
        sm = os.path.join(folder, "tokenizer.model")
        if os.path.isfile(tj):
            return cls(_load_tokenizer_json(tj), "tokenizers", config, folder, gen, stm)
        if os.path.isfile(sm):
            return cls(_load_sp(model_file=sm), "sentencepiece", config, folder, gen, stm)
        if os.path.isfile(os.path.join(folder, "vocab.json")) and os.path.isfile(os.path.join(folder, "merges.txt")):
            return cls(_qwen2_from_vocab_merges(folder, config), "tokenizers", config, folder, gen, stm)
        raise CheckpointError(f"{folder}: no tokenizer.json, tokenizer.model or vocab.json + merges.txt")

    def _probe_post_processor(self):
        """Ids the tokenizer.json post-processor puts before and after the text."""
        plain = self._backend.encode("hello", add_special_tokens=False).ids
        full = self._backend.encode("hello", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        return [], []

    # -- vocabulary -------------------------------------------------------------

    def token_to_id(self, token):
        """Id of a token string, or None when the vocabulary lacks it."""
        if token is None:
            return None
        if token in self._added_by_text:
            return self._added_by_text[token]
        if self.kind == "tokenizers":
            return self._backend.token_to_id(token)
        sp = self._backend
        idx = sp.piece_to_id(token)
        return idx if 0 <= idx < sp.get_piece_size() and sp.id_to_piece(idx) == token else None

    def id_to_token(self, idx):
        if idx in self._added:
            return self._added[idx][0]
        if self.kind == "tokenizers":
            return self._backend.id_to_token(idx)
        return _sp_piece(self._backend, idx)

    @property
    def vocab_size(self):
        if self.kind == "tokenizers":
            return self._backend.get_vocab_size(with_added_tokens=True)
        return max([self._backend.get_piece_size()] + [i + 1 for i in self._added])

    # -- encode / decode --------------------------------------------------------

    def encode(self, text, add_bos=None):
        """Token ids of `text`, with BOS (and EOS) as the tokenizer adds them.

        add_bos=None follows the tokenizer's default; True/False force it.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.kind == "tokenizers":
            ids = list(self._backend.encode(text, add_special_tokens=False).ids)
        else:
            ids = self._sp_encode(text)
        if add_bos is None:
            add_bos = self.add_bos_token
        if add_bos:
            if self.bos_id is None:
                raise TgError("this tokenizer has no BOS token")
            ids.insert(0, self.bos_id)
        if self.add_eos_token:
            ids.append(self.eos_id)
        return ids

    def _segments(self, text):
        """Split text into (piece, is_special) around special/added tokens."""
        if self._splitter is None:
            return [(text, False)] if text else []
        return [(piece, i % 2 == 1) for i, piece in enumerate(self._splitter.split(text)) if piece]

    def _sp_encode(self, text):
        sp = self._backend
        if not text:
            return []
        if self.legacy:
            ids = []
            for piece, is_special in self._segments(text):
                ids += [self.token_to_id(piece)] if is_special else sp.encode(piece)
            return ids
        # legacy=False (transformers LlamaTokenizer): one "▁" before the whole
        # text, and no dummy prefix before text that follows a special token.
        text = _SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " ")
        ids, kinds = [], []
        for piece, is_special in self._segments(text):
            if is_special:
                ids.append(self.token_to_id(piece))
                kinds.append(True)
                continue
            if piece.startswith((_SPIECE_UNDERLINE, " ")):
                new = self._sp_nodummy.encode(self._unk_text + piece)
                new = new[self._unk_len:] if len(new) >= self._unk_len else new
            else:
                new = self._sp_nodummy.encode(piece)
            ids += new
            kinds += [False] * len(new)
        if (len(ids) > 1 and kinds[1] and ids[1] in self._skip_ids
                and sp.id_to_piece(ids[0]) == _SPIECE_UNDERLINE):
            ids = ids[1:]
        return ids

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=None):
        """Text of `ids`; negative ids (image placeholders) are ignored.

        clean_up_tokenization_spaces=None follows the tokenizer's setting
        (`self.clean_up_tokenization_spaces`, from tokenizer_config.json);
        True/False force transformers' clean-up rule on or off.
        """
        text = self._decode_raw(ids, skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def is_byte_token(self, idx):
        """Whether id `idx` is a byte-fallback piece such as <0xE4> (decoded in runs with its neighbours)."""
        idx = int(idx)
        if self.kind == "sentencepiece":
            sp = self._backend
            return idx not in self._added and 0 <= idx < sp.get_piece_size() and sp.is_byte(idx)
        token = self.id_to_token(idx)
        return token is not None and len(token) == 6 and token.startswith("<0x") and token.endswith(">")

    def _decode_raw(self, ids, skip_special_tokens):
        ids = [int(i) for i in ids if int(i) >= 0]
        if self.kind == "tokenizers":
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        sp = self._backend
        n = sp.get_piece_size()
        out, run = [], []
        for i in ids:
            if i < n and i not in self._added and i not in self._skip_ids:
                run.append(i)  # ordinary piece: decoded by sentencepiece in runs
                continue
            token = self.id_to_token(i)
            if skip_special_tokens and (i in self._skip_ids or token is None):
                continue
            out.append(sp.decode(run))
            run = []
            out.append(token or "")
        out.append(sp.decode(run))
        return "".join(out)

    def __repr__(self):
        return (f"LlmTokenizer({self.kind}, vocab={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_ids}, add_bos={self.add_bos_token})")


_QWEN2_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                      r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _read_qwen2_merges(path):
    """The merges of a Qwen2 merges.txt, read the way transformers 4.37.2 reads them.

    Qwen2Tokenizer drops every line that starts with "#", not only the
    "#version" header: the 96 real merges beginning with "#" ("# #", "## #",
    "# include", ...) are lost, so "###" becomes three "#" tokens.  The
    TG-LLaVA Qwen2 weights were trained on ids made this way, so the quirk is
    reproduced on purpose.
    """
    return _read_merges(path, skip="#")


def _qwen2_from_vocab_merges(folder, config):
    """A slow Qwen2Tokenizer folder (vocab.json + merges.txt) as a `tokenizers` object.

    Built the way transformers converts Qwen2Tokenizer to its fast twin: NFC,
    Qwen2's split pattern, byte-level BPE over the merges, added tokens from
    tokenizer_config.json's added_tokens_decoder (or added_tokens.json).
    TG-LLaVA saves its Qwen2 checkpoints with the slow tokenizer, so their
    folders have no tokenizer.json.
    """
    cls_name = str(config.get("tokenizer_class") or "")
    if not cls_name.startswith("Qwen2Tokenizer"):
        raise CheckpointError(
            f"{folder}: vocab.json + merges.txt is only supported for Qwen2Tokenizer "
            f"(tokenizer_class {cls_name or 'missing'!r}); provide tokenizer.json"
        )
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors)

    vocab_path = os.path.join(folder, "vocab.json")
    vocab = dict(_read_json(vocab_path) or {})
    merges = _read_qwen2_merges(os.path.join(folder, "merges.txt"))
    added = _added_tokens(config, folder, special_default=True)
    for idx, (content, _) in added.items():
        vocab.setdefault(content, idx)
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    except Exception as e:
        raise CheckpointError(f"{vocab_path}: cannot build the BPE model ({e})") from None
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for _, (content, special) in sorted(added.items()):
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok


def _load_sp(model_file=None, model_proto=None):
    """A SentencePieceProcessor of a tokenizer.model file or of a serialized model."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=model_file, model_proto=model_proto)
    except Exception as e:
        where = f"{model_file}: " if model_file else ""
        raise CheckpointError(f"{where}cannot load SentencePiece model ({e})") from None


def _without_dummy_prefix(sp):
    """`sp`'s serialized model with normalizer_spec.add_dummy_prefix = false (transformers' legacy=False).

    sentencepiece's own normalizer writes the changed NormalizerSpec (as a
    ModelProto holding only that field); protobuf merges a message parsed
    after another field by field, so appending it to the model overrides
    add_dummy_prefix and keeps everything else.
    """
    import sentencepiece as spm

    model = sp.serialized_model_proto()
    return model + spm.SentencePieceNormalizer(model_proto=model, add_dummy_prefix=False).serialized_model_proto()


def _sp_piece(sp, idx):
    return sp.id_to_piece(idx) if 0 <= idx < sp.get_piece_size() else None


def tokenizer_image_token(prompt, tok, image_token_index=IMAGE_TOKEN_INDEX):
    """Token ids of a prompt with `image_token_index` where "<image>" stands.

    LLaVA's rule: split on "<image>", tokenize every chunk with the
    tokenizer's default special tokens; if the first chunk starts with BOS,
    keep that one BOS and drop the first token of every later chunk (their
    BOS); put one `image_token_index` between consecutive chunks.
    """
    chunks = [tok.encode(chunk) for chunk in prompt.split(IMAGE_TOKEN)]
    bos = getattr(tok, "bos_id", None)
    offset = 1 if chunks[0] and bos is not None and chunks[0][0] == bos else 0
    ids = list(chunks[0][:offset])
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    return ids


class StreamDecoder:
    """Incremental detokenizer for streaming generation.

    `push(token_id)` returns the text that token makes final (often "");
    `flush()` returns the rest at the end.  The pieces always join to
    exactly `tok.decode(all ids)`, including ids with broken UTF-8:

    - A token boundary is a *cut* once its text can no longer change: the
      last id is not a byte-fallback piece (<0xNN>, decoded in runs: a run
      that is not valid UTF-8 becomes one U+FFFD per byte, so a whole run
      stays open until a normal token ends it), its text alone is not empty
      (skipped special tokens are transparent: byte runs go on across them)
      and the text does not end in U+FFFD (byte-level BPE: an incomplete
      character may still be completed).  Text up to the last cut is final.
    - New text is decoded from an earlier cut (`_anchor`) whose ids give
      non-empty text, and the anchor's own text is cut off: this keeps the
      leading-space rule of SentencePiece / Llama decoders (only the first
      space of the whole text is dropped) out of the new text, and each
      push costs a few ids, not the whole answer.
    - With transformers' clean-up of spaces on (`tok.clean_up_tokenization_spaces`),
      the rule runs on the raw text in pieces split where it cannot match
      across the split (no space among the last 3 characters before it),
      so cleaning the pieces equals cleaning the whole; the unsplittable tail
      waits.
    """

    def __init__(self, tok, skip_special_tokens=True):
        self.tok = tok
        self.skip_special_tokens = skip_special_tokens
        self.ids = []
        self.text = ""                # everything returned so far
        self._clean = bool(getattr(tok, "clean_up_tokenization_spaces", False))
        self._is_byte = getattr(tok, "is_byte_token", None)
        self._cut = 0                 # text of ids[:_cut] is final
        self._anchor = 0              # a cut <= _cut; ids[_anchor:_cut] have non-empty text (or _anchor == 0)
        self._anchor_text = ""        # text of ids[_anchor:_cut] decoded on their own
        self._raw = ""                # raw (not cleaned-up) text of ids[:_cut]
        self._done = 0                # self._raw[:_done] has been returned (cleaned)

    def _decode(self, ids):
        if self._clean:
            return self.tok.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                   clean_up_tokenization_spaces=False)
        return self.tok.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _new_text(self):
        """Raw text of ids[_cut:] in the context of the ids before them (None if the anchor rule fails)."""
        window = self._decode(self.ids[self._anchor:])
        if not window.startswith(self._anchor_text):
            return None, window
        return window[len(self._anchor_text):], window

    def push(self, token_id):
        token_id = int(token_id)
        self.ids.append(token_id)
        if self._is_byte is not None and self._is_byte(token_id):
            return ""
        if not self._decode([token_id]):
            return ""
        new, window = self._new_text()
        if new is None or window.endswith("\ufffd"):
            return ""
        own = self._decode(self.ids[self._cut:])
        if own:
            self._anchor, self._anchor_text = self._cut, own
        else:
            self._anchor_text = window
        self._cut = len(self.ids)
        self._raw += new
        return self._emit(final=False)

    def flush(self):
        """The text still held back; afterwards self.text == tok.decode(self.ids)."""
        if self._cut < len(self.ids):
            new, window = self._new_text()
            if new is None:  # cannot happen with the supported decoders; fall back to the whole text
                self._anchor, self._anchor_text = 0, ""
                new, window = self._new_text()
                new = new[len(self._raw):]
            self._raw += new
            self._cut = len(self.ids)
            self._anchor, self._anchor_text = self._cut, ""
        return self._emit(final=True)

    def _emit(self, final):
        raw = self._raw
        stop = len(raw)
        if self._clean and not final:
            # the last split point at or after _done with no space among the 3 characters before it
            while stop > self._done and " " in raw[max(0, stop - 3):stop]:
                stop -= 1
        piece = raw[self._done:stop]
        if self._clean:
            piece = clean_up_tokenization(piece)
        self._done = stop
        self.text += piece
        return piece


# --- CLIP ---------------------------------------------------------------------

CLIP_MAX_LENGTH = 77
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@functools.lru_cache(maxsize=1)
def bytes_to_unicode():
    """GPT-2/CLIP byte -> printable character table, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]  # shifted past 255, in byte order
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def clip_pipeline():
    """CLIP's (normalizer, pre-tokenizer) as transformers' CLIP converter builds them.

    NFC, whitespace runs -> " ", lower case; then CLIP's split (contractions,
    letter runs, single digits, other-symbol runs) and the byte-level alphabet.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                       normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return normalizer, pre_tokenizer


def _clip_from_vocab_merges(folder, names):
    """vocab.json + merges.txt as the `tokenizers` object transformers (4.37) converts CLIPTokenizer to."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab_path = os.path.join(folder, "vocab.json")
    merges_path = os.path.join(folder, "merges.txt")
    vocab = _read_json(vocab_path)
    if vocab is None or not os.path.isfile(merges_path):
        raise CheckpointError(f"{folder}: no CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    merges = _read_merges(merges_path, skip="#version")
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                   end_of_word_suffix="</w>", fuse_unk=False, unk_token=names["unk_token"]))
    except Exception as e:
        raise CheckpointError(f"{vocab_path}: cannot build the BPE model ({e})") from None
    tok.normalizer, tok.pre_tokenizer = clip_pipeline()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(names[k], special=True, normalized=True) for k in ("bos_token", "eos_token")
                            if names[k] in vocab])
    return tok


class ClipTokenizer:
    """CLIP BPE tokenizer for the TG-LLaVA text tower, run by the `tokenizers` library.

    encode(text) = [BOS] + BPE ids + [EOS], then cut to `max_length` (77).
    """

    def __init__(self, backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token=None,
                 max_length=CLIP_MAX_LENGTH, html_unescape=False):
        self._backend = backend
        self.max_length = max_length
        self.html_unescape = html_unescape
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = self._lookup(bos_token, "BOS")
        self.eos_id = self._lookup(eos_token, "EOS")
        self.pad_id = self._lookup(pad_token, "pad") if pad_token else self.eos_id

    def _lookup(self, token, what):
        idx = self._backend.token_to_id(token)
        if idx is None:
            raise CheckpointError(f"CLIP vocabulary has no {what} token {token!r}")
        return idx

    @classmethod
    def from_folder(cls, folder, max_length=CLIP_MAX_LENGTH, html_unescape=False):
        """Load tokenizer.json, else vocab.json + merges.txt (built as transformers' fast CLIP tokenizer is)."""
        folder = os.fspath(folder)
        config = _read_json(os.path.join(folder, "tokenizer_config.json")) or {}
        stm = _read_json(os.path.join(folder, "special_tokens_map.json")) or {}
        names = {key: _special(key, config, stm) or default
                 for key, default in (("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                                      ("unk_token", "<|endoftext|>"), ("pad_token", None))}
        tj = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(tj):
            backend = _load_tokenizer_json(tj)
        else:
            backend = _clip_from_vocab_merges(folder, names)
        del names["unk_token"]
        return cls(backend, max_length=max_length, html_unescape=html_unescape, **names)

    def tokenize(self, text):
        """BPE token strings of `text` (no BOS/EOS)."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    def encode(self, text):
        """[BOS] + ids + [EOS], cut to max_length (a cut drops the EOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.html_unescape:  # OpenAI CLIP's basic_clean, which transformers' tokenizers do not do
            text = html.unescape(html.unescape(text)).strip()
        ids = [self.bos_id] + self._backend.encode(text, add_special_tokens=False).ids + [self.eos_id]
        return ids[: self.max_length]

    def encode_batch(self, texts):
        """encode() of each text; a list of lists (padding is the caller's choice)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        """Approximate text of ids (BOS/EOS dropped, word ends become spaces)."""
        text = self._backend.decode([int(i) for i in ids], skip_special_tokens=True)
        return text.replace("</w>", " ").strip()


def text_guide_tokenizer(model):
    """The tokenizer of a TG-LLaVA model's text guide, from its text tower's folder (model.clip_dir):
    ClipTokenizer, or siglip.SiglipTokenizer for a SigLIP text tower."""
    from . import siglip

    if siglip.family(model, "text") == "siglip":
        return siglip.SiglipTokenizer.from_folder(model.clip_dir)
    return ClipTokenizer.from_folder(model.clip_dir)
