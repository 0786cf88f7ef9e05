"""`tgllava info`: describe a checkpoint folder as loading sees it, reading no weights.

`describe(folder)` runs the loader's own resolution on the folder (loader.read_llm_folder /
find_towers: configs and tensor headers, tower folders found as load() finds them but never
downloaded) and its own size rules (configs.llm_sizes, loader.tg_sizes, loader.checked_config),
and returns a plain dict: the architecture and LLM sizes, parameter counts per part (LLM,
projector, TG-FOM, TG-DP, vision and text towers), which TG modules are present, the chat
template, the weight files, the tower folders with their family (CLIP or SigLIP), and whether
load()'s checks pass (or the error load() would raise).  With dtype, also how loading in that
storage format stores the model (the C core's own plan).  A CLIP or SigLIP tower folder is
described through loader.read_tower.  `format_info` renders the dict as text.
"""

import collections
import os

import numpy as np

from . import _C, configs, conversation, loader, siglip
from .errors import CheckpointError
from .tensor_names import CLIP_LAYOUT_NOTES, DP_PREFIX, FOM_PREFIX, PROJECTOR_PREFIX


# the tower settings format_info shows: (label, config key)
_VISION_FIELDS = (("width {}", "hidden_size"), ("{} layers", "num_hidden_layers"), ("image {}", "image_size"),
                  ("patch {}", "patch_size"), ("{} heads", "num_attention_heads"),
                  ("ffn {}", "intermediate_size"), ("act {}", "hidden_act"), ("eps {}", "layer_norm_eps"))
_TEXT_FIELDS = (("width {}", "hidden_size"), ("{} layers", "num_hidden_layers"), ("vocab {}", "vocab_size"),
                ("{} heads", "num_attention_heads"), ("ffn {}", "intermediate_size"),
                ("positions {}", "max_position_embeddings"), ("act {}", "hidden_act"))


def _count(refs, pred):
    return sum(int(np.prod(r.shape)) for n, r in refs.items() if pred(n))


def _fom_unused(name):
    """Q-former tensors present in checkpoints but not used at inference (SPEC 2.3)."""
    if ".Qformer.cls." in name or ".embeddings.word_embeddings." in name or ".embeddings.position_embeddings." in name:
        return True
    return ".layer." in name and (".intermediate.dense." in name or
                                  (".output." in name and ".attention.output." not in name and
                                   ".crossattention.output." not in name and ".output_query." not in name))


def storage_plan(cfg, dtype):
    """How load(dtype=...) stores the model of size dict `cfg` (the C core's own plan, from a core that
    allocates nothing): bytes per stored dtype, and the matrices that fall back to float16 because
    int8/int4 cannot block their input features."""
    probe = _C.Model(dict(cfg, dtype=_C.DTYPES.index(dtype)), "cpu")
    total, fallback = collections.Counter(), []
    for name, stored, nbytes in probe.storage():
        total[stored] += nbytes
        if dtype in ("int8", "int4") and stored == "float16":
            fallback.append(name)
    return {"dtype": dtype, "bytes": dict(total), "float16_fallback": fallback}


