"""SigLIP towers (issue 24) against transformers' own outputs in tests/data/siglip (make_siglip_fixtures.py).

The fixture's towers have the real head size (72), an odd patch count from a side that is not a multiple of
the patch (76 px / 14: 25 patches), gelu_pytorch_tanh and LayerNorm eps 1e-6; transformers ran them in
float64.  Checked here on the CPU in float32: the vision tower's hidden state after every layer count
(mm_vision_select_layer), the text tower's per-token states and pooled output (within 1e-5); the
SiglipTokenizer ids (identical); LLaVA's pad + SiglipImageProcessor pixels and the TG-DP tiles (within 1e-6).
"""
import numpy as np
import pytest

import siglip_util
import tgllava
from tgllava import image, siglip
from tgllava.errors import ShapeError

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
