"""Print the max abs difference of every stage against each golden set's io.npz (the table of the issue notes).

usage: python benchmarks/golden_diffs.py [--golden ../shared/golden] [--device cpu] [--dtype float32]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

import tgllava

STAGES = {"visual_tokens": (1, 1), "visual_tokens_fom_only": (1, 0), "visual_tokens_dp_only": (0, 1),
          "visual_tokens_baseline": (0, 0)}


def diffs(m, d):
    out = {}
    pix, tid = d["pixel_values"][None], d.get("text_guide_ids")
    out["image_features"] = m.vision_features(pix)[0] - d["image_features"]
    if m.has_tg:
        h, p = m.text_tower(tid)
        out["text_hidden"], out["text_pooled"] = h[0] - d["text_hidden"], p[0] - d["text_pooled"]
        out["fom_mask"] = m.fom(p)[0] - d["fom_mask"]
        tiles = tgllava.tile(pix)
        out["tiles_stride7"] = tiles[0][:, :, ::7, ::7] - d["tiles_stride7"]
        feats = m.vision_features(tiles[0]).reshape(1, -1, m.sizes["v_hidden"])
        out["dp_tokens"] = m.dp(feats, h)[0] - d["dp_tokens"]
    for k, (f, p_) in STAGES.items():
        if k in d:
            out[k] = m.visual_tokens(pix, tid, use_fom=f, use_dp=p_)[0] - d[k]
    out["logits"] = m.logits(d["input_ids"], pix, tid) - d["logits"]
    n = len(d["generated_ids"])
    toks, last = m.generate_batch([dict(input_ids=d["input_ids"], pixels=pix, text_ids=tid)], max_new_tokens=n,
                                  eos_token_id=[], return_last_logits=True)
    out["logits_after_generation_last"] = last[0] - d["logits_after_generation_last"]
    return {k: float(np.abs(v).max()) for k, v in out.items()}, toks[0] == d["generated_ids"].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    for name in ("tg-vicuna-tiny", "tg-qwen2-tiny", "llava15-tiny"):
        subprocess.check_call([sys.executable, os.path.join(a.golden, "materialize.py"), os.path.join(a.golden, name),
                               os.path.join(tmp, name)], stdout=subprocess.DEVNULL)
        m = tgllava.load(os.path.join(tmp, name, "llm"), os.path.join(tmp, name, "clip"), device=a.device, dtype=a.dtype)
        res, same = diffs(m, dict(np.load(os.path.join(a.golden, name, "io.npz"))))
        print(name, "generated_ids equal:", same)
        for k, v in res.items():
            print(f"  {k:32s} {v:.2e}")


if __name__ == "__main__":
    main()
