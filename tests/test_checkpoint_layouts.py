"""Checkpoints as users have them (issue 16) and invalid config values (issue 13 items 9 and 14), end to end.

Every folder here is built by the test from a golden set (SPEC 5): the same
weights under another naming or with another config spelling, loaded with
tgllava.load and compared with the golden folder.  Covered: `rope_parameters`
(transformers 5) vs `rope_theta` give the same logits, rotary scaling and
disagreeing values are refused; CLIP towers in the CLIPVisionModel /
CLIPTextModel layouts, prefixed or not, and a TG-LLaVA text tower taken from
its own folder; every llava-hf naming of tensor_names.LLAVA_HF_NAMINGS; the
released liuhaotian/llava-v1.5-7b config keys; bad config values as
CheckpointErrors naming file and key, raised before any tensor byte is read;
`tgllava generate` on a folder without tokenizer files failing before any
weight is read; `tgllava info` naming the layouts and the defaults loading
uses.  No download, no torch, no transformers.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest
from golden_util import GOLDEN, checkpoint, config_copy, io

import tgllava
from tgllava import cli, fixtures, info, loader, tensor_names
from tgllava.checkpoint import TensorRef, read_tensors
from tgllava.errors import CheckpointError

L15, TGV = "llava15-tiny", "tg-vicuna-tiny"
TEXT_IDS = [1, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]
_models = {}


def golden(name):
    if name not in _models:
        _models[name] = tgllava.load(*checkpoint(name), progress=False)
    return _models[name]


def copy_llm(tmp_path, name=L15, label="llm"):
    dst = tmp_path / label
    shutil.copytree(checkpoint(name)[0], dst)
    return str(dst)


def edit_config(folder, change=None, drop=()):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(change or {})
    for k in drop:
        cfg.pop(k, None)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def write_folder(folder, tensors, config):
    os.makedirs(folder, exist_ok=True)
    fixtures.save_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


@pytest.fixture
def no_weight_bytes(monkeypatch):
    """Fail the test if any tensor's bytes are read or any weight is handed to a C core."""
    calls = []

    def raw(self):
        calls.append(self.name)
        raise AssertionError(f"tensor bytes of {self.name} were read")

    def build_core(*a, **kw):
        calls.append("build_core")
        raise AssertionError("build_core was called")

    monkeypatch.setattr(TensorRef, "raw", raw)
    monkeypatch.setattr(loader, "build_core", build_core)
    return calls


# --- rotary settings -------------------------------------------------------------------------------

def test_rope_parameters_give_the_same_logits_as_rope_theta(tmp_path):
    clip = checkpoint(L15)[1]
    theta = copy_llm(tmp_path, label="theta")
    edit_config(theta, {"rope_theta": 500000.0})
    params = copy_llm(tmp_path, label="params")  # transformers 5: no top-level rope_theta
    edit_config(params, {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, drop=["rope_theta"])
    a = tgllava.load(theta, clip, progress=False)
    b = tgllava.load(params, clip, progress=False)
    la, lb = a.logits(TEXT_IDS), b.logits(TEXT_IDS)
    assert np.array_equal(la, lb)
    # the base matters: the golden 10000 gives other logits (so equality above is not vacuous)
    assert np.abs(la - golden(L15).logits(TEXT_IDS)).max() > 1e-3


@pytest.mark.parametrize("change,drop,key", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, ["rope_theta"],
     "rope_parameters.rope_type 'llama3'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, [], "rope_scaling.type 'linear'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, [], "rope_scaling.type 'dynamic'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, [], "rope_scaling.rope_type 'yarn'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, [],
     "rope_theta 10000.0 and rope_parameters.rope_theta 500000.0 disagree"),
])
def test_rope_scaling_and_disagreement_refused_before_reading_weights(tmp_path, no_weight_bytes, change, drop, key):
    llm = copy_llm(tmp_path)
    path = edit_config(llm, change, drop)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {key}")):
        tgllava.load(llm, checkpoint(L15)[1], progress=False)
    assert no_weight_bytes == []


# --- invalid config values (issue 13 items 9 and 14) -------------------------------------------------------

