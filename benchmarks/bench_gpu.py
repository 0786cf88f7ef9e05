"""GPU benchmark at the paper's main shapes: CLIP-L/336 + CLIP text + Q-former FOM + perceiver DP +
mlp2x projector + Vicuna-7B, random weights (one random block per tensor shape, uploaded in bf16).
Times the visual branch (batch 1), prefill of a ~700-token prompt, decode ms/token at batch 1 and 32,
and end-to-end multiple-choice samples/s (visual branch + prefill + 1 token) at batch 1 and batched.
Prints a table and writes JSON.  Run it in the same job as ../shared/bench/pytorch_flow.py.

usage: python benchmarks/bench_gpu.py [--device cuda] [--dtype bfloat16] [--out bench_gpu.json]
"""
import argparse
import json
import time

import numpy as np

import tgllava
from tgllava import _C
from tgllava.loader import build_config


class _Shape:
    def __init__(self, shape):
        self.shape = shape


def paper_config(dtype):
    llm = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32, intermediate_size=11008,
               vocab_size=32000, rms_norm_eps=1e-5, mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
               tokenizer_model_max_length=2048)
    clip = {"vision_config": dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24, intermediate_size=4096,
                                  image_size=336, patch_size=14, hidden_act="quick_gelu"),
            "text_config": dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=12, intermediate_size=3072,
                                vocab_size=49408, max_position_embeddings=77)}
    pf, qf = "model.mm_patch_encoder.", "model.mm_cross_attn."
    shapes = {qf + "query_tokens": (1, 576, 1024), qf + "Qformer.bert.encoder.layer.0.intermediate_query.dense.weight": (4096, 1024),
              qf + "Qformer.bert.encoder.layer.1.x": (1,), pf + "perceiver.layers.0.self_attn.q_proj.weight": (1536, 1024),
              pf + "perceiver.layers.0.self_attn.k_proj.weight": (384, 1024), pf + "perceiver.layers.1.x": (1,),
              pf + "perceiver.latents": (64, 1024), pf + "perceiver.layers.0.mlp.gate_proj.weight": (4096, 1024),
              pf + "position_embedding.weight": (2304, 1024), "model.mm_projector.0.weight": (4096, 1024)}
    return build_config(llm, clip, {k: _Shape(v) for k, v in shapes.items()}, dtype)


def build(device, dtype):
    core = _C.Model(paper_config(dtype), device)
    rng = np.random.default_rng(0)
    blocks = {}
    for name, shape, _ in core.required():
        if shape not in blocks:
            n = int(np.prod(shape))
            blocks[shape] = (rng.standard_normal(n, dtype=np.float32) * (0.02 if len(shape) > 1 else 1.0)).reshape(shape)
            if len(shape) == 1 and "bias" not in name:
                blocks[shape] = np.ones(shape, np.float32)
        core.set_tensor(name, blocks[shape], 0)
    core.finish()
    return core


def timeit(fn, warm=2, reps=5):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()  # every call ends with a download, so it is synchronous
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="bench_gpu.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    core = build(a.device, a.dtype)
    rows = {"build_s": time.perf_counter() - t0}
    rng = np.random.default_rng(1)
    pix = rng.standard_normal((3, 336, 336)).astype(np.float32)
    tids = np.concatenate([[49406], rng.integers(1, 49000, 22), [49407]]).astype(np.int32)
    ids = rng.integers(3, 32000, 61).astype(np.int32)
    ids[35] = -200
    seq = {"ids": ids, "pixels": pix, "text_ids": tids}
    rows["visual_branch_ms_B1"] = timeit(lambda: core.visual_tokens(pix[None], tids[None], None)) * 1e3
    rows["prefill_tokens"] = core.spliced_length(seq)
    text_seq = {"ids": rng.integers(3, 32000, rows["prefill_tokens"]).astype(np.int32)}
    rows["prefill_ms_B1"] = timeit(lambda: core.logits(text_seq, False)) * 1e3
    g1 = timeit(lambda: core.generate([text_seq], max_new_tokens=1, eos_ids=[]), 1, 3)
    g65 = timeit(lambda: core.generate([text_seq], max_new_tokens=65, eos_ids=[]), 1, 3)
    rows["decode_ms_per_token_B1"] = (g65 - g1) / 64 * 1e3
    b32 = [text_seq] * 32
    g1 = timeit(lambda: core.generate(b32, max_new_tokens=1, eos_ids=[]), 1, 2)
    g65 = timeit(lambda: core.generate(b32, max_new_tokens=65, eos_ids=[]), 1, 2)
    rows["decode_ms_per_step_B32"] = (g65 - g1) / 64 * 1e3
    rows["gen_tokens_per_s_B32"] = 32 * 64 / (g65 - g1)
    rows["mc_samples_per_s_B1"] = 1 / timeit(lambda: core.generate([seq], max_new_tokens=1, eos_ids=[]), 1, 5)
    for B in (8, 32):
        t = timeit(lambda: core.generate([seq] * B, max_new_tokens=1, eos_ids=[]), 1, 3)
        rows[f"mc_samples_per_s_B{B}"] = B / t
    for k, v in rows.items():
        print(f"{k:28s} {v:10.3f}")
    json.dump({"device": a.device, "dtype": a.dtype, "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
