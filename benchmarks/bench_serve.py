"""Serving benchmark: `tgllava serve` (continuous batching) under N concurrent clients, against the same
requests sent one at a time and against static Model.generate_batch batches.

The model is a ~0.8B Llama-shaped TG-LLaVA with random weights built by tgllava.fixtures (hidden 2048,
16 layers, ffn 5632, a small vision tower; about 3.3 GB written to a temporary folder), or --tiny
(the demo's sizes, for a smoke run), or a real checkpoint (--model DIR [--clip DIR] [--device cuda]).
Requests ask different questions about two pictures with answers of mixed lengths (max_tokens
cycling through --lengths; random weights rarely stop early).  For every client count (--clients,
default 1 4 16 64) each client thread sends requests with the openai client until --requests are
done; the table gives requests/s, generated tokens/s, p50/p99 latency and the speed-up in tokens/s
over one at a time.  The static baseline runs generate_batch in batches of --max-batch over the same
requests, each batch with the longest max_tokens of its requests (static batching: every batch waits
for its longest answer; latency = its batch's time); the in-process row sends all requests through
one Model.generate_many call (what generate_batch and tgllava eval do).  Writes JSON with --out.

usage: python benchmarks/bench_serve.py [--tiny | --model DIR [--clip DIR]] [--device cpu] [--clients 1 4 16 64]
                                        [--requests 64] [--lengths 16 32 64 128] [--max-batch 16]
                                        [--single-requests N] [--out F]
"""
import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

import tgllava
from tgllava import chat, fixtures
from tgllava.serve import ServerThread

ONE_B = {"hidden": 2048, "heads": 16, "layers": 16, "ffn": 5632}
QUESTIONS = ["What is in this image?", "Describe the picture in detail.", "What color is the car?",
             "How many people are in the photo?"]


def build_model(args, tmp):
    if args.model:
        return tgllava.load(args.model, clip_dir=args.clip, device=args.device, dtype=args.dtype), None
    llm_dir, clip_dir, image = fixtures.build(tmp, None if args.tiny else ONE_B)
    return tgllava.load(llm_dir, clip_dir=clip_dir, device=args.device, dtype=args.dtype, progress=False), image


