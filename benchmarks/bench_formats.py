"""CPU benchmark of the compact weight formats on a real-size model: a LLaVA-1.5-7B-shaped checkpoint
(Vicuna-7B: hidden 4096, 32 layers, 32 heads, ffn 11008, vocab 32000; the full CLIP-L/336 vision tower;
mlp2x_gelu projector) with random bfloat16 weights, written by this script as safetensors, then loaded by
tgllava in bfloat16, int8 and int4 -- each in a fresh process, so peak RSS is that format's own.

Per format: load time, peak RSS, stored weight bytes, vision tower (1 image, and 5 = image + 4 tiles),
prefill tok/s of a ~700-position prompt (576 image tokens + text), decode tok/s over 128 tokens, and decode
as a fraction of the read-bandwidth bound measured in the same run (stored bytes read per token / streaming-
read GB/s).  The float32 ~1.1B Llama model of bench_cpu.py runs on the same scale.  With --torch PYTHON
(an interpreter that has torch + transformers, never a dependency of tgllava), the same shapes run through
PyTorch on the CPU with the same thread count (benchmarks/torch_baseline.py) and the ratios are printed.

usage: python benchmarks/bench_formats.py [--dir /tmp/tgllava-bench7b] [--formats bfloat16,int8,int4]
                                          [--torch /path/to/venv/bin/python] [--out bench_formats.json]
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VICUNA_7B = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32,
                 intermediate_size=11008, vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096,
                 tokenizer_model_max_length=2048, mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
                 mm_vision_select_feature="patch", mm_vision_tower="clip", model_type="llava",
                 architectures=["LlavaLlamaForCausalLM"])
LLAMA_1B = dict(VICUNA_7B, hidden_size=2048, num_attention_heads=16, num_key_value_heads=16, num_hidden_layers=22,
                intermediate_size=5632)
CLIP_L336 = {"vision_config": dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24,
                                   intermediate_size=4096, image_size=336, patch_size=14, hidden_act="quick_gelu",
                                   layer_norm_eps=1e-5)}
PROMPT_TEXT = 124  # + 576 image tokens - 1 placeholder = 699 positions
DECODE = 128


class _Shape:
    def __init__(self, shape):
        self.shape = tuple(shape)


def required_tensors(llm_cfg):
    """(name, shape) of every tensor a LLaVA model of this config needs (asked from the C core itself)."""
    from tgllava import _C
    from tgllava.loader import build_config
    refs = {"model.mm_projector.0.weight": _Shape((llm_cfg["hidden_size"], 1024))}
    refs.update({f"vision_model.encoder.layers.{i}.x": _Shape((1,)) for i in range(24)})  # layer counts
    refs.update({f"model.layers.{i}.x": _Shape((1,)) for i in range(llm_cfg["num_hidden_layers"])})
    core = _C.Model(build_config(llm_cfg, CLIP_L336, refs, "bfloat16"), "cpu")
    return [(n, s) for n, s, _ in core.required()]


def write_safetensors(path, tensors, pool):
    """tensors: [(name, shape, kind)]; values are bfloat16 slices of `pool` (random) or ones (norms)."""
    header, off = {}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(len(tensors))
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape, kind in tensors:
            n = int(np.prod(shape))
            if kind == "ones":
                f.write(np.full(n, 0x3F80, np.uint16).tobytes())  # 1.0 in bfloat16
                continue
            done = 0
            while done < n:  # random slices of the pool: distinct values without generating 7e9 normals
                start = int(rng.integers(0, pool.size // 2))
                take = min(n - done, pool.size - start)
                f.write(pool[start:start + take].tobytes())
                done += take


def build(folder, llm_cfg, with_clip=True):
    """LLM folder (+ CLIP folder) with random bfloat16 weights; skipped when already written."""
    llm, clip = os.path.join(folder, "llm"), os.path.join(folder, "clip")
    if os.path.exists(os.path.join(llm, "done")):
        return llm, clip
    os.makedirs(llm, exist_ok=True)
    os.makedirs(clip, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 25, dtype=np.float32) * 0.02).view(np.uint32)
    pool = ((pool + 0x7FFF + ((pool >> 16) & 1)) >> 16).astype(np.uint16)
    req = required_tensors(llm_cfg)
    kind = lambda n, s: "ones" if len(s) == 1 and ("norm" in n or "layrnorm" in n) else "rand"  # noqa: E731
    vis = [(n, s, kind(n, s)) for n, s in req if n.startswith("vision_model.")]
    n_layers = CLIP_L336["vision_config"]["num_hidden_layers"]  # the tower's last layer is unused but present
    used, unused = f".layers.{n_layers - 2}.", f".layers.{n_layers - 1}."
    vis += [(n.replace(used, unused), s, k) for n, s, k in vis if used in n]
    rest = [(n, s, kind(n, s)) for n, s in req if not n.startswith("vision_model.")]
    if with_clip:
        write_safetensors(os.path.join(clip, "model.safetensors"), vis, pool)
        json.dump(dict(CLIP_L336, model_type="clip"), open(os.path.join(clip, "config.json"), "w"))
    write_safetensors(os.path.join(llm, "model.safetensors"), rest, pool)
    json.dump(llm_cfg, open(os.path.join(llm, "config.json"), "w"))
    open(os.path.join(llm, "done"), "w").close()
    return llm, clip


def read_bandwidth_GBps():
    """Streaming read rate: a dot product of two 512 MiB vectors (reads only)."""
    a = np.ones(512 << 20 >> 2, np.float32)
    b = np.ones_like(a)
    np.dot(a, b)
    t = min(_timed(lambda: np.dot(a, b)) for _ in range(3))
    return 2 * a.nbytes / t / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "int8": 3, "int4": 4}
BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8.5, "int4": 4.5}


def bench_ops(read_bw):
    """Per format: the decode GEMV (M = 1 and 4, an 11008 x 4096 weight) in GB/s of stored weights and as a
    share of the read bandwidth, and a prefill product (M = 700, 4096 x 4096) in GFLOP/s against float32."""
    from tgllava import _C
    rng = np.random.default_rng(0)
    w = rng.standard_normal((11008, 4096), dtype=np.float32) * 0.02
    rows = []
    for fmt, code in CODES.items():
        r = {"format": fmt}
        for M in (1, 4):
            x = rng.standard_normal((M, 4096), dtype=np.float32)
            t = min(_C.op_linear("cpu", x, w, None, None, 0, code, 20)[1] for _ in range(3))
            gbs = w.size * BITS[fmt] / 8 / t / 1e9
            r[f"gemv_M{M}_GBps"] = gbs
            r[f"gemv_M{M}_share_of_read_bw"] = gbs / read_bw
        x = rng.standard_normal((700, 4096), dtype=np.float32)
        t = min(_C.op_linear("cpu", x, w[:4096], None, None, 0, code, 2)[1] for _ in range(2))
        r["prefill_GFLOPs"] = 2 * 700 * 4096 * 4096 / t / 1e9
        rows.append(r)
    for r in rows:
        r["prefill_share_of_float32"] = r["prefill_GFLOPs"] / rows[0]["prefill_GFLOPs"]
    return rows


def run_format(llm, clip, fmt):
    """One format in this process (called in a child): the measurements as a dict."""
    import tgllava
    r = {"format": fmt}
    t = time.perf_counter()
    m = tgllava.load(llm, clip, dtype=fmt, progress=False)
    r["load_s"] = time.perf_counter() - t
    r["peak_rss_GB_after_load"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    r["weight_GB"] = m.weight_bytes / 1e9
    rng = np.random.default_rng(1)
    S = m.image_size
    pix = rng.standard_normal((5, 3, S, S)).astype(np.float32)
    m.vision_features(pix[:1])
    r["vision_b1_s"] = min(_timed(lambda: m.vision_features(pix[:1])) for _ in range(2))
    r["vision_b5_s"] = _timed(lambda: m.vision_features(pix))
    ids = np.concatenate([[1], [-200], rng.integers(3, 32000, PROMPT_TEXT - 1)]).astype(np.int64)
    n_pos = len(ids) - 1 + m.num_patches
    r["prefill_positions"] = n_pos
    t = _timed(lambda: m.logits(ids, pix[0], all_positions=False))
    r["prefill_tok_per_s"] = n_pos / t
    text = rng.integers(3, 32000, 32)
    t1 = _timed(lambda: m.generate(text, max_new_tokens=1, eos_token_id=[]))
    tn = _timed(lambda: m.generate(text, max_new_tokens=DECODE + 1, eos_token_id=[]))
    r["decode_tok_per_s"] = DECODE / (tn - t1)
    r["bytes_per_token_GB"] = _decode_bytes(m) / 1e9
    r["peak_rss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return r


def _decode_bytes(m):
    """Stored bytes one decode step reads: the LLM's matrices (and the head), not the vision side."""
    return sum(b for name, _, b in m._core.storage()
               if name.startswith(("model.layers.", "lm_head.", "model.norm")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "tgllava-bench7b"))
    ap.add_argument("--formats", default="bfloat16,int8,int4")
    ap.add_argument("--torch", default=None, help="python with torch + transformers for the PyTorch baseline")
    ap.add_argument("--out", default="bench_formats.json")
    ap.add_argument("--ops-only", action="store_true", help="only the per-format op table")
    ap.add_argument("--child", nargs=3, metavar=("LLM", "CLIP", "FMT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        llm, clip, fmt = a.child
        print(json.dumps(run_format(llm, clip, fmt)))
        return
    if a.ops_only:
        read_bw = read_bandwidth_GBps()
        for r in bench_ops(read_bw):
            print("ops | " + " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        print("read bandwidth %.1f GB/s" % read_bw)
        return
    t = time.perf_counter()
    llm7, clip7 = build(os.path.join(a.dir, "7b"), VICUNA_7B)
    llm1, _ = build(os.path.join(a.dir, "1b"), LLAMA_1B, with_clip=False)
    build_s = time.perf_counter() - t
    read_bw = read_bandwidth_GBps()
    op_rows = bench_ops(read_bw)
    for r in op_rows:
        print("ops | " + " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
              flush=True)
    rows = []
    jobs = [(llm7, clip7, f) for f in a.formats.split(",")] + [(llm1, clip7, "float32")]
    for llm, clip, fmt in jobs:
        out = subprocess.run([sys.executable, __file__, "--child", llm, clip, fmt], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(f"{fmt} run failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["model"] = "llama-1.1b" if "1b" in llm else "llava-7b"
        r["read_bound_tok_per_s"] = read_bw / r["bytes_per_token_GB"]
        r["fraction_of_read_bound"] = r["decode_tok_per_s"] / r["read_bound_tok_per_s"]
        rows.append(r)
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
    torch_rows = []
    if a.torch:
        out = subprocess.run([a.torch, os.path.join(HERE, "torch_baseline.py"), "--threads", str(os.cpu_count()),
                              "--prompt", str(rows[0]["prefill_positions"]), "--decode", str(DECODE)],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:])
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                torch_rows.append(json.loads(line))
                print("torch |", line, flush=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
               "read_GBps": read_bw, "checkpoint_build_s": build_s}
    json.dump({"machine": machine, "ops": op_rows, "rows": rows, "torch": torch_rows}, open(a.out, "w"), indent=1)
    print("read bandwidth %.1f GB/s; wrote %s" % (read_bw, a.out))


if __name__ == "__main__":
    main()
