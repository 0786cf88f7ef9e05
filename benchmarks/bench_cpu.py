"""CPU benchmark: sgemm GFLOP/s against numpy.matmul, per-stage time of the golden visual branch,
LLM prefill/decode tokens/s on the golden models and on a ~1B Llama-shaped model with random weights,
against the memory-bandwidth bounds measured in the same run (a large array copy, and a streaming read).  Prints a table and writes JSON.

usage: python benchmarks/bench_cpu.py [--golden ../shared/golden] [--out bench_cpu.json] [--skip-1b]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import tgllava
from tgllava import _C


def best(fn, reps=3):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def bench_sgemm(rows):
    for M, N, K in [(577, 1024, 1024), (577, 4096, 1024), (2885, 1024, 1024), (64, 4096, 4096)]:
        x = np.random.rand(M, K).astype(np.float32)
        w = np.random.rand(N, K).astype(np.float32)
        flop = 2.0 * M * N * K
        t_np = best(lambda: x @ w.T)
        t_tg = min(_C.op_linear("cpu", x, w, None, None, 0, 0, 5)[1] for _ in range(3))  # backend linear alone
        rows.append({"bench": "sgemm", "shape": f"{M}x{N}x{K}", "tgllava_GFLOPs": flop / t_tg / 1e9,
                     "numpy_GFLOPs": flop / t_np / 1e9})


def bench_golden(golden, rows):
    tmp = tempfile.mkdtemp()
    for name in ("tg-vicuna-tiny", "llava15-tiny"):
        subprocess.check_call([sys.executable, os.path.join(golden, "materialize.py"), os.path.join(golden, name),
                               os.path.join(tmp, name)], stdout=subprocess.DEVNULL)
        d = np.load(os.path.join(golden, name, "io.npz"))
        m = tgllava.load(os.path.join(tmp, name, "llm"), os.path.join(tmp, name, "clip"))
        pix = d["pixel_values"][None]
        tid = d["text_guide_ids"] if "text_guide_ids" in d else None
        r = {"bench": "golden", "set": name}
        r["vision_tower_1img_ms"] = best(lambda: m.vision_features(pix)) * 1e3
        if m.has_tg:
            tiles = tgllava.tile(pix)
            r["tile_ms"] = best(lambda: tgllava.tile(pix)) * 1e3
            r["vision_tower_4tiles_ms"] = best(lambda: m.vision_features(tiles[0])) * 1e3
            h, p = m.text_tower(tid)
            r["text_tower_ms"] = best(lambda: m.text_tower(tid)) * 1e3
            r["fom_ms"] = best(lambda: m.fom(p)) * 1e3
            feats = m.vision_features(tiles[0]).reshape(1, -1, m.sizes["v_hidden"])
            r["dp_ms"] = best(lambda: m.dp(feats, h)) * 1e3
        r["visual_tokens_ms"] = best(lambda: m.visual_tokens(pix, tid)) * 1e3
        _C.cpu_gemm_seconds(True)
        t = time.perf_counter()
        m.visual_tokens(pix, tid)
        t = time.perf_counter() - t
        r["visual_share_outside_gemm"] = 1 - _C.cpu_gemm_seconds(True) / t
        n = len(d["input_ids"]) - 1 + m._core.visual_token_count(True, 0)
        t = best(lambda: m.logits(d["input_ids"], pix, tid, all_positions=False))
        r["prefill_incl_visual_tok_per_s"] = n / t
        text = np.arange(1, 65)  # decode timed on a text-only prompt: the visual branch would drown it
        t1 = best(lambda: m.generate(text, max_new_tokens=1, eos_token_id=[]), reps=5)
        t129 = best(lambda: m.generate(text, max_new_tokens=129, eos_token_id=[]), reps=5)
        r["decode_tok_per_s"] = 128 / (t129 - t1)
        rows.append(r)


def bandwidth_GBps():
    a = np.ones(256 << 20 >> 2, np.float32)  # 256 MiB
    b = np.empty_like(a)
    t = best(lambda: np.copyto(b, a))
    return 2 * a.nbytes / t / 1e9


def read_bandwidth_GBps():
    """Streaming read rate: a dot product of two 256 MiB vectors (two reads per element, no writes)."""
    a = np.ones(256 << 20 >> 2, np.float32)
    b = np.ones_like(a)
    t = best(lambda: np.dot(a, b))
    return 2 * a.nbytes / t / 1e9


def bench_1b(rows, bw, read_bw):
    """Llama-shaped ~1B model (hidden 2048, 16 layers, ffn 5632, vocab 32000), random weights, text only."""
    from tgllava.loader import build_config
    cfg_llm = dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=16, num_hidden_layers=16,
                   intermediate_size=5632, vocab_size=32000, rms_norm_eps=1e-5, mm_vision_select_layer=-2,
                   mm_projector_type="linear", tokenizer_model_max_length=2048)
    cfg_clip = {"vision_config": dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=1, intermediate_size=128,
                                      image_size=28, patch_size=14)}

    class Ref:
        def __init__(self, shape):
            self.shape = shape
    core = _C.Model(build_config(cfg_llm, cfg_clip, {"model.mm_projector.weight": Ref((2048, 64))}), "cpu")
    rng = np.random.default_rng(0)
    nbytes = 0
    for name, shape, _ in core.required():
        a = (rng.standard_normal(shape, dtype=np.float32) * 0.02) if len(shape) > 1 else np.ones(shape, np.float32)
        core.set_tensor(name, a, 0)
        nbytes += a.nbytes
    core.finish()
    ids = rng.integers(3, 32000, 128).astype(np.int32)
    seq = {"ids": ids}
    t_pre = best(lambda: core.logits(seq, False), reps=2)
    t1 = best(lambda: core.generate([seq], max_new_tokens=1, eos_ids=[]), reps=2)
    t17 = best(lambda: core.generate([seq], max_new_tokens=17, eos_ids=[]), reps=2)
    per_tok = (t17 - t1) / 16
    bound = bw * 1e9 / nbytes  # tokens/s if every weight byte is read once per token
    read_bound = read_bw * 1e9 / nbytes
    rows.append({"bench": "llama_1b_fp32", "params_B": nbytes / 4 / 1e9, "prefill_tok_per_s": 128 / t_pre,
                 "decode_tok_per_s": 1 / per_tok, "copy_bound_tok_per_s": bound,
                 "fraction_of_copy_bound": (1 / per_tok) / bound, "read_bound_tok_per_s": read_bound,
                 "fraction_of_read_bound": (1 / per_tok) / read_bound})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden"))
    ap.add_argument("--out", default="bench_cpu.json")
    ap.add_argument("--skip-1b", action="store_true")
    a = ap.parse_args()
    rows = []
    bw = bandwidth_GBps()
    read_bw = read_bandwidth_GBps()
    rows.append({"bench": "memory", "copy_GBps_read_plus_write": bw, "read_GBps": read_bw})
    bench_sgemm(rows)
    bench_golden(a.golden, rows)
    if not a.skip_1b:
        bench_1b(rows, bw, read_bw)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for r in rows:
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    json.dump({"machine": machine, "rows": rows}, open(a.out, "w"), indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
