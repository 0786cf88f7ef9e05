"""`tgllava info`: describe a checkpoint folder from its configs and tensor headers, loading no weights.

`describe(folder)` reads config.json and the tensor directory of the folder
(safetensors headers; for PyTorch .bin files the pickled metadata through
torchbin.inspect_bin, never the tensor bytes) and returns a plain dict:
the architecture and LLM sizes, parameter counts per part (LLM, projector,
TG-FOM, TG-DP, vision and text towers), which TG modules are present, the
chat template the model would use, the weight files, and where the CLIP
or SigLIP towers named in the config are found (a local folder or the
Hugging Face cache; nothing is downloaded) with their family.
`format_info` renders it as text.  A llava-hf folder, a CLIP or SigLIP
tower folder and an official LLM folder are all understood.
"""

import collections
import os

import numpy as np

from . import conversation, layout, siglip
from .checkpoint import read_json, safetensors_refs
from .errors import CheckpointError


def tensor_shapes(folder):
    """(name -> (dtype, shape), list of weight files) of a folder, from headers only."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    names = sorted(os.listdir(folder))
    files = None
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if idx in names:
            index = read_json(os.path.join(folder, idx))
            wm = (index.get("weight_map") if isinstance(index, dict) else None) or {}
            if not isinstance(wm, dict):
                raise CheckpointError(f"{os.path.join(folder, idx)}: weight_map is not a JSON object")
            from .torchbin import shard_path
            for shard in set(wm.values()):
                shard_path(os.path.join(folder, idx), shard)  # refuses names that leave the folder
            files = sorted(set(wm.values()), key=str)
            break
    if files is None:
        files = [n for n in names if n.endswith(".safetensors")]
        files = files or [n for n in names if n.endswith(".bin") and not n.startswith("training_args")]
    shapes = {}
    for f in files:
        path = os.path.join(folder, f)
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        if f.endswith(".safetensors"):
            for name, ref in safetensors_refs(path).items():
                shapes[name] = (ref.dtype, ref.shape)
        else:
            from .torchbin import inspect_bin
            for name, info in inspect_bin(path).items():
                shapes[name] = (str(info.dtype), tuple(info.shape))
    return shapes, files


def _count(shapes, pred):
    return sum(int(np.prod(s)) if s else 1 for n, (_, s) in shapes.items() if pred(n))


def _fom_unused(name):
    """Q-former tensors present in checkpoints but not used at inference (SPEC 2.3)."""
    if ".Qformer.cls." in name or ".embeddings.word_embeddings." in name or ".embeddings.position_embeddings." in name:
        return True
    return ".layer." in name and (".intermediate.dense." in name or
                                  (".output." in name and ".attention.output." not in name and
                                   ".crossattention.output." not in name and ".output_query." not in name))


def _find_tower(name, folder):
    """Local folder or HF-cache snapshot of a tower name (never downloads); None when absent."""
    if not name:
        return None
    for cand in (name, os.path.join(folder, name)):
        if os.path.isdir(cand):
            return cand
    return layout.find_in_hf_cache(name)


def storage_plan(shapes, dtype, tied=False):
    """How load(dtype=...) stores these tensors (the C core's rule): bytes per stored dtype and the matrices
    that fall back to float16 because int8/int4 cannot block their input features."""
    from . import _C
    from .api import _DTYPES
    names = {v: k for k, v in _DTYPES.items()}
    total, fallback = collections.Counter(), []
    for name, (_, shape) in shapes.items():
        shape = tuple(int(d) for d in shape)
        matrix = len(shape) >= 2 and name.endswith(".weight") and "position_embedding" not in name
        if not matrix:
            total["float32"] += 4 * int(np.prod(shape)) if shape else 4
            continue
        cols = int(np.prod(shape[1:]))
        head = name.endswith("lm_head.weight") or (tied and name.endswith("embed_tokens.weight"))
        dt, row_bytes = _C.weight_storage(_DTYPES[dtype], cols, head)
        total[names[dt]] += row_bytes * shape[0]
        if dtype in ("int8", "int4") and cols % 32:
            fallback.append(name)
    return {"dtype": dtype, "bytes": dict(total), "float16_fallback": fallback}


def describe(folder, dtype=None):
    """A dict describing the checkpoint in `folder` (see the module docstring); with dtype, also how
    loading in that storage format would store it (storage_plan)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    config = read_json(os.path.join(folder, "config.json"))
    shapes, files = tensor_shapes(folder)
    dtypes = collections.Counter(dt for dt, _ in shapes.values())
    info = {"folder": folder, "architectures": config.get("architectures") or [],
            "model_type": config.get("model_type"), "files": files, "n_tensors": len(shapes),
            "dtypes": dict(dtypes)}
    model_type = str(config.get("model_type") or "")
    archs = [str(a) for a in info["architectures"]] if isinstance(info["architectures"], list) else []
    if (model_type in ("clip", "clip_vision_model", "clip_text_model") or any(a.startswith("CLIP") for a in archs)
            or siglip.is_siglip_config(config)):
        info = _describe_clip(info, config, shapes, folder)
        if dtype:
            info["storage"] = storage_plan(shapes, dtype)
        return info

    hf = layout.is_llava_hf(config, list(shapes))
    hf = layout.is_llava_hf(config)
    if hf:
        info["llava_hf_naming"] = layout.llava_hf_naming(list(shapes))
        llm_cfg = layout.llava_hf_config(config, os.path.join(folder, "config.json"))
        llm_map, clip_map = layout.map_llava_hf_names(list(shapes), strict=False)
        official = {new: shapes[old] for new, old in llm_map.items()}
        official.update({new: shapes[old] for new, old in clip_map.items()})
        shapes = official
    else:
        llm_cfg = config
    has_fom = any(n.startswith("model.mm_cross_attn.") for n in shapes)
    has_dp = any(n.startswith("model.mm_patch_encoder.") for n in shapes)
    info["kind"] = ("llava-hf LLaVA-1.5" if hf else ("TG-LLaVA" if (has_fom or has_dp) else "LLaVA-1.5"))
    text_type = "qwen2" if "qwen" in (model_type + " ".join(info["architectures"])).lower() else "llama"
    if hf:
        text_type = str((config.get("text_config") or {}).get("model_type") or "llama")
    info["llm"] = {
        "family": text_type, "hidden_size": llm_cfg.get("hidden_size"),
        "num_hidden_layers": llm_cfg.get("num_hidden_layers"),
        "num_attention_heads": llm_cfg.get("num_attention_heads"),
        "num_key_value_heads": llm_cfg.get("num_key_value_heads") or llm_cfg.get("num_attention_heads"),
        "intermediate_size": llm_cfg.get("intermediate_size"), "vocab_size": llm_cfg.get("vocab_size"),
        "rope_theta": _rope(llm_cfg, os.path.join(folder, "config.json")),
        "max_length": llm_cfg.get("tokenizer_model_max_length") or llm_cfg.get("max_position_embeddings"),
    }
    tg = {"fom": has_fom, "dp": has_dp}
    if has_fom:
        q = shapes.get("model.mm_cross_attn.query_tokens")
        tg["fom_queries"] = q[1][-2] if q else None
        tg["fom_layers"] = len({n.split(".layer.")[1].split(".")[0] for n in shapes
                                if n.startswith("model.mm_cross_attn.Qformer.bert.encoder.layer.")})
    if has_dp:
        lat = shapes.get("model.mm_patch_encoder.perceiver.latents")
        pos = shapes.get("model.mm_patch_encoder.position_embedding.weight")
        tg["dp_latents"] = lat[1][0] if lat else None
        tg["dp_positions"] = pos[1][0] if pos else None
        tg["dp_layers"] = len({n.split(".layers.")[1].split(".")[0] for n in shapes
                               if n.startswith("model.mm_patch_encoder.perceiver.layers.")})
    info["tg"] = tg

    def is_llm(n):
        return (n.startswith(("model.", "lm_head.")) and not n.startswith(
            ("model.mm_projector.", "model.mm_cross_attn.", "model.mm_patch_encoder.")))

    params = {"llm": _count(shapes, is_llm),
              "projector": _count(shapes, lambda n: n.startswith("model.mm_projector."))}
    if has_fom:
        params["tg-fom"] = _count(shapes, lambda n: n.startswith("model.mm_cross_attn."))
        params["tg-fom (unused at inference)"] = _count(
            shapes, lambda n: n.startswith("model.mm_cross_attn.") and _fom_unused(n))
    if has_dp:
        params["tg-dp"] = _count(shapes, lambda n: n.startswith("model.mm_patch_encoder."))
    if hf:
        params["vision tower (in folder)"] = _count(shapes, lambda n: n.startswith("vision_model."))
    info["params"] = params
    info["projector_type"] = llm_cfg.get("mm_projector_type", "mlp2x_gelu")
    info["image_aspect_ratio"] = llm_cfg.get("image_aspect_ratio")
    info["conv_mode"] = conversation.guess_conv_mode(llm_cfg, folder)

    towers = {}
    if hf:
        towers["vision"] = {"name": "(inside the folder)", "path": folder}
    else:
        for key, what in (("mm_vision_tower", "vision"), ("mm_text_tower", "text")):
            name = config.get(key)
            if not name or (what == "text" and not (has_fom or has_dp)):
                continue
            path = _find_tower(name, folder)
            entry = {"name": name, "path": path}
            if path:
                try:
                    tshapes, _ = tensor_shapes(path)
                    tower_config = os.path.join(path, "config.json")
                    is_siglip = os.path.isfile(tower_config) and siglip.is_siglip_config(read_json(tower_config))
                    entry["family"] = "SigLIP" if is_siglip else "CLIP"
                    names = siglip.tower_names if is_siglip else layout.clip_tower_names
                    label, mapping = names(list(tshapes), path)
                    prefix = "vision_model." if what == "vision" else "text_model."
                    entry["layout"] = label
                    entry["params"] = _count({n: tshapes[o] for n, o in mapping.items()},
                                             lambda n, p=prefix: n.startswith(p))
                except CheckpointError as e:
                    entry["error"] = str(e)
            towers[what] = entry
    info["towers"] = towers
    tok_files = [n for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
                 if os.path.isfile(os.path.join(folder, n))]
    info["tokenizer_files"] = tok_files
    if dtype:
        info["storage"] = storage_plan(shapes, dtype, bool(llm_cfg.get("tie_word_embeddings")))
    return info


def _rope(llm_cfg, path):
    """The rotary base loading would use, or the reason loading refuses the config's rotary settings."""
    try:
        return layout.rope_theta(llm_cfg, path)
    except CheckpointError as e:
        return f"invalid ({e})"


def _describe_clip(info, config, shapes, folder):
    """The tower folder part of describe() (CLIP or SigLIP): tensor layout, and each tower's settings as
    loading will use them."""
    path = os.path.join(folder, "config.json")
    is_siglip = siglip.is_siglip_config(config)
    label, mapping = (siglip.tower_names if is_siglip else layout.clip_tower_names)(list(shapes), folder)
    official = {new: shapes[old] for new, old in mapping.items()}
    info["kind"] = "SigLIP" if is_siglip else "CLIP"
    info["clip_layout"] = label
    info["params"] = {"vision tower": _count(official, lambda n: n.startswith("vision_model.")),
                      "text tower": _count(official, lambda n: n.startswith("text_model.")),
                      "other": _count(shapes, lambda n, used=set(mapping.values()): n not in used)}
    configs = siglip.tower_configs(config, path)
    info["vision"] = configs["vision_config"]
    info["text"] = configs["text_config"]
    info["defaulted"] = configs["defaulted"]
    info["legacy_config"] = configs["legacy"]
    return info


def _fmt_count(n):
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return str(n)


def format_info(info):
    """Human-readable lines for a describe() dict."""
    lines = [f"{info['folder']}: {info['kind']}",
             f"  architecture: {', '.join(info['architectures']) or '?'} (model_type {info['model_type']})",
             f"  weights: {', '.join(info['files']) or 'none'} ({info['n_tensors']} tensors; "
             + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items())) + ")"]
    st = info.get("storage")
    if st:
        parts = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(st["bytes"].items()) if v)
        lines.append(f"  stored as {st['dtype']}: {sum(st['bytes'].values()) / 1e9:.2f} GB ({parts})")
        if st["float16_fallback"]:
            lines.append(f"  float16 fallback (input features not a multiple of 32): {', '.join(st['float16_fallback'])}")
    if info["kind"] in ("CLIP", "SigLIP"):
        label = info.get("clip_layout", "?")
        note = layout.CLIP_LAYOUT_NOTES.get(label) or siglip.LAYOUT_NOTES.get(label)
        lines.append(f"  tensor layout: {label}" + (f" ({note})" if note else ""))
        v, t = info.get("vision"), info.get("text")
        defaulted = info.get("defaulted") or {}

        def val(cfg, part, key):
            mark = " (default)" if key in defaulted.get(part, ()) else ""
            return f"{cfg.get(key)}{mark}"
        if v:
            lines.append(f"  vision: width {val(v, 'vision_config', 'hidden_size')}, "
                         f"{val(v, 'vision_config', 'num_hidden_layers')} layers, "
                         f"image {val(v, 'vision_config', 'image_size')}, patch {val(v, 'vision_config', 'patch_size')}, "
                         f"{val(v, 'vision_config', 'num_attention_heads')} heads, "
                         f"ffn {val(v, 'vision_config', 'intermediate_size')}, "
                         f"act {val(v, 'vision_config', 'hidden_act')}, eps {val(v, 'vision_config', 'layer_norm_eps')}")
        if t:
            eos = t.get("eos_token_id")
            pool = f"eos {val(t, 'text_config', 'eos_token_id')} (pooling at " + (
                "argmax(ids), legacy)" if eos == 2 else f"first token {eos})")
            if info["kind"] == "SigLIP":
                pool = "pooled by its head at the last position (texts padded to all positions)"
            lines.append(f"  text: width {val(t, 'text_config', 'hidden_size')}, "
                         f"{val(t, 'text_config', 'num_hidden_layers')} layers, "
                         f"vocab {val(t, 'text_config', 'vocab_size')}, "
                         f"{val(t, 'text_config', 'num_attention_heads')} heads, "
                         f"ffn {val(t, 'text_config', 'intermediate_size')}, "
                         f"positions {val(t, 'text_config', 'max_position_embeddings')}, "
                         f"act {val(t, 'text_config', 'hidden_act')}, {pool}")
        for note in info.get("legacy_config") or ():
            lines.append(f"  legacy config: {note} (as transformers reads it)")
        if any(defaulted.values()):
            lines.append(f"  (default) = not in config.json; transformers' {info['kind']} config default, which loading "
                         "uses")
    else:
        if info.get("llava_hf_naming"):
            lines.append(f"  llava-hf tensor naming: {info['llava_hf_naming']}")
        m = info["llm"]
        lines.append(f"  LLM: {m['family']}, hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, "
                     f"{m['num_attention_heads']} heads ({m['num_key_value_heads']} kv), ffn {m['intermediate_size']}, "
                     f"vocab {m['vocab_size']}, rope_theta {m['rope_theta']}, max length {m['max_length']}")
        tg = info["tg"]
        fom = (f"yes ({tg['fom_layers']} Q-former layers, {tg['fom_queries']} queries)" if tg["fom"] else "no")
        dp = (f"yes ({tg['dp_layers']} perceiver layers, {tg['dp_latents']} latents, {tg['dp_positions']} positions)"
              if tg["dp"] else "no")
        lines.append(f"  TG modules: FOM {fom}; DP {dp}")
        lines.append(f"  projector: {info['projector_type']}; image preprocessing: "
                     f"{info['image_aspect_ratio'] or 'crop'}; chat template: {info['conv_mode']}")
        for what, t in info["towers"].items():
            where = t["path"] or "NOT FOUND locally or in the Hugging Face cache (pass --clip DIR)"
            extra = f", {_fmt_count(t['params'])} params" if t.get("params") is not None else ""
            extra += f", {t['family']}" if t.get("family") else ""
            extra += f", {t['layout']} layout" if t.get("layout") else ""
            extra += f" (unreadable: {t['error']})" if t.get("error") else ""
            lines.append(f"  {what} tower: {t['name']} -> {where}{extra}")
        lines.append(f"  tokenizer files: {', '.join(info['tokenizer_files']) or 'none'}")
    lines.append("  parameters:")
    total = 0
    for k, v in info["params"].items():
        lines.append(f"    {k:<30} {_fmt_count(v):>10}")
        if "unused" not in k:
            total += v
    for t in info.get("towers", {}).values():
        if t.get("params") is not None and t["path"] != info["folder"]:
            total += t["params"]
    label = "total (with towers found)" if info.get("towers") else "total"
    lines.append(f"    {label:<30} {_fmt_count(total):>10}")
    return "\n".join(lines)
