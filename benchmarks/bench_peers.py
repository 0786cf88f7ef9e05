"""tgllava against llama.cpp and PyTorch on the CPU, on the same weights, in one run: the table of issue 20.

One command builds a TinyLlama-1.1B-shaped LLaVA checkpoint with random bfloat16 weights (hidden 2048, 22
layers, 32 heads with 4 key/value heads, ffn 5632, vocab 32000; the full CLIP-L/336 vision tower), then times:
  - tgllava (this interpreter; each format in a fresh process): prefill of --prompt text positions, decode of
    --decode tokens, in float32, float16, bfloat16, int8 and int4; the CLIP-L tower at 1 and 5 images in
    float32 and bfloat16;
  - llama.cpp and PyTorch (--peers PYTHON: an interpreter of the benchmark's own venv with llama-cpp-python,
    gguf, torch, transformers; benchmarks/peer_run.py) on the same weights: llama.cpp in f32, f16, bf16, q8_0,
    q4_0 (its own quantiser), PyTorch in float32 and bfloat16, and PyTorch's CLIPVisionModel;
  - op level: each format's product (M = 512 and the decode GEMV) against float32 sgemm, and a streaming read
    with as many threads as cores (the decode bound).
With --mc7b, also one multiple-choice sample of the LLaVA-1.5-7B-shaped checkpoint of bench_formats.py
(prompt: the image + 124 text tokens = 699 positions, 2 answer tokens) in bfloat16 and int8, with the image's 4
TG-DP tiles through the tower as TG-LLaVA adds them, and the same with --baseline CHECKOUT (an older tgllava
built in place) for the speed-up.  Then prints the table with the ratios and writes JSON.  Equal bits: int8 ~ q8_0, int4 ~ q4_0 (llama.cpp keeps
its output head in q6_K under q4_0; tgllava in int8).  Run it on a quiet machine.

usage: python benchmarks/bench_peers.py --peers /path/to/peer-venv/bin/python [--dir /tmp/tgllava-peers]
                                        [--threads 2] [--prompt 512] [--decode 128] [--out bench_peers.json]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_formats import CLIP_L336, VICUNA_7B, build  # noqa: E402

TINYLLAMA = dict(VICUNA_7B, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, num_hidden_layers=22,
                 intermediate_size=5632)
FORMATS = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int8": "q8_0", "int4": "q4_0"}


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def child(llm, clip, fmt, what, prompt, decode):
    """One tgllava measure in this (fresh) process."""
    import tgllava
    m = tgllava.load(llm, clip, dtype=fmt, progress=False)
    rng = np.random.default_rng(1)
    if what == "mc":  # one multiple-choice sample: the image through the tower and the LLM, two tokens
        S = m.image_size
        pix = rng.standard_normal((5, 3, S, S)).astype(np.float32)
        ids = np.concatenate([[1], [-200], rng.integers(300, 32000, 123)]).astype(np.int64)
        t_tiles = _timed(lambda: m.vision_features(pix[1:]))  # TG-DP's 4 tiles, as TG-LLaVA adds them
        t_sample = _timed(lambda: m.generate(ids, pix[0], max_new_tokens=2, eos_token_id=[]))
        return {"tiles_s": t_tiles, "sample_s": t_sample, "tg_sample_s": t_tiles + t_sample}
    if what == "clip":
        S = m.image_size
        pix = rng.standard_normal((5, 3, S, S)).astype(np.float32)
        m.vision_features(pix[:1])
        return {"b1_s": min(_timed(lambda: m.vision_features(pix[:1])) for _ in range(2)),
                "b5_s": min(_timed(lambda: m.vision_features(pix)) for _ in range(2))}
    ids = rng.integers(300, 32000, prompt).astype(np.int32)
    seq = {"ids": ids}
    m._core.logits({"ids": ids[:16]}, False)  # warm-up
    pre = min(_timed(lambda: m._core.logits(seq, False)) for _ in range(2))
    text = ids[:32].astype(np.int64)
    t1 = _timed(lambda: m.generate(text, max_new_tokens=1, eos_token_id=[]))
    tn = _timed(lambda: m.generate(text, max_new_tokens=decode + 1, eos_token_id=[]))
    return {"prefill_tok_per_s": prompt / pre, "decode_tok_per_s": decode / (tn - t1), "weight_GB": m.weight_bytes / 1e9}


def read_bandwidth_GBps(threads):
    """Streaming read with `threads` threads at once (numpy's dot releases the GIL): the decode bound."""
    arrays = [(np.ones(128 << 20 >> 2, np.float32), np.ones(128 << 20 >> 2, np.float32)) for _ in range(threads)]

    def run():
        ts = [threading.Thread(target=np.dot, args=ab) for ab in arrays]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    run()
    t = min(_timed(run) for _ in range(3))
    return sum(a.nbytes + b.nbytes for a, b in arrays) / t / 1e9


def ops(threads):
    """Per format: a prefill-size product (512 x 2048 x 5632) in GFLOP/s, and the decode GEMV in GB/s of stored
    weights on a matrix too big for any cache (49152 x 2048: 56 MB in int4, beyond the 32 MB L3), median of 5."""
    from tgllava import _C
    codes = {"float32": 0, "float16": 1, "bfloat16": 2, "int8": 3, "int4": 4}
    bits = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8.5, "int4": 4.5}
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5632, 2048), dtype=np.float32) * 0.02
    x = rng.standard_normal((512, 2048), dtype=np.float32)
    big = rng.standard_normal((49152, 2048), dtype=np.float32) * 0.02
    rows = {}
    for fmt, code in codes.items():
        t = min(_C.op_linear("cpu", x, w, None, None, 0, code, 3)[1] for _ in range(3))
        g = float(np.median([_C.op_linear("cpu", x[:1], big, None, None, 0, code, 10)[1] for _ in range(5)]))
        rows[fmt] = {"product_GFLOPs": 2 * 512 * 5632 * 2048 / t / 1e9, "gemv_GBps": big.size * bits[fmt] / 8 / g / 1e9}
    return rows


