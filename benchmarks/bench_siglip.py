"""SigLIP-SO400M/384 vision tower and TG-LLaVA-SigLIP's visual branch: tgllava against transformers (issue 24).

Builds a TG-LLaVA checkpoint with SO400M-shaped SigLIP towers (vision: width 1152, 27 layers, 16 heads of 72,
MLP 4304, 384 px / 14 = 729 patches; text: the same widths, 64 positions, vocab 32000) and random bfloat16
weights, TG-FOM with 729 queries, TG-DP with 4 x 729 positions, an mlp2x_gelu projector to 4096 and a
one-layer LLM of width 4096 (the visual branch does not run it), then times on the CPU:
  - tgllava (each dtype in a fresh process): the vision tower (the features LLaVA takes, hidden state 26 of
    27) at batch 1 and 5 (an image and its 4 TG-DP tiles) in float32 and bfloat16, and the visual branch
    end to end (visual_tokens of one image: image + 4 tiles through the tower, the 64-token text guide
    through the text tower, FOM, projector, DP);
  - transformers' SiglipVisionModel (--peers PYTHON: an interpreter of a venv with torch + transformers,
    never a dependency of tgllava) on the same tower weights in float32 and bfloat16 at batch 1 and 5, with
    output_hidden_states (as LLaVA reads hidden_states[-2]), with the same thread count.
Best of --repeat runs each; prints the table with the ratios and writes JSON.  Run it on a quiet machine;
--layers N shrinks both towers for a quick check of the script itself.

usage: python benchmarks/bench_siglip.py [--peers /path/to/venv/bin/python] [--dir /tmp/tgllava-siglip]
                                         [--threads N] [--repeat 3] [--layers 27] [--out bench_siglip.json]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_formats import write_safetensors  # noqa: E402

SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
VISION = dict(SO400M, model_type="siglip_vision_model", image_size=384, patch_size=14, num_channels=3,
              vision_use_head=False)
TEXT = dict(SO400M, model_type="siglip_text_model", vocab_size=32000, max_position_embeddings=64,
            projection_size=1152)
LLM = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=1,
           intermediate_size=64, vocab_size=1000, rms_norm_eps=1e-5, max_position_embeddings=4096,
           mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu", mm_vision_select_feature="patch",
           image_aspect_ratio="pad", model_type="llava_llama_text_learnable_query")
TG = dict(q_layers=2, q_heads=16, q_ffn=4096, q_cross_freq=2, q_eps=1e-12, p_layers=2, p_latents=64, p_heads=16,
          p_head_dim=96, p_kv_heads=4, p_eps=1e-5)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def tensor_list(layers):
    """(name, shape, kind) of every tensor: what the C core asks for, plus the tower's parts LLaVA leaves unused
    (its last layer, post_layernorm), which a SiglipVisionModel has."""
    from tgllava import _C, siglip

    vision = dict(VISION, num_hidden_layers=layers)
    text = dict(TEXT, num_hidden_layers=layers)
    cfg = siglip.tower_vision_sizes(vision, "config.json", -2)
    cfg.update(siglip.tower_text_sizes(text, "config.json"))
    n = (VISION["image_size"] // VISION["patch_size"]) ** 2
    cfg.update(TG, has_fom=1, has_dp=1, q_queries=n, p_ffn=4 * SO400M["hidden_size"], p_positions=4 * n,
               proj_mlp=1, hidden=LLM["hidden_size"], heads=LLM["num_attention_heads"],
               kv_heads=LLM["num_key_value_heads"], head_dim=LLM["hidden_size"] // LLM["num_attention_heads"],
               layers=LLM["num_hidden_layers"], ffn=LLM["intermediate_size"], vocab=LLM["vocab_size"], qkv_bias=0,
               tie_embeddings=0, max_len=LLM["max_position_embeddings"], rms_eps=1e-5, rope_theta=1e4, dtype=2)
    req = [(name, tuple(shape)) for name, shape, _ in _C.Model(cfg, "cpu").required()]
    last = f"vision_model.encoder.layers.{layers - 2}."
    req += [(name.replace(last, f"vision_model.encoder.layers.{layers - 1}."), shape)
            for name, shape in req if name.startswith(last)]
    req += [("vision_model.post_layernorm.weight", (1152,)), ("vision_model.post_layernorm.bias", (1152,))]
    kind = lambda name, shape: "ones" if len(shape) == 1 and "norm" in name and name.endswith("weight") else "rand"  # noqa: E731
    return [(name, shape, kind(name, shape)) for name, shape in req], vision, text


def build(folder, layers):
    """The tower folder (SiglipModel layout) and the LLM folder, with random bfloat16 weights; kept for reuse."""
    tower, llm = os.path.join(folder, "siglip"), os.path.join(folder, "llm")
    if os.path.exists(os.path.join(llm, "done")):
        return llm, tower
    os.makedirs(tower, exist_ok=True)
    os.makedirs(llm, exist_ok=True)
    tensors, vision, text = tensor_list(layers)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).view(np.uint32)
    pool = ((pool + 0x7FFF + ((pool >> 16) & 1)) >> 16).astype(np.uint16)
    is_tower = lambda name: name.startswith(("vision_model.", "text_model."))  # noqa: E731
    write_safetensors(os.path.join(tower, "model.safetensors"), [t for t in tensors if is_tower(t[0])], pool)
    json.dump({"architectures": ["SiglipModel"], "model_type": "siglip", "vision_config": vision,
               "text_config": text}, open(os.path.join(tower, "config.json"), "w"))
    write_safetensors(os.path.join(llm, "model.safetensors"), [t for t in tensors if not is_tower(t[0])], pool)
    json.dump(dict(LLM, mm_vision_tower=tower, mm_text_tower=tower), open(os.path.join(llm, "config.json"), "w"))
    open(os.path.join(llm, "done"), "w").close()
    return llm, tower


def child(llm, tower, dtype, repeat):
    """tgllava's measures in this (fresh) process."""
    import tgllava

    m = tgllava.load(llm, tower, dtype=dtype, progress=False)
    rng = np.random.default_rng(1)
    S = m.image_size
    pix = rng.uniform(-1, 1, (5, 3, S, S)).astype(np.float32)
    ids = rng.integers(0, TEXT["vocab_size"], 64).astype(np.int32)
    m.vision_features(pix[:1])  # warm-up
    best = lambda fn: min(_timed(fn) for _ in range(repeat))  # noqa: E731
    return {"tower_b1_s": best(lambda: m.vision_features(pix[:1])),
            "tower_b5_s": best(lambda: m.vision_features(pix)),
            "visual_branch_s": best(lambda: m.visual_tokens(pix[:1], ids)),
            "weight_GB": m.weight_bytes / 1e9}


