"""The Python face of the model: tgllava.load() and the Model object.

load() reads config.json of the LLM folder and of the CLIP folder, works out
every size the C core needs from the configs and the tensor shapes (with
SPEC section 4 defaults for what shapes do not tell), creates the C model on
the chosen backend and streams the tensors into it.  Model methods convert
friendly inputs (lists, other float dtypes, single samples without a batch
axis) into the exact NumPy arrays the extension checks, and return NumPy.
"""
import os
import sys

import numpy as np

from . import _C
from . import config_schema, devarray
from .checkpoint import folder_refs, read_json
from .errors import CheckpointError, DeviceError, ShapeError
from .streaming import CountedCore, TokenStream

IMAGE_TOKEN_INDEX = -200
_ACTS = {"gelu": 1, "quick_gelu": 2, "silu": 3}
_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2, "int8": 3, "int4": 4}
GPU_DTYPES = ("float32", "float16", "bfloat16")
# the CPU's default storage (README): exact float32 for small models, the checkpoint's own 16-bit dtype up to
# 4 B parameters, int8 above (a 7B model then needs ~8 GB and loads on a 16 GB machine)
FLOAT32_MAX_PARAMS = 1.5e9
SIXTEEN_BIT_MAX_PARAMS = 4e9

# TG module sizes fixed by the reference code (SPEC 4), used where shapes are silent
TG_DEFAULTS = {"q_heads": 16, "q_eps": 1e-12, "q_cross_freq": 2, "p_heads": 16, "p_eps": 1e-5}


def _find_tower(name, llm_dir):
    """The folder a tower name in an LLM config points to (local path, relative to the LLM folder,
    Hugging Face cache or download via layout.resolve_tower), or None."""
    if not isinstance(name, str) or not name:
        return None
    for cand in (name, os.path.join(llm_dir, name)):
        if os.path.isdir(cand):
            return cand
    from .layout import resolve_tower
    return resolve_tower(name)


def _resolve_clip_dir(cfg, llm_dir, clip_dir):
    """The CLIP vision tower folder: clip_dir when given, else what mm_vision_tower (or mm_text_tower) names."""
    if clip_dir is not None:
        if not os.path.isdir(clip_dir):
            raise CheckpointError(f"{clip_dir}: no such CLIP tower folder")
        return os.fspath(clip_dir)
    for key in ("mm_vision_tower", "mm_text_tower"):
        found = _find_tower(cfg.get(key), llm_dir)
        if found:
            return found
    raise CheckpointError(
        f"{llm_dir}: cannot find the CLIP tower '{cfg.get('mm_vision_tower')}': pass clip_dir=... "
        "(a folder with vision_model.* / text_model.* tensors)")


def _count_layers(names, prefix):
    from .layout import count_layers
    return count_layers(names, prefix)


