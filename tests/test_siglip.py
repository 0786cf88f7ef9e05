"""SigLIP towers (issue 24) against transformers' own outputs in tests/data/siglip (make_siglip_fixtures.py),
and TG-LLaVA with SigLIP towers end to end.

The fixture's towers have the real head size (72), an odd patch count from a side that is not a multiple of
the patch (76 px / 14: 25 patches), gelu_pytorch_tanh and LayerNorm eps 1e-6; transformers ran them in
float64.  Checked here on the CPU in float32: the vision tower's hidden state after every layer count
(mm_vision_select_layer), the text tower's per-token states and pooled output (within 1e-5); the
SiglipTokenizer ids (identical); LLaVA's pad + SiglipImageProcessor pixels and the TG-DP tiles (within 1e-6).
Then a random TG-LLaVA LLM (tgllava.fixtures) on those towers: the tower folder layouts users have (SiglipModel,
SiglipVisionModel / SiglipTextModel with and without the prefix, a repo id in the Hugging Face cache), mixed
families, FOM queries / DP positions following from the tower (729 and 4 x 729 at SO400M's size), the visual
tokens as FOM + projector and DP of the SigLIP features, greedy tokens across the CPU storage formats, chat,
attention maps, `tgllava info` and `tgllava demo --tower siglip`.  No torch, no transformers, no download.
"""
import os
import shutil

import numpy as np
import pytest

import siglip_util
import tgllava
from tgllava import _C, cli, fixtures, image, loader, siglip
from tgllava.checkpoint import read_tensors
from tgllava.errors import CheckpointError, ShapeError

TOWER_TOL = 1e-5
PIXEL_TOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    return siglip_util.reference()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return siglip_util.checkpoint(str(tmp_path_factory.mktemp("siglip")))


def maxdiff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def model(folders):
    llm, tower = folders
    return tgllava.load(llm, tower, dtype="float32", progress=False)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_vision_hidden_state_after_every_layer(folders, ref, layer):
    llm, tower = folders
    siglip_util.edit_config(llm, {"mm_vision_select_layer": layer})
    try:
        m = tgllava.load(llm, tower, dtype="float32", progress=False)
    finally:
        siglip_util.edit_config(llm, {"mm_vision_select_layer": -2})
    pixels = siglip_util.pixels_from_codes(ref["vision_pixel_codes"])
    assert maxdiff(m.vision_features(pixels), ref["vision_hidden_states"][layer]) <= TOWER_TOL


def test_vision_features_are_every_token_of_layer_n_minus_1(model, ref):
    pixels = siglip_util.pixels_from_codes(ref["vision_pixel_codes"])
    assert model.num_patches == 25 and model.sizes["v_family"] == 1
    assert maxdiff(model.vision_features(pixels), ref["vision_hidden_states"][-2]) <= TOWER_TOL


def test_text_tower(model, ref):
    hidden, pooled = model.text_tower(ref["text_ids"])
    assert maxdiff(hidden, ref["text_last_hidden_state"]) <= TOWER_TOL
    assert maxdiff(pooled, ref["text_pooled"]) <= TOWER_TOL
    one_hidden, one_pooled = model.text_tower(ref["text_ids"][1])  # a batch of one
    assert maxdiff(one_hidden[0], ref["text_last_hidden_state"][1]) <= TOWER_TOL
    assert maxdiff(one_pooled[0], ref["text_pooled"][1]) <= TOWER_TOL


def test_text_guide_has_max_length_tokens(model, ref):
    with pytest.raises(ShapeError, match="exactly 64 tokens"):
        model.text_tower(ref["text_ids"][:, :20])


def test_tokenizer_ids_identical(ref):
    tok = siglip.SiglipTokenizer.from_folder(siglip_util.FIXTURE_DIR)
    for question, want in zip(ref["questions"], ref["question_ids"]):
        assert tok.encode(str(question)) == want.tolist(), str(question)


@pytest.mark.parametrize("i", range(4))
def test_preprocessing_small(ref, i):
    from PIL import Image

    picture = Image.fromarray(ref[f"pre_image_{i}"])
    pad = image.preprocess(picture, "pad", 24, siglip.SIGLIP_MEAN, siglip.SIGLIP_STD)
    assert maxdiff(pad, ref[f"pre_pad24_{i}"]) <= PIXEL_TOL
    mode, mean, std = siglip.image_rules("crop")  # no pad: SigLIP resizes straight to the square
    assert maxdiff(image.preprocess(picture, mode, 24, mean, std), ref[f"pre_resize24_{i}"]) <= PIXEL_TOL


