"""Checkpoint configs: what a config.json means, read as transformers reads it, every value checked.

- LLM configs with the official LLaVA / TG-LLaVA keys: `llm_sizes` gives the LLM part of the C
  core's size dict; the rotary base is read from both `rope_theta` and transformers 5's
  `rope_parameters` (disagreeing values and any rotary scaling are refused).
- CLIP tower configs (`clip_configs`): a CLIPModel, CLIPVisionModel or CLIPTextModel config, read
  as transformers reads it: the legacy `text_config_dict` / `vision_config_dict` of
  openai/clip-vit-large-patch14-336 override `text_config` / `vision_config` after being completed
  with the config class defaults, which also fill what a compact re-saved config leaves out.
  `vision_sizes` / `text_sizes` give the towers' parts of the size dict.
- llava-hf configs (`LlavaForConditionalGeneration`: the LLM under `text_config`, the tower under
  `vision_config`) become an official-layout config (`llava_hf_config`).

Every size is an integer in range, every epsilon and rotary base a finite positive number, every
activation one the engine implements.  A bad value is a CheckpointError naming the file and key.
"""

import math

from .errors import CheckpointError
from .tensor_names import has_official_keys


# ---- transformers' config class defaults ---------------------------------------
# For keys a config leaves out (transformers >= 4.31 values; CLIPTextConfig's
# bos/eos changed from 0/2 to 49406/49407 in 4.31).
_LLAMA_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
_QWEN2_DEFAULTS = dict(_LLAMA_DEFAULTS, vocab_size=151936, intermediate_size=22016,
                       max_position_embeddings=32768)
CLIP_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3,
    "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
CLIP_TEXT_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
}
# LlavaConfig's vision tower when the config has no vision_config at all (CLIP-L/14-336).
_LLAVA_DEFAULT_VISION = {
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
    "patch_size": 14, "image_size": 336, "num_hidden_layers": 24, "num_attention_heads": 16,
    "projection_dim": 768,
}

# activations the C core implements: tg_config act codes
CLIP_ACTS = {"gelu": 1, "quick_gelu": 2}
LLM_ACTS = ("silu", "swish")
INT_MAX = (1 << 31) - 1  # tg_config fields are C ints

_REQUIRED = object()


# ---- config values ---------------------------------------------------------------

def config_int(cfg, key, path, default=_REQUIRED, minimum=1, prefix=""):
    """cfg[key] as an int in [minimum, 2**31 - 1]; a missing or null key gives `default`.

    A bool, a list, a string, a non-integral or non-finite number raises
    CheckpointError naming `path` and `prefix + key`; so does a missing key
    without a default.
    """
    value = cfg.get(key)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path}: {prefix}{key} is missing (needed to build the model)")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{path}: {prefix}{key} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise CheckpointError(f"{path}: {prefix}{key} must be an integer, got {value!r}")
        value = int(value)
    if not minimum <= value <= INT_MAX:
        raise CheckpointError(f"{path}: {prefix}{key} {value} is out of range ({minimum} to {INT_MAX})")
    return value


def _positive_float(value, path, name, below=None):
    """value as a finite float > 0 (and < `below` when given); else a CheckpointError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{path}: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0 or (below is not None and value >= below):
        limit = f" and below {below:g}" if below is not None else ""
        raise CheckpointError(f"{path}: {name} {value!r} is invalid (must be a finite number above 0{limit})")
    return value


def config_float(cfg, key, path, default, prefix="", below=None):
    """cfg[key] as a finite float > 0 (and < `below` when given); missing or null gives `default`."""
    value = cfg.get(key)
    return default if value is None else _positive_float(value, path, prefix + key, below)


def config_act(cfg, key, path, allowed, default, prefix=""):
    """cfg[key] as an activation name out of `allowed`; anything else is a CheckpointError."""
    value = cfg.get(key)
    if value is None:
        value = default
    if not isinstance(value, str) or value not in allowed:
        raise CheckpointError(f"{path}: {prefix}{key} {value!r} is not supported (tgllava implements "
                              f"{', '.join(sorted(allowed))})")
    return value


def _rope_kind(entry, path, key):
    """Refuse a rope_parameters / rope_scaling dict that asks for anything but the plain rotary embedding."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: {key} {entry!r} is not supported (expected a dict or null)")
    kind = entry.get("rope_type", entry.get("type"))
    which = "rope_type" if "rope_type" in entry else "type"
    if kind not in (None, "default"):
        raise CheckpointError(
            f"{path}: {key}.{which} {kind!r} is not supported: tgllava implements the plain rotary embedding "
            "only (no linear, dynamic, yarn, longrope or llama3 scaling); running without it would be another model")
    factor = entry.get("factor")
    if factor not in (None, 1, 1.0):
        raise CheckpointError(f"{path}: {key}.factor {factor!r} asks for rotary scaling, which is not supported")
    partial = entry.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        raise CheckpointError(f"{path}: {key}.partial_rotary_factor {partial!r} is not supported (full rotary only)")


