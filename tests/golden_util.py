"""Shared helpers for tests: where the golden sets are, and golden checkpoints materialized once per session.

The one rule every test follows to find the golden sets (SPEC 5): the folder named by
$TGLLAVA_GOLDEN, else ../shared/golden relative to the checkout (the folder above tests/).
When neither exists, importing this module raises GoldenSetsNotFound, which names the places it
looked: the tests that need the golden sets then fail (at collection), they never skip.
"""
import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)


class GoldenSetsNotFound(RuntimeError):
    """The golden sets are not where the tests look for them."""


def find_golden():
    """The golden-set folder: $TGLLAVA_GOLDEN, else ../shared/golden beside the checkout."""
    env = os.environ.get("TGLLAVA_GOLDEN")
    if env:
        if os.path.isfile(os.path.join(env, "materialize.py")):
            return os.path.abspath(env)
        raise GoldenSetsNotFound(f"TGLLAVA_GOLDEN={env} is not a golden-set folder (no materialize.py in it)")
    default = os.path.normpath(os.path.join(CHECKOUT, "..", "shared", "golden"))
    if os.path.isfile(os.path.join(default, "materialize.py")):
        return default
    raise GoldenSetsNotFound(
        f"golden sets not found: $TGLLAVA_GOLDEN is not set and {default} (../shared/golden relative to the "
        f"checkout {CHECKOUT}) has no materialize.py; set TGLLAVA_GOLDEN to the folder holding them")


GOLDEN = find_golden()
FIXTURES = os.path.join(GOLDEN, "fixtures")
SETS = ["tg-vicuna-tiny", "tg-qwen2-tiny", "llava15-tiny"]
_ROOT = tempfile.mkdtemp(prefix="tgllava-golden-")  # ~1.2 GB of checkpoints: removed when the process ends
atexit.register(shutil.rmtree, _ROOT, True)


@functools.lru_cache(maxsize=None)
def checkpoint(name):
    """(llm_dir, clip_dir) of golden set `name`, written once per test session."""
    out = os.path.join(_ROOT, name)
    if not os.path.exists(os.path.join(out, "llm", "config.json")):
        subprocess.check_call([sys.executable, os.path.join(GOLDEN, "materialize.py"), os.path.join(GOLDEN, name), out],
                              stdout=subprocess.DEVNULL)
    return os.path.join(out, "llm"), os.path.join(out, "clip")


@functools.lru_cache(maxsize=None)
def io(name):
    return dict(np.load(os.path.join(GOLDEN, name, "io.npz")))


@functools.lru_cache(maxsize=None)
def model(name, device="cpu"):
    import tgllava
    llm, clip = checkpoint(name)
    return tgllava.load(llm, clip, device=device)


def tiny_llama_folder(folder, vocab, seed=0, head_std=1.0):
    """Write a 1-layer LLaVA-Llama LLM (hidden 16, random float32 weights, mlp2x_gelu projector for a 1024-wide
    tower such as the golden CLIP) into `folder`; returns the folder as a string."""
    sys.path.insert(0, GOLDEN)
    from weights import save_safetensors
    rng = np.random.default_rng(seed)
    H, V, F = 16, vocab, 32
    t = {"model.embed_tokens.weight": rng.normal(0, 1, (V, H)), "model.norm.weight": np.ones(H),
         "lm_head.weight": rng.normal(0, head_std, (V, H)),
         "model.mm_projector.0.weight": rng.normal(0, 0.02, (H, 1024)), "model.mm_projector.0.bias": np.zeros(H),
         "model.mm_projector.2.weight": rng.normal(0, 0.1, (H, H)), "model.mm_projector.2.bias": np.zeros(H)}
    p = "model.layers.0."
    for k in ("q", "k", "v", "o"):
        t[p + f"self_attn.{k}_proj.weight"] = rng.normal(0, 0.3, (H, H))
    t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.3, (F, H))
    t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.3, (F, H))
    t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.3, (H, F))
    t[p + "input_layernorm.weight"] = np.ones(H)
    t[p + "post_attention_layernorm.weight"] = np.ones(H)
    folder = str(folder)
    save_safetensors(os.path.join(folder, "model.safetensors"), {k: v.astype(np.float32) for k, v in t.items()})
    cfg = dict(hidden_size=H, num_attention_heads=2, num_hidden_layers=1, intermediate_size=F, vocab_size=V,
               rms_norm_eps=1e-5, model_type="llava_llama", mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
               mm_hidden_size=1024, eos_token_id=None)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def peak_bytes(fn):
    """Peak bytes Python-tracked allocations reached while fn() ran (tracemalloc)."""
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def config_copy(src, dst):
    """A copy of checkpoint folder `src` at `dst` whose configs and tokenizer files are real copies (to edit)
    and whose weight files are symlinks to the originals (never write to those): a test that only edits a
    config pays no gigabyte copy."""
    os.makedirs(dst)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if name.endswith((".safetensors", ".bin")):
            os.symlink(os.path.realpath(path), os.path.join(dst, name))
        elif os.path.isdir(path):
            shutil.copytree(path, os.path.join(dst, name))
        else:
            shutil.copy(path, os.path.join(dst, name))
    return dst

