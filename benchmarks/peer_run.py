"""The peers of bench_peers.py on the same weights: llama.cpp (through llama-cpp-python) and PyTorch +
transformers, on the CPU with the same thread count.  Runs in the benchmark's own virtual environment
(llama-cpp-python, gguf, torch, transformers, safetensors: never dependencies of tgllava) and prints one JSON
line per measure.

The LLM folder written by bench_peers.py holds bfloat16 safetensors in Hugging Face's Llama naming.  For
llama.cpp they are written as a float32 GGUF with the `gguf` package (q_proj/k_proj rows permuted for
llama.cpp's rotary layout, as its own converter does; a byte-level placeholder vocabulary, since the prompts
are token ids), then quantised by llama.cpp's own quantiser (`llama_model_quantize`) to f16, bf16, q8_0 and
q4_0.  Prefill is one `eval` of the prompt; decode is one `eval` per token after a short prompt.

usage: python peer_run.py --llm DIR --clip DIR --work DIR [--threads 2] [--prompt 512] [--decode 128]
                          [--gguf f32,f16,bf16,q8_0,q4_0] [--torch float32,bfloat16] [--clip-dtypes float32,bfloat16]
"""
import argparse
import ctypes
import json
import os
import struct
import time

import numpy as np

FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}  # llama_ftype values


def read_bf16_safetensors(path):
    """{name: float32 array} of a safetensors file whose tensors are BF16 (or F32)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    raw = np.memmap(path, np.uint8, "r")
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        if e["dtype"] == "BF16":
            v = (raw[base + a:base + b].view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            v = np.array(raw[base + a:base + b].view(np.float32))
        out[name] = v.reshape(e["shape"])
    return out


def permute_rope(w, heads):
    """Hugging Face's rotate-half rows -> llama.cpp's interleaved pairs (its converter's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(cfg, tensors, path):
    import gguf
    L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // H)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_file_type(0)
    vocab = cfg["vocab_size"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(vocab - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w.add_tensor("token_embd.weight", tensors["model.embed_tokens.weight"])
    for i in range(L):
        for hf, gg in names.items():
            t = tensors[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = permute_rope(t, H)
            elif hf == "self_attn.k_proj":
                t = permute_rope(t, KV)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", tensors["model.norm.weight"])
    w.add_tensor("output.weight", tensors["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bench_llama_cpp(path, fmt, a):
    import llama_cpp
    from llama_cpp import Llama
    rng = np.random.default_rng(1)
    llm = Llama(model_path=path, n_ctx=a.prompt + a.decode + 64, n_batch=a.prompt, n_ubatch=a.prompt,
                n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    ids = [int(t) for t in rng.integers(300, 32000, a.prompt)]
    steps = [int(t) for t in rng.integers(300, 32000, a.decode)]  # the decode inputs
    llm.eval(ids[:16])  # warm-up
    pre = []
    for _ in range(2):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        pre.append(time.perf_counter() - t)
    llm.reset()
    llm.eval(ids[:32])
    t = time.perf_counter()
    for tok in steps:
        llm.eval([tok])
    dec = time.perf_counter() - t
    info = {"llama_cpp_version": getattr(llama_cpp, "__version__", "?")}
    del llm
    return dict(info, prefill_tok_per_s=a.prompt / min(pre), decode_tok_per_s=a.decode / dec)


def bench_torch_llm(cfg, tensors, dtype_name, a):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    dtype = getattr(torch, dtype_name)
    c = LlamaConfig(hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
                    intermediate_size=cfg["intermediate_size"], num_attention_heads=cfg["num_attention_heads"],
                    num_key_value_heads=cfg["num_key_value_heads"], vocab_size=cfg["vocab_size"],
                    max_position_embeddings=cfg.get("max_position_embeddings", 4096), rms_norm_eps=cfg["rms_norm_eps"])
    with torch.device("meta"):
        model = LlamaForCausalLM(c)
    sd = {k: torch.from_numpy(v).to(dtype) for k, v in tensors.items() if k.startswith(("model.layers.", "model.embed",
                                                                                         "model.norm", "lm_head"))}
    model.load_state_dict(sd, strict=False, assign=True)
    model = model.to(dtype).eval()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=c)  # its buffers were on the meta device
    rng = np.random.default_rng(1)
    ids = torch.from_numpy(rng.integers(300, 32000, (1, a.prompt)))
    with torch.inference_mode():
        model(ids[:, :16])
        pre = []
        for _ in range(2):
            t = time.perf_counter()
            model(ids, use_cache=False, logits_to_keep=1)
            pre.append(time.perf_counter() - t)
        out = model(ids[:, :32], use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for i in range(a.decode):
            out = model(tok, past_key_values=past, use_cache=True, logits_to_keep=1)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        dec = time.perf_counter() - t
    return {"torch_version": torch.__version__, "prefill_tok_per_s": a.prompt / min(pre),
            "decode_tok_per_s": a.decode / dec}


def bench_torch_clip(clip_dir, dtype_name):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = json.load(open(os.path.join(clip_dir, "config.json")))["vision_config"]
    model = CLIPVisionModel(CLIPVisionConfig(**cfg))
    tensors = read_bf16_safetensors(os.path.join(clip_dir, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    dtype = getattr(torch, dtype_name)
    model = model.to(dtype).eval()
    out = {}
    with torch.inference_mode():
        for b in (1, 5):
            pix = torch.randn(b, 3, cfg["image_size"], cfg["image_size"], dtype=dtype)
            model(pix, output_hidden_states=True)
            ts = []
            for _ in range(2):
                t = time.perf_counter()
                model(pix, output_hidden_states=True)
                ts.append(time.perf_counter() - t)
            out[f"b{b}_s"] = min(ts)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--gguf", default="f32,f16,bf16,q8_0,q4_0")
    ap.add_argument("--torch", default="float32,bfloat16")
    ap.add_argument("--clip-dtypes", default="float32,bfloat16")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.llm, "config.json")))
    emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
    if a.clip_dtypes:
        import torch
        torch.set_num_threads(a.threads)
        for dt in a.clip_dtypes.split(","):
            emit(peer="pytorch", what="clip", dtype=dt, **bench_torch_clip(a.clip, dt))
    if not (a.torch or a.gguf):
        return
    tensors = read_bf16_safetensors(os.path.join(a.llm, "model.safetensors"))
    if a.torch:
        import torch
        torch.set_num_threads(a.threads)
        for dt in a.torch.split(","):
            emit(peer="pytorch", what="llm", dtype=dt, **bench_torch_llm(cfg, tensors, dt, a))
    if a.gguf:
        import llama_cpp
        os.makedirs(a.work, exist_ok=True)
        f32 = os.path.join(a.work, "model-f32.gguf")
        if not os.path.exists(f32):
            write_gguf(cfg, tensors, f32 + ".tmp")
            os.replace(f32 + ".tmp", f32)
        del tensors
        for fmt in a.gguf.split(","):
            path = os.path.join(a.work, f"model-{fmt}.gguf")
            if fmt != "f32" and not os.path.exists(path):
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = FTYPES[fmt]
                params.nthread = a.threads
                rc = llama_cpp.llama_model_quantize(f32.encode(), (path + ".tmp").encode(), ctypes.byref(params))
                if rc:
                    raise SystemExit(f"llama_model_quantize {fmt} failed: {rc}")
                os.replace(path + ".tmp", path)
            emit(peer="llama.cpp", what="llm", dtype=fmt, gguf_bytes=os.path.getsize(path if fmt != "f32" else f32),
                 **bench_llama_cpp(path if fmt != "f32" else f32, fmt, a))


if __name__ == "__main__":
    main()
