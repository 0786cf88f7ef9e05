"""Loading a checkpoint: tgllava.load() and everything it does before the model runs.

load() resolves the folders (the LLM folder's config.json and tensor headers, the CLIP or SigLIP
tower folders its config names or clip_dir gives, or a llava-hf folder with the tower inside:
hf_load.py), works out every size the C core needs from the configs and the tensor shapes (SPEC
section 4 defaults for what shapes do not tell), checks tensor names, dtypes and shapes, and
tokenizer files (preflight), all before any weight byte is read; then it creates the C model on
the chosen backend, streams the tensors into it and returns a model.Model.
"""
import os
import sys

import numpy as np

from . import _C
from . import config_schema, configs, siglip
from .checkpoint import folder_refs, read_json
from .errors import CheckpointError
from .hub import resolve_tower
from .model import Model
from .tensor_names import (DP_PREFIX, FOM_PREFIX, IGNORED_SUFFIXES, PROJECTOR_PREFIX, clip_tower_names,
                           count_layers, is_llava_hf)

# storage dtypes: _C.DTYPES (their names, indexed by the C core's code); these the CUDA backend holds
GPU_DTYPES = ("float32", "float16", "bfloat16")
# the CPU's default storage (README): exact float32 for small models, the checkpoint's own 16-bit dtype up to
# 4 B parameters, int8 above (a 7B model then needs ~8 GB and loads on a 16 GB machine)
FLOAT32_MAX_PARAMS = 1.5e9
SIXTEEN_BIT_MAX_PARAMS = 4e9

# TG module sizes fixed by the reference code (SPEC 4), used where shapes are silent
TG_DEFAULTS = {"q_heads": 16, "q_eps": 1e-12, "q_cross_freq": 2, "p_heads": 16, "p_eps": 1e-5}


def _find_tower(name, llm_dir, download=True):
    """The folder a tower name in an LLM config points to (local path, relative to the LLM folder,
    Hugging Face cache or, with download, a download via hub.resolve_tower), or None."""
    if not isinstance(name, str) or not name:
        return None
    for cand in (name, os.path.join(llm_dir, name)):
        if os.path.isdir(cand):
            return cand
    return resolve_tower(name, download=download)


def _resolve_clip_dir(cfg, llm_dir, clip_dir, download=True):
    """(the CLIP vision tower folder, the name it was found by): clip_dir when given, else what
    mm_vision_tower (or mm_text_tower) names."""
    if clip_dir is not None:
        if not os.path.isdir(clip_dir):
            raise CheckpointError(f"{clip_dir}: no such CLIP tower folder")
        return os.fspath(clip_dir), os.fspath(clip_dir)
    for key in ("mm_vision_tower", "mm_text_tower"):
        found = _find_tower(cfg.get(key), llm_dir, download)
        if found:
            return found, cfg.get(key)
    raise CheckpointError(
        f"{llm_dir}: cannot find the CLIP tower '{cfg.get('mm_vision_tower')}': pass clip_dir=... "
        "(a folder with vision_model.* / text_model.* tensors)")


def tg_sizes(refs, overrides=None):
    """The TG part of the size dict from tensor names and shapes: has_fom, has_dp, and the sizes of the
    FOM Q-former (q_*) and the DP perceiver (p_*) when present; TG_DEFAULTS (updated with `overrides`)
    give what the shapes do not tell."""
    def shape(name):
        if name not in refs:
            raise CheckpointError(f"missing tensor {name}")
        return refs[name].shape

    names = list(refs)
    has_fom = any(n.startswith(FOM_PREFIX) for n in names)
    has_dp = any(n.startswith(DP_PREFIX) for n in names)
    c = {"has_fom": int(has_fom), "has_dp": int(has_dp)}
    d = {**TG_DEFAULTS, **(overrides or {})}
    if has_fom:
        pf = FOM_PREFIX + "Qformer.bert.encoder.layer."
        c.update(q_layers=count_layers(names, pf), q_heads=d["q_heads"], q_eps=d["q_eps"], q_cross_freq=d["q_cross_freq"],
                 q_ffn=shape(pf + "0.intermediate_query.dense.weight")[0],
                 q_queries=shape(FOM_PREFIX + "query_tokens")[-2])
    if has_dp:
        pf = DP_PREFIX + "perceiver.layers."
        heads = d["p_heads"]
        qrows = shape(pf + "0.self_attn.q_proj.weight")[0]
        hd = qrows // heads
        if hd <= 0:
            raise CheckpointError(f"{pf}0.self_attn.q_proj.weight has {qrows} rows, fewer than the {heads} "
                                  "perceiver heads")
        c.update(p_layers=count_layers(names, pf), p_heads=heads, p_head_dim=hd,
                 p_kv_heads=shape(pf + "0.self_attn.k_proj.weight")[0] // hd,
                 p_latents=shape(DP_PREFIX + "perceiver.latents")[0],
                 p_ffn=shape(pf + "0.mlp.gate_proj.weight")[0],
                 p_positions=shape(DP_PREFIX + "position_embedding.weight")[0], p_eps=d["p_eps"])
    return c