def peer_child(tower, dtype, repeat, threads):
    """transformers' SiglipVisionModel on the same weights (run by the peers' interpreter)."""
    import torch
    from safetensors.torch import load_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.set_num_threads(threads)
    cfg = json.load(open(os.path.join(tower, "config.json")))["vision_config"]
    model = SiglipVisionModel(SiglipVisionConfig(**cfg))
    state = {k[len("vision_model."):]: v for k, v in load_file(os.path.join(tower, "model.safetensors")).items()
             if k.startswith("vision_model.")}
    model.load_state_dict(state, strict=True)
    model = model.to(getattr(torch, dtype)).eval()
    rng = np.random.default_rng(1)
    S = cfg["image_size"]
    pix = torch.from_numpy(rng.uniform(-1, 1, (5, 3, S, S)).astype(np.float32)).to(getattr(torch, dtype))

    def run(x):
        with torch.no_grad():
            return model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    run(pix[:1])  # warm-up
    best = lambda fn: min(_timed(fn) for _ in range(repeat))  # noqa: E731
    return {"tower_b1_s": best(lambda: run(pix[:1])), "tower_b5_s": best(lambda: run(pix)),
            "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", help="python of a venv with torch + transformers (for SiglipVisionModel)")
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "tgllava-siglip"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layers", type=int, default=SO400M["num_hidden_layers"], help="layers of both towers")
    ap.add_argument("--out", default="bench_siglip.json")
    ap.add_argument("--child", nargs=3, metavar=("LLM", "TOWER", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--peer-child", nargs=2, metavar=("TOWER", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.repeat)))
        return
    if a.peer_child:
        print(json.dumps(peer_child(*a.peer_child, a.repeat, a.threads)))
        return
    if a.layers < 2:
        raise SystemExit("--layers must be at least 2 (LLaVA reads the hidden state before the last layer)")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    llm, tower = build(os.path.join(a.dir, f"layers{a.layers}"), a.layers)
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads,
                       "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l),
                                   "?")},
           "layers": a.layers, "tgllava": {}, "transformers": {}}
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, __file__, "--child", llm, tower, dtype, "--repeat", str(a.repeat)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"tgllava {dtype} failed:\n{out.stderr[-3000:]}")
        res["tgllava"][dtype] = json.loads(out.stdout.strip().splitlines()[-1])
        print("tgllava", dtype, res["tgllava"][dtype], flush=True)
        if a.peers:
            out = subprocess.run([a.peers, __file__, "--peer-child", tower, dtype, "--repeat", str(a.repeat),
                                  "--threads", str(a.threads)], capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"transformers {dtype} failed:\n{out.stderr[-3000:]}")
                continue
            res["transformers"][dtype] = json.loads(out.stdout.strip().splitlines()[-1])
            print("transformers", dtype, res["transformers"][dtype], flush=True)
    json.dump(res, open(a.out, "w"), indent=1)
    print_table(res)
    print("wrote", a.out)


def print_table(res):
    print(f"\nSigLIP vision tower ({res['layers']} layers, 384 px, 729 patches), {res['machine']['threads']} threads, "
          f"best of the runs; speed-up = transformers / tgllava")
    print("| dtype | batch | tgllava s | transformers s | speed-up |")
    print("|---|---|---|---|---|")
    for dtype, ours in res["tgllava"].items():
        peer = res["transformers"].get(dtype, {})
        for b in (1, 5):
            key = f"tower_b{b}_s"
            theirs = peer.get(key)
            ratio = f"{theirs / ours[key]:.2f}x" if theirs else "-"
            print(f"| {dtype} | {b} | {ours[key]:.3f} | {'-' if theirs is None else f'{theirs:.3f}'} | {ratio} |")
    for dtype, ours in res["tgllava"].items():
        print(f"visual branch of TG-LLaVA-SigLIP, {dtype}, 1 image (+4 tiles, text tower, FOM, projector, DP): "
              f"{ours['visual_branch_s']:.3f} s")


if __name__ == "__main__":
    main()
