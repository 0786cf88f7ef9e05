"""Tensor naming: how each checkpoint layout names its tensors, and the renaming onto the official one.

The engine's native layout is the official LLaVA/TG-LLaVA one (SPEC section 4): an LLM folder
whose tensors are `model.*`, `lm_head.weight`, `model.mm_projector.{0,2}.*`, plus separate CLIP
tower folders named by `mm_vision_tower` / `mm_text_tower`, whose tensors are `vision_model.*` /
`text_model.*`.  This module maps the other shapes checkpoints come in onto that one naming:

- CLIP towers in the CLIPModel, CLIPVisionModel and CLIPTextModel layouts, with the
  `vision_model.` / `text_model.` prefix or without it (transformers 5): `clip_tower_names`.
- llava-hf conversions (`LlavaForConditionalGeneration`) in every naming a released transformers
  version writes (table `LLAVA_HF_NAMINGS`), with the vision tower inside the same folder:
  `map_llava_hf_names`.  The original LLaVA layout (liuhaotian/llava-v1.5-7b) also says
  `"model_type": "llava"`; `is_llava_hf` tells the two apart by their config keys (`mm_*` vs
  `text_config` / `vision_config`), never by model_type alone.
"""

from .errors import CheckpointError


# the official names of an LLM folder's multimodal parts (the C core's own names)
PROJECTOR_PREFIX = "model.mm_projector."
FOM_PREFIX = "model.mm_cross_attn."  # TG-FOM: the Q-former of the text-guided mask
DP_PREFIX = "model.mm_patch_encoder."  # TG-DP: the perceiver over the 2x tiles


# ---- CLIP tensor layouts -----------------------------------------------------------

_BARE_VISION = ("embeddings.patch_embedding.weight", "pre_layrnorm.weight")
_BARE_TEXT = ("embeddings.token_embedding.weight", "final_layer_norm.weight")
_BARE_SHARED = ("embeddings.", "encoder.")


def clip_tower_names(names, where="CLIP folder"):
    """Which CLIP layout a tower folder's tensor names are in, and how to rename them.

    Returns (layout, mapping) with mapping {official name: stored name} for the tower tensors
    (official = `vision_model.*` / `text_model.*`; projections, logit_scale etc. are left out).
    Layouts: "CLIPModel", "CLIPVisionModel", "CLIPTextModel", and the two single-tower models with
    unprefixed names, as transformers 5 saves them ("CLIPVisionModel, unprefixed": embeddings.*,
    encoder.layers.*, pre_layrnorm.*, post_layernorm.*; "CLIPTextModel, unprefixed": embeddings.*,
    encoder.layers.*, final_layer_norm.*).
    """
    names = list(names)
    present = set(names)
    has_vision = any(n.startswith("vision_model.") for n in names)
    has_text = any(n.startswith("text_model.") for n in names)
    bare_vision = any(n in present for n in _BARE_VISION)
    bare_text = any(n in present for n in _BARE_TEXT)
    if bare_vision and bare_text:
        raise CheckpointError(f"{where}: unprefixed tensors of both a vision and a text tower "
                              "(embeddings.patch_embedding and embeddings.token_embedding); cannot tell them apart")
    if (bare_vision and has_vision) or (bare_text and has_text):
        raise CheckpointError(f"{where}: a tower is stored twice (with and without the vision_model./text_model. prefix)")
    mapping = {}
    for n in names:
        if n.startswith(("vision_model.", "text_model.")):
            mapping[n] = n
        elif (bare_vision or bare_text) and (n.startswith(_BARE_SHARED) or n in (
                "pre_layrnorm.weight", "pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias",
                "final_layer_norm.weight", "final_layer_norm.bias")):
            mapping[("vision_model." if bare_vision else "text_model.") + n] = n
    if has_vision and has_text:
        label = "CLIPModel"
    elif has_vision:
        label = "CLIPVisionModel" + (" + unprefixed CLIPTextModel" if bare_text else "")
    elif has_text:
        label = "CLIPTextModel" + (" + unprefixed CLIPVisionModel" if bare_vision else "")
    elif bare_vision:
        label = "CLIPVisionModel, unprefixed"
    elif bare_text:
        label = "CLIPTextModel, unprefixed"
    else:
        label = "no CLIP tower"
    return label, mapping


CLIP_LAYOUT_NOTES = {
    "CLIPModel": "vision_model.* + text_model.*",
    "CLIPVisionModel": "vision_model.*",
    "CLIPTextModel": "text_model.*",
    "CLIPVisionModel, unprefixed": "embeddings.*, encoder.layers.*, pre_layrnorm.* (transformers 5)",
    "CLIPTextModel, unprefixed": "embeddings.*, encoder.layers.*, final_layer_norm.* (transformers 5)",
}


# ---- LLaVA layouts: official vs llava-hf -----------------------------------------------

_OFFICIAL_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size", "mm_text_tower")
_HF_KEYS = ("text_config", "vision_config")
_HF_NAME_PREFIXES = ("language_model.", "model.language_model.", "multi_modal_projector.",
                     "model.multi_modal_projector.", "vision_tower.", "model.vision_tower.")


def has_official_keys(config):
    """True when an LLM config has the official LLaVA / TG-LLaVA keys (mm_vision_tower, mm_projector_type, ...)."""
    return isinstance(config, dict) and any(config.get(k) is not None for k in _OFFICIAL_KEYS)