def build_config(llm_cfg, clip_cfg, refs, dtype="float32", overrides=None, llm_path="config.json",
                 clip_path="config.json"):
    """The flat size dictionary of the C core (tg_config) from configs and tensor shapes.

    llm_cfg is an official-layout LLM config, clip_cfg any CLIP or SigLIP tower
    config (read with siglip.tower_configs: legacy *_config_dict keys,
    transformers' defaults for missing keys; each tower's model_type names its
    family).  Every value is checked: a size that is not
    an integer in range, a non-finite or non-positive epsilon or rotary
    base, an unknown activation, rotary scaling, layer counts that disagree
    with the tensors, raise CheckpointError naming the config file
    (llm_path / clip_path; clip_path may be a (vision, text) pair when the
    towers come from two folders) and the key.  Only names and shapes of
    `refs` are used.  The result has exactly the fields its modules need
    (config_schema.check: a key outside the schema of csrc/config_fields.h is
    a bug and raises TgError).
    """
    from . import layout, siglip

    def shape(name):
        if name not in refs:
            raise CheckpointError(f"missing tensor {name}")
        return refs[name].shape

    vision_path, text_path = clip_path if isinstance(clip_path, (tuple, list)) else (clip_path, clip_path)
    towers = siglip.tower_configs(clip_cfg, vision_path)
    vc, tc = towers["vision_config"], towers["text_config"]
    names = list(refs)
    if vc is None:
        raise CheckpointError(f"{vision_path}: has no vision tower config (needed for the vision tower)")
    c = siglip.tower_vision_sizes(vc, vision_path, llm_cfg.get("mm_vision_select_layer", -2), select_path=llm_path)
    layout.check_layer_count(names, "vision_model.encoder.layers.", c["v_layers"], vision_path,
                             "vision_config.num_hidden_layers")
    if llm_cfg.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError(f"{llm_path}: mm_vision_select_feature {llm_cfg.get('mm_vision_select_feature')!r} "
                              "is not supported (only 'patch')")
    has_fom = any(n.startswith("model.mm_cross_attn.") for n in names)
    has_dp = any(n.startswith("model.mm_patch_encoder.") for n in names)
    c.update(has_fom=int(has_fom), has_dp=int(has_dp))
    if has_fom or has_dp:
        if tc is None:
            raise CheckpointError(f"{text_path}: has no text tower config, and this TG-LLaVA checkpoint needs the "
                                  "text tower")
        c.update(siglip.tower_text_sizes(tc, text_path))
        layout.check_layer_count(names, "text_model.encoder.layers.", c["t_layers"], text_path,
                                 "text_config.num_hidden_layers")
    d = dict(TG_DEFAULTS)
    d.update(overrides or {})
    if has_fom:
        pf = "model.mm_cross_attn.Qformer.bert.encoder.layer."
        c.update(q_layers=_count_layers(names, pf), q_heads=d["q_heads"], q_eps=d["q_eps"], q_cross_freq=d["q_cross_freq"],
                 q_ffn=shape(pf + "0.intermediate_query.dense.weight")[0],
                 q_queries=shape("model.mm_cross_attn.query_tokens")[-2])
    if has_dp:
        pf = "model.mm_patch_encoder.perceiver.layers."
        heads = d["p_heads"]
        qrows = shape(pf + "0.self_attn.q_proj.weight")[0]
        hd = qrows // heads
        if hd <= 0:
            raise CheckpointError(f"{pf}0.self_attn.q_proj.weight has {qrows} rows, fewer than the {heads} "
                                  "perceiver heads")
        c.update(p_layers=_count_layers(names, pf), p_heads=heads, p_head_dim=hd,
                 p_kv_heads=shape(pf + "0.self_attn.k_proj.weight")[0] // hd,
                 p_latents=shape("model.mm_patch_encoder.perceiver.latents")[0],
                 p_ffn=shape(pf + "0.mlp.gate_proj.weight")[0],
                 p_positions=shape("model.mm_patch_encoder.position_embedding.weight")[0], p_eps=d["p_eps"])
    ptype = llm_cfg.get("mm_projector_type", "mlp2x_gelu" if "model.mm_projector.0.weight" in refs else "linear")
    if ptype not in ("mlp2x_gelu", "linear"):
        raise CheckpointError(f"{llm_path}: mm_projector_type {ptype!r} is not supported (mlp2x_gelu or linear)")
    c["proj_mlp"] = int(ptype == "mlp2x_gelu")
    m = layout.llm_sizes(llm_cfg, llm_path)
    layout.check_layer_count(names, "model.layers.", m["layers"], llm_path, "num_hidden_layers")
    c.update(hidden=m["hidden"], heads=m["heads"], kv_heads=m["kv_heads"], head_dim=m["head_dim"],
             layers=m["layers"], ffn=m["ffn"], vocab=m["vocab"],
             qkv_bias=int("model.layers.0.self_attn.q_proj.bias" in refs),
             tie_embeddings=int(m["tie"] and "lm_head.weight" not in refs),
             max_len=m["max_len"], rms_eps=m["rms_eps"], rope_theta=m["rope_theta"],
             dtype=_DTYPES[dtype])
    return config_schema.check(c)


def check_device_dtype(device, dtype):
    """Refuse an unknown device or a storage dtype the device cannot hold (None is resolved later)."""
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
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
    if plan["kind"] == "llava-hf":
        from .hf_load import load_llava_hf
        return load_llava_hf(llm_dir, device=device, dtype=dtype, progress=progress)
    llm_cfg, refs = plan["llm_config"], plan["refs"]
    if dtype is None:
        dtype = default_dtype(device, refs)
    cfg = build_config(llm_cfg, plan["clip_config"], refs, dtype, tg_overrides, plan["llm_config_path"],
                       plan["clip_config_paths"])

    def missing(name):
        if name.startswith("text_model."):
            return plan["text_dir"]
        return plan["vision_dir"] if name.startswith("vision_model.") else llm_dir
    from .layout import check_tensors
    check_tensors(cfg, refs, missing)  # names, dtypes and shapes, before any weight byte is read
    core = build_core(cfg, device, refs, missing, progress)
    return Model(core, llm_cfg, plan["clip_config"], llm_dir, plan["clip_dir"], dtype)


