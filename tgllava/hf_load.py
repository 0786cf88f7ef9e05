"""Loading llava-hf checkpoints (`LlavaForConditionalGeneration` folders).

A llava-hf folder holds a plain LLaVA-1.5 under other names than the
official layout: `language_model.model.*` / `language_model.lm_head.*`, the
projector as `multi_modal_projector.linear_1/linear_2`, and the CLIP vision
tower inside the same folder as `vision_tower.vision_model.*` (newer
transformers nest these under `model.` and transformers 5 drops the tower's
`vision_model.` prefix: every naming is listed in tensor_names.LLAVA_HF_NAMINGS).
The config keeps the LLM under `text_config` and the tower under
`vision_config`.  `load_llava_hf` renames tensors and converts the config
with tgllava.configs and tgllava.tensor_names, checks names, dtypes and shapes from the headers, then
builds the C model exactly as loader.load does for an official folder; the
tokenizer is read from the same folder.  There is no text tower, so such a model is "both TG
modules off" (SPEC 2.7).  loader.load calls this when the LLM folder's config
is a llava-hf one.
"""

import os

from . import configs, loader, tensor_names
from .checkpoint import TensorRef, folder_refs, read_json
from .errors import CheckpointError
from .model import Model


def _renamed(refs, mapping):
    """TensorRefs under their official names; the bytes are those of the llava-hf tensors."""
    out = {}
    for new, old in mapping.items():
        r = refs[old]
        out[new] = TensorRef(new, r.path, r.dtype, r.shape, r.start, r.array_fn)
    return out


def llava_hf_refs(folder):
    """(llm_config, clip_config, refs) of a llava-hf folder, under the official names and config keys.

    Only the config and the tensor headers are read.  The naming (which
    tensor_names.LLAVA_HF_NAMINGS row) is recorded in llm_config["llava_hf_naming"].
    """
    path = os.path.join(folder, "config.json")
    config = read_json(path)
    raw = None
    if tensor_names.is_llava_hf(config) or not tensor_names.has_official_keys(config):
        try:
            raw = folder_refs(folder)
        except CheckpointError:
            if tensor_names.is_llava_hf(config):
                raise
    if raw is None or not tensor_names.is_llava_hf(config, list(raw)):
        raise CheckpointError(f"{folder}: not a llava-hf checkpoint (config has no text_config / vision_config / "
                              "LlavaForConditionalGeneration, tensors no language_model.* / vision_tower.*)")
    llm_cfg = configs.llava_hf_config(config, path)
    llm_map, clip_map = tensor_names.map_llava_hf_names(list(raw), strict=False)
    llm_cfg["llava_hf_naming"] = tensor_names.llava_hf_naming(list(raw))
    refs = _renamed(raw, clip_map)
    refs.update(_renamed(raw, llm_map))
    clip_cfg = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
                "vision_config": llm_cfg["vision_config"]}
    return llm_cfg, clip_cfg, refs


def load_llava_hf(folder, device="cpu", dtype=None, progress=None):
    """Load a llava-hf LLaVA-1.5 folder onto `device`; returns a model.Model.

    dtype: as loader.load (None: loader.default_dtype's rule).
    """
    loader.check_device_dtype(device, dtype)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    llm_cfg, clip_cfg, refs = llava_hf_refs(folder)
    if dtype is None:
        dtype = loader.default_dtype(device, refs)
    path = os.path.join(folder, "config.json")
    cfg = loader.build_config(llm_cfg, clip_cfg, refs, dtype, llm_path=path, clip_path=path)

    def where(name):
        return f"{folder} (llava-hf layout)"
    loader.check_tensors(cfg, refs, where)  # names, dtypes and shapes, before any weight byte is read
    core = loader.build_core(cfg, device, refs, where, progress)
    return Model(core, llm_cfg, clip_cfg, folder, folder, dtype)