def describe(folder, dtype=None, clip_dir=None):
    """A dict describing the checkpoint in `folder` (see the module docstring); clip_dir as load()'s."""
    folder = os.fspath(folder)
    config = loader.folder_config(folder)
    info = {"folder": folder, "architectures": config.get("architectures") or [],
            "model_type": config.get("model_type")}
    if loader.is_tower_config(config):
        return _describe_clip(info, folder, dtype)
    plan = loader.read_llm_folder(folder)
    llm_cfg, refs, path = plan["llm_config"], plan["refs"], plan["llm_config_path"]
    hf = plan["kind"] == "llava-hf"
    info.update(files=plan["files"], n_tensors=len(refs),
                dtypes=dict(collections.Counter(r.dtype for r in refs.values())))
    if hf:
        info["llava_hf_naming"] = plan["llava_hf_naming"]
    has_fom = any(n.startswith(FOM_PREFIX) for n in refs)
    has_dp = any(n.startswith(DP_PREFIX) for n in refs)
    info["kind"] = "llava-hf LLaVA-1.5" if hf else ("TG-LLaVA" if plan["has_tg"] else "LLaVA-1.5")
    family = "qwen2" if "qwen" in (str(llm_cfg.get("model_type")) + " ".join(map(str, info["architectures"]))).lower() \
        else "llama"
    info["llm"] = _checked(lambda: configs.llm_sizes(llm_cfg, path), family=family)
    tg = _checked(lambda: loader.tg_sizes(refs), fom=has_fom, dp=has_dp)
    info["tg"] = {key: tg[key] for key in ("fom", "dp", "error", "q_layers", "q_queries", "p_layers", "p_latents",
                                           "p_positions") if key in tg}

    def is_llm(n):
        return n.startswith(("model.", "lm_head.")) and not n.startswith((PROJECTOR_PREFIX, FOM_PREFIX, DP_PREFIX))

    params = {"llm": _count(refs, is_llm), "projector": _count(refs, lambda n: n.startswith(PROJECTOR_PREFIX))}
    if has_fom:
        params["tg-fom"] = _count(refs, lambda n: n.startswith(FOM_PREFIX))
        params["tg-fom (unused at inference)"] = _count(refs, lambda n: n.startswith(FOM_PREFIX) and _fom_unused(n))
    if has_dp:
        params["tg-dp"] = _count(refs, lambda n: n.startswith(DP_PREFIX))
    if hf:
        params["vision tower (in folder)"] = _count(refs, lambda n: n.startswith("vision_model."))
    info["params"] = params
    try:
        info["projector_type"] = loader.projector_type(llm_cfg, refs, path)
    except CheckpointError as e:
        info["projector_type"] = f"invalid ({e})"
    info["image_aspect_ratio"] = llm_cfg.get("image_aspect_ratio")
    info["conv_mode"] = conversation.guess_conv_mode(llm_cfg, folder)
    info["tokenizer_files"] = [n for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
                               if os.path.isfile(os.path.join(folder, n))]
    info["towers"] = {}
    try:
        plan = loader.find_towers(plan, clip_dir, download=False)
        for what in ("vision", "text"):
            if plan[f"{what}_dir"]:
                info["towers"][what] = {
                    "name": plan["tower_names"][what], "path": plan[f"{what}_dir"],
                    "family": "SigLIP" if siglip.is_siglip(plan["clip_config"][f"{what}_config"]) else "CLIP",
                    "layout": plan["tower_layouts"][what],
                    "params": _count(plan["refs"], lambda n, p=f"{what}_model.": n.startswith(p))}
        cfg = loader.checked_config(plan)
    except CheckpointError as e:
        info["load_check"] = str(e)
        return info
    info["load_check"] = "passed"
    if dtype:
        info["storage"] = storage_plan(cfg, dtype)
    return info


def _checked(sizes, **always):
    """sizes() with `always` added, or `always` with the CheckpointError loading would raise."""
    try:
        return dict(sizes(), **always)
    except CheckpointError as e:
        return dict(always, error=str(e))


def _describe_clip(info, folder, dtype):
    """The tower folder part of describe() (CLIP or SigLIP): tensor layout, and each tower's settings as
    loading will use them."""
    tower = loader.read_tower(folder)
    refs, towers = tower["refs"], tower["configs"]
    is_siglip = siglip.is_siglip(towers["vision_config"]) or siglip.is_siglip(towers["text_config"])
    info.update(kind="SigLIP" if is_siglip else "CLIP", clip_layout=tower["layout"], files=tower["files"],
                n_tensors=len(refs) + len(tower["other"]),
                dtypes=dict(collections.Counter(r.dtype for r in list(refs.values()) + list(tower["other"].values()))))
    info["params"] = {"vision tower": _count(refs, lambda n: n.startswith("vision_model.")),
                      "text tower": _count(refs, lambda n: n.startswith("text_model.")),
                      "other": _count(tower["other"], lambda n: True)}
    info.update(vision=towers["vision_config"], text=towers["text_config"], defaulted=towers["defaulted"],
                legacy_config=towers["legacy"])
    if dtype:
        info["storage"] = "a tower is stored as part of a model: give the LLM folder"
    return info


def _fmt_count(n, units=(("B", 1e9, 2), ("M", 1e6, 2), ("K", 1e3, 1)), smaller="{}"):
    """n in the largest of `units` (name, scale, decimals) it reaches, else `smaller` formatted with n."""
    for unit, scale, digits in units:
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return smaller.format(n)


def _fmt_bytes(n):
    """A byte count in the unit its size calls for (decimal: 1 GB = 1e9 bytes)."""
    return _fmt_count(n, (("GB", 1e9, 2), ("MB", 1e6, 2), ("KB", 1e3, 2)), "{} B")