def resolve_folders(llm_dir, clip_dir=None):
    """Everything load() learns before reading a weight: configs, tower folders, tensor headers.

    Returns a dict: kind ("llava-hf" or "official"); for an official folder
    also llm_config (+ llm_config_path), vision_dir and text_dir (the
    folders the two CLIP towers come from; text_dir None without TG
    modules), clip_dir (the folder a Model reports: the text tower's when
    TG-LLaVA needs it, for its CLIP tokenizer, else the vision tower's),
    clip_config ({"model_type": "clip", "vision_config", "text_config"},
    complete), clip_config_paths, tower_layouts ({"vision": label,
    "text": label}) and refs (official name -> TensorRef from headers,
    bytes unread).  A TG-LLaVA checkpoint takes its text tower from the folder
    mm_text_tower names when the vision folder has none, or when
    mm_text_tower names another tower than mm_vision_tower (a text guide of
    another family, e.g. SigLIP vision with a CLIP text tower) and it is found.
    """
    from . import layout

    llm_dir = os.fspath(llm_dir)
    if not os.path.isdir(llm_dir):
        raise CheckpointError(f"{llm_dir}: no such checkpoint folder")
    llm_config_path = os.path.join(llm_dir, "config.json")
    llm_cfg = read_json(llm_config_path)
    if not isinstance(llm_cfg, dict):
        raise CheckpointError(f"{llm_config_path}: not a JSON object")
    llm_refs = folder_refs(llm_dir)
    if layout.is_llava_hf(llm_cfg, list(llm_refs)):
        return {"kind": "llava-hf", "llm_config": llm_cfg, "llm_config_path": llm_config_path}
    has_tg = any(n.startswith(("model.mm_cross_attn.", "model.mm_patch_encoder.")) for n in llm_refs)
    vision = layout.read_tower(_resolve_clip_dir(llm_cfg, llm_dir, clip_dir))
    if not vision["has_vision"]:
        raise CheckpointError(f"{vision['folder']}: no CLIP vision tower tensors (found: {vision['layout']}); "
                              "expected vision_model.* or a CLIPVisionModel's embeddings.* / encoder.layers.*")
    text = None
    if has_tg:
        text = vision
        name = llm_cfg.get("mm_text_tower")
        if not vision["has_text"] or (name and name != llm_cfg.get("mm_vision_tower")):
            other = _find_tower(name, llm_dir)
            if other and os.path.realpath(other) != os.path.realpath(vision["folder"]):
                found = layout.read_tower(other)
                text = found if found["has_text"] or not vision["has_text"] else vision
            if not text["has_text"]:
                raise CheckpointError(
                    f"{vision['folder']}: this TG-LLaVA checkpoint needs the CLIP text tower (text_model.*), but the "
                    f"folder holds a {vision['layout']} and mm_text_tower {name!r} was not found with one")
    refs = {n: r for n, r in vision["refs"].items() if n.startswith("vision_model.")}
    if text is not None:
        refs.update({n: r for n, r in text["refs"].items() if n.startswith("text_model.")})
    refs.update(llm_refs)
    clip_config = {"model_type": "clip", "vision_config": vision["configs"]["vision_config"],
                   "text_config": (text or vision)["configs"]["text_config"]}
    return {"kind": "official", "llm_config": llm_cfg, "llm_config_path": llm_config_path,
            "vision_dir": vision["folder"], "text_dir": text["folder"] if text else None,
            "clip_dir": text["folder"] if text else vision["folder"], "clip_config": clip_config,
            "clip_config_paths": (vision["config_path"], (text or vision)["config_path"]),
            "tower_layouts": {"vision": vision["layout"], "text": text["layout"] if text else None},
            "has_tg": has_tg, "refs": refs}


def preflight(llm_dir, clip_dir=None, tokenizers=True):
    """Check what a load and a chat need that can be checked without reading a weight.

    Configs (every value), tower folders, tensor names, dtypes and shapes
    from the headers, and (tokenizers=True) the tokenizer files chat needs:
    the LLM tokenizer in llm_dir and, for TG-LLaVA, the CLIP tokenizer in
    the text tower's folder.  Raises CheckpointError on the first problem;
    returns resolve_folders()'s dict.  `tgllava generate` calls this before
    loading, so a folder without tokenizer files fails in a moment, not
    after reading every weight.
    """
    from . import layout

    plan = resolve_folders(llm_dir, clip_dir)
    if plan["kind"] == "llava-hf":
        from .hf_load import llava_hf_refs
        llm_cfg, clip_cfg, refs = llava_hf_refs(llm_dir)
        path = plan["llm_config_path"]
        cfg = build_config(llm_cfg, clip_cfg, refs, "float32", llm_path=path, clip_path=path)
        layout.check_tensors(cfg, refs, lambda name: f"{llm_dir} (llava-hf layout)")
    else:
        cfg = build_config(plan["llm_config"], plan["clip_config"], plan["refs"], "float32", None,
                           plan["llm_config_path"], plan["clip_config_paths"])

        def missing(name):
            if name.startswith("text_model."):
                return plan["text_dir"]
            return plan["vision_dir"] if name.startswith("vision_model.") else llm_dir
        layout.check_tensors(cfg, plan["refs"], missing)
    if tokenizers:
        from . import siglip
        layout.check_tokenizer_files(llm_dir, "llm", " (needed to turn the question into token ids)")
        if plan.get("has_tg") and siglip.is_siglip(plan["clip_config"]["text_config"]):
            siglip.check_tokenizer(plan["text_dir"], " (TG-LLaVA needs the tokenizer of its SigLIP text tower)")
        elif plan.get("has_tg"):
            layout.check_tokenizer_files(plan["text_dir"], "clip",
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
    required = core.required()
    for name, _, _ in required:
        if name not in refs:
            raise CheckpointError(f"{where_missing(name)}: missing tensor {name}")
    total = sum(int(np.prod(refs[name].shape)) * refs[name].itemsize for name, _, _ in required)
    bar = None
    if progress or (progress is None and _stderr_is_terminal()):
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", delay=0 if progress else 1.0,
                   leave=False)
    try:
        for name, shape, _ in required:
            ref = refs[name]
            if ref.src_code is None:
                raise CheckpointError(f"{ref.path}: tensor {name} has dtype {ref.dtype}, expected a float type")
            try:
                core.set_tensor(name, np.ascontiguousarray(ref.raw()), ref.src_code)
            except CheckpointError as e:
                raise CheckpointError(f"{ref.path}: {e}") from None
            if bar:
                bar.update(int(np.prod(shape)) * ref.itemsize)
    finally:
        if bar:
            bar.close()
    core.finish()
    return core