def rope_theta(cfg, path, prefix="", default=10000.0):
    """The rotary base of an LLM config dict.

    Read from `rope_theta` (transformers 4), `rope_parameters.rope_theta` (transformers 5, which
    writes no top-level rope_theta) and `rope_scaling.rope_theta`.  Values that disagree, a
    non-finite or non-positive value, per-layer-type rope_parameters, and any rope_type /
    rope_scaling other than "default" raise CheckpointError naming the key.  Without any,
    `default` (the LlamaConfig / Qwen2Config default 10000).
    """
    found = []
    if cfg.get("rope_theta") is not None:
        found.append((f"{prefix}rope_theta", cfg.get("rope_theta")))
    for key in ("rope_parameters", "rope_scaling"):
        entry = cfg.get(key)
        if entry is None or entry == {}:
            continue
        if isinstance(entry, dict) and entry and all(isinstance(v, dict) for v in entry.values()):
            raise CheckpointError(f"{path}: {prefix}{key} per layer type ({', '.join(map(str, entry))}) is not "
                                  "supported (one rotary setting for every layer only)")
        _rope_kind(entry, path, prefix + key)
        if entry.get("rope_theta") is not None:
            found.append((f"{prefix}{key}.rope_theta", entry["rope_theta"]))
    partial = cfg.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        raise CheckpointError(f"{path}: {prefix}partial_rotary_factor {partial!r} is not supported (full rotary only)")
    values = [(key, _positive_float(value, path, key)) for key, value in found]
    if not values:
        return float(default)
    first_key, first = values[0]
    for key, value in values[1:]:
        if not math.isclose(value, first, rel_tol=1e-9):
            raise CheckpointError(f"{path}: {first_key} {first!r} and {key} {value!r} disagree; "
                                  "which rotary base the model was trained with is unclear")
    return first


def llm_sizes(cfg, path, prefix=""):
    """The LLM part of tg_config from an LLM config dict (official keys), every value checked.

    Returns hidden, heads, kv_heads, head_dim, layers, ffn, vocab, max_len,
    rms_eps, rope_theta and tie (bool).  hidden_size, num_attention_heads,
    num_hidden_layers, intermediate_size and vocab_size are required.
    """
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: {prefix or 'the config'} is not a JSON object")
    hidden = config_int(cfg, "hidden_size", path, prefix=prefix)
    heads = config_int(cfg, "num_attention_heads", path, prefix=prefix)
    kv_heads = config_int(cfg, "num_key_value_heads", path, default=heads, prefix=prefix)
    if heads % kv_heads:
        raise CheckpointError(f"{path}: {prefix}num_attention_heads {heads} is not a multiple of "
                              f"{prefix}num_key_value_heads {kv_heads}")
    head_dim = config_int(cfg, "head_dim", path, default=None, prefix=prefix)
    if head_dim is None:
        if hidden % heads:
            raise CheckpointError(f"{path}: {prefix}hidden_size {hidden} is not a multiple of "
                                  f"{prefix}num_attention_heads {heads} (and no head_dim is given)")
        head_dim = hidden // heads
    if head_dim % 2:
        raise CheckpointError(f"{path}: head size {head_dim} ({prefix}head_dim or hidden_size / heads) must be even "
                              "for the rotary embedding")
    config_act(cfg, "hidden_act", path, LLM_ACTS, "silu", prefix=prefix)
    tie = cfg.get("tie_word_embeddings", False)
    if tie not in (True, False, 0, 1, None):
        raise CheckpointError(f"{path}: {prefix}tie_word_embeddings must be true or false, got {tie!r}")
    max_len = config_int(cfg, "tokenizer_model_max_length", path, default=None, prefix=prefix)
    if max_len is None:
        max_len = config_int(cfg, "max_position_embeddings", path, default=2048, prefix=prefix)
    return {
        "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
        "layers": config_int(cfg, "num_hidden_layers", path, prefix=prefix),
        "ffn": config_int(cfg, "intermediate_size", path, prefix=prefix),
        "vocab": config_int(cfg, "vocab_size", path, prefix=prefix),
        "max_len": max_len,
        "rms_eps": config_float(cfg, "rms_norm_eps", path, 1e-6, prefix=prefix, below=1.0),
        "rope_theta": rope_theta(cfg, path, prefix),
        "tie": bool(tie),
    }