def format_info(info):
    """Human-readable lines for a describe() dict."""
    lines = [f"{info['folder']}: {info['kind']}",
             f"  architecture: {', '.join(map(str, info['architectures'])) or '?'} (model_type {info['model_type']})",
             f"  weights: {', '.join(info['files']) or 'none'} ({info['n_tensors']} tensors; "
             + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items())) + ")"]
    st = info.get("storage")
    if isinstance(st, str):
        lines.append(f"  storage plan: {st}")
    elif st:
        parts = ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in sorted(st["bytes"].items()) if v)
        lines.append(f"  stored as {st['dtype']}: {_fmt_bytes(sum(st['bytes'].values()))} ({parts})")
        if st["float16_fallback"]:
            lines.append(f"  float16 fallback (input features not a multiple of 32): {', '.join(st['float16_fallback'])}")
    if info["kind"] in ("CLIP", "SigLIP"):
        label = info.get("clip_layout", "?")
        note = CLIP_LAYOUT_NOTES.get(label) or siglip.LAYOUT_NOTES.get(label)
        lines.append(f"  tensor layout: {label}" + (f" ({note})" if note else ""))
        v, t = info.get("vision"), info.get("text")
        defaulted = info.get("defaulted") or {}

        def val(cfg, part, key):
            mark = " (default)" if key in defaulted.get(part, ()) else ""
            return f"{cfg.get(key)}{mark}"

        def settings(cfg, part, fields):
            return ", ".join(label.format(val(cfg, part, key)) for label, key in fields)
        if v:
            lines.append(f"  vision: {settings(v, 'vision_config', _VISION_FIELDS)}")
        if t:
            eos = t.get("eos_token_id")
            pool = f"eos {val(t, 'text_config', 'eos_token_id')} (pooling at " + (
                "argmax(ids), legacy)" if eos == 2 else f"first token {eos})")
            if info["kind"] == "SigLIP":
                pool = "pooled by its head at the last position (texts padded to all positions)"
            lines.append(f"  text: {settings(t, 'text_config', _TEXT_FIELDS)}, {pool}")
        for note in info.get("legacy_config") or ():
            lines.append(f"  legacy config: {note} (as transformers reads it)")
        if any(defaulted.values()):
            lines.append(f"  (default) = not in config.json; transformers' {info['kind']} config default, which loading "
                         "uses")
    else:
        if info.get("llava_hf_naming"):
            lines.append(f"  llava-hf tensor naming: {info['llava_hf_naming']}")
        m = info["llm"]
        if "error" in m:
            lines.append(f"  LLM: {m['family']}, invalid config ({m['error']})")
        else:
            lines.append(f"  LLM: {m['family']}, hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads "
                         f"({m['kv_heads']} kv), ffn {m['ffn']}, vocab {m['vocab']}, rope_theta {m['rope_theta']}, "
                         f"max length {m['max_len']}")
        tg = info["tg"]
        if "error" in tg:
            lines.append(f"  TG modules: FOM {'yes' if tg['fom'] else 'no'}; DP {'yes' if tg['dp'] else 'no'} "
                         f"(invalid: {tg['error']})")
        else:
            fom = f"yes ({tg['q_layers']} Q-former layers, {tg['q_queries']} queries)" if tg["fom"] else "no"
            dp = (f"yes ({tg['p_layers']} perceiver layers, {tg['p_latents']} latents, {tg['p_positions']} positions)"
                  if tg["dp"] else "no")
            lines.append(f"  TG modules: FOM {fom}; DP {dp}")
        lines.append(f"  projector: {info['projector_type']}; image preprocessing: "
                     f"{info['image_aspect_ratio'] or 'crop'}; chat template: {info['conv_mode']}")
        for what, t in info["towers"].items():
            lines.append(f"  {what} tower: {t['name']} -> {t['path']}, {_fmt_count(t['params'])} params, "
                         f"{t['family']}, {t['layout']} layout")
        lines.append(f"  tokenizer files: {', '.join(info['tokenizer_files']) or 'none'}")
        check = info["load_check"]
        lines.append("  load check: passed (configs, towers, tensor names and shapes; no weight read)" if check == "passed"
                     else f"  load check: FAILED: {check}")
    lines.append("  parameters:")
    lines += [f"    {k:<30} {_fmt_count(v):>10}" for k, v in info["params"].items()]
    total = sum(v for k, v in info["params"].items() if "unused" not in k)
    total += sum(t["params"] for t in info.get("towers", {}).values() if t["path"] != info["folder"])
    label = "total (with towers found)" if info.get("towers") else "total"
    lines.append(f"    {label:<30} {_fmt_count(total):>10}")
    return "\n".join(lines)
