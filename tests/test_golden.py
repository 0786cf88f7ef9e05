"""Conformance: every stage of every golden set against io.npz at the SPEC tolerances (CPU, float32)."""
import numpy as np
import pytest

import tgllava
from golden_util import SETS, io, model

FEAT_TOL = 1e-3   # SPEC 5: features
LOGIT_TOL = 2e-3  # SPEC 5: logits
TG_SETS = [s for s in SETS if s != "llava15-tiny"]
pytestmark = pytest.mark.slow  # every test loads a golden model


def maxdiff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max())


@pytest.mark.parametrize("name", SETS)
def test_image_features(name):
    d = io(name)
    assert maxdiff(model(name).vision_features(d["pixel_values"][None])[0], d["image_features"]) <= FEAT_TOL


@pytest.mark.parametrize("name", TG_SETS)
def test_text_tower(name):
    d = io(name)
    hidden, pooled = model(name).text_tower(d["text_guide_ids"])
    assert maxdiff(hidden[0], d["text_hidden"]) <= FEAT_TOL
    assert maxdiff(pooled[0], d["text_pooled"]) <= FEAT_TOL


@pytest.mark.parametrize("name", TG_SETS)
def test_fom_mask(name):
    d = io(name)
    assert maxdiff(model(name).fom(d["text_pooled"][None])[0], d["fom_mask"]) <= FEAT_TOL


@pytest.mark.parametrize("name", SETS)
def test_tiles(name):
    d = io(name)
    tiles = tgllava.tile(d["pixel_values"][None])
    assert tiles.shape == (1, 4, 3, 336, 336)
    if "tiles_stride7" in d:
        assert maxdiff(tiles[0][:, :, ::7, ::7], d["tiles_stride7"]) <= FEAT_TOL
    assert maxdiff(tgllava.tile(d["pixel_values"]), tiles[0]) == 0.0  # unbatched form


@pytest.mark.parametrize("name", TG_SETS)
def test_dp_tokens(name):
    d, m = io(name), model(name)
    tiles = tgllava.tile(d["pixel_values"][None])[0]
    feats = m.vision_features(tiles).reshape(1, -1, m.sizes["v_hidden"])
    assert maxdiff(m.dp(feats, d["text_hidden"][None])[0], d["dp_tokens"]) <= FEAT_TOL


ABLATIONS = {"visual_tokens": (True, True), "visual_tokens_fom_only": (True, False),
             "visual_tokens_dp_only": (False, True), "visual_tokens_baseline": (False, False)}


# the ablations exist for the TG-LLaVA sets; plain LLaVA-1.5 (no TG modules) has only its visual tokens
VISUAL_CASES = [(n, k) for n in SETS for k in ABLATIONS if n.startswith("tg-") or k == "visual_tokens"]


@pytest.mark.parametrize("name,key", VISUAL_CASES)
def test_visual_tokens(name, key):
    d, m = io(name), model(name)
    fom, dp = ABLATIONS[key]
    got = m.visual_tokens(d["pixel_values"][None], d.get("text_guide_ids"), use_fom=fom, use_dp=dp)[0]
    assert maxdiff(got, d[key]) <= FEAT_TOL


@pytest.mark.parametrize("name", SETS)
def test_prefill_logits(name):
    d = io(name)
    lg = model(name).logits(d["input_ids"], d["pixel_values"], d.get("text_guide_ids"))
    assert maxdiff(lg, d["logits"]) <= LOGIT_TOL


@pytest.mark.parametrize("name", SETS)
def test_greedy_generation(name):
    d = io(name)
    req = dict(input_ids=d["input_ids"], pixels=d["pixel_values"], text_ids=d.get("text_guide_ids"))
    n = len(d["generated_ids"])
    toks, last = model(name).generate_batch([req], max_new_tokens=n, eos_token_id=[], return_last_logits=True)
    assert toks[0] == d["generated_ids"].tolist()
    assert maxdiff(last[0], d["logits_after_generation_last"]) <= LOGIT_TOL


def test_batch_of_two_equals_singles():
    name = "tg-qwen2-tiny"
    d, m = io(name), model(name)
    pix = np.stack([d["pixel_values"], d["pixel_values"][:, ::-1, :]])
    ids = [d["text_guide_ids"], d["text_guide_ids"][:4]]
    both = m.visual_tokens(pix, ids)
    for i in range(2):
        one = m.visual_tokens(pix[i:i + 1], [ids[i]])
        assert maxdiff(both[i], one[0]) <= 1e-5