def test_preprocessing_384_and_tiles(ref):
    full = image.preprocess(ref["pre_big_image"], "pad", 384, siglip.SIGLIP_MEAN, siglip.SIGLIP_STD)
    assert maxdiff(full[:, ::5, ::5], ref["pre_pad384_stride5"]) <= PIXEL_TOL
    assert abs(full.astype(np.float64).sum() - ref["pre_pad384_sum"]) <= PIXEL_TOL * full.size
    tiles = tgllava.tile(full)
    assert tiles.shape == (4, 3, 384, 384)
    assert maxdiff(tiles[:, :, ::16, ::16], ref["tiles384_stride16"]) <= PIXEL_TOL
    assert np.abs(tiles.reshape(4, -1).astype(np.float64).sum(1) - ref["tiles384_sums"]).max() <= PIXEL_TOL * full.size


# ---- TG-LLaVA with SigLIP towers ------------------------------------------------------------------

def copy_llm(folders, tmp_path, change):
    llm = str(tmp_path / "llm")
    shutil.copytree(folders[0], llm)
    siglip_util.edit_config(llm, change)
    return llm


@pytest.mark.parametrize("vision_layout,text_layout", [
    ("SiglipVisionModel", "SiglipTextModel"),
    ("SiglipVisionModel, unprefixed", "SiglipTextModel, unprefixed")])
def test_single_tower_folders_load_like_the_siglip_model(folders, model, ref, tmp_path, vision_layout, text_layout):
    vision = siglip_util.write_tower(tmp_path / "vision", vision_layout, tokenizer=False)
    text = siglip_util.write_tower(tmp_path / "text", text_layout)
    llm = copy_llm(folders, tmp_path, {"mm_vision_tower": vision, "mm_text_tower": text})
    plan = loader.resolve_folders(llm)
    assert plan["tower_layouts"] == {"vision": vision_layout, "text": text_layout}
    assert (plan["vision_dir"], plan["clip_dir"]) == (vision, text)
    m = tgllava.load(llm, progress=False)
    pixels = siglip_util.pixels_from_codes(ref["vision_pixel_codes"])
    assert np.array_equal(m.vision_features(pixels), model.vision_features(pixels))
    for a, b in zip(m.text_tower(ref["text_ids"]), model.text_tower(ref["text_ids"])):
        assert np.array_equal(a, b)


