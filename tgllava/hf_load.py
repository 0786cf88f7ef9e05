"""llava-hf checkpoints (`LlavaForConditionalGeneration` folders) under the official names and config keys.

A llava-hf folder holds a plain LLaVA-1.5 under other names than the official layout:
`language_model.model.*` / `language_model.lm_head.*`, the projector as
`multi_modal_projector.linear_1/linear_2`, and the CLIP vision tower inside the same folder as
`vision_tower.vision_model.*` (every naming transformers versions write is listed in
tensor_names.LLAVA_HF_NAMINGS); its config keeps the LLM under `text_config` and the tower under
`vision_config`.  loader.read_llm_folder decides that a folder is one and calls `llava_hf_refs`,
which renames the tensors (tensor_names) and converts the config (configs); from there the folder
loads exactly as an official one, its tokenizer read from the same folder.  There is no text
tower, so such a model is "both TG modules off" (SPEC 2.7).
"""

from . import configs, tensor_names


def llava_hf_refs(config, raw, path):
    """(llm_config, clip_config, refs) of a llava-hf folder, under the official names and config keys.

    config is the folder's config.json (read from `path`), raw its tensor headers (name -> TensorRef).
    The naming (which tensor_names.LLAVA_HF_NAMINGS row) is recorded in llm_config["llava_hf_naming"].
    """
    llm_cfg = configs.llava_hf_config(config, path)
    llm_map, clip_map = tensor_names.map_llava_hf_names(list(raw), strict=False)
    llm_cfg["llava_hf_naming"] = tensor_names.llava_hf_naming(list(raw))
    # under their official names; the bytes are those of the llava-hf tensors
    refs = {new: raw[old].renamed(new) for new, old in {**clip_map, **llm_map}.items()}
    clip_cfg = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
                "vision_config": llm_cfg["vision_config"]}
    return llm_cfg, clip_cfg, refs