def projector_type(llm_cfg, refs, llm_path="config.json"):
    """mm_projector_type as loading reads it: the config's, else mlp2x_gelu when the tensors hold a
    two-layer projector, else linear; any other type raises CheckpointError."""
    ptype = llm_cfg.get("mm_projector_type", "mlp2x_gelu" if PROJECTOR_PREFIX + "0.weight" in refs else "linear")
    if ptype not in ("mlp2x_gelu", "linear"):
        raise CheckpointError(f"{llm_path}: mm_projector_type {ptype!r} is not supported (mlp2x_gelu or linear)")
    return ptype


def build_config(llm_cfg, clip_cfg, refs, dtype="float32", overrides=None, llm_path="config.json",
                 clip_path="config.json"):
    """The flat size dictionary of the C core (tg_config) from configs and tensor shapes.

    llm_cfg is an official-layout LLM config, clip_cfg any CLIP or SigLIP tower config (read with
    siglip.tower_configs); only the names and shapes of `refs` are used.  Every value is checked
    (configs): a bad one, or a layer count that disagrees with the tensors, raises CheckpointError
    naming the config file (llm_path / clip_path; clip_path may be a (vision, text) pair when the
    towers come from two folders) and the key.  config_schema.check makes sure the result has
    exactly the fields its modules need (anything else is a bug: TgError).
    """
    vision_path, text_path = clip_path if isinstance(clip_path, (tuple, list)) else (clip_path, clip_path)
    towers = siglip.tower_configs(clip_cfg, vision_path)
    vc, tc = towers["vision_config"], towers["text_config"]
    names = list(refs)
    if vc is None:
        raise CheckpointError(f"{vision_path}: has no vision tower config (needed for the vision tower)")
    c = siglip.tower_vision_sizes(vc, vision_path, llm_cfg.get("mm_vision_select_layer", -2), select_path=llm_path)
    check_layer_count(names, "vision_model.encoder.layers.", c["v_layers"], vision_path,
                      "vision_config.num_hidden_layers")
    if llm_cfg.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError(f"{llm_path}: mm_vision_select_feature {llm_cfg.get('mm_vision_select_feature')!r} "
                              "is not supported (only 'patch')")
    tg = tg_sizes(refs, overrides)
    if tg["has_fom"] or tg["has_dp"]:
        if tc is None:
            raise CheckpointError(f"{text_path}: has no text tower config, and this TG-LLaVA checkpoint needs the "
                                  "text tower")
        c.update(siglip.tower_text_sizes(tc, text_path))
        check_layer_count(names, "text_model.encoder.layers.", c["t_layers"], text_path,
                          "text_config.num_hidden_layers")
    c.update(tg)
    c["proj_mlp"] = int(projector_type(llm_cfg, refs, llm_path) == "mlp2x_gelu")
    m = configs.llm_sizes(llm_cfg, llm_path)
    check_layer_count(names, "model.layers.", m["layers"], llm_path, "num_hidden_layers")
    c.update({key: value for key, value in m.items() if key != "tie"},  # llm_sizes names tg_config fields
             qkv_bias=int("model.layers.0.self_attn.q_proj.bias" in refs),
             tie_embeddings=int(m["tie"] and "lm_head.weight" not in refs), dtype=_C.DTYPES.index(dtype))
    return config_schema.check(c)


def check_device_dtype(device, dtype):
    """Refuse an unknown device or a storage dtype the device cannot hold (None is resolved later)."""
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dtype is not None and dtype not in _C.DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_C.DTYPES)}, got {dtype!r}")
    if dtype is not None and device != "cpu" and dtype not in GPU_DTYPES:
        raise ValueError(f"dtype {dtype!r} is a CPU format; on {device} use one of {', '.join(GPU_DTYPES)}")


