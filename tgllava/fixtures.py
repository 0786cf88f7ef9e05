"""Tiny random-weight checkpoints, written on the fly: what `tgllava demo` runs and the tests build on.

Everything a real checkpoint has is made here, with NumPy and the `tokenizers` library only: a CLIP folder
(vision and text towers, `vision_model.*` / `text_model.*`, a CLIP BPE vocab.json + merges.txt learned from
a small built-in text) or with tower="siglip" a SiglipModel folder (a SentencePiece spiece.model trained on
the same text; text guides padded to 64 tokens), and a TG-LLaVA LLM folder (Llama-style LLM, mlp2x_gelu
projector, TG-FOM Q-former and TG-DP perceiver with the official tensor names, a byte-level BPE
tokenizer.json).  `build` writes both and a test picture; its DEMO_SIZES (vision width 64 on 112x112
images with 14-pixel patches, so 64 patches, 64 FOM queries and 256 DP positions; LLM width 128) run the
whole pipeline in about a second.  The tests reuse the pieces: `save_safetensors`, the tokenizer writers
and `build_clip` / `build_siglip` / `build_llm` for towers and LLM folders of other sizes.
"""

import collections
import json
import os
import re
import struct

import numpy as np

CORPUS = """
A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the human's questions. A chat between a curious user and an artificial
intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.
USER: ASSISTANT: ###Human: ###Assistant: What is in this image? Describe the image in detail.
The picture shows a red ball on a green table next to a blue cup. There are two cats sitting on a sofa.
A man is riding a bicycle along the river while the sun sets behind the mountains. What color is the car?
How many people are in the photo? Is there a dog in the picture? The sky is clear and the grass is bright.
Answer the question using a single word or phrase. Yes. No. One. Two. Three. Left. Right. Red. Blue. Green.
The text in the image says hello world. A plate of food with rice, vegetables and a piece of fish.
A small boat floats on the lake; children play football in the park; the train arrives at the station.
"""

_SPECIALS = ("<unk>", "<s>", "</s>")


# --- files ---------------------------------------------------------------------

