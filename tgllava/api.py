"""The Python face of the model: tgllava.load() and the Model object.

load() reads config.json of the LLM folder and of the CLIP folder, works out
every size the C core needs from the configs and the tensor shapes (with
SPEC section 4 defaults for what shapes do not tell), creates the C model on
the chosen backend and streams the tensors into it.  Model methods convert
friendly inputs (lists, other float dtypes, single samples without a batch
axis) into the exact NumPy arrays the extension checks, and return NumPy.
"""
import os

import numpy as np

from . import _C
from . import devarray
from .checkpoint import folder_refs, read_json
from .errors import CheckpointError, ShapeError
from .streaming import CountedCore, TokenStream

IMAGE_TOKEN_INDEX = -200
_ACTS = {"gelu": 1, "quick_gelu": 2, "silu": 3}
_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}

# TG module sizes fixed by the reference code (SPEC 4), used where shapes are silent
TG_DEFAULTS = {"q_heads": 16, "q_eps": 1e-12, "q_cross_freq": 2, "p_heads": 16, "p_eps": 1e-5}


def _resolve_clip_dir(cfg, llm_dir, clip_dir):
    if clip_dir is not None:
        return clip_dir
    for key in ("mm_vision_tower", "mm_text_tower"):
        name = cfg.get(key)
        if not name:
            continue
        for cand in (name, os.path.join(llm_dir, name)):
            if os.path.isdir(cand):
                return cand
        from .layout import resolve_tower
        found = resolve_tower(name)
        if found:
            return found
    raise CheckpointError(
        f"{llm_dir}: cannot find the CLIP tower '{cfg.get('mm_vision_tower')}': pass clip_dir=... "
        "(a folder with vision_model.* / text_model.* tensors)")


def _count_layers(names, prefix):
    idx = set()
    for n in names:
        if n.startswith(prefix):
            rest = n[len(prefix):].split(".", 1)[0]
            if rest.isdigit():
                idx.add(int(rest))
    return max(idx) + 1 if idx else 0