# ---- CLIP configs ----------------------------------------------------------------

def _complete(raw, defaults):
    """(raw completed with defaults, sorted keys taken from defaults)."""
    filled = [k for k in defaults if raw.get(k) is None]
    return {**raw, **{k: defaults[k] for k in filled}}, sorted(filled)


def clip_configs(config, path="config.json"):
    """Read a CLIP tower config as transformers does.

    Returns {"vision_config": dict or None, "text_config": dict or None, "defaulted":
    {"vision_config": [keys], "text_config": [keys]}, "legacy": [notes]}: each tower config
    complete (transformers' class defaults fill what the file leaves out; `defaulted` lists those
    keys).  A CLIPModel config (model_type "clip", or text_config / vision_config keys) gives both
    towers; a CLIPVisionConfig ("clip_vision_model") or CLIPTextConfig ("clip_text_model") at top
    level gives one.  The legacy `vision_config_dict` / `text_config_dict` are completed with the
    class defaults and then override `vision_config` / `text_config`, as CLIPConfig.__init__ does.
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a CLIP config must be a JSON object")
    model_type = config.get("model_type")
    archs = [str(a) for a in (config.get("architectures") or []) if isinstance(a, str)]
    composite = (model_type == "clip" or any(k in config for k in
                 ("vision_config", "text_config", "vision_config_dict", "text_config_dict")))
    out = {"vision_config": None, "text_config": None, "defaulted": {}, "legacy": []}
    if composite:
        # a single-tower model_type (clip_vision_model / clip_text_model) has the other tower only when given
        absent = {"clip_vision_model": "text_config", "clip_text_model": "vision_config"}.get(model_type)
        for key, defaults in (("vision_config", CLIP_VISION_DEFAULTS), ("text_config", CLIP_TEXT_DEFAULTS)):
            if key == absent and key not in config:
                continue
            raw = config.get(key)
            if raw is not None and not isinstance(raw, dict):
                raise CheckpointError(f"{path}: {key} must be a JSON object, got {raw!r}")
            raw = dict(raw or {})
            legacy = config.get(key + "_dict")
            if legacy is not None:
                if not isinstance(legacy, dict):
                    raise CheckpointError(f"{path}: {key}_dict must be a JSON object, got {legacy!r}")
                expanded, _ = _complete(legacy, defaults)
                changed = sorted(k for k in expanded if k in raw and raw[k] != expanded[k])
                raw.update(expanded)
                note = f"{key}_dict overrides {key}"
                out["legacy"].append(note + (f" ({', '.join(changed)})" if changed else ""))
                filled = []
            else:
                raw, filled = _complete(raw, defaults)
            out[key] = raw
            out["defaulted"][key] = filled
    elif model_type == "clip_vision_model" or any(a.startswith("CLIPVision") for a in archs):
        out["vision_config"], out["defaulted"]["vision_config"] = _complete(config, CLIP_VISION_DEFAULTS)
    elif model_type == "clip_text_model" or any(a.startswith("CLIPText") for a in archs):
        out["text_config"], out["defaulted"]["text_config"] = _complete(config, CLIP_TEXT_DEFAULTS)
    else:
        raise CheckpointError(f"{path}: not a CLIP config (model_type {model_type!r}; expected clip, "
                              "clip_vision_model or clip_text_model)")
    return out


def tower_width(c, path, prefix):
    """(hidden_size, num_attention_heads) of a tower config, checked: the width splits evenly into heads."""
    hidden = config_int(c, "hidden_size", path, prefix=prefix)
    heads = config_int(c, "num_attention_heads", path, prefix=prefix)
    if hidden % heads:
        raise CheckpointError(f"{path}: {prefix}hidden_size {hidden} is not a multiple of "
                              f"{prefix}num_attention_heads {heads}")
    return hidden, heads


def vision_sizes(vc, path, select_layer=-2, prefix="vision_config.", select_path=None,
                 select_key="mm_vision_select_layer", acts=CLIP_ACTS, default_act="quick_gelu", default_eps=1e-5,
                 whole_patches=True):
    """The vision-tower part of tg_config from a complete vision config, every value checked.

    select_layer is the LLM config's `select_key` (in file `select_path`), the hidden state the
    projector reads (negative: from the end).  The defaults are CLIP's; a family with other
    activations, defaults, or an image side that need not be a multiple of the patch (SigLIP:
    siglip.tower_vision_sizes) passes its own."""
    where = f"{select_path or path}: {select_key}"
    hidden, heads = tower_width(vc, path, prefix)
    image = config_int(vc, "image_size", path, prefix=prefix)
    patch = config_int(vc, "patch_size", path, prefix=prefix)
    if whole_patches and image % patch:
        raise CheckpointError(f"{path}: {prefix}image_size {image} is not a multiple of {prefix}patch_size {patch}")
    if image < patch:
        raise CheckpointError(f"{path}: {prefix}image_size {image} is smaller than {prefix}patch_size {patch}")
    if config_int(vc, "num_channels", path, default=3, prefix=prefix) != 3:
        raise CheckpointError(f"{path}: {prefix}num_channels {vc.get('num_channels')!r} is not supported (RGB only)")
    layers = config_int(vc, "num_hidden_layers", path, prefix=prefix)
    if isinstance(select_layer, bool) or not isinstance(select_layer, int):
        raise CheckpointError(f"{where} {select_layer!r}: only a single layer index is supported")
    select = select_layer + layers + 1 if select_layer < 0 else select_layer
    if not 0 <= select <= layers:
        raise CheckpointError(f"{where} {select_layer} is out of range for a vision tower of "
                              f"{layers} layers ({path}: {prefix}num_hidden_layers)")
    return {
        "v_hidden": hidden, "v_heads": heads, "v_layers": layers,
        "v_ffn": config_int(vc, "intermediate_size", path, prefix=prefix),
        "v_image": image, "v_patch": patch,
        "v_act": acts[config_act(vc, "hidden_act", path, acts, default_act, prefix=prefix)],
        "v_select": select,
        "v_eps": config_float(vc, "layer_norm_eps", path, default_eps, prefix=prefix, below=1.0),
    }


def text_sizes(tc, path, prefix="text_config."):
    """The text-tower part of tg_config from a complete CLIP text config, every value checked.

    The engine pools the text tower at argmax(ids) (transformers' legacy rule for eos_token_id 2);
    transformers pools at the first eos_token_id otherwise, the same position only when the EOS is
    the largest id (vocab_size - 1, as in CLIP's own vocabulary).  Any other eos_token_id is refused.
    """
    hidden, heads = tower_width(tc, path, prefix)
    vocab = config_int(tc, "vocab_size", path, prefix=prefix)
    eos = tc.get("eos_token_id")
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    if isinstance(eos, bool) or not isinstance(eos, int):
        raise CheckpointError(f"{path}: {prefix}eos_token_id must be an integer, got {eos!r}")
    if eos not in (2, vocab - 1):
        raise CheckpointError(
            f"{path}: {prefix}eos_token_id {eos}: transformers pools the text tower at the first token {eos}, "
            f"tgllava at argmax(ids), the same only for eos_token_id 2 (legacy) or {vocab - 1} (the largest id)")
    return {
        "t_hidden": hidden, "t_heads": heads,
        "t_layers": config_int(tc, "num_hidden_layers", path, prefix=prefix),
        "t_ffn": config_int(tc, "intermediate_size", path, prefix=prefix),
        "t_vocab": vocab,
        "t_positions": config_int(tc, "max_position_embeddings", path, prefix=prefix),
        "t_act": CLIP_ACTS[config_act(tc, "hidden_act", path, CLIP_ACTS, "quick_gelu", prefix=prefix)],
        "t_eps": config_float(tc, "layer_norm_eps", path, 1e-5, prefix=prefix, below=1.0),
    }


# ---- llava-hf configs ------------------------------------------------------------

def llava_hf_config(config, path="config.json"):
    """Convert a llava-hf config dict to an official LLaVA-style config dict.

    The result has the LLM keys at top level (hidden_size, num_attention_heads, rope_theta, ...;
    transformers' defaults fill what text_config leaves out, LlavaConfig's a missing text_config /
    vision_config), the LLaVA keys (model_type "llava_llama" or "llava_qwen", mm_projector_type
    "mlp2x_gelu", mm_hidden_size, mm_vision_select_layer, mm_vision_select_feature,
    image_aspect_ratio "pad" as LLaVA-1.5 was trained, image_token_index) and `vision_config`, a
    complete CLIP vision config for the tower stored in the same folder.  Invalid values raise
    CheckpointError naming `path` and the key; so does a config with the official LLaVA keys
    (whether a folder is a llava-hf one is decided before: tensor_names.is_llava_hf).
    """
    if not isinstance(config, dict) or has_official_keys(config):
        raise CheckpointError(f"{path}: not a llava-hf config (it has the official LLaVA keys mm_vision_tower / "
                              "mm_projector_type / mm_hidden_size / mm_text_tower)")
    text_config = config.get("text_config")
    if text_config is not None and not isinstance(text_config, dict):
        raise CheckpointError(f"{path}: text_config must be a JSON object, got {text_config!r}")
    text_config = dict(text_config or {})
    text_type = str(text_config.get("model_type") or "llama").lower()
    if text_type.startswith("qwen2"):
        defaults, model_type, arch = _QWEN2_DEFAULTS, "llava_qwen", "LlavaQwenForCausalLM"
    elif text_type == "llama":
        defaults, model_type, arch = _LLAMA_DEFAULTS, "llava_llama", "LlavaLlamaForCausalLM"
    else:
        raise CheckpointError(f"{path}: llava-hf text model type {text_type!r} is not supported (llama or qwen2)")
    # old llava-hf configs keep vocab_size / tie_word_embeddings at top level
    top = {key: config[key] for key in ("vocab_size", "tie_word_embeddings") if key in config}
    llm = {key: text_config.get(key, top.get(key, default)) for key, default in defaults.items()}
    if text_config.get("head_dim") is not None:
        llm["head_dim"] = text_config["head_dim"]
    if llm["num_key_value_heads"] is None:
        llm["num_key_value_heads"] = llm["num_attention_heads"]
    llm["rope_theta"] = rope_theta(text_config, path, prefix="text_config.")
    llm_sizes(llm, path, prefix="text_config.")  # every value checked, named as in the file

    vision_config = config.get("vision_config")
    if vision_config is not None and not isinstance(vision_config, dict):
        raise CheckpointError(f"{path}: vision_config must be a JSON object, got {vision_config!r}")
    vision_config = dict(_LLAVA_DEFAULT_VISION if vision_config is None else vision_config)
    vision_type = vision_config.get("model_type", "clip_vision_model")
    if vision_type not in ("clip_vision_model", "clip"):
        raise CheckpointError(f"{path}: llava-hf vision tower {vision_type!r} is not supported (CLIP only)")
    vision, _ = _complete(vision_config, CLIP_VISION_DEFAULTS)
    vision["model_type"] = "clip_vision_model"

    act = config.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path}: llava-hf projector_hidden_act {act!r} is not supported (gelu only)")
    layer = config.get("vision_feature_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise CheckpointError(f"{path}: vision_feature_layer {layer!r}: only a single layer index is supported")
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise CheckpointError(f"{path}: vision_feature_select_strategy {strategy!r} is not supported")
    vision_sizes(vision, path, layer, prefix="vision_config.", select_key="vision_feature_layer")

    out = {
        **llm,
        "architectures": [arch],
        "model_type": model_type,
        "mm_vision_tower": vision_config.get("_name_or_path") or None,
        "mm_hidden_size": vision["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": layer,
        "mm_vision_select_feature": "patch" if strategy == "default" else "cls_patch",
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "image_token_index": config.get("image_token_index", 32000),
        "vision_config": vision,
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype"):
        value = config.get(key, text_config.get(key))
        if value is not None:
            out[key] = value
    if model_type == "llava_llama":  # LlamaConfig defaults
        out.setdefault("bos_token_id", 1)
        out.setdefault("eos_token_id", 2)
    return out
