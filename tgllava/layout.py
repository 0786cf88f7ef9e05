"""Checkpoint folder layouts: llava-hf name/config mapping and tower resolution.

The engine's native layout is the official LLaVA/TG-LLaVA one (SPEC section
4): an LLM folder whose tensors are `model.*`, `lm_head.weight`,
`model.mm_projector.{0,2}.*`, plus separate CLIP tower folders named by
`mm_vision_tower` / `mm_text_tower`.  The llava-hf conversions
(`LlavaForConditionalGeneration`) pack the same LLaVA-1.5 weights under
other names, with the vision tower inside the same folder; this module maps
their tensor names and config onto the official ones, so the rest of the
loader sees a single layout.  It also finds tower folders: a local path, a
snapshot in the Hugging Face cache, or (only when `huggingface_hub` is
installed and HF_HUB_OFFLINE is not set) a download.  Everything here works
on names, dicts and directory listings; no tensor is read.
"""

import os
import re

from .errors import CheckpointError

# Defaults of the transformers config classes (4.37) for keys a llava-hf
# config may leave out.
_LLAMA_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
}
_QWEN2_DEFAULTS = dict(_LLAMA_DEFAULTS, vocab_size=151936, intermediate_size=22016,
                       max_position_embeddings=32768)
_CLIP_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3,
    "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
# LlavaConfig's vision tower when the config has no vision_config at all (CLIP-L/14-336).
_LLAVA_DEFAULT_VISION = {
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
    "patch_size": 14, "image_size": 336, "num_hidden_layers": 24, "num_attention_heads": 16,
    "projection_dim": 768,
}

_LLM_RULES = (
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
    ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
)
_CLIP_RULES = (
    ("vision_tower.vision_model.", "vision_model."),
    ("model.vision_tower.vision_model.", "vision_model."),
)


def is_llava_hf(config):
    """True for a llava-hf (`LlavaForConditionalGeneration`) config dict."""
    config = config or {}
    archs = config.get("architectures") or []
    return "LlavaForConditionalGeneration" in archs or config.get("model_type") == "llava"


def map_llava_hf_names(names, strict=True):
    """Map llava-hf tensor names onto the official layout.

    Returns (llm_map, clip_map), each {new_name: old_name}: llm_map covers
    the language model and projector (`model.*`, `lm_head.*`,
    `model.mm_projector.{0,2}.*`), clip_map the vision tower under CLIP
    names (`vision_model.*`).  Both the transformers<4.52 layout
    (`language_model.model.*`, `multi_modal_projector.*`,
    `vision_tower.*`) and the newer one (`model.language_model.*`,
    `model.multi_modal_projector.*`, `model.vision_tower.*`, top-level
    `lm_head.*`) are understood.  A name matching no rule raises
    CheckpointError unless strict=False (then it is left out); two names
    mapping to the same target always raise.
    """
    llm_map, clip_map, unknown = {}, {}, []
    for old in names:
        for rules, target in ((_LLM_RULES, llm_map), (_CLIP_RULES, clip_map)):
            new = _apply_rules(old, rules)
            if new is not None:
                if new in target:
                    raise CheckpointError(f"tensors {target[new]} and {old} both map to {new}")
                target[new] = old
                break
        else:
            unknown.append(old)
    if unknown and strict:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise CheckpointError(f"llava-hf checkpoint has an unexpected tensor {unknown[0]}{more}")
    return llm_map, clip_map


def _apply_rules(name, rules):
    """Rewrite the longest matching prefix of `name`; None when no rule matches."""
    best = None
    for old_prefix, new_prefix in rules:
        if name.startswith(old_prefix) and (best is None or len(old_prefix) > len(best[0])):
            best = (old_prefix, new_prefix)
    if best is None:
        return None
    return best[1] + name[len(best[0]):]