def pictures(image_path):
    from PIL import Image
    im = Image.open(image_path).convert("RGB") if image_path else fixtures.demo_image()
    out = []
    for pic in (im, im.transpose(Image.FLIP_LEFT_RIGHT)):
        buf = io.BytesIO()
        pic.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def requests_for(n, lengths, pics):
    return [{"question": QUESTIONS[i % len(QUESTIONS)], "picture": pics[(i // len(QUESTIONS)) % len(pics)],
             "max_tokens": lengths[i % len(lengths)]} for i in range(n)]


def pct(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_clients(srv, reqs, n_clients):
    """Send reqs from n_clients threads; (wall seconds, latencies, generated tokens)."""
    import openai

    todo, lock = list(reversed(reqs)), threading.Lock()
    lat, tokens, errors = [], [0], []

    def worker():
        cl = openai.OpenAI(base_url=srv.url + "/v1", api_key="bench", max_retries=0, timeout=3600)
        while True:
            with lock:
                if not todo:
                    return
                r = todo.pop()
            url = "data:image/png;base64," + base64.b64encode(r["picture"]).decode()
            t0 = time.perf_counter()
            try:
                out = cl.chat.completions.create(model="m", max_tokens=r["max_tokens"], messages=[{
                    "role": "user", "content": [{"type": "text", "text": r["question"]},
                                                {"type": "image_url", "image_url": {"url": url}}]}])
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(e)
                continue
            with lock:
                lat.append(time.perf_counter() - t0)
                tokens[0] += out.usage.completion_tokens

    threads = [threading.Thread(target=worker) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"  {len(errors)} requests failed, first: {errors[0]}", file=sys.stderr)
    return time.perf_counter() - t0, lat, tokens[0]


def prepared_requests(model, reqs):
    """generate_batch request dicts of benchmark requests (chat's template, tokenizers and pixels)."""
    mode = chat.default_conv_mode(model)
    return [chat.prepare(model, r["picture"], r["question"], mode) for r in reqs]


def run_static(model, reqs, batch):
    """generate_batch over batches of `batch` requests (each batch waits for its longest answer)."""
    eos = list(chat.tokenizers(model)[0].eos_ids) or None
    lat, tokens = [], 0
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        part = reqs[i:i + batch]
        t_b = time.perf_counter()
        n = max(r["max_tokens"] for r in part)
        outs = model.generate_batch(prepared_requests(model, part), max_new_tokens=n, eos_token_id=eos)
        tokens += sum(min(len(o), r["max_tokens"]) for o, r in zip(outs, part))
        lat += [time.perf_counter() - t_b] * len(part)
    return time.perf_counter() - t0, lat, tokens


def run_continuous(model, reqs, batch):
    """All requests in one generate_many call (the path of generate_batch and tgllava eval): each with
    its own max_new_tokens, at most `batch` together, a finished one's slot taken by the next at once
    (latency = from the call to the request's end)."""
    eos = list(chat.tokenizers(model)[0].eos_ids) or None
    t0 = time.perf_counter()
    prepared = [dict(p, max_new_tokens=r["max_tokens"]) for p, r in zip(prepared_requests(model, reqs), reqs)]
    lat, tokens = [], 0
    for _, toks in model.generate_many(prepared, eos_token_id=eos, max_batch=batch):
        lat.append(time.perf_counter() - t0)
        tokens += len(toks)
    return time.perf_counter() - t0, lat, tokens


def row(name, wall, lat, tokens, n):
    return {"mode": name, "requests": n, "seconds": wall, "req_per_s": n / wall, "gen_tok_per_s": tokens / wall,
            "p50_s": pct(lat, 50), "p99_s": pct(lat, 99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the demo's tiny sizes (smoke run)")
    ap.add_argument("--model", default=None, help="a real checkpoint folder instead of random weights")
    ap.add_argument("--clip", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--single-requests", type=int, default=None,
                    help="send only the first N requests in the one-at-a-time row (a multiple of 8 keeps the mix of "
                         "questions, pictures and lengths; rates are per second, so rows stay comparable)")
    ap.add_argument("--skip-static", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tgllava-bench-serve-") as tmp:
        t = time.perf_counter()
        model, image = build_model(args, tmp)
        print(f"model: {model} ({time.perf_counter() - t:.1f} s to build and load)", file=sys.stderr)
        reqs = requests_for(args.requests, args.lengths, pictures(image))
        rows = []
        with ServerThread(model, max_batch=args.max_batch, max_queue=max(args.clients) + args.requests) as srv:
            run_clients(srv, reqs[:2], 1)  # warm-up: tokenizers, vision-feature cache
            for n in [1] + [c for c in args.clients if c != 1]:
                part = reqs[:args.single_requests or len(reqs)] if n == 1 else reqs
                eng = srv.engine
                before = (eng.steps, eng.step_seconds, eng.admit_seconds)
                wall, lat, tok = run_clients(srv, part, n)
                rows.append(row("one at a time" if n == 1 else f"{n} concurrent", wall, lat, tok, len(part)))
                steps, step_s, admit_s = (a - b for a, b in zip((eng.steps, eng.step_seconds, eng.admit_seconds),
                                                                 before))
                # where the engine's time went: admission (vision + prompt prefill) and decode steps
                rows[-1].update(admit_s=admit_s, step_s=step_s, steps=steps, decode_tok_per_step_s=tok / step_s)
                print(f"  {rows[-1]['mode']}: {rows[-1]['gen_tok_per_s']:.1f} tok/s", file=sys.stderr)
        if not args.skip_static:
            wall, lat, tok = run_static(model, reqs, args.max_batch)
            rows.append(row(f"static batches of {args.max_batch} (generate_batch per batch)", wall, lat, tok,
                            len(reqs)))
            wall, lat, tok = run_continuous(model, reqs, args.max_batch)
            rows.append(row(f"generate_many, in process ({args.max_batch} slots)", wall, lat, tok, len(reqs)))
    base = rows[0]["gen_tok_per_s"]
    print("\n| mode | req/s | gen tok/s | x one-at-a-time | p50 s | p99 s | admission s | decode s | "
          "tok per decode-step s |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["gen_tok_per_s"] / base
        split = (f"{r['admit_s']:.1f} | {r['step_s']:.1f} | {r['decode_tok_per_step_s']:.1f}" if "admit_s" in r
                 else "- | - | -")
        print(f"| {r['mode']} | {r['req_per_s']:.2f} | {r['gen_tok_per_s']:.1f} | {r['speedup']:.2f} | "
              f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {split} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": args.device, "max_batch": args.max_batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