@pytest.mark.parametrize("change,drop,match", [
    ({"rms_norm_eps": -1}, [], "rms_norm_eps -1.0 is invalid"),
    ({"rms_norm_eps": float("nan")}, [], "rms_norm_eps nan is invalid"),
    ({"rope_theta": 0}, [], "rope_theta 0.0 is invalid"),
    ({"rope_theta": -1}, [], "rope_theta -1.0 is invalid"),
    ({"rope_theta": float("nan")}, [], "rope_theta nan is invalid"),
    ({}, ["hidden_size"], "hidden_size is missing"),
    ({"hidden_size": [256]}, [], "hidden_size must be an integer, got [256]"),
    ({"num_attention_heads": 0}, [], "num_attention_heads 0 is out of range"),
    ({"num_hidden_layers": 2 ** 31 - 1}, [], "num_hidden_layers is 2147483647 but the weights hold 2 layers"),
    ({"mm_vision_select_layer": 7}, [], "mm_vision_select_layer 7 is out of range"),
    ({"mm_projector_type": "qformer"}, [], "mm_projector_type 'qformer' is not supported"),
])
def test_bad_llm_config_values_name_file_and_key(tmp_path, no_weight_bytes, change, drop, match):
    llm = copy_llm(tmp_path)
    path = edit_config(llm, change, drop)
    with pytest.raises(CheckpointError, match=re.escape(match)) as e:
        tgllava.load(llm, checkpoint(L15)[1], progress=False)
    assert path in str(e.value)
    assert no_weight_bytes == []


