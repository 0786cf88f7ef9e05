"""SigLIP towers (google/siglip-so400m-patch14-384 and kin): configs, tensor names, tokenizer, image rules.

The engine has two tower families, CLIP and SigLIP (tg_config's v_family / t_family; the C towers are
csrc/model/clip.c and csrc/model/siglip.c).  A tower folder's config.json names its family by
`model_type`: "siglip" (SiglipModel: vision + text), "siglip_vision_model" or "siglip_text_model"
(or Siglip* architectures); each tower config read here keeps its family in its own `model_type`, so a
mixed model (a SigLIP vision tower with a CLIP text guide, or the reverse) is told apart per tower.  This
module holds everything SigLIP-specific on the Python side:

- configs read as transformers does (SiglipVisionConfig / SiglipTextConfig class defaults for the keys a
  file leaves out) and turned into tg_config sizes, every value checked; `tower_configs`,
  `tower_vision_sizes` and `tower_text_sizes` choose between CLIP (configs.py) and SigLIP by family;
- tensor names: the CLIP layouts (tensor_names.clip_tower_names) with SigLIP's own ends (the text `head.*`,
  also in the unprefixed single-tower layout transformers 5 saves);
- the text guide: `SiglipTokenizer` reproduces transformers' SiglipTokenizer (spiece.model) as the
  model was trained, padded to max_length (64); the pooled output is the head's at the last position;
- images: SigLIP normalises with mean = std = 0.5 (so LLaVA's "pad" mode pads with int(255 * 0.5) = 127)
  and its processor resizes straight to the square side without a centre crop (the non-pad mode is
  "resize").
"""
import os
import re
import string

from . import configs
from .configs import config_act, config_float, config_int
from .errors import CheckpointError
from .tensor_names import clip_tower_names

SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model", "siglip_text_model")
TOWER_FAMILIES = ("clip", "siglip")  # tg_config v_family / t_family codes 0, 1
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
MAX_LENGTH = 64  # SiglipTokenizer's model_max_length: the text is padded to it as the model was trained

# transformers' SiglipVisionConfig / SiglipTextConfig class defaults (the same in 4.37 and 5.x)
VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
TEXT_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
    "projection_size": None,
}
# tg_act codes of the activations a tower MLP may use
TOWER_ACTS = {"gelu": 1, "quick_gelu": 2, "gelu_pytorch_tanh": 4}


# ---- families ---------------------------------------------------------------------

def is_siglip_config(config):
    """True when a tower folder's config.json is a SigLIP one (model_type or Siglip* architectures)."""
    if not isinstance(config, dict):
        return False
    archs = config.get("architectures") or []
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    return config.get("model_type") in SIGLIP_MODEL_TYPES or any(a.startswith("Siglip") for a in archs)


def is_siglip(tower_config):
    """True when one tower's config (a vision_config / text_config) is SigLIP's."""
    return isinstance(tower_config, dict) and str(tower_config.get("model_type") or "").startswith("siglip")


def family(model, part):
    """"clip" or "siglip": the family of a loaded model's "vision" or "text" tower (an object standing in for a
    Model without tower sizes counts as CLIP, as everything did before SigLIP)."""
    sizes = getattr(model, "sizes", None) or {}
    return TOWER_FAMILIES[sizes.get("v_family" if part == "vision" else "t_family") or 0]


# ---- configs ------------------------------------------------------------------------

# each tower config: (its class defaults, the model_type it gets, the architecture of a lone tower)
_PARTS = {"vision_config": (VISION_DEFAULTS, "siglip_vision_model", "SiglipVision"),
          "text_config": (TEXT_DEFAULTS, "siglip_text_model", "SiglipText")}


def _complete(out, key, raw):
    """Set out[key] to `raw` completed with SigLIP's defaults, out["defaulted"][key] to the keys filled."""
    defaults, model_type, _ = _PARTS[key]
    tower = dict(raw)
    filled = sorted(k for k, v in defaults.items() if tower.get(k) is None and v is not None)
    tower.update((k, defaults[k]) for k in filled)
    tower["model_type"] = model_type
    out[key], out["defaulted"][key] = tower, filled