def tile(pixels):
    """(B,3,S,S) or (3,S,S) normalised images -> (B,4,3,S,S) tiles: bilinear 2x upscale, 4 crops (SPEC 2.5)."""
    p = _float_array(pixels, "pixels")
    single = p.ndim == 3
    if single:
        p = p[None]
    if p.ndim != 4 or p.shape[2] != p.shape[3]:
        raise ShapeError(f"pixels must be (B, C, S, S) or (C, S, S), got shape {p.shape}")
    out = _C.tile(np.ascontiguousarray(p))
    return out[0] if single else out


MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (the C core's TG_MIN_TEMPERATURE)


def resolve_seed(seed):
    """The 64-bit sampling seed: `seed` taken modulo 2**64, or a random one when it is None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    return int(seed) & ((1 << 64) - 1)


def check_sampling(max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_len=None):
    """Checked generation settings (max_new_tokens, temperature, top_p, top_k, repetition_penalty).

    Raises ShapeError for a non-number, a non-finite value (NaN, inf), or one out of range:
    0 <= max_new_tokens <= max_len (the context length, when given), temperature >= 0,
    0 < top_p <= 1, top_k >= 0, repetition_penalty > 0.  A temperature below MIN_TEMPERATURE
    comes back as 0 (greedy): dividing logits by 1e-39 would overflow.
    """
    def integer(v, name):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
                return int(v)
            raise ShapeError(f"{name} must be an integer, got {v!r}")
        return int(v)

    def number(v, name):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ShapeError(f"{name} must be a number, got {v!r}")
        v = float(v)
        if not np.isfinite(v):
            raise ShapeError(f"{name} must be finite, got {v}")
        return v

    max_new_tokens, top_k = integer(max_new_tokens, "max_new_tokens"), integer(top_k, "top_k")
    temperature, top_p = number(temperature, "temperature"), number(top_p, "top_p")
    repetition_penalty = number(repetition_penalty, "repetition_penalty")
    if max_new_tokens < 0 or (max_len is not None and max_new_tokens > max_len):
        bound = f"[0, {max_len}] (the model's context length)" if max_len is not None else ">= 0"
        raise ShapeError(f"max_new_tokens {max_new_tokens} is outside {bound}")
    if temperature < 0:
        raise ShapeError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ShapeError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ShapeError(f"top_k must be >= 0, got {top_k}")
    if repetition_penalty <= 0:
        raise ShapeError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0
    return max_new_tokens, temperature, top_p, min(top_k, 1 << 30), repetition_penalty


def _float_array(x, what, device="cpu"):
    """NumPy, DLPack (PyTorch/JAX CPU tensors, capsules) or array-like -> C-contiguous float32, zero-copy when
    it already is one in host memory; GPU memory is a DeviceError (devarray.py)."""
    return devarray.float32_array(x, what, device)


def _id_array(x, what, low, high):
    a = devarray.host_array(x, what)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.size and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        elif a.size:
            raise ShapeError(f"{what} must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < low or a.max() >= high):
        bad = a[(a < low) | (a >= high)][0]
        raise ShapeError(f"{what}: id {int(bad)} is outside [{low}, {high})")
    return np.ascontiguousarray(a, dtype=np.int32)


class Model:
    """A loaded model.  Stages take NumPy arrays, DLPack tensors in host memory (PyTorch/JAX CPU, zero-copy)
    or anything np.asarray accepts, and return NumPy.  A CUDA model also takes GPU arrays on its device
    (__cuda_array_interface__ or DLPack: PyTorch, CuPy) in place of its float inputs and reads them there
    (its id inputs are copied to the host), and returns a _C.DeviceArray with out="device" (devarray.py)."""

    def __init__(self, core, llm_config, clip_config, llm_dir, clip_dir, dtype):
        self._core = CountedCore(core)  # counts calls in flight, so an unread stream yields (streaming.py)
        self.config = llm_config
        self.clip_config = clip_config
        self.llm_dir, self.clip_dir, self.dtype = llm_dir, clip_dir, dtype
        self.sizes = core.config
        self.has_fom = bool(self.sizes["has_fom"])
        self.has_dp = bool(self.sizes["has_dp"])
        self.has_tg = self.has_fom or self.has_dp
        self.device = core.device
        self.image_size = self.sizes["v_image"]
        self.num_patches = (self.sizes["v_image"] // self.sizes["v_patch"]) ** 2

    @property
    def weight_bytes(self):
        """Bytes the model's parameters take in their stored formats."""
        return sum(b for _, _, b in self._core.storage())

    def storage(self):
        """{dtype: [checkpoint tensor names]}: how every tensor is stored.  With int8/int4, a matrix whose
        input features are not a multiple of 32 (CLIP's patch embedding, 3*14*14) falls back to float16."""
        out = {}
        for name, dt, _ in self._core.storage():
            out.setdefault(dt, []).append(name)
        return out

    def __repr__(self):
        kind = "TG-LLaVA" if self.has_tg else "LLaVA-1.5"
        return f"<tgllava.Model {kind} hidden={self.sizes['hidden']} layers={self.sizes['layers']} device={self.device} dtype={self.dtype}>"

    # ---- input helpers
    def _on_gpu(self):
        return self.device.startswith("cuda")

    def _floats(self, x, what, device_ok=True):
        """A float input: a DeviceArray view of GPU memory on a CUDA model, else a float32 NumPy array."""
        d = devarray.device_array(x, what, self._core._core, np.float32) if device_ok and self._on_gpu() else None
        return d if d is not None else _float_array(x, what, self.device)

    def _host(self, x, what):
        """An id input in host memory (GPU memory on a CUDA model's device is copied: ids are small)."""
        return devarray.host_array(x, what, self.device, self._core._core if self._on_gpu() else None)

    def _ids(self, x, what, low, high):
        return _id_array(self._host(x, what), what, low, high)

    def _out(self, out):
        """out= of the stages: 'host' (NumPy) or 'device' (a _C.DeviceArray in the CUDA model's memory)."""
        if out not in ("host", "device"):
            raise ValueError(f"out must be 'host' or 'device', got {out!r}")
        if out == "device" and not self._on_gpu():
            raise DeviceError(f"out='device' needs a CUDA model; this model runs on {self.device} and returns NumPy")
        return out == "device"

    def _pixels(self, pixels, batch=True, device_ok=True):
        p = self._floats(pixels, "pixels", device_ok)
        S, shape = self.image_size, p.shape
        if len(shape) == 3:
            p = p.reshape((1,) + shape)
        if len(p.shape) != 4 or p.shape[1:] != (3, S, S):
            raise ShapeError(f"pixels must be (B, 3, {S}, {S}) or (3, {S}, {S}), got shape {shape}")
        return p

    def _text_batch(self, text_ids, B):
        """(B,T) zero-padded int32 ids and (B,) lengths from an array or a list of sequences."""
        if text_ids is None:
            return None, None
        if isinstance(text_ids, (list, tuple)) and text_ids and not np.isscalar(text_ids[0]):
            rows = [self._ids(t, "text_ids", 0, 1 << 30).reshape(-1) for t in text_ids]
        else:
            a = self._ids(text_ids, "text_ids", 0, 1 << 30)
            rows = [a.reshape(-1)] if a.ndim <= 1 else list(a)
        if len(rows) == 1 and B > 1:
            rows = rows * B
        if len(rows) != B:
            raise ShapeError(f"got {len(rows)} text guides for {B} images")
        if any(len(r) == 0 for r in rows):
            raise ShapeError("a text guide is empty")
        T = max(len(r) for r in rows)
        ids = np.zeros((B, T), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        return ids, np.array([len(r) for r in rows], np.int32)

    # ---- stages
    # ---- stages: out="device" returns a _C.DeviceArray on a CUDA model
    def vision_features(self, pixels, out="host"):
        """(B,3,S,S) normalised pixels -> (B, Np, Dv) patch features of the selected layer."""
        return self._core.vision_features(self._pixels(pixels), self._out(out))

    def text_tower(self, ids, out="host"):
        """CLIP text ids (T,) or (B,T) -> (hidden (B,T,Dt), pooled (B,Dt))."""
        if not self.has_tg:
            raise ShapeError("this checkpoint has no TG modules and no text tower")
        a = self._ids(ids, "ids", 0, self.sizes["t_vocab"])
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise ShapeError(f"ids must be (B, T) with T >= 1, got shape {a.shape}")
        return self._core.text_tower(a, self._out(out))

    def fom(self, pooled, out="host"):
        """Pooled text embeddings (B, Dt) -> FOM mask (B, Nq, Dv)."""
        p = self._floats(pooled, "pooled")
        return self._core.fom(p.reshape((1,) + p.shape) if len(p.shape) == 1 else p, self._out(out))

    def dp(self, tile_features, text_hidden, text_len=None, out="host"):
        """Tile features (B, 4*Np, Dv) and text hidden states (B, T, Dt) -> DP tokens (B, latents, H)."""
        f, t = self._floats(tile_features, "tile_features"), self._floats(text_hidden, "text_hidden")
        if len(f.shape) == 2:
            f = f.reshape((1,) + f.shape)
            t = t.reshape((1,) + t.shape) if len(t.shape) == 2 else t
        lens = None if text_len is None else np.ascontiguousarray(devarray.host_array(text_len, "text_len"), dtype=np.int32)
        return self._core.dp(f, t, lens, self._out(out))

    def visual_tokens(self, pixels, text_ids=None, use_fom=True, use_dp=True, n_latents=None, out="host"):
        """Pixels (B,3,S,S) [+ CLIP text guide ids] -> (B, Np [+ latents], H) visual tokens."""
        p = self._pixels(pixels)
        ids, lens = self._text_batch(text_ids, p.shape[0]) if (self.has_tg and (use_fom or use_dp)) else (None, None)
        if self.has_tg and (use_fom or use_dp) and ids is None:
            raise ShapeError("this TG-LLaVA checkpoint needs text_ids (the CLIP tokens of the question) for FOM/DP")
        return self._core.visual_tokens(p, ids, lens, use_fom=bool(use_fom), use_dp=bool(use_dp),
                                        n_latents=int(n_latents or 0), out_device=self._out(out))

    # ---- language model
    def cacheable_features(self, pixels, use_dp=True):
        """Vision-tower output of one image, to pass back as `features=` when the same image returns
        with another question: (5, Np, Dv) for [image, its 4 tiles] (DP on), else (1, Np, Dv)."""
        p = self._pixels(pixels, device_ok=False)
        if p.shape[0] != 1:
            raise ShapeError("cacheable_features takes one image")
        if use_dp and self.has_dp:
            p = np.concatenate([p, tile(p)[0]])
        return self._core.vision_features(p)

    def _sequence(self, input_ids, pixels=None, text_ids=None, use_fom=True, use_dp=True, n_latents=None, features=None,
                  visual=None):
        a = self._host(input_ids, "input_ids")
        if a.ndim > 2 or (a.ndim == 2 and a.shape[0] != 1):
            raise ShapeError(f"input_ids must be one sequence (T,) or (1, T), got shape {a.shape}; "
                             "use generate_batch for several sequences")
        ids = _id_array(a.reshape(-1), "input_ids", IMAGE_TOKEN_INDEX, self.sizes["vocab"])
        bad = ids[(ids < 0) & (ids != IMAGE_TOKEN_INDEX)]
        if bad.size:
            raise ShapeError(f"input_ids: id {int(bad[0])} is outside [0, {self.sizes['vocab']})")
        seq = {"ids": ids, "use_fom": bool(use_fom), "use_dp": bool(use_dp), "n_latents": int(n_latents or 0)}
        if visual is not None:
            if pixels is not None:
                raise ShapeError("give an image as pixels or as visual tokens, not both")
            seq["visual"] = self._floats(visual, "visual")
        if pixels is not None:
            p = self._pixels(pixels)
            if p.shape[0] != 1:
                raise ShapeError("one sequence takes one image (3, S, S)")
            seq["pixels"] = p.reshape(p.shape[1:])
            if features is not None:
                seq["features"] = self._floats(features, "features")
            if self.has_tg and (use_fom or use_dp):
                if text_ids is None:
                    raise ShapeError("this TG-LLaVA checkpoint needs text_ids (the CLIP tokens of the question)")
                t, _ = self._text_batch(text_ids, 1)
                seq["text_ids"] = np.ascontiguousarray(t[0])
        return seq

    def logits(self, input_ids, pixels=None, text_ids=None, use_fom=True, use_dp=True, n_latents=None, all_positions=True,
               visual=None, out="host"):
        """Logits (T', V) of one spliced sequence at every position (or the last one).  The image is pixels,
        or its visual tokens (n, H) as visual_tokens() returns them (visual=)."""
        seq = self._sequence(input_ids, pixels, text_ids, use_fom, use_dp, n_latents, visual=visual)
        return self._core.logits(seq, bool(all_positions), self._out(out))

    def _eos(self, eos_token_id):
        if eos_token_id is None:
            eos_token_id = self.config.get("eos_token_id")
        if eos_token_id is None:
            return []
        return [int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])]

    def scheduler(self, slots, context=None, decode_rows=None):
        """A continuous-batching scheduler on this model (tgllava._C.Scheduler; generate_many and
        `tgllava serve` drive one): `slots` KV-cache slots of `context` positions each (default: the
        model's max_len), its own cache beside the one generate uses.  Every sequence's tokens are
        bitwise those of its own generate() call whatever runs beside it: a float32 CPU model decodes
        in chunks of at most _C.CPU_EXACT_ROWS (16) rows (decode_rows; 0 = all rows in one product),
        whose products are exact per row; compact CPU formats are exact per row for any number of
        rows, so they decode all rows in one product.  Its calls are counted like the model's own, so an unread stream gives the model up to it
        (streaming.py)."""
        if decode_rows is None:
            decode_rows = _C.CPU_EXACT_ROWS if self.device == "cpu" and self.dtype == "float32" else 0
        return self._core.counted(_C.Scheduler(self._core._core, int(slots), int(context or 0), int(decode_rows)))

    def _positions(self, seq, max_new_tokens):
        """KV-cache positions a sequence needs: its spliced prompt (as the C core cuts it) plus its new tokens."""
        return self._core.spliced_length(seq) + max_new_tokens

    def _request(self, r, max_new_tokens):
        """(C sequence dict, its max_new_tokens) of one generate_batch/generate_many request."""
        if not isinstance(r, dict):
            raise TypeError(f"a generation request is a dict with input_ids [, pixels, text_ids, use_fom, use_dp, "
                            f"n_latents, features, max_new_tokens], got {type(r).__name__}")
        if "input_ids" not in r:
            raise ShapeError(f"a generation request needs input_ids; got the keys {sorted(map(str, r))}")
        seq = self._sequence(r["input_ids"], r.get("pixels"), r.get("text_ids"), r.get("use_fom", True),
                             r.get("use_dp", True), r.get("n_latents"), r.get("features"), r.get("visual"))
        if r.get("max_new_tokens") is not None:
            max_new_tokens = check_sampling(r["max_new_tokens"], max_len=self.sizes["max_len"])[0]
        return seq, max_new_tokens

    def generate_many(self, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                      seed=None, eos_token_id=None, callback=None, max_batch=None):
        """Continuous batching: an iterator of (index, new token ids) in the order the sequences end.

        requests is any iterable of generate_batch's request dicts (each may carry its own
        max_new_tokens), read only as slots free up, so it may be a generator that prepares the
        next items meanwhile.  At most `max_batch` sequences run together (default: 16 on the CPU,
        where one decode step reads the weights once for up to 16 rows, 32 on a GPU); a sequence that
        ends frees its slot at once and the next request takes it.  Every sequence's tokens equal
        its own generate() call (greedy; sampled ones too, with the same seed).  callback(index,
        token) sees every new token; a true result ends that sequence.  The scheduler's KV cache
        holds max_batch slots of the longest request seen so far; a longer one waits until the
        running ones have ended and the cache is made again.  Sampling values are checked at once.
        """
        sampling = check_sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, self.sizes["max_len"])
        if max_batch is None:
            max_batch = _C.CPU_EXACT_ROWS if self.device == "cpu" else 32
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or not 1 <= max_batch <= 256:
            raise ValueError(f"max_batch must be an integer in [1, 256], got {max_batch!r}")
        return self._continuous(requests, sampling, resolve_seed(seed), self._eos(eos_token_id), callback,
                                int(max_batch))

    def _continuous(self, requests, sampling, seed, eos, callback, slots):
        max_new_tokens, temperature, top_p, top_k, repetition_penalty = sampling
        def prepared(r):  # (C sequence, its max_new_tokens, the KV-cache positions it needs)
            seq, n_new = self._request(r, max_new_tokens)
            return seq, n_new, self._positions(seq, n_new)

        if isinstance(requests, (list, tuple)):  # all known: check them all first, size the cache once
            ready = [prepared(r) for r in requests]
            longest = max((need for _, _, need in ready), default=1)
            source = iter(enumerate(ready))
        else:
            longest = 0
            source = ((i, prepared(r)) for i, r in enumerate(requests))
        sched, running, waiting = None, {}, None  # running: scheduler id -> (index, tokens)
        try:
            while True:
                while len(running) < slots:  # admit into the free slots
                    if waiting is None:
                        waiting = next(source, None)
                        if waiting is None:
                            break
                    index, (seq, n_new, need) = waiting
                    if sched is None or need > sched.context:
                        if running:
                            break  # a longer request: the running ones end first, then the cache grows
                        if sched is not None:
                            sched.close()
                        # rounded up, so requests a little longer than the first ones still fit
                        sched = self.scheduler(slots, max(longest, -(-(need + 64) // 128) * 128))
                    sid = sched.admit(seq, max_new_tokens=n_new, temperature=temperature, top_p=top_p, top_k=top_k,
                                      repetition_penalty=repetition_penalty, seed=seed, eos_ids=eos)
                    running[sid] = (index, [])
                    waiting = None
                if not running:
                    return
                for sid, token, finish in sched.step():
                    index, tokens = running[sid]
                    stop = False
                    if token >= 0:
                        tokens.append(token)
                        stop = bool(callback(index, token)) if callback is not None else False
                    if finish or stop:
                        del running[sid]
                        if not finish:
                            sched.cancel(sid)
                        yield index, tokens
        finally:
            if sched is not None:
                sched.close()

    def generate_batch(self, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                       seed=None, eos_token_id=None, callback=None, return_last_logits=False, max_batch=None):
        """New token ids for many sequences: a list of token lists in the order of `requests`, each
        equal to its single run.  Requests are dicts with input_ids [, pixels, text_ids, use_fom,
        use_dp, n_latents, features, max_new_tokens].  Several run through continuous batching
        (generate_many: at most max_batch at once, a finished one's slot taken by the next at once);
        callback(index, token) sees every token, a true result ends that sequence.
        return_last_logits=True runs them as one static batch instead and also returns, per
        sequence, the logits its last token was sampled from."""
        requests = list(requests)
        if len(requests) == 1 or return_last_logits:
            return self._static_batch(requests, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                                      eos_token_id, callback, return_last_logits)
        out = [None] * len(requests)
        for index, tokens in self.generate_many(requests, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                                seed, eos_token_id, callback, max_batch):
            out[index] = tokens
        return out

    def _static_batch(self, requests, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, eos_token_id,
                      callback, return_last_logits):
        """One tg_generate call: every sequence prefilled, then all decoded together until the last
        ends, the model held throughout (what a single generate and its stream use)."""
        max_new_tokens, temperature, top_p, top_k, repetition_penalty = check_sampling(
            max_new_tokens, temperature, top_p, top_k, repetition_penalty, self.sizes["max_len"])
        prepared = [self._request(r, max_new_tokens) for r in requests]
        seqs = [q for q, _ in prepared]
        if len(prepared) == 1:
            max_new_tokens = prepared[0][1]
        elif any(r.get("max_new_tokens") is not None for r in requests):
            raise ShapeError("per-request max_new_tokens needs continuous batching (return_last_logits=False)")
        tokens, last = self._core.generate(seqs, max_new_tokens=max_new_tokens, temperature=temperature,
                                           top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                                           seed=resolve_seed(seed), eos_ids=self._eos(eos_token_id),
                                           callback=callback, last_logits=bool(return_last_logits))
        return (tokens, last) if return_last_logits else tokens

    def generate(self, input_ids, pixels=None, text_ids=None, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
                 repetition_penalty=1.0, seed=None, eos_token_id=None, use_fom=True, use_dp=True, n_latents=None,
                 callback=None):
        """New token ids for one prompt (greedy by default; the EOS token itself is not returned)."""
        req = dict(input_ids=input_ids, pixels=pixels, text_ids=text_ids, use_fom=use_fom, use_dp=use_dp, n_latents=n_latents)
        cb = None if callback is None else (lambda seq, tok: callback(tok))
        return self.generate_batch([req], max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                                   eos_token_id, cb)[0]

    def chat(self, image, question, **kw):
        """Answer a question about an image (tgllava.chat.chat): Answer(text, token_ids, timings), or a stream."""
        from .chat import chat
        return chat(self, image, question, **kw)

    def chat_batch(self, pairs, max_new_tokens=512, temperature=0.0, use_fom=True, use_dp=True, **kw):
        """Answers for many (image, question) pairs generated together: a list of Answer
        (tgllava.chat.chat_batch).  Benchmark items go through tgllava.eval (eval/adapter.py)."""
        from . import chat as chat_mod
        pairs = list(pairs)
        if pairs and isinstance(pairs[0], dict):
            raise TypeError("Model.chat_batch takes (image, question) pairs; evaluation items (dicts) go through "
                            "tgllava.eval.run, or tgllava.eval.adapter.ModelAdapter(model).chat_batch")
        return chat_mod.chat_batch(self, pairs, max_new_tokens=max_new_tokens, temperature=temperature,
                                   use_fom=use_fom, use_dp=use_dp, **kw)

    # ---- attention (what tgllava.attention builds its maps from)
    def visual_token_count(self, use_dp=True, n_latents=None):
        """Positions the visual tokens of one image take in the spliced LLM sequence
        (Np, plus the DP latents when DP is on: all of them, or n_latents)."""
        return int(self._core.visual_token_count(bool(use_dp and self.has_dp), int(n_latents or 0)))

    def llm_attention(self, input_ids, pixels=None, text_ids=None, queries=None, keys=None, use_fom=True, use_dp=True,
                      n_latents=None):
        """LLM softmax attention probabilities of one spliced sequence, summed over heads and layers:
        rows are the query positions queries=(q0, q1), columns the key positions keys=(k0, k1), both
        half-open ranges of spliced positions; returns (q1 - q0, k1 - k0) float32."""
        try:
            (q0, q1), (k0, k1) = queries, keys
        except (TypeError, ValueError):
            raise ShapeError(f"queries and keys must be (start, stop) ranges, got {queries!r} and {keys!r}") from None
        seq = self._sequence(input_ids, pixels, text_ids, use_fom, use_dp, n_latents)
        return self._core.llm_attention(seq, int(q0), int(q1), int(k0), int(k1))

    def dp_attention(self, pixels, text_ids):
        """TG-DP perceiver attention in its image layer, summed over heads: (latents, 4*Np + latents),
        from every latent to the patches of the four 2x tiles (tile order TL, TR, BL, BR), then the latents."""
        if not self.has_dp:
            raise ShapeError("this checkpoint has no TG-DP module")
        if text_ids is None:
            raise ShapeError("dp_attention needs text_ids (the CLIP tokens of the question)")
        seq = self._sequence([IMAGE_TOKEN_INDEX], pixels, text_ids, use_fom=True, use_dp=True)
        return self._core.dp_attention(seq)

    def attention_map(self, *args, **kw):
        """Where the model looks: LLM, DP and FOM maps (see tgllava.attention.attention_map)."""
        from .attention import attention_map
        return attention_map(self, *args, **kw)

    def generate_stream(self, input_ids, **kw):
        """Iterator over new token ids as they are generated: generate(input_ids, **kw) in a worker
        thread (tgllava.streaming.TokenStream).  It runs a few tokens ahead of the reader at most; one
        left unread gives the model up to the next call on it (and then raises StreamCancelled);
        close() or leaving a for loop early stops the generation."""
        if "callback" in kw:
            raise TypeError("generate_stream takes no callback (iterate over it instead)")
        return TokenStream(self, lambda callback: self.generate(input_ids, callback=callback, **kw))