def run_child(llm, clip, fmt, what, a, checkout=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if checkout:  # an older tgllava built in place
        env["PYTHONPATH"] = checkout
    out = subprocess.run([sys.executable, __file__, "--child", llm, clip, fmt, what, "--prompt", str(a.prompt),
                          "--decode", str(a.decode)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"tgllava {fmt} {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_peers(a, llm, clip, res, gguf="", torch="", clip_dtypes=""):
    """peer_run.py in the peers' venv for the given llama.cpp formats / PyTorch LLM dtypes / PyTorch CLIP dtypes"""
    proc = subprocess.run([a.peers, os.path.join(HERE, "peer_run.py"), "--llm", llm, "--clip", clip, "--work",
                           os.path.join(a.dir, "gguf"), "--threads", str(a.threads), "--prompt", str(a.prompt),
                           "--decode", str(a.decode), "--gguf", gguf, "--torch", torch, "--clip-dtypes", clip_dtypes],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            res["peers"].append(json.loads(line))
            print("peer", line, flush=True)
    if proc.returncode:
        print(proc.stderr[-3000:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", help="python of the benchmark venv (llama-cpp-python, gguf, torch, transformers)")
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "tgllava-peers"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--out", default="bench_peers.json")
    ap.add_argument("--mc7b", action="store_true", help="also one multiple-choice sample of a 7B model")
    ap.add_argument("--baseline", help="an older tgllava checkout, built in place, for the 7B sample's speed-up")
    ap.add_argument("--child", nargs=4, metavar=("LLM", "CLIP", "FMT", "WHAT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.prompt, a.decode)))
        return
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    llm, clip = build(os.path.join(a.dir, "tinyllama"), TINYLLAMA)
    formats = a.formats.split(",")
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads,
                       "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l), "?")},
           "read_GBps": read_bandwidth_GBps(a.threads), "ops": ops(a.threads), "tgllava": {}, "peers": []}
    print(f"streaming read, {a.threads} threads: {res['read_GBps']:.1f} GB/s", flush=True)
    for fmt, r in res["ops"].items():
        print(f"op {fmt:9s} product {r['product_GFLOPs']:6.1f} GFLOP/s ({r['product_GFLOPs'] / res['ops']['float32']['product_GFLOPs']:.2f}x f32)"
              f"  GEMV {r['gemv_GBps']:5.1f} GB/s ({r['gemv_GBps'] / res['read_GBps']:.2f} of the read)", flush=True)
    # format by format, each tool right after the other: this box's speed drifts by 10% over minutes, so tools
    # timed far apart would compare the machine's moods, not the tools
    for fmt in formats:
        res["tgllava"][fmt] = run_child(llm, clip, fmt, "llm", a)
        print("tgllava", fmt, res["tgllava"][fmt], flush=True)
        if a.peers:
            run_peers(a, llm, clip, res, gguf=FORMATS[fmt], torch=fmt if fmt in ("float32", "bfloat16") else "")
    for fmt in ("float32", "bfloat16"):
        res["tgllava"]["clip_" + fmt] = run_child(llm, clip, fmt, "clip", a)
        print("tgllava clip", fmt, res["tgllava"]["clip_" + fmt], flush=True)
        if a.peers:
            run_peers(a, llm, clip, res, clip_dtypes=fmt)
    if a.mc7b:
        llm7, clip7 = build(os.path.join(a.dir, "7b"), VICUNA_7B)
        res["mc7b"] = {}
        for fmt in ("bfloat16", "int8"):
            for name, checkout in (("tgllava", None), ("baseline", a.baseline)):
                if name == "baseline" and not checkout:
                    continue
                res["mc7b"][f"{name}/{fmt}"] = run_child(llm7, clip7, fmt, "mc", a, checkout)
                print("7B sample", name, fmt, res["mc7b"][f"{name}/{fmt}"], flush=True)
    json.dump(res, open(a.out, "w"), indent=1)
    print_table(res, formats)
    print("wrote", a.out)


def print_table(res, formats):
    def peer(name, what, dtype):
        return next((p for p in res["peers"] if p["peer"] == name and p["what"] == what and p["dtype"] == dtype), None)
    print("\n| format | tgllava prefill / decode tok/s | llama.cpp | PyTorch | tgllava / llama.cpp | tgllava / PyTorch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for fmt in formats:
        t = res["tgllava"][fmt]
        lc = peer("llama.cpp", "llm", FORMATS[fmt])
        pt = peer("pytorch", "llm", fmt) if fmt in ("float32", "bfloat16") else None
        cell = lambda r: f"{r['prefill_tok_per_s']:.1f} / {r['decode_tok_per_s']:.1f}" if r else "-"  # noqa: E731
        ratio = lambda r: (f"{t['prefill_tok_per_s'] / r['prefill_tok_per_s']:.2f}x / "  # noqa: E731
                           f"{t['decode_tok_per_s'] / r['decode_tok_per_s']:.2f}x") if r else "-"
        print(f"| {fmt} ({FORMATS[fmt]}) | {cell(t)} | {cell(lc)} | {cell(pt)} | {ratio(lc)} | {ratio(pt)} |")
    for fmt in ("float32", "bfloat16"):
        t, pt = res["tgllava"]["clip_" + fmt], peer("pytorch", "clip", fmt)
        ps = f"{pt['b1_s']:.2f} / {pt['b5_s']:.2f} s" if pt else "-"
        r = f"{pt['b5_s'] / t['b5_s']:.2f}x at 5 images" if pt else "-"
        print(f"| CLIP-L tower {fmt}, 1 / 5 images | {t['b1_s']:.2f} / {t['b5_s']:.2f} s | - | {ps} | - | {r} |")
    for key, r in res.get("mc7b", {}).items():
        name, fmt = key.split("/")
        if name != "tgllava":
            continue
        base = res["mc7b"].get(f"baseline/{fmt}")
        speed = f"{base['tg_sample_s'] / r['tg_sample_s']:.2f}x the baseline ({base['tg_sample_s']:.1f} s)" if base else "-"
        print(f"| 7B multiple-choice sample {fmt} (image + 4 tiles, 699 positions, 2 tokens) | {r['tg_sample_s']:.1f} s "
              f"| - | - | - | {speed} |")


if __name__ == "__main__":
    main()