def is_llava_hf(config, names=None):
    """True for a llava-hf (`LlavaForConditionalGeneration`) folder, False for the official LLaVA layout.

    Decided by the config's keys: `mm_vision_tower` / `mm_projector_type` / `mm_hidden_size` /
    `mm_text_tower` mean the official (liuhaotian / TG-LLaVA) layout even when model_type is
    "llava" (as the released llava-v1.5-7b config says); `text_config` / `vision_config` without
    those mean llava-hf.  Else architectures naming LlavaForConditionalGeneration, or else the
    tensor names (`names`, when given) decide; model_type alone never does.
    """
    config = config or {}
    if not isinstance(config, dict) or has_official_keys(config):
        return False
    if any(isinstance(config.get(k), dict) for k in _HF_KEYS):
        return True
    archs = config.get("architectures") or []
    if isinstance(archs, list) and "LlavaForConditionalGeneration" in archs:
        return True
    if names is not None:
        return any(n.startswith(_HF_NAME_PREFIXES) for n in names)
    return False


# Which tensor names released transformers versions write for LlavaForConditionalGeneration.
# Each row: (versions, {part: prefix}); "lm_head" None = no lm_head tensor (tied embeddings).
# Every prefix of every row is accepted in any combination; the rows document the combinations.
LLAVA_HF_NAMINGS = (
    ("transformers 4.36 - 4.51: the Hub's llava-hf/* files "
     "(LlavaForConditionalGeneration holding language_model = LlamaForCausalLM)",
     {"llm": "language_model.model.", "lm_head": "language_model.lm_head.",
      "projector": "multi_modal_projector.", "vision": "vision_tower.vision_model."}),
    ("transformers 4.52 - 4.57 module names (LlavaModel under model., lm_head at top level), written by "
     "save_pretrained of models converted in memory and by state_dict() dumps",
     {"llm": "model.language_model.", "lm_head": "lm_head.",
      "projector": "model.multi_modal_projector.", "vision": "model.vision_tower.vision_model."}),
    ("transformers 5.x: the 4.52 names with the CLIPVisionModel tower unprefixed",
     {"llm": "model.language_model.", "lm_head": "lm_head.",
      "projector": "model.multi_modal_projector.", "vision": "model.vision_tower."}),
    ("transformers 5.x saves of older-layout folders (seen with 5.24): tower at top level, unprefixed",
     {"llm": "language_model.model.", "lm_head": "language_model.lm_head.",
      "projector": "multi_modal_projector.", "vision": "vision_tower."}),
    ("any of the above with tie_word_embeddings and no lm_head tensor",
     {"llm": "model.language_model.", "lm_head": None,
      "projector": "model.multi_modal_projector.", "vision": "model.vision_tower.vision_model."}),
)
_PROJECTOR_PARTS = (("linear_1.", "model.mm_projector.0."), ("linear_2.", "model.mm_projector.2."))


def _llava_hf_rules():
    llm, clip = set(), set()
    for _, parts in LLAVA_HF_NAMINGS:
        llm.add((parts["llm"], "model."))
        if parts["lm_head"]:
            llm.add((parts["lm_head"], "lm_head."))
        for old, new in _PROJECTOR_PARTS:
            llm.add((parts["projector"] + old, new))
        clip.add((parts["vision"], "vision_model."))
    return tuple(sorted(llm)), tuple(sorted(clip))


_LLM_RULES, _CLIP_RULES = _llava_hf_rules()
# buffers some saves carry that no model reads
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def map_llava_hf_names(names, strict=True):
    """Map llava-hf tensor names onto the official layout.

    Returns (llm_map, clip_map), each {new_name: old_name}: llm_map covers the language model and
    projector (`model.*`, `lm_head.*`, `model.mm_projector.{0,2}.*`), clip_map the vision tower
    under CLIP names (`vision_model.*`), in any naming of LLAVA_HF_NAMINGS.  A name matching no
    rule raises CheckpointError unless strict=False (then it is left out); buffers such as
    rotary_emb.inv_freq are always left out; two names mapping to the same target always raise.
    """
    llm_map, clip_map, unknown = {}, {}, []
    for old in names:
        if old.endswith(IGNORED_SUFFIXES):
            continue
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
    # a tower stored under both vision_tower.vision_model.* and vision_tower.* would map twice; caught above
    return llm_map, clip_map


def llava_hf_naming(names):
    """The LLAVA_HF_NAMINGS row whose prefixes the names use (its versions text), or "mixed"."""
    names = list(names)
    for versions, parts in LLAVA_HF_NAMINGS:
        prefixes = [parts["llm"], parts["projector"], parts["vision"]]
        if not all(any(n.startswith(p) for n in names) for p in prefixes):
            continue
        if parts["vision"].endswith("vision_tower.") and any(n.startswith(parts["vision"] + "vision_model.")
                                                            for n in names):
            continue
        head = parts["lm_head"]
        has_head = any(n.startswith(("lm_head.", "language_model.lm_head.")) for n in names)
        if (head is None) == has_head or (head and not any(n.startswith(head) for n in names)):
            continue
        return versions
    return "mixed naming"


def _apply_rules(name, rules):
    """Rewrite the longest matching prefix of `name`; None when no rule matches."""
    matches = [(old, new) for old, new in rules if name.startswith(old)]
    if not matches:
        return None
    old, new = max(matches, key=lambda rule: len(rule[0]))
    return new + name[len(old):]


def count_layers(names, prefix):
    """1 + the largest N of the names `prefix`N.*, 0 when there is none."""
    numbers = (n[len(prefix):].split(".", 1)[0] for n in names if n.startswith(prefix))
    return max((int(k) + 1 for k in numbers if k.isdigit()), default=0)

