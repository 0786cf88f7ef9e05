"""Write tests/data/siglip: what transformers' SigLIP computes, for tgllava's SigLIP tests (run by hand).

Run it in a throwaway venv that has torch and transformers (neither is a dependency of tgllava), with
sentencepiece, protobuf (SiglipTokenizer insists on it) and pillow importable too (each --extra-site
names a folder of packages searched after the venv's own), e.g.

    pip install --target /tmp/siglip-extra protobuf
    /work/peers/venv/bin/python tests/data/make_siglip_fixtures.py \
        --extra-site /work/dev/lib/python3.11/site-packages --extra-site /tmp/siglip-extra

It builds small SigLIP towers with the real head size (2 heads of 72), an image side that is not a
multiple of the patch (76 px, patch 14: 5x5 = 25 patches, an odd count, the last 6 pixels unused as in
SO400M's 384/14), gelu_pytorch_tanh and LayerNorm eps 1e-6, fills them from the weight recipe of
tests/siglip_util.py (so the tests rebuild the same float32 weights without torch), runs them in float64
and writes into tests/data/siglip:

- config.json: the SiglipConfig (vision + text) as transformers saves it;
- spiece.model (a SentencePiece unigram model trained here on a small text: no real SigLIP spiece.model
  is available offline), tokenizer_config.json (+ special_tokens_map.json) as SiglipTokenizer saves them;
- weights.json: the recipe of every SiglipModel tensor, and the tensor names transformers writes for
  SiglipModel, SiglipVisionModel and SiglipTextModel;
- reference.npz: vision inputs (uint8 codes k of pixels k / 127.5 - 1, as normalised pixels are) and every
  hidden state; text ids (SiglipTokenizer, padding="max_length",
  max_length=64, truncation=True), every hidden state, last_hidden_state and the pooled output; the
  tokenizer ids of more questions; preprocessing references (LLaVA's expand2square with int(255 * 0.5)
  then SiglipImageProcessorPil -- the PIL processor, as transformers 4.37's SiglipImageProcessor -- at
  24 px in full and at 384 px as a stride-5 subset plus the sum; without padding too) and the TG-DP tiles
  of the 384 image (PyTorch bilinear 2x upscale, four crops) as a stride-16 subset plus their sums.
Float outputs are stored as float32 (about 0.5 MB in all).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for siglip_util

import siglip_util  # noqa: E402

VISION = dict(hidden_size=144, intermediate_size=208, num_hidden_layers=3, num_attention_heads=2, image_size=76,
              patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
TEXT = dict(hidden_size=144, intermediate_size=208, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
MAX_LENGTH = 64

CORPUS = """a photo of a cat. a photo of a dog. what is in this image? describe the image in detail.
the picture shows a red ball on a green table next to a blue cup. there are two cats sitting on a sofa.
a man is riding a bicycle along the river while the sun sets behind the mountains. what color is the car?
how many people are in the photo? is there a dog in the picture? the sky is clear and the grass is bright.
answer the question using a single word or phrase. yes. no. one. two. three. left. right. red. blue.
the text in the image says hello world. a plate of food with rice, vegetables and a piece of fish.
a small boat floats on the lake; children play football in the park; the train arrives at the station.
numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024. cafe resume naive. which object is closest to the camera?"""

QUESTIONS = [
    "What is in this image?",
    "How many people are in the photo? Answer the question using a single word or phrase.",
    "Describe the image in detail.",
    "  The TEXT   in the image says: 'Hello, World!'  ",
    "Is there a dog\tin the picture?\nYes.",
    "café naïve résumé 12345 字",
    "red</s>blue <unk> green",
    "\u2581underline\u2581 test",
    "!!!",
    "",
    " ".join(["a small boat floats on the lake while the train arrives at the station"] * 6),
]
TEXT_QUESTIONS = 2  # the first two run through the text tower


def train_spiece(path, spm):
    lines = [line.strip() for line in CORPUS.splitlines() if line.strip()]
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 4), model_writer=f, vocab_size=320,
                                       model_type="unigram", hard_vocab_limit=False, character_coverage=1.0,
                                       normalization_rule_name="identity",
                                       pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                       eos_piece="</s>", unk_piece="<unk>", minloglevel=2)


def sample_image(h, w, seed, np):
    """A smooth picture with some noise (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x * y) + 60], -1)
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extra-site", action="append", default=[],
                    help="a folder of packages (sentencepiece, protobuf, pillow) searched after the venv's own")
    ap.add_argument("--out", default=siglip_util.FIXTURE_DIR)
    args = ap.parse_args()
    sys.path.extend(args.extra_site)
    import numpy as np
    import sentencepiece as spm
    import torch
    import transformers
    from PIL import Image
    from safetensors import safe_open
    from transformers import SiglipConfig, SiglipModel, SiglipTextModel, SiglipTokenizer, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    out = args.out
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        # tokenizer
        train_spiece(os.path.join(tmp, "spiece.model"), spm)
        tok = SiglipTokenizer(vocab_file=os.path.join(tmp, "spiece.model"))
        tok_dir = os.path.join(tmp, "tok")
        tok.save_pretrained(tok_dir)
        for name in siglip_util.TOKENIZER_FILES:
            if os.path.exists(os.path.join(tok_dir, name)):
                shutil.copy(os.path.join(tok_dir, name), out)
        tok = SiglipTokenizer.from_pretrained(out)
        vocab = tok.vocab_size

        # model config, weights from the recipe
        config = SiglipConfig(vision_config=VISION, text_config=dict(TEXT, vocab_size=vocab))
        config._attn_implementation = "eager"
        model_dir = os.path.join(tmp, "model")
        model = SiglipModel(config)
        entries = [siglip_util.entry_for(n, t.shape) for n, t in sorted(model.state_dict().items())]
        state = {e["name"]: torch.from_numpy(siglip_util.tensor(e)) for e in entries}
        model.load_state_dict(state, strict=True)
        model.save_pretrained(model_dir)
        shutil.copy(os.path.join(model_dir, "config.json"), out)
        names = {}
        vision = SiglipVisionModel(config.vision_config)
        text = SiglipTextModel(config.text_config)
        for label, m, prefix in (("SiglipModel", model, ""), ("SiglipVisionModel", vision, "vision_model."),
                                 ("SiglipTextModel", text, "text_model.")):
            if m is not model:
                own = m.state_dict()
                m.load_state_dict({k: state[prefix + k] for k in own}, strict=True)
                m.save_pretrained(os.path.join(tmp, label))
            with safe_open(os.path.join(tmp, label, "model.safetensors") if m is not model else
                           os.path.join(model_dir, "model.safetensors"), "np") as f:
                names[label] = sorted(f.keys())
        with open(os.path.join(out, "weights.json"), "w") as f:
            json.dump({"transformers": transformers.__version__, "tensors": entries,
                       "saved_names": names}, f, indent=0)

        ref = {"questions": np.array(QUESTIONS)}
        # vision tower, float64
        vision.double().eval()
        rng = np.random.default_rng(7)
        S = VISION["image_size"]
        codes = rng.integers(0, 256, (2, 3, S, S), dtype=np.uint8)
        pix = siglip_util.pixels_from_codes(codes)
        with torch.no_grad():
            o = vision(pixel_values=torch.from_numpy(pix).double(), output_hidden_states=True)
        ref["vision_pixel_codes"] = codes
        ref["vision_hidden_states"] = np.stack([h.numpy() for h in o.hidden_states]).astype(np.float32)

        # tokenizer and text tower, float64
        ids = [tok(q, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids for q in QUESTIONS]
        ref["question_ids"] = np.array(ids, np.int32)
        text.double().eval()
        tids = torch.tensor(ids[:TEXT_QUESTIONS])
        with torch.no_grad():
            o = text(input_ids=tids, output_hidden_states=True)
        ref["text_ids"] = tids.numpy().astype(np.int32)
        ref["text_hidden_states"] = np.stack([h.numpy() for h in o.hidden_states]).astype(np.float32)
        ref["text_last_hidden_state"] = o.last_hidden_state.numpy().astype(np.float32)
        ref["text_pooled"] = o.pooler_output.numpy().astype(np.float32)

        # preprocessing: LLaVA pad (expand2square with int(255 * mean)) + SiglipImageProcessorPil
        def processor(size):
            return SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=3)

        def expand2square(img, background):
            w, h = img.size
            if w == h:
                return img
            side = max(w, h)
            canvas = Image.new(img.mode, (side, side), background)
            canvas.paste(img, ((side - w) // 2, (side - h) // 2))
            return canvas

        def run(img, size, pad):
            p = processor(size)
            if pad:
                img = expand2square(img, tuple(int(x * 255) for x in p.image_mean))
            return np.asarray(p(images=img, return_tensors="np")["pixel_values"][0], np.float32)

        for i, (h, w) in enumerate([(30, 50), (41, 23), (40, 40), (3, 17)]):
            arr = sample_image(h, w, 100 + i, np)
            ref[f"pre_image_{i}"] = arr
            ref[f"pre_pad24_{i}"] = run(Image.fromarray(arr), 24, True)
            ref[f"pre_resize24_{i}"] = run(Image.fromarray(arr), 24, False)
        big = sample_image(48, 80, 200, np)
        full = run(Image.fromarray(big), 384, True)
        ref["pre_big_image"] = big
        ref["pre_pad384_stride5"] = full[:, ::5, ::5]
        ref["pre_pad384_sum"] = np.float64(full.astype(np.float64).sum())
        up = torch.nn.functional.interpolate(torch.from_numpy(full).double()[None], scale_factor=2, mode="bilinear",
                                             align_corners=False)[0].numpy()
        tiles = np.stack([up[:, :384, :384], up[:, :384, 384:], up[:, 384:, :384], up[:, 384:, 384:]])
        ref["tiles384_stride16"] = tiles[:, :, ::16, ::16].astype(np.float32)
        ref["tiles384_sums"] = tiles.reshape(4, -1).sum(1)
        np.savez_compressed(os.path.join(out, "reference.npz"), **ref)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {out}: {', '.join(sorted(os.listdir(out)))} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