def default_dtype(device, refs):
    """The storage dtype load() picks when none is given (the rule is stated in the README)."""
    if device != "cpu":
        return "bfloat16"
    params = sum(int(np.prod(r.shape)) for r in refs.values())
    if params <= FLOAT32_MAX_PARAMS:
        return "float32"
    if params <= SIXTEEN_BIT_MAX_PARAMS:
        f16 = sum(int(np.prod(r.shape)) for r in refs.values() if r.dtype == "F16")
        return "float16" if 2 * f16 > params else "bfloat16"
    return "int8"


def load(llm_dir, clip_dir=None, device="cpu", dtype=None, progress=None, tg_overrides=None):
    """Load a TG-LLaVA or LLaVA-1.5 checkpoint onto `device`; every layout goes through here.

    llm_dir is an official LLM folder (TG-LLaVA or LLaVA-1.5; the CLIP folder is clip_dir, or
    found from mm_vision_tower) or a llava-hf folder (LlavaForConditionalGeneration, the vision
    tower inside it: clip_dir is not used).

    dtype: storage of the large matrices (Linear weights, embedding tables): "float32" (exact, the
    conformance mode), "float16", "bfloat16", and on the CPU "int8" / "int4" (blocks of 32 input
    features with a float16 scale).  None: on CUDA bfloat16; on the CPU float32 up to 1.5 B parameters,
    the checkpoint's own 16-bit dtype up to 4 B, int8 above.  Weights go from the checkpoint's bytes
    straight into that format, a slice at a time.  progress: a bar on a terminal for loads over a
    second (None), always (True) or never (False).
    """
    check_device_dtype(device, dtype)
    plan = resolve_folders(llm_dir, clip_dir)
    if dtype is None:
        dtype = default_dtype(device, plan["refs"])
    cfg = checked_config(plan, dtype, tg_overrides)
    core = build_core(cfg, device, plan["refs"], lambda name: blamed_folder(plan, name), progress)
    return Model(core, plan["llm_config"], plan["clip_config"], plan["llm_dir"], plan["clip_dir"], dtype)


def resolve_folders(llm_dir, clip_dir=None, download=True):
    """Everything load() learns before reading a weight: configs, tower folders, tensor headers.

    read_llm_folder's dict, with the CLIP towers of an official folder found (find_towers;
    download=False: never from the network).  Keys: kind ("official" or "llava-hf"), llm_dir,
    llm_config (official keys), llm_config_path, files (the LLM folder's weight files), has_tg,
    vision_dir and text_dir (the folders the two towers come from; text_dir None without TG
    modules), tower_names and tower_layouts ({"vision", "text"}: what each was found by, its
    layout label), clip_dir (the folder a Model reports: the text tower's when TG-LLaVA needs it,
    for its tokenizer, else the vision tower's), clip_config (complete), clip_config_paths, and
    refs (official name -> TensorRef from the headers: every tensor the model may use).
    """
    return find_towers(read_llm_folder(llm_dir), clip_dir, download)


def is_tower_config(config):
    """True for the config.json of a tower folder: CLIP or SigLIP (the model, or one of its towers alone)."""
    model_type = str(config.get("model_type") or "")
    archs = config.get("architectures") if isinstance(config.get("architectures"), list) else []
    return model_type in ("clip", "clip_vision_model", "clip_text_model") or any(
        str(a).startswith("CLIP") for a in archs) or siglip.is_siglip_config(config)


