"""PyTorch-on-CPU baseline for bench_formats.py: the same shapes through transformers, random weights.

Run with an interpreter that has torch + transformers (installed for the benchmark only, e.g.
`python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch transformers`); prints one JSON line per measure:
CLIPVisionModel (CLIP-L/336, float32) at batch 1 and 5, LlamaForCausalLM prefill and decode for the ~1.1B
shape in float32 and the Vicuna-7B shape in bfloat16 (7B float32 does not fit 24 GB).
"""
import argparse
import json
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM


def timed(fn):
    t = time.perf_counter()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - t


def llama(hidden, layers, ffn, heads, dtype, prompt, decode):
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=ffn, num_attention_heads=heads,
                      num_key_value_heads=heads, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
    t = time.perf_counter()
    torch.set_default_dtype(dtype)  # built in its dtype: a 7B model built in float32 first would not fit
    with torch.no_grad():
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    build = time.perf_counter() - t
    ids = torch.randint(3, 32000, (1, prompt))
    timed(lambda: model.generate(ids[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0))  # warm-up
    pre = timed(lambda: model(ids, use_cache=False, logits_to_keep=1))
    text = torch.randint(3, 32000, (1, 32))
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    t1 = timed(lambda: model.generate(text, max_new_tokens=1, min_new_tokens=1, **kw))
    tn = timed(lambda: model.generate(text, max_new_tokens=decode + 1, min_new_tokens=decode + 1, **kw))
    return {"build_s": build, "prefill_tok_per_s": prompt / pre, "decode_tok_per_s": decode / (tn - t1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=699)
    ap.add_argument("--decode", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    vcfg = CLIPVisionConfig(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24, intermediate_size=4096,
                            image_size=336, patch_size=14, hidden_act="quick_gelu")
    vis = CLIPVisionModel(vcfg).eval()
    for b in (1, 5):
        pix = torch.randn(b, 3, 336, 336)
        timed(lambda: vis(pix, output_hidden_states=True))
        t = min(timed(lambda: vis(pix, output_hidden_states=True)) for _ in range(2))
        print(json.dumps({"measure": f"clip_vision_b{b}_float32", "s": t}), flush=True)
    del vis
    r = llama(2048, 22, 5632, 16, torch.float32, a.prompt, a.decode)
    print(json.dumps(dict(measure="llama_1.1b_float32", **r)), flush=True)
    r = llama(4096, 32, 11008, 32, torch.bfloat16, a.prompt, a.decode)
    print(json.dumps(dict(measure="llama_7b_bfloat16", **r)), flush=True)


if __name__ == "__main__":
    main()