def llava_hf_config(config):
    """Convert a llava-hf config dict to an official LLaVA-style config dict.

    The result has the LLM keys at top level (hidden_size,
    num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta,
    vocab_size, ...; transformers' defaults fill what the llava-hf config
    leaves out), the LLaVA keys (model_type "llava_llama" or "llava_qwen",
    mm_projector_type "mlp2x_gelu", mm_hidden_size, mm_vision_select_layer,
    mm_vision_select_feature, image_aspect_ratio "pad" as LLaVA-1.5 was
    trained, image_token_index) and `vision_config`, a complete CLIP vision
    config for the tower stored in the same folder.
    """
    if not is_llava_hf(config):
        raise CheckpointError("not a llava-hf config (no LlavaForConditionalGeneration / model_type 'llava')")
    text_config = dict(config.get("text_config") or {})
    text_type = str(text_config.get("model_type") or "llama").lower()
    if text_type.startswith("qwen2"):
        defaults, model_type, arch = _QWEN2_DEFAULTS, "llava_qwen", "LlavaQwenForCausalLM"
    elif text_type == "llama":
        defaults, model_type, arch = _LLAMA_DEFAULTS, "llava_llama", "LlavaLlamaForCausalLM"
    else:
        raise CheckpointError(f"llava-hf text model type {text_type!r} is not supported (llama or qwen2)")
    llm = {}
    for key, default in defaults.items():
        # old llava-hf configs keep vocab_size / tie_word_embeddings at top level
        if key in ("vocab_size", "tie_word_embeddings"):
            default = config.get(key, default)
        llm[key] = text_config.get(key, default)
    if llm["num_key_value_heads"] is None:
        llm["num_key_value_heads"] = llm["num_attention_heads"]

    vision_config = config.get("vision_config")
    vision_config = dict(_LLAVA_DEFAULT_VISION if vision_config is None else vision_config)
    vision_type = vision_config.get("model_type", "clip_vision_model")
    if vision_type not in ("clip_vision_model", "clip"):
        raise CheckpointError(f"llava-hf vision tower {vision_type!r} is not supported (CLIP only)")
    vision = dict(_CLIP_VISION_DEFAULTS)
    vision.update(vision_config)
    vision["model_type"] = "clip_vision_model"

    act = config.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"llava-hf projector_hidden_act {act!r} is not supported (gelu only)")
    layer = config.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"vision_feature_layer {layer!r}: only a single layer index is supported")
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise CheckpointError(f"vision_feature_select_strategy {strategy!r} is not supported")

    out = dict(llm)
    out.update({
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
    })
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype"):
        value = config.get(key, text_config.get(key))
        if value is not None:
            out[key] = value
    if model_type == "llava_llama":  # LlamaConfig defaults
        out.setdefault("bos_token_id", 1)
        out.setdefault("eos_token_id", 2)
    return out


# --- tower resolution ---------------------------------------------------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DOWNLOAD_PATTERNS = ["config.json", "*.safetensors", "*.bin", "*.json", "*.txt"]


def hf_cache_dir():
    """The Hugging Face hub cache folder, following the hub's own environment variables."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def _offline():
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def find_in_hf_cache(repo_id, cache_dir=None):
    """The cached snapshot folder of `repo_id` holding config.json, or None.

    Prefers the snapshot `refs/main` points to, else the most recently
    modified one.
    """
    if not _REPO_ID.match(repo_id or ""):
        return None
    root = os.path.join(cache_dir or hf_cache_dir(), "models--" + repo_id.replace("/", "--"))
    snapshots = os.path.join(root, "snapshots")
    if not os.path.isdir(snapshots):
        return None
    candidates = []
    try:
        with open(os.path.join(root, "refs", "main"), encoding="utf-8") as f:
            main = f.read().strip()
        if main:
            candidates.append(os.path.join(snapshots, main))
    except OSError:
        pass
    others = [os.path.join(snapshots, d) for d in os.listdir(snapshots)]
    others = [d for d in others if os.path.isdir(d)]
    others.sort(key=lambda d: os.path.getmtime(d), reverse=True)
    candidates += others
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    return None


def resolve_tower(name_or_path, kind="vision"):
    """Find the folder of a tower checkpoint (`mm_vision_tower` / `mm_text_tower`).

    A local folder is returned as given; otherwise the name is looked up in
    the Hugging Face cache; otherwise, if `huggingface_hub` is importable
    and HF_HUB_OFFLINE is not set, the config, weights and tokenizer files
    are downloaded with `snapshot_download`.  Returns None when nothing is
    found (or the download fails).
    """
    if kind not in ("vision", "text"):
        raise ValueError(f"kind must be 'vision' or 'text', got {kind!r}")
    if not name_or_path:
        return None
    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):
        return name_or_path
    found = find_in_hf_cache(name_or_path)
    if found is not None:
        return found
    if _offline() or not _REPO_ID.match(name_or_path) or "/" not in name_or_path:
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return snapshot_download(name_or_path, allow_patterns=list(_DOWNLOAD_PATTERNS))
    except Exception:  # network, auth or missing repo: report "not found"
        return None