def siglip_configs(config, path="config.json"):
    """Read a SigLIP tower config as transformers does: the same dict as configs.clip_configs (vision_config,
    text_config, defaulted, legacy), each tower complete with SigLIP's class defaults and its model_type
    set ("siglip_vision_model" / "siglip_text_model")."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a SigLIP config must be a JSON object")
    model_type = config.get("model_type")
    archs = [str(a) for a in (config.get("architectures") or []) if isinstance(a, str)]
    out = {"vision_config": None, "text_config": None, "defaulted": {}, "legacy": []}
    if model_type == "siglip" or any(k in config for k in _PARTS):
        for key in _PARTS:
            raw = config.get(key)
            if raw is not None and not isinstance(raw, dict):
                raise CheckpointError(f"{path}: {key} must be a JSON object, got {raw!r}")
            _complete(out, key, raw or {})
        return out
    for key, (_, kind, arch) in _PARTS.items():  # a lone tower
        if model_type == kind or any(a.startswith(arch) for a in archs):
            _complete(out, key, config)
            return out
    raise CheckpointError(f"{path}: not a SigLIP config (model_type {model_type!r}; expected "
                          f"{', '.join(SIGLIP_MODEL_TYPES)})")


def tower_configs(config, path="config.json"):
    """A tower folder's config of either family (siglip_configs or configs.clip_configs).  In a combined dict
    of two towers, each tower config whose model_type is SigLIP's is completed with SigLIP's defaults."""
    if is_siglip_config(config):
        return siglip_configs(config, path)
    out = configs.clip_configs(config, path)
    for key in _PARTS:
        if is_siglip(config.get(key)):
            _complete(out, key, config[key])
    return out


def text_sizes(tc, path, prefix="text_config."):
    """The text-tower part of tg_config from a complete SigLIP text config, every value checked.

    The pooled output (TG-FOM's input) is head(final_layer_norm(h))[:, -1], of projection_size features;
    TG-LLaVA's modules read text_hidden features from both outputs, so projection_size must be hidden_size
    (as in every released SigLIP)."""
    hidden, heads = configs.tower_width(tc, path, prefix)
    projection = config_int(tc, "projection_size", path, default=hidden, prefix=prefix)
    if projection != hidden:
        raise CheckpointError(f"{path}: {prefix}projection_size {projection} differs from {prefix}hidden_size "
                              f"{hidden}: the TG modules take the pooled and per-token text features at one width")
    return {
        "t_family": 1, "t_hidden": hidden, "t_heads": heads,
        "t_layers": config_int(tc, "num_hidden_layers", path, prefix=prefix),
        "t_ffn": config_int(tc, "intermediate_size", path, prefix=prefix),
        "t_vocab": config_int(tc, "vocab_size", path, prefix=prefix),
        "t_positions": config_int(tc, "max_position_embeddings", path, prefix=prefix),
        "t_act": TOWER_ACTS[config_act(tc, "hidden_act", path, TOWER_ACTS, "gelu_pytorch_tanh", prefix=prefix)],
        "t_eps": config_float(tc, "layer_norm_eps", path, 1e-6, prefix=prefix, below=1.0),
    }


def tower_vision_sizes(vc, path, select_layer=-2, **kw):
    """configs.vision_sizes with the tower family's activations, defaults and patch rule, and v_family."""
    if is_siglip(vc):  # the image side need not be a multiple of the patch (384 / 14: the last 6 pixels unused)
        return dict(configs.vision_sizes(vc, path, select_layer, acts=TOWER_ACTS, default_act="gelu_pytorch_tanh",
                                         default_eps=1e-6, whole_patches=False, **kw), v_family=1)
    return dict(configs.vision_sizes(vc, path, select_layer, **kw), v_family=0)


def tower_text_sizes(tc, path, **kw):
    """text_sizes of the tower's family (SigLIP here, CLIP: configs.text_sizes), with t_family."""
    if is_siglip(tc):
        return text_sizes(tc, path, **kw)
    return dict(configs.text_sizes(tc, path, **kw), t_family=0)


# ---- tensor names ---------------------------------------------------------------------

LAYOUT_NOTES = {
    "SiglipModel": "vision_model.* + text_model.*",
    "SiglipVisionModel": "vision_model.* (transformers 4)",
    "SiglipTextModel": "text_model.* (transformers 4)",
    "SiglipVisionModel, unprefixed": "embeddings.*, encoder.layers.*, post_layernorm.*, head.* (transformers 5)",
    "SiglipTextModel, unprefixed": "embeddings.*, encoder.layers.*, final_layer_norm.*, head.* (transformers 5)",
}


def tower_names(names, where="SigLIP folder"):
    """tensor_names.clip_tower_names for a SigLIP folder: the same layouts, labelled Siglip*, and the unprefixed
    `head.*` tensors (the text head; the vision attention-pooling head, unused) mapped too."""
    names = list(names)
    label, mapping = clip_tower_names(names, where)
    if "unprefixed" in label:
        prefix = "text_model." if "embeddings.token_embedding.weight" in names else "vision_model."
        mapping.update({prefix + n: n for n in names if n.startswith("head.")})
    return label.replace("CLIP", "Siglip"), mapping


# ---- tokenizer -----------------------------------------------------------------------------

_SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class SiglipTokenizer:
    """The SigLIP text guide: transformers' SiglipTokenizer(text, padding="max_length", truncation=True).

    As transformers runs it: "\u2581" is put before the text (and a "\u2581" in it becomes a space); the
    special tokens written in the text (</s>, <unk>, the pad token, additional_special_tokens) are split
    out and kept as themselves; every other piece is canonicalised (lower case unless do_lower_case is
    false, ASCII punctuation removed, white space collapsed and stripped) and encoded by the SentencePiece
    model after the unknown token's text, whose pieces are then dropped; a leading "\u2581" piece before a
    special token is dropped.  The ids are cut to max_length - 1, </s> is added unless the text ended
    with it, and the pad token (</s>) fills up to max_length.  (The special tokens' lstrip/rstrip settings
    never matter: canonicalisation strips the pieces beside them anyway.)
    """

    def __init__(self, sp, max_length=MAX_LENGTH, do_lower_case=True, eos_token="</s>", unk_token="<unk>",
                 pad_token="</s>", additional_special_tokens=()):
        self._sp = sp
        self.max_length = int(max_length)
        if self.max_length < 1:
            raise CheckpointError(f"SigLIP tokenizer max_length must be positive, got {max_length!r}")
        self.do_lower_case = bool(do_lower_case)
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        specials = {eos_token, unk_token, pad_token, *additional_special_tokens}
        self._special_ids = {}
        for token in specials:
            idx = sp.piece_to_id(token)
            if token != unk_token and idx == sp.unk_id():
                raise CheckpointError(f"SigLIP tokenizer: the special token {token!r} is not in spiece.model")
            self._special_ids[token] = idx
        self.eos_id, self.pad_id = self._special_ids[eos_token], self._special_ids[pad_token]
        self._splitter = re.compile("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
                                    + ")")
        self._unk_len = len(sp.encode(unk_token))

    @classmethod
    def from_folder(cls, folder, max_length=None):
        """Read spiece.model and tokenizer_config.json (do_lower_case, model_max_length, special tokens) of a
        SigLIP folder; max_length defaults to model_max_length (64)."""
        from .tokenize import _load_sp, _read_json, _token_text

        folder = os.fspath(folder)
        check_tokenizer(folder)
        config = _read_json(os.path.join(folder, "tokenizer_config.json")) or {}
        if not isinstance(config, dict):
            raise CheckpointError(f"{folder}/tokenizer_config.json: not a JSON object")
        names = {key: _token_text(config.get(key)) or default
                 for key, default in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "</s>"))}
        extra = [_token_text(t) for t in config.get("additional_special_tokens") or () if _token_text(t)]
        length = max_length or config.get("model_max_length") or MAX_LENGTH
        if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 1 << 20:
            length = MAX_LENGTH  # transformers' "very large" placeholder or a bad value: the SigLIP default
        return cls(_load_sp(model_file=os.path.join(folder, "spiece.model")), max_length=length,
                   do_lower_case=config.get("do_lower_case", True), additional_special_tokens=extra, **names)

    @property
    def vocab_size(self):
        return self._sp.get_piece_size()

    def _canonical(self, text):
        if self.do_lower_case:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def tokenize(self, text):
        """The token strings of `text` (no </s>, no padding)."""
        return [self._sp.id_to_piece(i) for i in self._ids(text)]

    def _ids(self, text):
        text = _SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " ")
        ids, special = [], []
        for i, piece in enumerate(self._splitter.split(text)):
            if i % 2:
                ids.append(self._special_ids[piece])
                special.append(True)
            elif piece:
                new = self._sp.encode(self.unk_token + self._canonical(piece))
                new = new[self._unk_len:] if len(new) >= self._unk_len else new
                ids += new
                special += [False] * len(new)
        if len(ids) > 1 and special[1] and self._sp.id_to_piece(ids[0]) == _SPIECE_UNDERLINE:
            ids = ids[1:]
        return ids

    def encode(self, text):
        """max_length ids: the text's, cut to max_length - 1, then </s> (unless there already), then padding."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._ids(text)[: self.max_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        """The text of ids, without </s> and padding."""
        skip = {self.eos_id, self.pad_id}
        return self._sp.decode([int(i) for i in ids if int(i) not in skip])


def check_tokenizer(folder, why=""):
    """CheckpointError when a SigLIP text tower's folder has no spiece.model."""
    if not os.path.isfile(os.path.join(folder, "spiece.model")):
        raise CheckpointError(f"{folder}: no SigLIP tokenizer file (spiece.model){why}")


# ---- images ------------------------------------------------------------------------------

def image_rules(mode):
    """(mode, mean, std) of image.preprocess for a SigLIP vision tower given the config's mode: SigLIP's
    processor resizes straight to the side (no centre crop), so the non-pad mode "crop" is "resize"."""
    return ("resize" if mode == "crop" else mode), SIGLIP_MEAN, SIGLIP_STD
