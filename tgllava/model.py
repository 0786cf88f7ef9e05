"""The loaded model: the Model object and the conversion of its inputs (loader.load() makes one).

Model methods convert friendly inputs (lists, other float dtypes, single samples without a batch axis,
DLPack tensors, GPU arrays on a CUDA model) into the exact arrays the extension checks, check generation
settings (check_sampling), and return NumPy.  tile() is the 2x tiling of the DP branch as a plain function.
"""
import os

import numpy as np

from . import _C
from . import devarray
from .errors import DeviceError, ShapeError
from .streaming import CountedCore, TokenStream


def tile(pixels):
    """(B,3,S,S) or (3,S,S) normalised images -> (B,4,3,S,S) tiles: bilinear 2x upscale, 4 crops (SPEC 2.5)."""
    p = devarray.float32_array(pixels, "pixels")
    single = p.ndim == 3
    if single:
        p = p[None]
    if p.ndim != 4 or p.shape[2] != p.shape[3]:
        raise ShapeError(f"pixels must be (B, C, S, S) or (C, S, S), got shape {p.shape}")
    out = _C.op_elementwise("cpu", "upscale_tiles", np.ascontiguousarray(p))
    return out[0] if single else out


def resolve_seed(seed):
    """The 64-bit sampling seed: `seed` (an integer) taken modulo 2**64, or a random one when it is None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ShapeError(f"seed must be an integer or None, got {seed!r}")
    return int(seed) & ((1 << 64) - 1)


def check_sampling(max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_len=None,
                   min_new_tokens=0):
    """Checked generation settings (max_new_tokens, temperature, top_p, top_k, repetition_penalty): the one
    rule of the model, `tgllava serve` and the command line.

    Values are converted here (a bool, a non-number or a non-integral count raises ShapeError); the
    ranges are the C core's (_C.check_sampling, which the extension's generate applies too): finite
    values, 0 <= max_new_tokens <= max_len (the context length, when given), temperature >= 0,
    0 < top_p <= 1, top_k >= 0, repetition_penalty > 0.  Front ends that must answer something ask
    for min_new_tokens=1.  A temperature below _C.MIN_TEMPERATURE comes back as 0 (greedy: dividing
    logits by 1e-39 would overflow), a top_k above 2**30 as 2**30 (no vocabulary is that large).
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
        return float(v)

    max_new_tokens, top_k = integer(max_new_tokens, "max_new_tokens"), min(integer(top_k, "top_k"), 1 << 30)
    temperature, top_p = number(temperature, "temperature"), number(top_p, "top_p")
    repetition_penalty = number(repetition_penalty, "repetition_penalty")
    if max_new_tokens < min_new_tokens:
        raise ShapeError(f"max_new_tokens must be at least {min_new_tokens}, got {max_new_tokens}")
    _C.check_sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, -1 if max_len is None else max_len)
    if temperature < _C.MIN_TEMPERATURE:
        temperature = 0.0
    return max_new_tokens, temperature, top_p, top_k, repetition_penalty