def save_safetensors(path, tensors, metadata=None):
    """Write {name: float32 array} as a .safetensors file."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        data = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.writelines([struct.pack("<Q", len(text)), text, *blobs])


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


# --- tokenizers ----------------------------------------------------------------

def write_llm_tokenizer(folder, vocab_size=512, corpus=CORPUS):
    """Train a byte-level BPE LLM tokenizer (<unk>=0, <s>=1, </s>=2) and write it to `folder`.

    Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json
    (BOS added, as Llama's tokenizer does).  Returns the vocabulary size,
    which is at most `vocab_size`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([line for line in corpus.splitlines() if line.strip()], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    _write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(os.path.join(folder, "special_tokens_map.json"),
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return tok.get_vocab_size()


def _learn_clip_merges(corpus, n_merges):
    """Plain BPE learning over CLIP pre-tokens (byte alphabet, "</w>" word ends)."""
    from .tokenize import clip_pipeline

    normalizer, pre_tokenizer = clip_pipeline()
    words = collections.Counter()
    for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(corpus)):
        words[tuple(w[:-1]) + (w[-1] + "</w>",)] += 1
    merges = []
    while len(merges) < n_merges:
        pairs = collections.Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best, count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merges.append(best)
        # merge the pair left to right in each word, written as its symbols separated by spaces
        occurrence = re.compile(r"(?<![^ ])" + re.escape(" ".join(best)) + r"(?![^ ])")
        merged = collections.Counter()
        for word, n in words.items():
            merged[tuple(occurrence.sub(lambda _: best[0] + best[1], " ".join(word)).split(" "))] += n
        words = merged
    return merges


def write_clip_tokenizer(folder, vocab_size=1024, corpus=CORPUS, max_merges=300):
    """Write a CLIP vocab.json + merges.txt whose ids are all below `vocab_size`.

    Ids: the 256 byte symbols, the same with "</w>", the learned merges,
    then <|startoftext|> = vocab_size - 2 and <|endoftext|> = vocab_size - 1
    (the largest id, as CLIP's pooling rule needs).  Returns (bos_id, eos_id).
    """
    from .tokenize import bytes_to_unicode

    base = list(bytes_to_unicode().values())
    room = vocab_size - 2 - 2 * len(base)
    if room < 0:
        raise ValueError(f"a CLIP vocabulary needs at least {2 * len(base) + 2} ids, got {vocab_size}")
    merges = _learn_clip_merges(corpus, min(room, max_merges))
    vocab = {}
    for token in base + [b + "</w>" for b in base] + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    bos, eos = vocab_size - 2, vocab_size - 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    os.makedirs(folder, exist_ok=True)
    _write_json(os.path.join(folder, "vocab.json"), vocab)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    _write_json(os.path.join(folder, "tokenizer_config.json"), {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    return bos, eos


def write_siglip_tokenizer(folder, vocab_size=512, corpus=CORPUS):
    """Train a SentencePiece unigram model as a SigLIP spiece.model (<pad>=0, </s>=1, <unk>=2) and write it
    with its tokenizer_config.json (SiglipTokenizer, max_length 64) to `folder`; returns the vocabulary size."""
    import io

    import sentencepiece as spm

    lines = [line.strip() for line in corpus.splitlines() if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", hard_vocab_limit=False, character_coverage=1.0,
                                   normalization_rule_name="identity", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(buf.getvalue())
    _write_json(os.path.join(folder, "tokenizer_config.json"), {
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>", "model_max_length": 64,
        "do_lower_case": True, "tokenizer_class": "SiglipTokenizer"})
    return spm.SentencePieceProcessor(model_proto=buf.getvalue()).get_piece_size()


# --- random weights --------------------------------------------------------------

class _Weights:
    """Collects random tensors: linears scaled by 1/sqrt(fan_in), norms near 1."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.t = {}

    def normal(self, name, shape, scale):
        self.t[name] = (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def linear(self, name, n_out, n_in, bias=True):
        self.normal(name + ".weight", (n_out, n_in), 1.0 / np.sqrt(n_in))
        if bias:
            self.normal(name + ".bias", (n_out,), 0.02)

    def norm(self, name, n, bias=True):
        self.t[name + ".weight"] = (1.0 + 0.1 * self.rng.standard_normal(n)).astype(np.float32)
        if bias:
            self.normal(name + ".bias", (n,), 0.02)


def _clip_encoder(w, prefix, d, ffn, layers):
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w.linear(p + "self_attn." + proj, d, d)
        w.norm(p + "layer_norm1", d)
        w.linear(p + "mlp.fc1", ffn, d)
        w.linear(p + "mlp.fc2", d, ffn)
        w.norm(p + "layer_norm2", d)


def build_clip(folder, sizes, seed=1):
    """Write a CLIPModel folder (config.json, model.safetensors, tokenizer) with random weights."""
    s = sizes
    bos, eos = write_clip_tokenizer(folder, s["t_vocab"])
    w = _Weights(seed)
    dv, dt = s["v_hidden"], s["t_hidden"]
    n_patches = (s["image"] // s["patch"]) ** 2
    w.normal("vision_model.embeddings.class_embedding", (dv,), 0.5)
    w.normal("vision_model.embeddings.patch_embedding.weight", (dv, 3, s["patch"], s["patch"]),
             1.0 / np.sqrt(3 * s["patch"] ** 2))
    w.normal("vision_model.embeddings.position_embedding.weight", (n_patches + 1, dv), 0.5)
    w.norm("vision_model.pre_layrnorm", dv)
    _clip_encoder(w, "vision_model", dv, s["v_ffn"], s["v_layers"])
    w.norm("vision_model.post_layernorm", dv)
    w.normal("text_model.embeddings.token_embedding.weight", (s["t_vocab"], dt), 0.5)
    w.normal("text_model.embeddings.position_embedding.weight", (77, dt), 0.5)
    _clip_encoder(w, "text_model", dt, s["t_ffn"], s["t_layers"])
    w.norm("text_model.final_layer_norm", dt)
    w.linear("visual_projection", s["proj_dim"], dv, bias=False)
    w.linear("text_projection", s["proj_dim"], dt, bias=False)
    w.t["logit_scale"] = np.array(2.6592, np.float32)
    save_safetensors(os.path.join(folder, "model.safetensors"), w.t)
    vision = {"model_type": "clip_vision_model", "hidden_size": dv, "num_attention_heads": s["v_heads"],
              "num_hidden_layers": s["v_layers"], "intermediate_size": s["v_ffn"], "image_size": s["image"],
              "patch_size": s["patch"], "num_channels": 3, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
              "projection_dim": s["proj_dim"]}
    text = {"model_type": "clip_text_model", "hidden_size": dt, "num_attention_heads": s["t_heads"],
            "num_hidden_layers": s["t_layers"], "intermediate_size": s["t_ffn"], "vocab_size": s["t_vocab"],
            "max_position_embeddings": 77, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": 1, "projection_dim": s["proj_dim"]}
    _write_json(os.path.join(folder, "config.json"), {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": s["proj_dim"],
        "logit_scale_init_value": 2.6592, "vision_config": vision, "text_config": text})
    _write_json(os.path.join(folder, "preprocessor_config.json"), {
        "crop_size": {"height": s["image"], "width": s["image"]}, "size": {"shortest_edge": s["image"]},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
        "image_processor_type": "CLIPImageProcessor"})


def build_siglip(folder, sizes, seed=1):
    """Write a SiglipModel folder (config.json, model.safetensors, spiece.model) with random weights."""
    s = sizes
    vocab = write_siglip_tokenizer(folder)
    w = _Weights(seed)
    dv, dt = s["v_hidden"], s["t_hidden"]
    n_patches = (s["image"] // s["patch"]) ** 2
    w.linear("vision_model.embeddings.patch_embedding", dv, 3 * s["patch"] ** 2)
    w.t["vision_model.embeddings.patch_embedding.weight"] = w.t["vision_model.embeddings.patch_embedding.weight"].reshape(
        dv, 3, s["patch"], s["patch"])
    w.normal("vision_model.embeddings.position_embedding.weight", (n_patches, dv), 0.5)
    _clip_encoder(w, "vision_model", dv, s["v_ffn"], s["v_layers"])
    w.norm("vision_model.post_layernorm", dv)
    w.normal("text_model.embeddings.token_embedding.weight", (vocab, dt), 0.5)
    w.normal("text_model.embeddings.position_embedding.weight", (64, dt), 0.5)
    _clip_encoder(w, "text_model", dt, s["t_ffn"], s["t_layers"])
    w.norm("text_model.final_layer_norm", dt)
    w.linear("text_model.head", dt, dt)
    w.t["logit_scale"] = np.array([2.3], np.float32)
    w.t["logit_bias"] = np.array([-10.0], np.float32)
    save_safetensors(os.path.join(folder, "model.safetensors"), w.t)
    common = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    vision = dict(common, model_type="siglip_vision_model", hidden_size=dv, num_attention_heads=s["v_heads"],
                  num_hidden_layers=s["v_layers"], intermediate_size=s["v_ffn"], image_size=s["image"],
                  patch_size=s["patch"], num_channels=3, vision_use_head=False)
    text = dict(common, model_type="siglip_text_model", hidden_size=dt, num_attention_heads=s["t_heads"],
                num_hidden_layers=s["t_layers"], intermediate_size=s["t_ffn"], vocab_size=vocab,
                max_position_embeddings=64, projection_size=dt)
    _write_json(os.path.join(folder, "config.json"), {
        "architectures": ["SiglipModel"], "model_type": "siglip", "vision_config": vision, "text_config": text})
    _write_json(os.path.join(folder, "preprocessor_config.json"), {
        "size": {"height": s["image"], "width": s["image"]}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
        "image_processor_type": "SiglipImageProcessor"})


def _qformer(w, s):
    dv, dt = s["v_hidden"], s["t_hidden"]
    pf = "model.mm_cross_attn."
    n_patches = (s["image"] // s["patch"]) ** 2
    w.linear(pf + "resize_linear", dv, dt)
    w.linear(pf + "zero_layer", dv, dv)
    w.normal(pf + "query_tokens", (1, n_patches, dv), 0.5)
    w.normal(pf + "Qformer.bert.embeddings.word_embeddings.weight", (16, dv), 0.02)
    w.normal(pf + "Qformer.bert.embeddings.position_embeddings.weight", (8, dv), 0.02)
    w.norm(pf + "Qformer.bert.embeddings.LayerNorm", dv)
    for i in range(2):
        p = f"{pf}Qformer.bert.encoder.layer.{i}."
        blocks = ("attention", "crossattention") if i % 2 == 0 else ("attention",)
        for block in blocks:
            for proj in ("query", "key", "value"):
                w.linear(f"{p}{block}.self.{proj}", dv, dv)
            w.linear(f"{p}{block}.output.dense", dv, dv)
            w.norm(f"{p}{block}.output.LayerNorm", dv)
        for kind in ("", "_query"):
            w.linear(f"{p}intermediate{kind}.dense", s["q_ffn"], dv)
            w.linear(f"{p}output{kind}.dense", dv, s["q_ffn"])
            w.norm(f"{p}output{kind}.LayerNorm", dv)


def _perceiver(w, s):
    dv, dt, h = s["v_hidden"], s["t_hidden"], s["hidden"]
    pf = "model.mm_patch_encoder."
    n_patches = (s["image"] // s["patch"]) ** 2
    hd = s["p_head_dim"]
    w.normal(pf + "position_embedding.weight", (4 * n_patches, dv), 0.5)
    w.linear(pf + "pre_mlp.0", dv, dv)
    w.linear(pf + "pre_mlp.2", dv, dv)
    w.linear(pf + "resize_linear", dv, dt)
    w.normal(pf + "perceiver.latents", (s["p_latents"], dv), 0.5)
    for i in range(2):
        p = f"{pf}perceiver.layers.{i}."
        w.norm(p + "input_latents_norm", dv, bias=False)
        w.norm(p + "input_context_norm", dv, bias=False)
        w.linear(p + "self_attn.q_proj", 16 * hd, dv, bias=False)
        w.linear(p + "self_attn.k_proj", 4 * hd, dv, bias=False)
        w.linear(p + "self_attn.v_proj", 4 * hd, dv, bias=False)
        w.linear(p + "self_attn.o_proj", dv, 16 * hd, bias=False)
        w.norm(p + "post_attention_layernorm", dv, bias=False)
        w.linear(p + "mlp.gate_proj", 4 * dv, dv, bias=False)
        w.linear(p + "mlp.up_proj", 4 * dv, dv, bias=False)
        w.linear(p + "mlp.down_proj", dv, 4 * dv, bias=False)
    w.norm(pf + "perceiver.norm", dv, bias=False)
    w.linear(pf + "proj.0", h, dv)
    w.linear(pf + "proj.2", h, h)


def build_llm(folder, clip_folder, sizes, seed=2):
    """Write a TG-LLaVA LLM folder (config.json, model.safetensors, tokenizer) with random weights."""
    s = sizes
    vocab = write_llm_tokenizer(folder, s["vocab"])
    w = _Weights(seed)
    h, ffn = s["hidden"], s["ffn"]
    w.normal("model.embed_tokens.weight", (vocab, h), 0.5)
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w.linear(p + "self_attn." + proj, h, h, bias=False)
        w.linear(p + "mlp.gate_proj", ffn, h, bias=False)
        w.linear(p + "mlp.up_proj", ffn, h, bias=False)
        w.linear(p + "mlp.down_proj", h, ffn, bias=False)
        w.norm(p + "input_layernorm", h, bias=False)
        w.norm(p + "post_attention_layernorm", h, bias=False)
    w.norm("model.norm", h, bias=False)
    w.linear("lm_head", vocab, h, bias=False)
    # Quieten the byte tokens that are not printable ASCII, so the random
    # answer is made of word pieces rather than broken UTF-8.
    from tokenizers import Tokenizer

    from .tokenize import bytes_to_unicode
    printable = {c for b, c in bytes_to_unicode().items() if 32 <= b < 127}
    tj = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    for token, idx in tj.get_vocab().items():
        if len(token) == 1 and token not in printable:
            w.t["lm_head.weight"][idx] *= 0.1
    w.linear("model.mm_projector.0", h, s["v_hidden"])
    w.linear("model.mm_projector.2", h, h)
    _qformer(w, s)
    _perceiver(w, s)
    save_safetensors(os.path.join(folder, "model.safetensors"), w.t)
    tower = os.path.abspath(clip_folder)
    _write_json(os.path.join(folder, "config.json"), {
        "architectures": ["LlavaLlamaTextLearnableQueryForCausalLM"],
        "model_type": "llava_llama_text_learnable_query",
        "hidden_size": h, "num_attention_heads": s["heads"], "num_key_value_heads": s["heads"],
        "num_hidden_layers": s["layers"], "intermediate_size": ffn, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float32",
        "mm_vision_tower": tower, "mm_text_tower": tower, "mm_hidden_size": s["v_hidden"],
        "mm_text_hidden_size": s["t_hidden"], "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tokenizer_model_max_length": 2048,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "demo_random_weights": True})


DEMO_SIZES = {
    "image": 112, "patch": 14, "proj_dim": 64,
    "v_hidden": 64, "v_heads": 4, "v_layers": 3, "v_ffn": 256,
    "t_hidden": 64, "t_heads": 4, "t_layers": 2, "t_ffn": 256, "t_vocab": 768,
    "q_ffn": 256, "p_head_dim": 8, "p_latents": 32,
    "hidden": 128, "heads": 4, "layers": 2, "ffn": 344, "vocab": 512,
}


TOWERS = ("clip", "siglip")


def build(folder, sizes=None, tower="clip"):
    """Write a tiny random-weight TG-LLaVA (folder/clip or folder/siglip, folder/llm) and a test picture
    (folder/image.png); tower is "clip" or "siglip".

    Returns (llm_dir, tower_dir, image_path).
    """
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {', '.join(TOWERS)}, got {tower!r}")
    s = {**DEMO_SIZES, **(sizes or {})}
    clip_dir, llm_dir = os.path.join(folder, tower), os.path.join(folder, "llm")
    (build_siglip if tower == "siglip" else build_clip)(clip_dir, s)
    build_llm(llm_dir, clip_dir, s)
    image_path = os.path.join(folder, "image.png")
    demo_image().save(image_path)
    return llm_dir, clip_dir, image_path


def demo_image(width=320, height=240):
    """A synthetic picture: a sky gradient, green ground, a red disc and a blue square."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.float32)
    img[..., 0] = 90 + 80 * y / height
    img[..., 1] = 150 + 60 * y / height
    img[..., 2] = 235
    ground = y > height * 0.65
    img[ground] = (60, 150, 70)
    disc = (x - width * 0.3) ** 2 + (y - height * 0.55) ** 2 < (height * 0.15) ** 2
    img[disc] = (210, 40, 40)
    square = (abs(x - width * 0.7) < height * 0.12) & (abs(y - height * 0.6) < height * 0.12)
    img[square] = (40, 60, 200)
    return Image.fromarray(img.astype(np.uint8), "RGB")
