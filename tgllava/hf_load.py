"""Loading llava-hf checkpoints (`LlavaForConditionalGeneration` folders).

A llava-hf folder holds a plain LLaVA-1.5 under other names than the
official layout: `language_model.model.*` / `language_model.lm_head.*`, the
projector as `multi_modal_projector.linear_1/linear_2`, and the CLIP vision
tower inside the same folder as `vision_tower.vision_model.*` (newer
transformers nest these under `model.`).  The config keeps the LLM under
`text_config` and the tower under `vision_config`.  `load_llava_hf` renames
tensors and converts the config with tgllava.layout, then builds the C model
exactly as api.load does for an official folder; the tokenizer is read from
the same folder.  There is no text tower, so such a model is "both TG
modules off" (SPEC 2.7).  api.load calls this when the LLM folder's config
is a llava-hf one.
"""

import os


from . import api, layout
from .checkpoint import TensorRef, folder_refs, read_json
from .errors import CheckpointError


def _renamed(refs, mapping):
    """TensorRefs under their official names; the bytes are those of the llava-hf tensors."""
    out = {}
    for new, old in mapping.items():
        r = refs[old]
        out[new] = TensorRef(new, r.path, r.dtype, r.shape, r.start, r.array_fn)
    return out


def llava_hf_refs(folder):
    """(llm_config, clip_config, refs) of a llava-hf folder, under the official names and config keys."""
    config = read_json(os.path.join(folder, "config.json"))
    if not layout.is_llava_hf(config):
        raise CheckpointError(f"{folder}: not a llava-hf checkpoint (config has no LlavaForConditionalGeneration)")
    llm_cfg = layout.llava_hf_config(config)
    raw = folder_refs(folder)
    llm_map, clip_map = layout.map_llava_hf_names(list(raw), strict=False)
    refs = _renamed(raw, clip_map)
    refs.update(_renamed(raw, llm_map))
    clip_cfg = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
                "vision_config": llm_cfg["vision_config"]}
    return llm_cfg, clip_cfg, refs


def load_llava_hf(folder, device="cpu", dtype=None, progress=None):
    """Load a llava-hf LLaVA-1.5 folder onto `device`; returns an api.Model.

    dtype: as api.load ("float32" on the CPU, "bfloat16"/"float16" on CUDA).
    """
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    if dtype not in api._DTYPES:
        raise ValueError(f"dtype must be one of {sorted(api._DTYPES)}, got {dtype!r}")
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    llm_cfg, clip_cfg, refs = llava_hf_refs(folder)
    cfg = api.build_config(llm_cfg, clip_cfg, refs, dtype)
    core = api.build_core(cfg, device, refs, lambda name: f"{folder} (llava-hf layout)", progress)
    return api.Model(core, llm_cfg, clip_cfg, folder, folder, dtype)