def folder_config(folder):
    """The config.json (a dict) of checkpoint folder `folder`.  A folder without one that holds a checkpoint
    one level down (the `llm/` of `tgllava demo --keep DIR`) gets a CheckpointError naming that folder."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        inner = _llm_folders_inside(folder)
        if inner:
            raise CheckpointError(f"{folder}: no config.json (not a checkpoint folder); did you mean "
                                  f"{' or '.join(inner)}?")
        raise CheckpointError(f"{folder}: no config.json (not a checkpoint folder)")
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return config


def _llm_folders_inside(folder):
    """The sub-folders of `folder` whose config.json is not a CLIP tower's (a checkpoint's LLM folder)."""
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name, "config.json")
        if os.path.isfile(path):
            try:
                config = read_json(path)
            except CheckpointError:
                continue
            if isinstance(config, dict) and not is_tower_config(config):
                found.append(os.path.join(folder, name))
    return found


def read_llm_folder(llm_dir):
    """The LLM folder as load() reads it, before any tower folder: resolve_folders's keys but the towers'.

    Which layout the folder is in is decided here, once, from the config and the tensor names
    (tensor_names.is_llava_hf).  A llava-hf folder holds its vision tower: its dict is complete
    (hf_load.llava_hf_refs renames its tensors and converts its config; llava_hf_naming says which
    naming it uses).
    """
    llm_dir = os.fspath(llm_dir)
    llm_config_path = os.path.join(llm_dir, "config.json")
    llm_cfg = folder_config(llm_dir)
    if is_tower_config(llm_cfg):
        family = "SigLIP" if siglip.is_siglip_config(llm_cfg) else "CLIP"
        raise CheckpointError(f"{llm_dir}: this is a {family} folder (a vision / text tower), not an LLM checkpoint: "
                              "pass it as clip_dir=..., with the LLM folder as llm_dir=...")
    llm_refs = folder_refs(llm_dir)
    plan = {"llm_dir": llm_dir, "llm_config_path": llm_config_path,
            "files": sorted({os.path.basename(r.path) for r in llm_refs.values()})}
    if is_llava_hf(llm_cfg, list(llm_refs)):
        from .hf_load import llava_hf_refs  # lazily: hf_load builds on this module
        hf_cfg, clip_cfg, refs = llava_hf_refs(llm_cfg, llm_refs, llm_config_path)
        plan.update(kind="llava-hf", llm_config=hf_cfg, refs=refs, has_tg=False,
                    llava_hf_naming=hf_cfg["llava_hf_naming"], vision_dir=llm_dir, text_dir=None, clip_dir=llm_dir, clip_config=clip_cfg,
                    clip_config_paths=(llm_config_path, llm_config_path),
                    tower_names={"vision": "(inside the folder)", "text": None},
                    tower_layouts={"vision": "llava-hf vision_tower", "text": None})
        return plan
    has_tg = any(n.startswith((FOM_PREFIX, DP_PREFIX)) for n in llm_refs)
    plan.update(kind="official", llm_config=llm_cfg, refs=llm_refs, has_tg=has_tg)
    return plan


def find_towers(plan, clip_dir=None, download=True):
    """read_llm_folder's dict of an official folder, completed with its CLIP towers (see resolve_folders).

    The vision tower is clip_dir, or the folder mm_vision_tower (else mm_text_tower) names; a
    TG-LLaVA checkpoint takes its text tower from the same folder, or from the folder mm_text_tower
    names when the vision folder has none, or when mm_text_tower names another tower (a text guide
    of another family, e.g. SigLIP vision with a CLIP text tower) and it is found.  A llava-hf dict
    comes back as it is.
    """
    if plan["kind"] == "llava-hf":
        return plan
    llm_cfg, llm_dir = plan["llm_config"], plan["llm_dir"]
    vision_dir, vision_name = _resolve_clip_dir(llm_cfg, llm_dir, clip_dir, download)
    vision = read_tower(vision_dir)
    if not vision["has_vision"]:
        raise CheckpointError(f"{vision['folder']}: no CLIP vision tower tensors (found: {vision['layout']}); "
                              "expected vision_model.* or a CLIPVisionModel's embeddings.* / encoder.layers.*")
    text, text_name = None, None
    if plan["has_tg"]:
        text, text_name = vision, vision_name
        name = llm_cfg.get("mm_text_tower")
        if not vision["has_text"] or (name and name != llm_cfg.get("mm_vision_tower")):
            other = _find_tower(name, llm_dir, download)
            if other and os.path.realpath(other) != os.path.realpath(vision["folder"]):
                found = read_tower(other)
                if found["has_text"] or not vision["has_text"]:
                    text, text_name = found, name
            if not text["has_text"]:
                raise CheckpointError(
                    f"{vision['folder']}: this TG-LLaVA checkpoint needs the CLIP text tower (text_model.*), but the "
                    f"folder holds a {vision['layout']} and mm_text_tower {name!r} was not found with one")
    refs = {n: r for n, r in vision["refs"].items() if n.startswith("vision_model.")}
    if text is not None:
        refs.update({n: r for n, r in text["refs"].items() if n.startswith("text_model.")})
    refs.update(plan["refs"])
    clip_config = {"model_type": "clip", "vision_config": vision["configs"]["vision_config"],
                   "text_config": (text or vision)["configs"]["text_config"]}
    return dict(plan, vision_dir=vision["folder"], text_dir=text["folder"] if text else None,
                clip_dir=text["folder"] if text else vision["folder"], clip_config=clip_config,
                clip_config_paths=(vision["config_path"], (text or vision)["config_path"]),
                tower_names={"vision": vision_name, "text": text_name},
                tower_layouts={"vision": vision["layout"], "text": text["layout"] if text else None}, refs=refs)


def blamed_folder(plan, name):
    """The folder of a resolve_folders dict that a tensor `name` should come from."""
    if name.startswith("text_model."):
        return plan["text_dir"]
    return plan["vision_dir"] if name.startswith("vision_model.") else plan["llm_dir"]


def checked_config(plan, dtype="float32", overrides=None):
    """build_config for a resolve_folders dict, with its tensors' names, dtypes and shapes checked
    against what that C core needs (check_tensors): everything a load checks before reading a weight."""
    cfg = build_config(plan["llm_config"], plan["clip_config"], plan["refs"], dtype, overrides,
                       plan["llm_config_path"], plan["clip_config_paths"])
    check_tensors(cfg, plan["refs"], lambda name: blamed_folder(plan, name))
    return cfg


def preflight(llm_dir, clip_dir=None, tokenizers=True):
    """Check what a load and a chat need that can be checked without reading a weight.

    Configs, tower folders, tensor names, dtypes and shapes (checked_config), and (tokenizers=True)
    the tokenizer files chat needs: the LLM's in llm_dir and, for TG-LLaVA, the text tower's
    (CLIP's, or SigLIP's spiece.model).  Raises CheckpointError on the first problem; returns
    resolve_folders()'s dict.  `tgllava generate` calls this first, so a folder without tokenizer
    files fails in a moment, not after reading every weight.
    """
    plan = resolve_folders(llm_dir, clip_dir)
    checked_config(plan)
    if tokenizers:
        check_tokenizer_files(plan["llm_dir"], "llm", " (needed to turn the question into token ids)")
        if plan["has_tg"] and siglip.is_siglip(plan["clip_config"]["text_config"]):
            siglip.check_tokenizer(plan["text_dir"], " (TG-LLaVA needs the tokenizer of its SigLIP text tower)")
        elif plan["has_tg"]:
            check_tokenizer_files(plan["text_dir"], "clip",
                                  " (TG-LLaVA needs the CLIP tokenizer of its text tower for the text guide)")
    return plan


def _stderr_is_terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def build_core(cfg, device, refs, where_missing, progress=None):
    """The C model for size dict `cfg` on `device`, filled from `refs` (name -> TensorRef).
    where_missing(name) names the folder blamed for an absent tensor.  Each tensor goes from its
    checkpoint bytes (memory-mapped) into the stored format; a progress bar on a terminal counts the
    bytes read when loading takes over a second (progress=True: always, False: never)."""
    core = _C.Model(cfg, device)
    sources = {name: _float_ref(refs, name, where_missing) for name, _, _ in core.required()}
    total = sum(int(np.prod(ref.shape)) * ref.itemsize for ref in sources.values())
    bar = None
    if progress or (progress is None and _stderr_is_terminal()):
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", delay=0 if progress else 1.0,
                   leave=False)
    try:
        for name, ref in sources.items():
            try:
                core.set_tensor(name, np.ascontiguousarray(ref.raw()), ref.src_code)
            except CheckpointError as e:
                raise CheckpointError(f"{ref.path}: {e}") from None
            if bar:
                bar.update(int(np.prod(ref.shape)) * ref.itemsize)
    finally:
        if bar:
            bar.close()
    core.finish()
    return core


# ---- what can be checked before a weight byte is read -------------------------------

def _float_ref(refs, name, where_missing):
    """refs[name]; CheckpointError when it is missing (blaming where_missing(name)) or not a float tensor."""
    ref = refs.get(name)
    if ref is None:
        raise CheckpointError(f"{where_missing(name)}: missing tensor {name}")
    if ref.src_code is None:
        raise CheckpointError(f"{ref.path}: tensor {name} has dtype {ref.dtype}, expected a float type")
    return ref


def check_layer_count(names, prefix, configured, path, key):
    """Refuse a config whose layer count disagrees with the layers the tensors hold (before the C
    core registers `configured` layers: a count of 2**31 - 1 must not get that far)."""
    have = count_layers(names, prefix)
    if have != configured:
        raise CheckpointError(f"{path}: {key} is {configured} but the weights hold {have} layers "
                              f"({prefix}0..{max(have - 1, 0)})")


# the tokenizer files each kind of folder may have, in the order the loader prefers them
_TOKENIZER_FILES = {"llm": (["tokenizer.json"], ["tokenizer.model"], ["vocab.json", "merges.txt"]),
                    "clip": (["tokenizer.json"], ["vocab.json", "merges.txt"])}


def tokenizer_files(folder, kind="llm"):
    """The tokenizer files of `folder` the loader would use, or None when there are none.

    kind "llm": tokenizer.json, tokenizer.model, or vocab.json + merges.txt
    (what tokenize.LlmTokenizer.from_folder reads); kind "clip":
    tokenizer.json or vocab.json + merges.txt (ClipTokenizer.from_folder).
    """
    def present(files):
        return all(os.path.isfile(os.path.join(folder, n)) for n in files)
    return next((list(files) for files in _TOKENIZER_FILES[kind] if present(files)), None)


def check_tokenizer_files(folder, kind="llm", why=""):
    """CheckpointError when `folder` has no tokenizer files of `kind` (see tokenizer_files)."""
    if tokenizer_files(folder, kind) is None:
        choices = [" + ".join(files) for files in _TOKENIZER_FILES[kind]]
        wanted = f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise CheckpointError(f"{folder}: no {'LLM' if kind == 'llm' else 'CLIP'} tokenizer files ({wanted}){why}")


def check_tensors(cfg, refs, where_missing):
    """Check tensor names, dtypes and shapes against what the C core for size dict `cfg` needs.

    Only the headers of `refs` (name -> TensorRef) are used, and the requirement list comes from a
    CPU core that registers parameters without allocating them.  Also refuses LLM layer tensors the
    core has no place for (o_proj / MLP biases, q/k norms: another model variant), which would
    otherwise be dropped silently.
    """
    required = _C.Model(dict(cfg, dtype=0), "cpu").required()
    needed = {name for name, _, _ in required}
    for name, shape, _ in required:
        ref = _float_ref(refs, name, where_missing)
        if tuple(ref.shape) != tuple(shape):
            raise CheckpointError(f"{ref.path}: tensor {name} has shape {tuple(ref.shape)}, expected {tuple(shape)}")
    for name in sorted(refs):
        if (name.startswith(("model.layers.", "model.norm.", "model.embed_tokens.")) and name not in needed
                and not name.endswith(IGNORED_SUFFIXES)):
            raise CheckpointError(f"{refs[name].path}: tensor {name} has no place in the model tgllava builds "
                                  "(a Llama / Qwen2 variant with extra parameters is not supported)")


def read_tower(folder):
    """A CLIP or SigLIP tower folder from its config and tensor headers: no tensor byte is read.

    Returns a dict: folder, config_path, configs (siglip.tower_configs), layout (clip_tower_names'
    label, Siglip* for SigLIP), refs ({official name: TensorRef} of the tower tensors, renamed to
    vision_model.* / text_model.*), other (the rest: projections, logit_scale), files (the weight
    files), has_vision, has_text.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such CLIP tower folder")
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path)
    tower_configs = siglip.tower_configs(config, config_path)
    raw = folder_refs(folder)
    names = siglip.tower_names if siglip.is_siglip_config(config) else clip_tower_names
    label, mapping = names(list(raw), folder)
    refs = {new: raw[old] if new == old else raw[old].renamed(new) for new, old in mapping.items()}
    has_vision = any(n.startswith("vision_model.") for n in refs)
    # a CLIPVisionConfig beside extra text tensors: the text tower is not usable
    has_text = tower_configs["text_config"] is not None and any(n.startswith("text_model.") for n in refs)
    if has_vision and tower_configs["vision_config"] is None:
        raise CheckpointError(f"{config_path}: the folder holds a vision tower ({label}) but the config has no "
                              "vision settings (a CLIPTextConfig)")
    used = set(mapping.values())
    other = {n: r for n, r in raw.items() if n not in used}
    return {"folder": folder, "config_path": config_path, "configs": tower_configs, "layout": label,
            "refs": refs, "other": other, "files": sorted({os.path.basename(r.path) for r in raw.values()}),
            "has_vision": has_vision, "has_text": has_text}