def test_tower_named_by_repo_id_in_the_hf_cache(folders, model, ref, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = "google/siglip-so400m-patch14-384"
    snapshot = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    siglip_util.write_tower(snapshot / "snapshots" / "abc")
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    llm = copy_llm(folders, tmp_path, {"mm_vision_tower": repo, "mm_text_tower": repo})
    m = tgllava.load(llm, progress=False)
    assert m.clip_dir == str(snapshot / "snapshots" / "abc")
    pixels = siglip_util.pixels_from_codes(ref["vision_pixel_codes"])
    assert np.array_equal(m.vision_features(pixels), model.vision_features(pixels))


def clip_tower(folder):
    """A random CLIPModel folder (tgllava.fixtures) that fits the fixture's LLM: 70 px / 14 = 25 patches, width 144."""
    fixtures.build_clip(str(folder), siglip_util.llm_sizes(image=70))
    return str(folder)


@pytest.mark.parametrize("vision", ["siglip", "clip"])
def test_mixed_families(folders, tmp_path, vision):
    """SigLIP vision with a CLIP text guide, and CLIP vision with a SigLIP text guide, as mm_*_tower say."""
    clip = clip_tower(tmp_path / "clip")
    sig = siglip_util.write_tower(tmp_path / "siglip")
    towers = (sig, clip) if vision == "siglip" else (clip, sig)
    llm = copy_llm(folders, tmp_path, {"mm_vision_tower": towers[0], "mm_text_tower": towers[1]})
    m = tgllava.load(llm, progress=False)
    assert (siglip.family(m, "vision"), siglip.family(m, "text")) == (vision, "clip" if vision == "siglip" else "siglip")
    assert m.clip_dir == towers[1]
    answer = m.chat(fixtures.demo_image(), "What is in this image?", max_new_tokens=3)
    assert len(answer.token_ids) == 3


def test_fom_queries_and_dp_positions_follow_the_tower():
    """SO400M at 384 / 14: 27 x 27 = 729 patches (the last 6 pixels unused), so FOM needs 729 queries and DP
    4 x 729 = 2916 positions; registering the tensors allocates no weight."""
    so400m = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
              "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
    vc = siglip.tower_configs(so400m)["vision_config"]
    sizes = siglip.tower_vision_sizes(vc, "config.json", -2)
    assert (sizes["v_family"], sizes["v_select"], sizes["v_act"], sizes["v_eps"]) == (1, 26, 4, 1e-6)
    cfg = dict(sizes, has_fom=1, has_dp=1, t_family=1, t_hidden=1152, t_heads=16, t_layers=1, t_ffn=4304,
               t_vocab=32000, t_positions=64, t_act=4, t_eps=1e-6, q_layers=2, q_heads=16, q_ffn=4096,
               q_queries=729, q_cross_freq=2, q_eps=1e-12, p_layers=2, p_latents=64, p_heads=16, p_head_dim=96,
               p_kv_heads=4, p_ffn=4608, p_positions=2916, p_eps=1e-5, proj_mlp=1, hidden=64, heads=4,
               kv_heads=4, head_dim=16, layers=1, ffn=64, vocab=100, qkv_bias=0, tie_embeddings=0, max_len=4096,
               rms_eps=1e-5, rope_theta=1e4, dtype=0)
    shapes = {name: tuple(shape) for name, shape, _ in _C.Model(cfg, "cpu").required()}
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (729, 1152)
    assert shapes["vision_model.embeddings.patch_embedding.bias"] == (1152,)
    assert shapes["model.mm_cross_attn.query_tokens"] == (1, 729, 1152)
    assert shapes["model.mm_patch_encoder.position_embedding.weight"] == (2916, 1152)
    assert shapes["text_model.head.weight"] == (1152, 1152)
    assert "vision_model.embeddings.class_embedding" not in shapes
    assert "vision_model.encoder.layers.25.mlp.fc2.weight" in shapes  # layers 1..26 run, 27 is not read
    assert "vision_model.encoder.layers.26.mlp.fc2.weight" not in shapes
    with pytest.raises(CheckpointError, match="query count must equal the number of patches"):
        _C.Model(dict(cfg, q_queries=728), "cpu")


def test_projection_size_must_be_the_width():
    tc = siglip.tower_configs({"model_type": "siglip_text_model", "hidden_size": 64, "projection_size": 32,
                               "num_attention_heads": 4})["text_config"]
    with pytest.raises(CheckpointError, match="projection_size 32 differs"):
        siglip.tower_text_sizes(tc, "config.json")


def test_bad_vision_configs_name_the_key():
    """SigLIP's image side need not be a multiple of the patch (384 / 14), but it must hold one patch, and the
    width must split into the heads; CLIP keeps its whole-patch rule."""
    base = {"model_type": "siglip_vision_model", "hidden_size": 72, "num_attention_heads": 1, "num_hidden_layers": 2,
            "intermediate_size": 8, "patch_size": 14}
    vc = siglip.tower_configs(dict(base, image_size=76))["vision_config"]
    assert siglip.tower_vision_sizes(vc, "config.json")["v_image"] == 76
    for change, match in (({"image_size": 10}, "image_size 10 is smaller than vision_config.patch_size 14"),
                          ({"image_size": 76, "num_attention_heads": 5}, "hidden_size 72 is not a multiple of")):
        vc = siglip.tower_configs(dict(base, **change))["vision_config"]
        with pytest.raises(CheckpointError, match=match):
            siglip.tower_vision_sizes(vc, "config.json")
    clip = dict(base, model_type="clip_vision_model", image_size=76)
    with pytest.raises(CheckpointError, match="image_size 76 is not a multiple of vision_config.patch_size 14"):
        siglip.tower_vision_sizes(siglip.tower_configs(clip)["vision_config"], "config.json")


def gelu(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def test_visual_tokens_are_fom_projector_and_dp_of_the_siglip_features(folders, model):
    """visual tokens = [projector(F + FOM(pooled)), DP(tile features, text states)], with the pooled output
    and per-token states of the 64-token SigLIP text guide and 4 tiles of the 76 px image."""
    pixels = image.preprocess_for(model, fixtures.demo_image())
    assert pixels.shape == (3, 76, 76)
    ids = siglip.SiglipTokenizer.from_folder(folders[1]).encode("What is in this image?")
    vis = model.visual_tokens(pixels, ids)[0]
    assert vis.shape == (25 + 32, 128) and model.visual_token_count() == 57
    hidden, pooled = model.text_tower(ids)
    feats = model.vision_features(pixels)[0] + model.fom(pooled)[0]
    w = read_tensors(os.path.join(folders[0], "model.safetensors"))
    proj = gelu(feats.astype(np.float64) @ w["model.mm_projector.0.weight"].T + w["model.mm_projector.0.bias"])
    proj = proj @ w["model.mm_projector.2.weight"].T + w["model.mm_projector.2.bias"]
    assert maxdiff(vis[:25], proj) <= 1e-4
    tiles = model.vision_features(tgllava.tile(pixels)).reshape(1, 100, 144)
    assert maxdiff(vis[25:], model.dp(tiles, hidden)[0]) <= 1e-4


# test_formats' bounds on the golden sets, but int4: this LLM is tiny (width 128) and random, its 4-bit logits
# measure a cosine of 0.974
COSINE = {"float16": 0.99995, "bfloat16": 0.9999, "int8": 0.9995, "int4": 0.95}


def first_unexplained_flip(ref_steps, fmt_steps, ref_tokens):
    """The first greedy step where the format's top token differs from the float32 one by more than the format's
    own logit error at that step explains (the reference's margin between the two tokens exceeds twice the
    largest logit difference), else None.  A random tiny LLM has near-ties that any rounding may turn."""
    for t, (r, f) in enumerate(zip(ref_steps, fmt_steps)):
        pick = int(np.argmax(f))
        if pick != ref_tokens[t] and r[ref_tokens[t]] - r[pick] > 2 * np.abs(f - r).max():
            return t
    return None


def test_greedy_tokens_across_cpu_formats(folders, model):
    """Along float32's greedy answer (teacher-forced), every compact format's logits stay within the cosine
    bound and pick float32's token at every step but where the two tokens are nearer than its error."""
    llm, tower = folders
    question = "Describe the image in detail."
    req = model.chat(fixtures.demo_image(), question, max_new_tokens=6)
    from tgllava import chat as chat_mod
    pixels = image.preprocess_for(model, fixtures.demo_image())
    llm_tok, text_tok = chat_mod.tokenizers(model)
    ids = chat_mod.tokenize.tokenizer_image_token(
        chat_mod.conversation.build_prompt(question, chat_mod.default_conv_mode(model)), llm_tok)
    text_ids = text_tok.encode(question)
    assert len(text_ids) == 64
    assert model.generate(ids, pixels, text_ids, max_new_tokens=6) == req.token_ids
    forced = list(ids) + list(req.token_ids[:-1])
    ref = model.logits(forced, pixels, text_ids)[-6:]
    assert [int(t) for t in ref.argmax(1)] == req.token_ids
    for fmt, bound in COSINE.items():
        m = tgllava.load(llm, tower, dtype=fmt, progress=False)
        lg = m.logits(forced, pixels, text_ids)[-6:]
        cos = float((lg.ravel().astype(np.float64) @ ref.ravel()) / np.linalg.norm(lg) / np.linalg.norm(ref))
        assert cos >= bound, (fmt, cos)
        if fmt != "int4":
            assert first_unexplained_flip(ref, lg, req.token_ids) is None, fmt


def test_attention_maps_on_the_patch_grid(model):
    maps = model.attention_map(fixtures.demo_image(), "What is in this image?")
    assert maps.llm.shape == (5, 5) and maps.fom.shape == (5, 5) and maps.dp.shape == (10, 10)


def test_info_names_the_family(folders, capsys):
    llm, tower = folders
    assert cli.main(["info", tower]) == 0
    out = capsys.readouterr().out
    assert f"{tower}: SigLIP" in out and "tensor layout: SiglipModel" in out
    assert "vision: width 144, 3 layers, image 76, patch 14, 2 heads" in out and "gelu_pytorch_tanh" in out
    assert cli.main(["info", llm]) == 0
    out = capsys.readouterr().out
    assert "vision tower:" in out and "SigLIP, SiglipModel layout" in out


def test_demo_with_siglip_towers(capsys):
    assert cli.main(["demo", "--tower", "siglip", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "SigLIP vision 3x64" in out and "tokens: 3" in out


@pytest.mark.gpu
def test_cuda_towers_match_transformers(folders, model, ref):
    """The same towers on the CUDA backend (true float32 products): within the CPU's tolerance, and the same
    greedy tokens as the CPU model."""
    if not _C.built_with_cuda():
        pytest.skip("tgllava was built without the CUDA backend")
    try:
        _C.op_elementwise("cuda:0", "activation", np.zeros(1, np.float32), None, 0)
    except tgllava.DeviceError as e:
        pytest.skip(f"no usable CUDA device: {e}")
    m = tgllava.load(*folders, device="cuda", dtype="float32", progress=False)
    pixels = siglip_util.pixels_from_codes(ref["vision_pixel_codes"])
    assert maxdiff(m.vision_features(pixels), ref["vision_hidden_states"][-2]) <= TOWER_TOL
    hidden, pooled = m.text_tower(ref["text_ids"])
    assert maxdiff(hidden, ref["text_last_hidden_state"]) <= TOWER_TOL
    assert maxdiff(pooled, ref["text_pooled"]) <= TOWER_TOL
    question = "What is in this image?"
    assert (m.chat(fixtures.demo_image(), question, max_new_tokens=6).token_ids
            == model.chat(fixtures.demo_image(), question, max_new_tokens=6).token_ids)