def _id_array(x, what, low, high):
    a = devarray.host_array(x, what)
    if a.dtype.kind not in "iu" and a.size and not (a.dtype.kind == "f" and np.all(a == np.round(a))):
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
        return d if d is not None else devarray.float32_array(x, what, self.device)

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

    def _pixels(self, pixels, device_ok=True):
        p = self._floats(pixels, "pixels", device_ok)
        S, shape = self.image_size, p.shape
        if len(shape) == 3:
            p = p.reshape((1,) + shape)
        if len(p.shape) != 4 or p.shape[1:] != (3, S, S):
            raise ShapeError(f"pixels must be (B, 3, {S}, {S}) or (3, {S}, {S}), got shape {shape}")
        return p

    def _text_batch(self, text_ids, B, use_fom, use_dp):
        """The text guides FOM/DP read ((None, None) when they are off): (B,T) zero-padded int32 ids and (B,)
        lengths from an array or a list of sequences."""
        if not (self.has_tg and (use_fom or use_dp)):
            return None, None
        if text_ids is None:
            raise ShapeError("this TG-LLaVA checkpoint needs text_ids (the CLIP tokens of the question) "
                             "for FOM/DP")
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
        ids, lens = self._text_batch(text_ids, p.shape[0], use_fom, use_dp)
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
        ids = _id_array(a.reshape(-1), "input_ids", _C.IMAGE_TOKEN, self.sizes["vocab"])
        bad = ids[(ids < 0) & (ids != _C.IMAGE_TOKEN)]
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
            t, _ = self._text_batch(text_ids, 1, use_fom, use_dp)
            if t is not None:
                seq["text_ids"] = t[0]
        return seq

    def logits(self, input_ids, pixels=None, text_ids=None, use_fom=True, use_dp=True, n_latents=None, all_positions=True,
               visual=None, out="host"):
        """Logits (T', V) of one spliced sequence at every position (or the last one, all_positions=False):
        T' counts the -200 of input_ids as the image's visual tokens (visual_token_count).  The image is
        pixels (with text_ids on TG-LLaVA: logits(**m.prepare(image, question))), or its visual tokens
        (n, H) as visual_tokens() returns them (visual=)."""
        seq = self._sequence(input_ids, pixels, text_ids, use_fom, use_dp, n_latents, visual=visual)
        return self._core.logits(seq, bool(all_positions), self._out(out))

    def _eos(self, eos_token_id):
        eos = self.config.get("eos_token_id") if eos_token_id is None else eos_token_id
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def scheduler(self, slots, context=None, decode_rows=0):
        """A continuous-batching scheduler on this model (tgllava._C.Scheduler; generate_many, eval and
        `tgllava serve` drive one through tgllava.generation): `slots` KV-cache slots of `context` positions
        each (default: the model's max_len), its own cache beside the one generate uses.  Every sequence's
        tokens are bitwise those of its own generate() call whatever runs beside it: decode_rows 0 lets the
        C core cut each decode step into as many rows as the backend's products compute exactly (CPU
        float32: _C.CPU_EXACT_ROWS; compact CPU formats: all rows in one product), and admit_many prefills
        several admissions in one product only where that is exact too.  Its calls are counted like the
        model's own, so an unread stream gives the model up to it (streaming.py)."""
        return self._core.counted(_C.Scheduler(self._core._core, int(slots), int(context or 0), int(decode_rows or 0)))

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
        from .generation import generate_many
        return generate_many(self, requests, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                             eos_token_id, callback, max_batch)

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
        if len(requests) != 1 and not return_last_logits:
            done = dict(self.generate_many(requests, max_new_tokens, temperature, top_p, top_k,
                                           repetition_penalty, seed, eos_token_id, callback, max_batch))
            return [done[i] for i in range(len(requests))]
        # one static batch, the model held throughout (what generate and its stream use): one tg_generate call
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
        """New token ids for one prompt (greedy by default; the EOS token itself is not returned).

        input_ids: the prompt's LLM ids, with one _C.IMAGE_TOKEN (-200) where the picture goes when there
        is one; pixels: its (3, S, S) preprocessed pixels; text_ids: TG-LLaVA's CLIP text guide ids
        (prepare() builds all three: generate(**m.prepare(image, question))).  temperature 0 is greedy,
        above 0 sampling with top_p / top_k (`seed` makes it repeatable); repetition_penalty > 1 makes
        repeats less likely; eos_token_id: the id(s) that end the answer (default: the config's);
        use_fom / use_dp / n_latents: the TG modules' switches and DP latents kept; callback(token)
        sees every new token, a true result ends the generation."""
        req = dict(input_ids=input_ids, pixels=pixels, text_ids=text_ids, use_fom=use_fom, use_dp=use_dp, n_latents=n_latents)
        cb = None if callback is None else (lambda seq, tok: callback(tok))
        return self.generate_batch([req], max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                                   eos_token_id, cb)[0]

    def prepare(self, image, question, conv_mode=None, use_fom=True, use_dp=True):
        """The request of one question about a picture (image None: the question alone), as chat builds it:
        tgllava.chat.prepare, whose text says what its dict (input_ids, pixels, text_ids, use_fom, use_dp)
        holds.  It is a request of generate_batch and generate_many and the keywords of generate, logits,
        generate_stream and attention_map: m.generate(**m.prepare(img, q))."""
        from .chat import prepare
        return prepare(self, image, question, conv_mode, use_fom, use_dp)

    def chat(self, image, question, conv_mode=None, max_new_tokens=512, temperature=0.0, top_p=1.0, stream=False,
             use_fom=True, use_dp=True, seed=None):
        """Answer `question` about `image` (tgllava.chat.chat): an Answer (text, token_ids, timings,
        finish_reason, conv_mode), or with stream=True an AnswerStream of text pieces.

        image: a path, bytes, PIL image or uint8 array; None asks the question alone (the template's
        text-only form).  conv_mode: the chat template (default: the model's); max_new_tokens: the
        answer's length limit in tokens; temperature 0 is greedy, above 0 temperature / top-p
        sampling (`seed` makes it repeatable); use_fom / use_dp switch the TG modules off."""
        from .chat import chat
        return chat(self, image, question, conv_mode, max_new_tokens, temperature, top_p, stream, use_fom, use_dp,
                    seed)

    def chat_batch(self, pairs, conv_mode=None, max_new_tokens=512, temperature=0.0, top_p=1.0, use_fom=True,
                   use_dp=True, seed=None, max_batch=None):
        """Answers for many (image, question) pairs generated together: a list of Answer in the order of
        `pairs`, each (greedy) equal to chat(image, question) alone (tgllava.chat.chat_batch).  An image
        may be None (a text-only question); the other arguments are chat's, and max_batch is the most
        answers generated at once (generate_many).  Benchmark items go through tgllava.eval
        (eval/adapter.py)."""
        from .chat import chat_batch
        return chat_batch(self, pairs, conv_mode, max_new_tokens, temperature, top_p, use_fom, use_dp, seed,
                          max_batch)

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
        seq = self._sequence([_C.IMAGE_TOKEN], pixels, text_ids, use_fom=True, use_dp=True)
        return self._core.dp_attention(seq)

    def attention_map(self, image=None, question=None, conv_mode=None, use_fom=True, use_dp=True, n_latents=None,
                      input_ids=None, text_ids=None, pixels=None):
        """Where the model looks: an AttentionMaps with the LLM map (g, g), the DP map (2g, 2g) and the FOM
        map (g, g) of one prompt (tgllava.attention.attention_map, whose text says how each is made).

        The prompt is a picture and a question (made into a request as prepare() does it), or explicit
        input_ids / pixels / text_ids: attention_map(**prepare(...))."""
        from .attention import attention_map
        return attention_map(self, image, question, conv_mode, use_fom, use_dp, n_latents, input_ids,
                             text_ids, pixels)

    def generate_stream(self, input_ids, pixels=None, text_ids=None, max_new_tokens=256, temperature=0.0, top_p=1.0,
                        top_k=0, repetition_penalty=1.0, seed=None, eos_token_id=None, use_fom=True, use_dp=True,
                        n_latents=None):
        """Iterator over new token ids as they are generated: generate() with these arguments in a worker
        thread (tgllava.streaming.TokenStream).  It runs a few tokens ahead of the reader at most; one
        left unread gives the model up to the next call on it (and then raises StreamCancelled);
        close() or leaving a for loop early stops the generation."""
        return TokenStream(self, lambda callback: self.generate(
            input_ids, pixels, text_ids, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
            eos_token_id, use_fom, use_dp, n_latents, callback))
