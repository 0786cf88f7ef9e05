"""`tgllava demo`: a tiny TG-LLaVA with random weights, built on the fly, answering about a picture.

The checkpoint comes from fixtures.build (CLIP and TG-LLaVA LLM folders with random weights and tokenizers
trained on the fly, small enough that loading, preprocessing, both towers, FOM, tiling, DP, prefill and
decoding run in about a second).  The answer is gibberish, and the demo says so.  `tower="siglip"`
(`tgllava demo --tower siglip`) builds SigLIP towers instead.  A kept checkpoint (keep=DIR) ends the
output with the commands to try next on it (`next_steps`).
"""

import shlex
import shutil
import tempfile
import time

from .fixtures import build


def run(question="What is in this image?", max_new_tokens=24, keep=None, stream=False, device="cpu", out=print,
        tower="clip"):
    """Build the demo model, answer `question` about the demo picture, print what happens.

    keep: a folder to write the model into and leave there (default: a
    temporary folder, removed afterwards); tower: "clip" or "siglip".
    Returns the Answer.
    """
    import tgllava

    from .chat import default_conv_mode
    from .cli import print_answer

    t0 = time.perf_counter()
    folder = keep or tempfile.mkdtemp(prefix="tgllava-demo-")
    try:
        llm_dir, clip_dir, image_path = build(folder, tower=tower)
        t_build = time.perf_counter() - t0
        out("tgllava demo: a tiny TG-LLaVA with RANDOM weights (its answers are gibberish; "
            "this shows the pipeline, not a trained model)")
        family = "SigLIP" if tower == "siglip" else "CLIP"
        out(f"  built checkpoint in {folder} ({t_build:.2f} s): {family} vision 3x64 on 112px/14 "
            f"(64 patches), {family} text 2x64, LLM 2x128, TG-FOM 64 queries, TG-DP 32 latents")
        t1 = time.perf_counter()
        model = tgllava.load(llm_dir, clip_dir=clip_dir, device=device, progress=False)
        t_load = time.perf_counter() - t1
        out(f"  loaded {model!r} in {t_load:.2f} s")
        conv_mode = default_conv_mode(model)
        out(f"  image: {image_path} (320x240 synthetic picture)")
        out(f"  question: {question}")
        out(f"  conv mode: {conv_mode}")
        answer = print_answer(model, image_path, question, stream, prefix="  answer: ", out=out,
                              max_new_tokens=max_new_tokens)
        out(f"  tokens: {len(answer.token_ids)} ({answer.finish_reason})")
        stages = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in answer.timings.items())
        out(f"  timings: build {t_build * 1000:.0f} ms, load {t_load * 1000:.0f} ms, {stages}")
        out("  (random weights: the text above is meaningless by design)")
        if keep is not None:
            out("try next:")
            for line in next_steps(llm_dir, clip_dir, image_path, question):
                out(f"  {line}")
        return answer
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def next_steps(llm_dir, clip_dir, image_path, question):
    """The command lines that use a kept demo checkpoint: answer, describe, serve."""
    q = shlex.quote
    return [f"tgllava generate --model {q(llm_dir)} --clip {q(clip_dir)} --image {q(image_path)} "
            f"--question {q(question)}",
            f"tgllava info {q(llm_dir)}",
            f"tgllava serve --model {q(llm_dir)} --clip {q(clip_dir)}"]