def build_config(llm_cfg, clip_cfg, refs, dtype="float32", overrides=None):
    """The flat size dictionary of the C core (tg_config) from configs and tensor shapes."""
    def shape(name):
        if name not in refs:
            raise CheckpointError(f"missing tensor {name}")
        return refs[name].shape

    vc = clip_cfg.get("vision_config", clip_cfg)
    tc = clip_cfg.get("text_config", {})
    names = list(refs)
    c = {}
    nv = int(vc.get("num_hidden_layers", 24))
    sel = int(llm_cfg.get("mm_vision_select_layer", -2))
    c.update(v_hidden=int(vc.get("hidden_size", 1024)), v_heads=int(vc.get("num_attention_heads", 16)), v_layers=nv,
             v_ffn=int(vc.get("intermediate_size", 4096)), v_image=int(vc.get("image_size", 336)),
             v_patch=int(vc.get("patch_size", 14)), v_act=_ACTS.get(vc.get("hidden_act", "quick_gelu"), 2),
             v_select=sel + nv + 1 if sel < 0 else sel, v_eps=float(vc.get("layer_norm_eps", 1e-5)))
    if llm_cfg.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError("only mm_vision_select_feature='patch' is supported")
    has_fom = any(n.startswith("model.mm_cross_attn.") for n in names)
    has_dp = any(n.startswith("model.mm_patch_encoder.") for n in names)
    c.update(has_fom=int(has_fom), has_dp=int(has_dp))
    if has_fom or has_dp:
        c.update(t_hidden=int(tc.get("hidden_size", 768)), t_heads=int(tc.get("num_attention_heads", 12)),
                 t_layers=int(tc.get("num_hidden_layers", 12)), t_ffn=int(tc.get("intermediate_size", 3072)),
                 t_vocab=int(tc.get("vocab_size", 49408)), t_positions=int(tc.get("max_position_embeddings", 77)),
                 t_act=_ACTS.get(tc.get("hidden_act", "quick_gelu"), 2), t_eps=float(tc.get("layer_norm_eps", 1e-5)))
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
        c.update(p_layers=_count_layers(names, pf), p_heads=heads, p_head_dim=hd,
                 p_kv_heads=shape(pf + "0.self_attn.k_proj.weight")[0] // hd,
                 p_latents=shape("model.mm_patch_encoder.perceiver.latents")[0],
                 p_ffn=shape(pf + "0.mlp.gate_proj.weight")[0],
                 p_positions=shape("model.mm_patch_encoder.position_embedding.weight")[0], p_eps=d["p_eps"])
    ptype = llm_cfg.get("mm_projector_type", "mlp2x_gelu" if "model.mm_projector.0.weight" in refs else "linear")
    if ptype not in ("mlp2x_gelu", "linear"):
        raise CheckpointError(f"mm_projector_type {ptype!r} is not supported (mlp2x_gelu or linear)")
    c["proj_mlp"] = int(ptype == "mlp2x_gelu")
    if llm_cfg.get("rope_scaling"):
        raise CheckpointError(f"rope_scaling {llm_cfg['rope_scaling']} is not supported")
    H = int(llm_cfg["hidden_size"])
    heads = int(llm_cfg["num_attention_heads"])
    c.update(hidden=H, heads=heads, kv_heads=int(llm_cfg.get("num_key_value_heads") or heads),
             head_dim=int(llm_cfg.get("head_dim") or H // heads), layers=int(llm_cfg["num_hidden_layers"]),
             ffn=int(llm_cfg["intermediate_size"]), vocab=int(llm_cfg["vocab_size"]),
             qkv_bias=int("model.layers.0.self_attn.q_proj.bias" in refs),
             tie_embeddings=int(bool(llm_cfg.get("tie_word_embeddings", False)) and "lm_head.weight" not in refs),
             max_len=int(llm_cfg.get("tokenizer_model_max_length") or llm_cfg.get("max_position_embeddings", 2048)),
             rms_eps=float(llm_cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(llm_cfg.get("rope_theta", 10000.0)),
             dtype=_DTYPES[dtype])
    return c


def load(llm_dir, clip_dir=None, device="cpu", dtype=None, progress=None, tg_overrides=None):
    """Load a TG-LLaVA or LLaVA-1.5 checkpoint onto `device`; every layout goes through here.

    llm_dir is an official LLM folder (TG-LLaVA or LLaVA-1.5; the CLIP folder is clip_dir, or
    found from mm_vision_tower) or a llava-hf folder (LlavaForConditionalGeneration, the vision
    tower inside it: clip_dir is not used).

    dtype: storage of large matrices: "float32" (default on the CPU, the only
    CPU choice), "bfloat16" (default on CUDA) or "float16".
    """
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    llm_cfg = read_json(os.path.join(llm_dir, "config.json")) if os.path.isdir(llm_dir) else None
    if llm_cfg is None:
        raise CheckpointError(f"{llm_dir}: no such checkpoint folder")
    from .layout import is_llava_hf
    if is_llava_hf(llm_cfg):
        from .hf_load import load_llava_hf
        return load_llava_hf(llm_dir, device=device, dtype=dtype, progress=progress)
    llm_refs = folder_refs(llm_dir)
    clip_dir = _resolve_clip_dir(llm_cfg, llm_dir, clip_dir)
    clip_cfg = read_json(os.path.join(clip_dir, "config.json"))
    clip_refs = folder_refs(clip_dir)
    refs = dict(clip_refs)
    refs.update(llm_refs)
    cfg = build_config(llm_cfg, clip_cfg, refs, dtype, tg_overrides)

    def missing(name):
        return clip_dir if name.startswith(("vision_model.", "text_model.")) else llm_dir
    core = build_core(cfg, device, refs, missing, progress)
    return Model(core, llm_cfg, clip_cfg, llm_dir, clip_dir, dtype)


def build_core(cfg, device, refs, where_missing, progress=None):
    """The C model for size dict `cfg` on `device`, filled from `refs` (name -> TensorRef).
    where_missing(name) names the folder blamed for an absent tensor.  A progress bar shows for
    checkpoints over 512 MiB unless progress says otherwise."""
    core = _C.Model(cfg, device)
    required = core.required()
    total = sum(int(np.prod(s)) for _, s, _ in required) * 4
    show = progress if progress is not None else total > (512 << 20)
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights")
    try:
        for name, shape, _ in required:
            ref = refs.get(name)
            if ref is None:
                raise CheckpointError(f"{where_missing(name)}: missing tensor {name}")
            if ref.src_code is None:
                raise CheckpointError(f"{ref.path}: tensor {name} has dtype {ref.dtype}, expected a float type")
            try:
                core.set_tensor(name, np.ascontiguousarray(ref.raw()), ref.src_code)
            except CheckpointError as e:
                raise CheckpointError(f"{ref.path}: {e}") from None
            if bar:
                bar.update(int(np.prod(shape)) * 4)
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
    or anything np.asarray accepts, and return NumPy."""

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

    def __repr__(self):
        kind = "TG-LLaVA" if self.has_tg else "LLaVA-1.5"
        return f"<tgllava.Model {kind} hidden={self.sizes['hidden']} layers={self.sizes['layers']} device={self.device} dtype={self.dtype}>"

    # ---- input helpers
    def _pixels(self, pixels, batch=True):
        p = _float_array(pixels, "pixels", self.device)
        S, shape = self.image_size, p.shape
        if p.ndim == 3:
            p = p[None]
        if p.ndim != 4 or p.shape[1:] != (3, S, S):
            raise ShapeError(f"pixels must be (B, 3, {S}, {S}) or (3, {S}, {S}), got shape {shape}")
        return p

    def _text_batch(self, text_ids, B):
        """(B,T) zero-padded int32 ids and (B,) lengths from an array or a list of sequences."""
        if text_ids is None:
            return None, None
        if isinstance(text_ids, (list, tuple)) and text_ids and not np.isscalar(text_ids[0]):
            rows = [_id_array(t, "text_ids", 0, 1 << 30).reshape(-1) for t in text_ids]
        else:
            a = devarray.host_array(text_ids, "text_ids")
            rows = [_id_array(a, "text_ids", 0, 1 << 30).reshape(-1)] if a.ndim <= 1 else \
                [_id_array(r, "text_ids", 0, 1 << 30) for r in a]
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
    def vision_features(self, pixels):
        """(B,3,S,S) normalised pixels -> (B, Np, Dv) patch features of the selected layer."""
        return self._core.vision_features(self._pixels(pixels))

    def text_tower(self, ids):
        """CLIP text ids (T,) or (B,T) -> (hidden (B,T,Dt), pooled (B,Dt))."""
        if not self.has_tg:
            raise ShapeError("this checkpoint has no TG modules and no text tower")
        a = devarray.host_array(ids, "ids", self.device)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise ShapeError(f"ids must be (B, T) with T >= 1, got shape {a.shape}")
        return self._core.text_tower(_id_array(a, "ids", 0, self.sizes.get("t_vocab") or 49408))

    def fom(self, pooled):
        """Pooled text embeddings (B, Dt) -> FOM mask (B, Nq, Dv)."""
        p = _float_array(pooled, "pooled", self.device)
        return self._core.fom(p[None] if p.ndim == 1 else p)

    def dp(self, tile_features, text_hidden, text_len=None):
        """Tile features (B, 4*Np, Dv) and text hidden states (B, T, Dt) -> DP tokens (B, latents, H)."""
        f, t = _float_array(tile_features, "tile_features", self.device), _float_array(text_hidden, "text_hidden", self.device)
        if f.ndim == 2:
            f, t = f[None], t[None] if t.ndim == 2 else t
        lens = None if text_len is None else np.ascontiguousarray(devarray.host_array(text_len, "text_len"), dtype=np.int32)
        return self._core.dp(f, t, lens)

    def visual_tokens(self, pixels, text_ids=None, use_fom=True, use_dp=True, n_latents=None):
        """Pixels (B,3,S,S) [+ CLIP text guide ids] -> (B, Np [+ latents], H) visual tokens."""
        p = self._pixels(pixels)
        ids, lens = self._text_batch(text_ids, p.shape[0]) if (self.has_tg and (use_fom or use_dp)) else (None, None)
        if self.has_tg and (use_fom or use_dp) and ids is None:
            raise ShapeError("this TG-LLaVA checkpoint needs text_ids (the CLIP tokens of the question) for FOM/DP")
        return self._core.visual_tokens(p, ids, lens, use_fom=bool(use_fom), use_dp=bool(use_dp), n_latents=int(n_latents or 0))

    # ---- language model
    def cacheable_features(self, pixels, use_dp=True):
        """Vision-tower output of one image, to pass back as `features=` when the same image returns
        with another question: (5, Np, Dv) for [image, its 4 tiles] (DP on), else (1, Np, Dv)."""
        p = self._pixels(pixels)
        if p.shape[0] != 1:
            raise ShapeError("cacheable_features takes one image")
        if use_dp and self.has_dp:
            p = np.concatenate([p, tile(p)[0]])
        return self._core.vision_features(p)

    def _sequence(self, input_ids, pixels=None, text_ids=None, use_fom=True, use_dp=True, n_latents=None, features=None):
        a = devarray.host_array(input_ids, "input_ids", self.device)
        if a.ndim > 2 or (a.ndim == 2 and a.shape[0] != 1):
            raise ShapeError(f"input_ids must be one sequence (T,) or (1, T), got shape {a.shape}; "
                             "use generate_batch for several sequences")
        ids = _id_array(a.reshape(-1), "input_ids", IMAGE_TOKEN_INDEX, self.sizes["vocab"])
        bad = ids[(ids < 0) & (ids != IMAGE_TOKEN_INDEX)]
        if bad.size:
            raise ShapeError(f"input_ids: id {int(bad[0])} is outside [0, {self.sizes['vocab']})")
        seq = {"ids": ids, "use_fom": bool(use_fom), "use_dp": bool(use_dp), "n_latents": int(n_latents or 0)}
        if pixels is not None:
            p = self._pixels(pixels)
            if p.shape[0] != 1:
                raise ShapeError("one sequence takes one image (3, S, S)")
            seq["pixels"] = np.ascontiguousarray(p[0])
            if features is not None:
                seq["features"] = _float_array(features, "features", self.device)
            if self.has_tg and (use_fom or use_dp):
                if text_ids is None:
                    raise ShapeError("this TG-LLaVA checkpoint needs text_ids (the CLIP tokens of the question)")
                t, _ = self._text_batch(text_ids, 1)
                seq["text_ids"] = np.ascontiguousarray(t[0])
        return seq

    def logits(self, input_ids, pixels=None, text_ids=None, use_fom=True, use_dp=True, n_latents=None, all_positions=True):
        """Logits (T', V) of one spliced sequence at every position (or the last one)."""
        return self._core.logits(self._sequence(input_ids, pixels, text_ids, use_fom, use_dp, n_latents), bool(all_positions))

    def _eos(self, eos_token_id):
        if eos_token_id is None:
            eos_token_id = self.config.get("eos_token_id")
        if eos_token_id is None:
            return []
        return [int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])]

    def generate_batch(self, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                       seed=None, eos_token_id=None, callback=None, return_last_logits=False):
        """Generate for many sequences together; requests are dicts with input_ids [, pixels, text_ids,
        use_fom, use_dp, n_latents].  Returns a list of token lists (each equal to its single run)."""
        max_new_tokens, temperature, top_p, top_k, repetition_penalty = check_sampling(
            max_new_tokens, temperature, top_p, top_k, repetition_penalty, self.sizes.get("max_len"))
        seqs = [self._sequence(r["input_ids"], r.get("pixels"), r.get("text_ids"), r.get("use_fom", True),
                               r.get("use_dp", True), r.get("n_latents"), r.get("features")) for r in requests]
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        tokens, last = self._core.generate(seqs, max_new_tokens=max_new_tokens, temperature=temperature,
                                           top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                                           seed=int(seed) & ((1 << 64) - 1), eos_ids=self._eos(eos_token_id),
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