@pytest.mark.parametrize("part,change,match", [
    ("vision_config", {"hidden_act": "relu"}, "vision_config.hidden_act 'relu' is not supported"),
    ("vision_config", {"hidden_act": "gelu_new"}, "vision_config.hidden_act 'gelu_new' is not supported"),
    ("vision_config", {"layer_norm_eps": float("nan")}, "vision_config.layer_norm_eps nan is invalid"),
    ("vision_config", {"num_hidden_layers": 30}, "vision_config.num_hidden_layers is 30 but the weights hold 3"),
    ("vision_config", {"hidden_size": "1024"}, "vision_config.hidden_size must be an integer"),
])
def test_bad_clip_config_values_name_file_and_key(tmp_path, no_weight_bytes, part, change, match):
    clip = tmp_path / "clip"
    config_copy(checkpoint(L15)[1], clip)
    path = os.path.join(clip, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg[part].update(change)
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {match}")):
        tgllava.load(checkpoint(L15)[0], str(clip), progress=False)
    assert no_weight_bytes == []


def test_unknown_text_act_and_pooling_refused_for_tg(tmp_path, no_weight_bytes):
    llm, clip_src = checkpoint(TGV)
    for i, (change, match) in enumerate((({"hidden_act": "tanh"}, "text_config.hidden_act 'tanh' is not supported"),
                                         ({"eos_token_id": 5}, "text_config.eos_token_id 5: transformers pools"))):
        clip = tmp_path / f"clip{i}"
        config_copy(clip_src, clip)
        path = os.path.join(clip, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["text_config"].update(change)
        with open(path, "w") as f:
            json.dump(cfg, f)
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: {match}")):
            tgllava.load(llm, str(clip), progress=False)
    assert no_weight_bytes == []


def test_shapes_and_extra_tensors_checked_before_any_byte_is_read(tmp_path, request):
    t = read_tensors(os.path.join(checkpoint(L15)[0], "model.safetensors"))
    short = copy_llm(tmp_path, label="short")
    fixtures.save_safetensors(os.path.join(short, "model.safetensors"),
                          dict(t, **{"lm_head.weight": t["lm_head.weight"][:-1]}))  # among the last tensors loaded
    extra = copy_llm(tmp_path, label="extra")  # a Llama variant the engine does not build
    fixtures.save_safetensors(os.path.join(extra, "model.safetensors"),
                          dict(t, **{"model.layers.0.self_attn.o_proj.bias": np.zeros(256, np.float32)}))
    calls = request.getfixturevalue("no_weight_bytes")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor lm_head.weight has shape \(999, 256\), "
                                              r"expected \(1000, 256\)"):
        tgllava.load(short, checkpoint(L15)[1], progress=False)
    with pytest.raises(CheckpointError, match="o_proj.bias has no place in the model"):
        tgllava.load(extra, checkpoint(L15)[1], progress=False)
    assert calls == []


# --- the released original LLaVA-1.5 config -----------------------------------------------------------------

def test_released_llava_v15_config_keys_load_as_the_official_layout(tmp_path):
    from test_layout import LLAVA_V15_7B_CONFIG

    llm = copy_llm(tmp_path)
    with open(os.path.join(llm, "config.json")) as f:
        sizes = {k: v for k, v in json.load(f).items() if k in (
            "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
            "intermediate_size", "vocab_size", "max_position_embeddings")}
    cfg = dict(LLAVA_V15_7B_CONFIG, **sizes)  # the file's keys (model_type "llava", no rope_theta), golden sizes
    with open(os.path.join(llm, "config.json"), "w") as f:
        json.dump(cfg, f)
    assert loader.resolve_folders(llm, checkpoint(L15)[1])["kind"] == "official"
    m = tgllava.load(llm, checkpoint(L15)[1], progress=False)
    assert np.array_equal(m.logits(TEXT_IDS), golden(L15).logits(TEXT_IDS))


# --- CLIP tower layouts ------------------------------------------------------------------------------------

def _clip_parts(name):
    clip = checkpoint(name)[1]
    with open(os.path.join(clip, "config.json")) as f:
        cfg = json.load(f)
    return read_tensors(clip), cfg


def vision_model_folder(folder, name=L15, prefixed=True):
    """The golden CLIP vision tower as a CLIPVisionModel folder (transformers 4: vision_model.*, 5: unprefixed)."""
    t, cfg = _clip_parts(name)
    tensors = {(k if prefixed else k[len("vision_model."):]): v for k, v in t.items() if k.startswith("vision_model.")}
    config = dict(cfg["vision_config"], architectures=["CLIPVisionModel"])
    return write_folder(folder, tensors, config)


def text_model_folder(folder, name=TGV, prefixed=True):
    t, cfg = _clip_parts(name)
    tensors = {(k if prefixed else k[len("text_model."):]): v for k, v in t.items() if k.startswith("text_model.")}
    config = dict(cfg["text_config"], architectures=["CLIPTextModel"])
    return write_folder(folder, tensors, config)


@pytest.mark.slow
@pytest.mark.parametrize("prefixed,label", [(True, "CLIPVisionModel"), (False, "CLIPVisionModel, unprefixed")])
def test_clip_vision_model_folders_load(tmp_path, capsys, prefixed, label):
    tower = vision_model_folder(tmp_path / "tower", prefixed=prefixed)
    assert loader.read_tower(tower)["layout"] == label
    m = tgllava.load(checkpoint(L15)[0], tower, progress=False)
    px = io(L15)["pixel_values"]
    assert np.array_equal(m.vision_features(px), golden(L15).vision_features(px))
    assert m.clip_dir == tower
    assert cli.main(["info", tower]) == 0
    out = capsys.readouterr().out
    assert f"tensor layout: {label}" in out and "vision: width 1024, 3 layers, image 336, patch 14" in out


@pytest.mark.slow
def test_tg_text_tower_from_its_own_folder(tmp_path):
    """TG-LLaVA with a transformers-5 CLIPVisionModel folder and a CLIPTextModel folder named by mm_text_tower."""
    vision = vision_model_folder(tmp_path / "vision", TGV, prefixed=False)
    text = text_model_folder(tmp_path / "text", TGV, prefixed=False)
    llm = copy_llm(tmp_path, TGV)
    edit_config(llm, {"mm_text_tower": text})
    plan = loader.resolve_folders(llm, vision)
    assert (plan["vision_dir"], plan["text_dir"], plan["clip_dir"]) == (vision, text, text)
    assert plan["tower_layouts"] == {"vision": "CLIPVisionModel, unprefixed", "text": "CLIPTextModel, unprefixed"}
    m = tgllava.load(llm, vision, progress=False)
    ref = golden(TGV)
    g = io(TGV)
    for a, b in zip(m.text_tower(g["text_guide_ids"]), ref.text_tower(g["text_guide_ids"])):
        assert np.array_equal(a, b)
    got = m.visual_tokens(g["pixel_values"], g["text_guide_ids"])
    assert np.array_equal(got, ref.visual_tokens(g["pixel_values"], g["text_guide_ids"]))
    # without a text tower anywhere, the error says what is missing and where it looked
    edit_config(llm, {"mm_text_tower": str(tmp_path / "nowhere")})
    with pytest.raises(CheckpointError, match=r"needs the CLIP text tower .* CLIPVisionModel, unprefixed"):
        tgllava.load(llm, vision, progress=False)


# --- `tgllava info` reports what load() resolves -----------------------------------------------------------

def test_info_names_the_text_tower_load_uses(tmp_path, capsys):
    """A TG-LLaVA whose vision folder holds both towers takes its text tower from there unless
    mm_text_tower names another tower that is found (then that one: a text guide of another family,
    as SigLIP vision with a CLIP text tower); info used to look mm_text_tower up on its own and could
    report another folder than load() uses."""
    clip = checkpoint(TGV)[1]
    elsewhere = text_model_folder(tmp_path / "text", TGV)
    llm = copy_llm(tmp_path, TGV)
    nowhere = str(tmp_path / "nowhere")
    for text_tower, used in ((nowhere, clip), (elsewhere, elsewhere)):
        edit_config(llm, {"mm_vision_tower": clip, "mm_text_tower": text_tower})
        m = tgllava.load(llm, progress=False)
        towers = info.describe(llm)["towers"]
        assert towers["vision"]["path"] == clip and towers["text"]["path"] == m.clip_dir == used
        assert cli.main(["info", llm]) == 0
        out = capsys.readouterr().out
        assert f"text tower: {clip if used == clip else text_tower} -> {used}" in out and "load check: passed" in out


def test_info_and_load_agree_on_a_folder_known_by_its_tensor_names(tmp_path):
    """A config that says neither layout (no mm_* keys, no text_config / vision_config, no
    LlavaForConditionalGeneration) over llava-hf tensor names: the names decide, once, for load()
    and info alike.  info used to decide from the config alone and describe an official LLaVA-1.5
    while load() took the llava-hf path; now both read LlavaConfig's defaults (as transformers
    does) and refuse the folder with the same error."""
    versions, parts = tensor_names.LLAVA_HF_NAMINGS[0]
    folder = llava_hf_folder(tmp_path / "hf", parts)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llava"}, f)
    with pytest.raises(CheckpointError, match="vision_config.num_hidden_layers is 24 but the weights hold 3") as e:
        tgllava.load(folder, progress=False)
    described = info.describe(folder)
    assert described["kind"] == "llava-hf LLaVA-1.5" and described["llava_hf_naming"] == versions
    assert described["load_check"] == str(e.value)


def test_info_on_compact_clip_config_prints_the_defaults(tmp_path, capsys):
    from test_layout import CLIP_L_336_COMPACT

    clip = tmp_path / "clip"
    config_copy(checkpoint(L15)[1], clip)
    with open(clip / "config.json", "w") as f:
        json.dump(CLIP_L_336_COMPACT, f)
    assert cli.main(["info", str(clip)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    assert "12 (default) layers, vocab 49408 (default)" in out
    assert "eos 49407 (default)" in out and "tensor layout: CLIPModel" in out


def test_info_on_legacy_clip_config_says_how_it_is_read(tmp_path, capsys):
    from test_layout import CLIP_L_336_CONFIG

    clip = tmp_path / "clip"
    config_copy(checkpoint(L15)[1], clip)
    with open(clip / "config.json", "w") as f:
        json.dump(CLIP_L_336_CONFIG, f)
    assert cli.main(["info", str(clip)]) == 0
    out = capsys.readouterr().out
    assert "legacy config: text_config_dict overrides text_config (bos_token_id, eos_token_id)" in out
    assert "vision: width 1024, 24 layers, image 336, patch 14" in out


# --- llava-hf namings: every row of tensor_names.LLAVA_HF_NAMINGS, built here from the golden LLaVA-1.5 ---------------

def llava_hf_folder(folder, parts):
    llm_dir, clip_dir = checkpoint(L15)
    with open(os.path.join(llm_dir, "config.json")) as f:
        llm_cfg = json.load(f)
    with open(os.path.join(clip_dir, "config.json")) as f:
        clip_cfg = json.load(f)
    tensors = {}
    for name, a in read_tensors(llm_dir).items():
        if name.startswith("model.mm_projector."):
            idx, rest = name[len("model.mm_projector."):].split(".", 1)
            tensors[f"{parts['projector']}linear_{1 if idx == '0' else 2}.{rest}"] = a
        elif name.startswith("lm_head."):
            if parts["lm_head"] is None:  # tied: the embedding doubles as the head
                continue
            tensors[parts["lm_head"] + name[len("lm_head."):]] = a
        else:
            tensors[parts["llm"] + name[len("model."):]] = a
    for name, a in read_tensors(clip_dir).items():
        if name.startswith("vision_model."):
            rest = name[len("vision_model."):]
            tensors[parts["vision"] + rest] = a  # "...vision_tower.vision_model." + rest, or unprefixed
    text_keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                 "intermediate_size", "vocab_size", "rms_norm_eps", "max_position_embeddings", "hidden_act")
    config = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": dict({k: llm_cfg[k] for k in text_keys}, model_type="llama",
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "vision_config": clip_cfg["vision_config"], "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu", "image_token_index": 32000,
        "tie_word_embeddings": parts["lm_head"] is None, "bos_token_id": 1, "eos_token_id": 2,
    }
    return write_folder(folder, tensors, config)


@pytest.mark.slow
@pytest.mark.parametrize("row", range(len(tensor_names.LLAVA_HF_NAMINGS)))
def test_every_llava_hf_naming_loads_like_the_official_folder(tmp_path, capsys, row):
    versions, parts = tensor_names.LLAVA_HF_NAMINGS[row]
    folder = llava_hf_folder(tmp_path / "hf", parts)
    m = tgllava.load(folder, progress=False)
    ref = golden(L15)
    if parts["lm_head"] is None:  # the reference: the official folder with the same tie
        tied = copy_llm(tmp_path, label="tied")
        t = read_tensors(os.path.join(tied, "model.safetensors"))
        del t["lm_head.weight"]
        fixtures.save_safetensors(os.path.join(tied, "model.safetensors"), t)
        edit_config(tied, {"tie_word_embeddings": True})
        ref = tgllava.load(tied, checkpoint(L15)[1], progress=False)
    px = io(L15)["pixel_values"]
    assert np.array_equal(m.vision_features(px), ref.vision_features(px))
    assert np.array_equal(m.logits(TEXT_IDS), ref.logits(TEXT_IDS))
    assert cli.main(["info", folder]) == 0
    assert f"llava-hf tensor naming: {versions}" in capsys.readouterr().out


# --- item 5: everything checkable is checked before weights are read -------------------------------------------

def test_generate_without_tokenizer_files_fails_before_reading_weights(capsys, no_weight_bytes):
    llm, clip = checkpoint(L15)  # golden folders: weights and configs, no tokenizer files
    img = os.path.join(GOLDEN, L15, "image.png")
    rc = cli.main(["generate", "--model", llm, "--clip", clip, "--image", img, "--question", "q"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{llm}: no LLM tokenizer files (tokenizer.json, tokenizer.model or vocab.json" in err
    assert no_weight_bytes == []


def test_generate_tg_without_clip_tokenizer_fails_before_reading_weights(tmp_path, capsys, no_weight_bytes):
    llm = copy_llm(tmp_path, TGV)
    fixtures.write_llm_tokenizer(llm, vocab_size=1000)
    clip = checkpoint(TGV)[1]
    img = os.path.join(GOLDEN, TGV, "image.png")
    rc = cli.main(["generate", "--model", llm, "--clip", clip, "--image", img, "--question", "q"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{clip}: no CLIP tokenizer files" in err and "text guide" in err
    assert no_weight_bytes == []


def test_generate_with_a_missing_tower_fails_before_reading_weights(tmp_path, capsys, no_weight_bytes, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    llm = copy_llm(tmp_path)
    fixtures.write_llm_tokenizer(llm, vocab_size=1000)
    edit_config(llm, {"mm_vision_tower": "org/not-here", "mm_text_tower": None})
    rc = cli.main(["generate", "--model", llm, "--image", os.path.join(GOLDEN, L15, "image.png"), "--question", "q"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot find the CLIP tower 'org/not-here'" in err and "--clip DIR" in err
    assert no_weight_bytes == []
