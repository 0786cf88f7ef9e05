"""Checkpoint layouts (tgllava.configs, tensor_names, hub): llava-hf name and config mapping, CLIP
configs and tower namings, and tower resolution through local folders and fake Hugging Face cache folders.
The network is never used: huggingface_hub's snapshot_download is replaced by a fake."""

import json

import pytest

from tgllava import configs, hub, tensor_names
from tgllava.errors import CheckpointError

LLAVA_HF_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vision_config": {
        "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
        "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
        "patch_size": 14, "projection_dim": 768, "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
}


# liuhaotian/llava-v1.5-7b's released config.json, key for key (a transformers 4.31.0 save: model_type "llava"
# like llava-hf, no rope_theta); text copied from the mirror at
# huggingface.co/second-state/Llava-v1.5-7B-GGUF/blob/main/config.json (found with the docs search).
LLAVA_V15_7B_CONFIG = {
    "_name_or_path": "llava-v1.5-7b", "architectures": ["LlavaLlamaForCausalLM"], "bos_token_id": 1,
    "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "freeze_mm_vision_resampler": False, "hidden_act": "silu",
    "hidden_size": 4096, "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": 11008,
    "max_length": 4096, "max_position_embeddings": 4096, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
    "mm_resampler_type": None, "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "model_type": "llava", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "pad_token_id": 0, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.31.0", "tune_mm_mlp_adapter": False, "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False, "use_cache": True, "use_mm_proj": True, "vocab_size": 32000,
}


def test_is_llava_hf_by_keys_not_model_type():
    assert tensor_names.is_llava_hf(LLAVA_HF_CONFIG)
    assert tensor_names.is_llava_hf({"architectures": ["LlavaForConditionalGeneration"]})
    assert tensor_names.is_llava_hf({"model_type": "llava", "text_config": {"model_type": "llama"}})
    # the released original LLaVA-1.5 config says model_type "llava" too: its mm_* keys decide
    assert LLAVA_V15_7B_CONFIG["model_type"] == LLAVA_HF_CONFIG["model_type"] == "llava"
    assert not tensor_names.is_llava_hf(LLAVA_V15_7B_CONFIG)
    # an original LLaVA saved by a newer transformers gains a stub text_config: still the official layout
    assert not tensor_names.is_llava_hf(dict(LLAVA_V15_7B_CONFIG, text_config={"model_type": "llama"}))
    assert not tensor_names.is_llava_hf({"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"]})
    # model_type alone decides nothing; the tensor names do when given
    assert not tensor_names.is_llava_hf({"model_type": "llava"})
    assert tensor_names.is_llava_hf({"model_type": "llava"}, ["language_model.model.norm.weight"])
    assert not tensor_names.is_llava_hf({"model_type": "llava"}, ["model.norm.weight", "model.mm_projector.0.weight"])
    assert not tensor_names.is_llava_hf({})


def test_released_llava_v15_config_reads_as_official():
    sizes = configs.llm_sizes(LLAVA_V15_7B_CONFIG, "llava-v1.5-7b/config.json")
    assert sizes == {"hidden": 4096, "heads": 32, "kv_heads": 32, "head_dim": 128, "layers": 32, "ffn": 11008,
                     "vocab": 32000, "max_len": 4096, "rms_eps": 1e-5, "rope_theta": 10000.0, "tie": False}
    with pytest.raises(CheckpointError, match="not a llava-hf config"):
        configs.llava_hf_config(LLAVA_V15_7B_CONFIG)


def test_map_names_old_layout():
    names = [
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
        "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_1.bias",
        "multi_modal_projector.linear_2.weight",
        "multi_modal_projector.linear_2.bias",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.encoder.layers.3.mlp.fc1.bias",
        "vision_tower.vision_model.post_layernorm.weight",
    ]
    llm, clip = tensor_names.map_llava_hf_names(names)
    assert llm == {
        "model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight": "language_model.model.layers.0.self_attn.q_proj.weight",
        "model.norm.weight": "language_model.model.norm.weight",
        "lm_head.weight": "language_model.lm_head.weight",
        "model.mm_projector.0.weight": "multi_modal_projector.linear_1.weight",
        "model.mm_projector.0.bias": "multi_modal_projector.linear_1.bias",
        "model.mm_projector.2.weight": "multi_modal_projector.linear_2.weight",
        "model.mm_projector.2.bias": "multi_modal_projector.linear_2.bias",
    }
    assert clip == {
        "vision_model.embeddings.patch_embedding.weight": "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_model.encoder.layers.3.mlp.fc1.bias": "vision_tower.vision_model.encoder.layers.3.mlp.fc1.bias",
        "vision_model.post_layernorm.weight": "vision_tower.vision_model.post_layernorm.weight",
    }


def test_map_names_new_layout():
    names = [
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.1.mlp.down_proj.weight",
        "lm_head.weight",
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_2.bias",
        "model.vision_tower.vision_model.pre_layrnorm.bias",
    ]
    llm, clip = tensor_names.map_llava_hf_names(names)
    assert llm == {
        "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
        "model.layers.1.mlp.down_proj.weight": "model.language_model.layers.1.mlp.down_proj.weight",
        "lm_head.weight": "lm_head.weight",
        "model.mm_projector.0.weight": "model.multi_modal_projector.linear_1.weight",
        "model.mm_projector.2.bias": "model.multi_modal_projector.linear_2.bias",
    }
    assert clip == {"vision_model.pre_layrnorm.bias": "model.vision_tower.vision_model.pre_layrnorm.bias"}


def test_map_names_unknown_and_duplicates():
    with pytest.raises(CheckpointError, match="image_newline"):
        tensor_names.map_llava_hf_names(["lm_head.weight", "image_newline"])
    llm, clip = tensor_names.map_llava_hf_names(["lm_head.weight", "image_newline"], strict=False)
    assert llm == {"lm_head.weight": "lm_head.weight"} and clip == {}
    with pytest.raises(CheckpointError, match="both map to lm_head.weight"):
        tensor_names.map_llava_hf_names(["lm_head.weight", "language_model.lm_head.weight"])


def test_llava_hf_config():
    out = configs.llava_hf_config(LLAVA_HF_CONFIG)
    assert out["model_type"] == "llava_llama" and out["architectures"] == ["LlavaLlamaForCausalLM"]
    # given values
    assert out["vocab_size"] == 32064 and out["max_position_embeddings"] == 4096
    assert out["rms_norm_eps"] == 1e-5
    # LlamaConfig defaults for the rest
    assert out["hidden_size"] == 4096 and out["intermediate_size"] == 11008
    assert out["num_hidden_layers"] == 32 and out["num_attention_heads"] == 32
    assert out["num_key_value_heads"] == 32 and out["rope_theta"] == 10000.0
    assert out["tie_word_embeddings"] is False
    assert out["bos_token_id"] == 1 and out["eos_token_id"] == 2 and out["pad_token_id"] == 32001
    # LLaVA keys
    assert out["mm_projector_type"] == "mlp2x_gelu" and out["mm_hidden_size"] == 1024
    assert out["mm_vision_select_layer"] == -2 and out["mm_vision_select_feature"] == "patch"
    assert out["image_aspect_ratio"] == "pad" and out["image_token_index"] == 32000
    v = out["vision_config"]
    assert v["model_type"] == "clip_vision_model"
    assert (v["hidden_size"], v["num_hidden_layers"], v["num_attention_heads"]) == (1024, 24, 16)
    assert (v["image_size"], v["patch_size"], v["intermediate_size"]) == (336, 14, 4096)
    assert v["hidden_act"] == "quick_gelu" and v["layer_norm_eps"] == 1e-5
    assert LLAVA_HF_CONFIG["text_config"].get("hidden_size") is None  # input untouched


def test_llava_hf_config_variants():
    cfg = json.loads(json.dumps(LLAVA_HF_CONFIG))
    cfg["text_config"].update(hidden_size=5120, num_attention_heads=40, num_hidden_layers=40,
                              intermediate_size=13824)
    cfg["vision_feature_select_strategy"] = "full"
    out = configs.llava_hf_config(cfg)
    assert (out["hidden_size"], out["num_key_value_heads"]) == (5120, 40)
    assert out["mm_vision_select_feature"] == "cls_patch"
    # no vision_config: LlavaConfig's CLIP-L/14-336 default
    cfg = {"model_type": "llava", "text_config": {"model_type": "qwen2", "hidden_size": 896,
                                                   "num_attention_heads": 14, "num_key_value_heads": 2}}
    out = configs.llava_hf_config(cfg)
    assert out["model_type"] == "llava_qwen" and out["vocab_size"] == 151936
    assert out["num_key_value_heads"] == 2 and out["mm_hidden_size"] == 1024
    assert out["vision_config"]["patch_size"] == 14 and out["vision_config"]["image_size"] == 336
    assert "bos_token_id" not in out


@pytest.mark.parametrize("change,match", [
    ({"projector_hidden_act": "relu"}, "projector_hidden_act"),
    ({"vision_feature_layer": [-2, -5]}, "vision_feature_layer"),
    ({"vision_feature_select_strategy": "cls"}, "select_strategy"),
    ({"vision_config": {"model_type": "siglip_vision_model"}}, "siglip"),
    ({"text_config": {"model_type": "gemma"}}, "gemma"),
    ({"model_type": "llava_llama", "architectures": [], "mm_vision_tower": "x"}, "not a llava-hf config"),
])
def test_llava_hf_config_refusals(change, match):
    cfg = dict(LLAVA_HF_CONFIG, **change)
    with pytest.raises(CheckpointError, match=match):
        configs.llava_hf_config(cfg)


# --- tower resolution ------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """huggingface_hub online over an empty cache (tmp_path/hub), with a snapshot_download that records
    calls and never touches the network."""
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def make_snapshot(cache, repo, rev, with_config=True, main=False):
    root = cache / ("models--" + repo.replace("/", "--"))
    folder = root / "snapshots" / rev
    folder.mkdir(parents=True)
    if with_config:
        (folder / "config.json").write_text("{}")
    if main:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(rev)
    return folder


def test_local_folder_is_returned(tmp_path, no_network):
    assert hub.resolve_tower(str(tmp_path)) == str(tmp_path)
    assert hub.resolve_tower(tmp_path, kind="text") == str(tmp_path)
    assert no_network == []


def test_hf_cache_snapshot_of_refs_main(tmp_path, no_network):
    cache = tmp_path / "hub"
    make_snapshot(cache, "openai/clip-vit-large-patch14-336", "bbb")
    main = make_snapshot(cache, "openai/clip-vit-large-patch14-336", "aaa", main=True)
    assert hub.resolve_tower("openai/clip-vit-large-patch14-336") == str(main)
    assert hub.find_in_hf_cache("openai/clip-vit-large-patch14-336") == str(main)
    assert no_network == []


def test_hf_cache_needs_refs_main_and_config(tmp_path, no_network):
    """The hub's rule: no refs/main (or no config.json in its snapshot) is not a cached tower."""
    cache = tmp_path / "hub"
    make_snapshot(cache, "org/tower", "old")
    make_snapshot(cache, "org/partial", "new", with_config=False, main=True)
    assert hub.find_in_hf_cache("org/tower") is None
    assert hub.find_in_hf_cache("org/partial") is None
    other = make_snapshot(tmp_path / "other", "org/tower", "r1", main=True)
    assert hub.find_in_hf_cache("org/tower", cache_dir=str(tmp_path / "other")) == str(other)


def test_download_only_when_online(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.resolve_tower("org/missing") is None
    assert no_network == []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub.resolve_tower("org/missing", kind="text") is None  # fake download fails
    assert no_network and no_network[0][0] == "org/missing"
    patterns = no_network[0][1]
    for p in ("config.json", "*.safetensors", "*.bin", "*.json", "*.txt"):
        assert p in patterns
    # paths that are not repo ids are never sent to the hub
    no_network.clear()
    assert hub.resolve_tower(str(tmp_path / "no" / "such" / "dir")) is None
    assert hub.resolve_tower("./relative/missing") is None
    assert no_network == []


def test_download_success(monkeypatch, no_network):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns=None: "/fake/snap")
    assert hub.resolve_tower("org/tower") == "/fake/snap"


def test_resolve_tower_arguments(no_network):
    with pytest.raises(ValueError, match="kind"):
        hub.resolve_tower("x", kind="audio")
    assert hub.resolve_tower(None) is None
    assert hub.resolve_tower("") is None


# --- llava-hf namings: one case per row of tensor_names.LLAVA_HF_NAMINGS, names built here ------------------------

_LM_TAILS = ["embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight",
             "norm.weight"]
_TOWER_TAILS = ["embeddings.patch_embedding.weight", "embeddings.class_embedding", "pre_layrnorm.bias",
                "encoder.layers.3.mlp.fc1.bias", "post_layernorm.weight"]


def _naming_names(parts):
    names = [parts["llm"] + t for t in _LM_TAILS]
    if parts["lm_head"]:
        names.append(parts["lm_head"] + "weight")
    names += [parts["projector"] + f"linear_{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
    names += [parts["vision"] + t for t in _TOWER_TAILS]
    return names


@pytest.mark.parametrize("row", range(len(tensor_names.LLAVA_HF_NAMINGS)))
def test_every_llava_hf_naming_maps_to_the_official_names(row):
    versions, parts = tensor_names.LLAVA_HF_NAMINGS[row]
    names = _naming_names(parts)
    llm, clip = tensor_names.map_llava_hf_names(names)
    want_llm = {"model." + t for t in _LM_TAILS} | {f"model.mm_projector.{k}.{w}" for k in (0, 2)
                                                     for w in ("weight", "bias")}
    if parts["lm_head"]:
        want_llm.add("lm_head.weight")
    assert set(llm) == want_llm
    assert set(clip) == {"vision_model." + t for t in _TOWER_TAILS}
    assert all(old in names for old in list(llm.values()) + list(clip.values()))
    assert tensor_names.llava_hf_naming(names) == versions


def test_llava_hf_buffers_are_dropped_and_mixed_namings_named():
    names = _naming_names(tensor_names.LLAVA_HF_NAMINGS[0][1])
    names += ["language_model.model.layers.0.self_attn.rotary_emb.inv_freq",
              "vision_tower.vision_model.embeddings.position_ids"]
    llm, clip = tensor_names.map_llava_hf_names(names)  # strict: the buffers are not "unexpected"
    assert not any("inv_freq" in n or "position_ids" in n for n in list(llm) + list(clip))
    mixed = _naming_names(tensor_names.LLAVA_HF_NAMINGS[0][1])[:-5] + \
        ["model.vision_tower." + t for t in _TOWER_TAILS]
    assert tensor_names.llava_hf_naming(mixed) == "mixed naming"
    with pytest.raises(CheckpointError, match="both map to vision_model.embeddings.class_embedding"):
        tensor_names.map_llava_hf_names(["vision_tower.vision_model.embeddings.class_embedding",
                                   "vision_tower.embeddings.class_embedding"])


# --- rotary settings: rope_theta (transformers 4) and rope_parameters (transformers 5) ---------------------

@pytest.mark.parametrize("cfg,theta", [
    ({}, 10000.0),
    ({"rope_theta": 500000.0}, 500000.0),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, 500000.0),
    ({"rope_theta": 1e6, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000}}, 1e6),
    ({"rope_theta": 5e5, "rope_scaling": None}, 5e5),
    ({"rope_theta": 5e5, "rope_scaling": {"rope_type": "default"}}, 5e5),
    ({"rope_parameters": {"rope_theta": 1e6}}, 1e6),
])
def test_rope_theta_from_either_key(cfg, theta):
    assert configs.rope_theta(cfg, "c.json") == theta


@pytest.mark.parametrize("cfg,match", [
    ({"rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
     r"c\.json: rope_theta 10000.0 and rope_parameters.rope_theta 500000.0 disagree"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     r"c\.json: rope_parameters.rope_type 'llama3' is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_parameters.rope_type 'yarn'"),
    ({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling.type 'linear'"),
    ({"rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling.type 'dynamic'"),
    ({"rope_theta": 1e4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_scaling.rope_type 'llama3'"),
    ({"rope_theta": 1e4, "rope_scaling": {"factor": 2.0}}, r"rope_scaling.factor 2.0"),
    ({"rope_theta": 1e4, "rope_scaling": "linear"}, "rope_scaling 'linear' is not supported"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}},
     "per layer type"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ({"rope_theta": 0}, r"c\.json: rope_theta 0.0 is invalid"),
    ({"rope_theta": -1}, "rope_theta -1.0 is invalid"),
    ({"rope_theta": float("nan")}, "rope_theta nan is invalid"),
    ({"rope_theta": float("inf")}, "rope_theta inf is invalid"),
    ({"rope_theta": "10000"}, "rope_theta must be a number"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, "rope_parameters.rope_theta 0.0 is invalid"),
])
def test_rope_refusals_name_the_key(cfg, match):
    with pytest.raises(CheckpointError, match=match):
        configs.rope_theta(cfg, "c.json")


# --- LLM config values (issue 13 items 9 and 14) ----------------------------------------------------------

_LLM = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2,
        "intermediate_size": 688, "vocab_size": 1000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


@pytest.mark.parametrize("change,match", [
    ({"rms_norm_eps": -1}, r"llm/config\.json: rms_norm_eps -1.0 is invalid"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps nan is invalid"),
    ({"rms_norm_eps": 0}, "rms_norm_eps 0.0 is invalid"),
    ({"rms_norm_eps": 2.0}, "rms_norm_eps 2.0 is invalid"),
    ({"hidden_size": None}, r"llm/config\.json: hidden_size is missing"),
    ({"hidden_size": [256]}, r"hidden_size must be an integer, got \[256\]"),
    ({"hidden_size": "256"}, "hidden_size must be an integer, got '256'"),
    ({"hidden_size": 256.5}, "hidden_size must be an integer, got 256.5"),
    ({"hidden_size": True}, "hidden_size must be an integer, got True"),
    ({"hidden_size": 2 ** 40}, "hidden_size 1099511627776 is out of range"),
    ({"num_attention_heads": 0}, "num_attention_heads 0 is out of range"),
    ({"num_key_value_heads": 0}, "num_key_value_heads 0 is out of range"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ({"num_attention_heads": 3, "num_key_value_heads": 3}, "hidden_size 256 is not a multiple of num_attention_heads 3"),
    ({"head_dim": 63}, "must be even"),
    ({"num_hidden_layers": -1}, "num_hidden_layers -1 is out of range"),
    ({"vocab_size": None}, "vocab_size is missing"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"max_position_embeddings": "4k"}, "max_position_embeddings must be an integer"),
])
def test_llm_config_values_are_checked(change, match):
    cfg = dict(_LLM)
    cfg.update(change)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(CheckpointError, match=match):
        configs.llm_sizes(cfg, "llm/config.json")


def test_llava_hf_text_config_values_are_named_under_text_config():
    cfg = json.loads(json.dumps(LLAVA_HF_CONFIG))
    cfg["text_config"]["rms_norm_eps"] = -1
    with pytest.raises(CheckpointError, match=r"hf/config\.json: text_config\.rms_norm_eps -1.0 is invalid"):
        configs.llava_hf_config(cfg, "hf/config.json")
    cfg = json.loads(json.dumps(LLAVA_HF_CONFIG))
    cfg["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    assert configs.llava_hf_config(cfg)["rope_theta"] == 500000.0
    cfg["text_config"]["rope_parameters"]["rope_type"] = "llama3"
    with pytest.raises(CheckpointError, match="text_config.rope_parameters.rope_type 'llama3'"):
        configs.llava_hf_config(cfg)
    cfg = json.loads(json.dumps(LLAVA_HF_CONFIG))
    cfg["vision_config"]["hidden_act"] = "gelu_new"
    with pytest.raises(CheckpointError, match="vision_config.hidden_act 'gelu_new' is not supported"):
        configs.llava_hf_config(cfg)


# --- CLIP configs, read as transformers reads them ----------------------------------------------------------

# The layout of openai/clip-vit-large-patch14-336's config.json: full text_config / vision_config dumps of
# transformers 4.21 (text eos_token_id 2, the legacy argmax pooling) beside the legacy text_config_dict /
# vision_config_dict, which CLIPConfig completes with its class defaults and lets override the others.
_GENERATION_DUMP = {
    "add_cross_attention": False, "architectures": None, "bad_words_ids": None, "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None, "decoder_start_token_id": None, "diversity_penalty": 0.0,
    "do_sample": False, "early_stopping": False, "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None, "finetuning_task": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "initializer_factor": 1.0,
    "initializer_range": 0.02, "is_decoder": False, "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "length_penalty": 1.0, "max_length": 20, "min_length": 0,
    "no_repeat_ngram_size": 0, "num_beam_groups": 1, "num_beams": 1, "num_return_sequences": 1,
    "output_attentions": False, "output_hidden_states": False, "output_scores": False, "prefix": None,
    "problem_type": None, "pruned_heads": {}, "remove_invalid_values": False, "repetition_penalty": 1.0,
    "return_dict": True, "return_dict_in_generate": False, "sep_token_id": None, "task_specific_params": None,
    "temperature": 1.0, "tf_legacy_loss": False, "tie_encoder_decoder": False, "tie_word_embeddings": True,
    "tokenizer_class": None, "top_k": 50, "top_p": 1.0, "torch_dtype": None, "torchscript": False,
    "transformers_version": "4.21.3", "typical_p": 1.0, "use_bfloat16": False, "_name_or_path": "",
}
CLIP_L_336_CONFIG = {
    "_name_or_path": "openai/clip-vit-large-patch14-336", "architectures": ["CLIPModel"],
    "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 768,
    "text_config": dict(_GENERATION_DUMP, attention_dropout=0.0, bos_token_id=0, dropout=0.0, eos_token_id=2,
                        hidden_act="quick_gelu", hidden_size=768, intermediate_size=3072, layer_norm_eps=1e-05,
                        max_position_embeddings=77, model_type="clip_text_model", num_attention_heads=12,
                        num_hidden_layers=12, pad_token_id=1, projection_dim=768, vocab_size=49408),
    "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                         "num_hidden_layers": 12, "projection_dim": 768},
    "torch_dtype": "float32", "transformers_version": None,
    "vision_config": dict(_GENERATION_DUMP, attention_dropout=0.0, bos_token_id=None, dropout=0.0,
                          eos_token_id=None, hidden_act="quick_gelu", hidden_size=1024, image_size=336,
                          intermediate_size=4096, layer_norm_eps=1e-05, model_type="clip_vision_model",
                          num_attention_heads=16, num_channels=3, num_hidden_layers=24, pad_token_id=None,
                          patch_size=14, projection_dim=768),
    "vision_config_dict": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                           "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                           "projection_dim": 768},
}
# the compact re-save of the same model by transformers >= 4.33 (huggingface.co/sheldonrobinson/
# clip-vit-large-patch14-336 config.json): every key equal to its class default is left out
CLIP_L_336_COMPACT = {
    "_name_or_path": "openai/clip-vit-large-patch14-336", "architectures": ["CLIPModel"], "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 768,
    "text_config": {"dropout": 0.0, "hidden_size": 768, "intermediate_size": 3072, "model_type": "clip_text_model",
                    "num_attention_heads": 12, "projection_dim": 768},
    "transformers_version": "4.33.0.dev0",
    "vision_config": {"dropout": 0.0, "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768},
}

_CLIP_L_VISION = {"v_hidden": 1024, "v_heads": 16, "v_layers": 24, "v_ffn": 4096, "v_image": 336, "v_patch": 14,
                  "v_act": 2, "v_select": 23, "v_eps": 1e-5}
_CLIP_L_TEXT = {"t_hidden": 768, "t_heads": 12, "t_layers": 12, "t_ffn": 3072, "t_vocab": 49408, "t_positions": 77,
                "t_act": 2, "t_eps": 1e-5}


@pytest.mark.parametrize("config", [CLIP_L_336_CONFIG, CLIP_L_336_COMPACT], ids=["legacy", "compact"])
def test_released_clip_configs_give_clip_l_336(config):
    out = configs.clip_configs(config, "clip/config.json")
    assert configs.vision_sizes(out["vision_config"], "clip/config.json") == _CLIP_L_VISION
    assert configs.text_sizes(out["text_config"], "clip/config.json") == _CLIP_L_TEXT
    # transformers >= 4.31: text_config_dict completed with CLIPTextConfig's defaults overrides text_config,
    # eos 2 included; either way the pooled position is argmax(ids) for CLIP's vocabulary (EOS 49407 = largest id)
    assert out["text_config"]["eos_token_id"] == 49407
    assert config["text_config"].get("eos_token_id") in (2, None)


def test_legacy_dicts_override_and_are_reported():
    out = configs.clip_configs(CLIP_L_336_CONFIG)
    assert "text_config_dict overrides text_config (bos_token_id, eos_token_id)" in out["legacy"]  # changed keys named
    assert "vision_config_dict overrides vision_config" in out["legacy"]  # same values
    # a vision_config_dict without image_size takes CLIPVisionConfig's 224, as transformers does
    cfg = json.loads(json.dumps(CLIP_L_336_CONFIG))
    del cfg["vision_config_dict"]["image_size"]
    assert configs.clip_configs(cfg)["vision_config"]["image_size"] == 224
    compact = configs.clip_configs(CLIP_L_336_COMPACT)
    assert {"num_hidden_layers", "vocab_size", "max_position_embeddings", "eos_token_id"} <= \
        set(compact["defaulted"]["text_config"])
    assert "num_hidden_layers" not in compact["defaulted"]["vision_config"]


def test_single_tower_configs():
    vision = {"model_type": "clip_vision_model", "hidden_size": 1024, "num_attention_heads": 16,
              "num_hidden_layers": 24, "intermediate_size": 4096, "image_size": 336, "patch_size": 14}
    out = configs.clip_configs(vision)
    assert out["text_config"] is None and configs.vision_sizes(out["vision_config"], "v") == _CLIP_L_VISION
    text = {"architectures": ["CLIPTextModel"], "hidden_size": 768, "num_attention_heads": 12,
            "intermediate_size": 3072, "eos_token_id": 2}
    out = configs.clip_configs(text)
    assert out["vision_config"] is None and configs.text_sizes(out["text_config"], "t") == _CLIP_L_TEXT
    with pytest.raises(CheckpointError, match=r"x\.json: not a CLIP config \(model_type 'llama'"):
        configs.clip_configs({"model_type": "llama"}, "x.json")


@pytest.mark.parametrize("part,change,match", [
    ("vision_config", {"hidden_act": "relu"}, r"clip/config\.json: vision_config\.hidden_act 'relu' is not supported"),
    ("vision_config", {"hidden_act": "gelu_pytorch_tanh"}, "vision_config.hidden_act 'gelu_pytorch_tanh'"),
    ("text_config", {"hidden_act": "silu"}, "text_config.hidden_act 'silu' is not supported"),
    ("vision_config", {"layer_norm_eps": float("nan")}, "vision_config.layer_norm_eps nan is invalid"),
    ("text_config", {"layer_norm_eps": -1e-5}, "text_config.layer_norm_eps -1e-05 is invalid"),
    ("vision_config", {"num_attention_heads": 0}, "vision_config.num_attention_heads 0 is out of range"),
    ("vision_config", {"patch_size": 15}, "image_size 336 is not a multiple of vision_config.patch_size 15"),
    ("vision_config", {"num_channels": 1}, "num_channels 1 is not supported"),
    ("text_config", {"eos_token_id": 7}, "text_config.eos_token_id 7: transformers pools"),
    ("text_config", {"hidden_size": [768]}, r"text_config\.hidden_size must be an integer, got \[768\]"),
])
def test_clip_config_values_are_checked(part, change, match):
    cfg = json.loads(json.dumps(CLIP_L_336_COMPACT))
    cfg[part].update(change)
    out = configs.clip_configs(cfg, "clip/config.json")
    with pytest.raises(CheckpointError, match=match):
        configs.vision_sizes(out["vision_config"], "clip/config.json")
        configs.text_sizes(out["text_config"], "clip/config.json")


def test_vision_select_layer_range():
    vc = configs.clip_configs(CLIP_L_336_COMPACT)["vision_config"]
    assert configs.vision_sizes(vc, "v", 0)["v_select"] == 0
    assert configs.vision_sizes(vc, "v", -1)["v_select"] == 24
    for bad in (25, -26):
        with pytest.raises(CheckpointError, match="mm_vision_select_layer"):
            configs.vision_sizes(vc, "v", bad)


# --- CLIP tensor layouts ------------------------------------------------------------------------------------

_VISION = ["embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
           "pre_layrnorm.weight", "pre_layrnorm.bias", "encoder.layers.0.self_attn.q_proj.weight",
           "post_layernorm.weight"]
_TEXT = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
         "encoder.layers.0.mlp.fc1.weight", "final_layer_norm.weight"]


@pytest.mark.parametrize("names,label,vision,text", [
    (["vision_model." + n for n in _VISION] + ["text_model." + n for n in _TEXT] +
     ["visual_projection.weight", "text_projection.weight", "logit_scale"], "CLIPModel", True, True),
    (["vision_model." + n for n in _VISION], "CLIPVisionModel", True, False),
    (["vision_model." + n for n in _VISION] + ["visual_projection.weight"], "CLIPVisionModel", True, False),
    (["text_model." + n for n in _TEXT], "CLIPTextModel", False, True),
    (list(_VISION), "CLIPVisionModel, unprefixed", True, False),
    (list(_TEXT), "CLIPTextModel, unprefixed", False, True),
])
def test_clip_tower_layouts(names, label, vision, text):
    got, mapping = tensor_names.clip_tower_names(names)
    assert got == label
    assert all(old in names for old in mapping.values())
    assert ("vision_model.embeddings.patch_embedding.weight" in mapping) == vision
    assert ("text_model.embeddings.token_embedding.weight" in mapping) == text
    assert all(n.startswith(("vision_model.", "text_model.")) for n in mapping)
    if vision:
        assert "vision_model.encoder.layers.0.self_attn.q_proj.weight" in mapping
    assert "logit_scale" not in mapping.values() and "visual_projection.weight" not in mapping.values()


def test_clip_tower_layout_refusals():
    with pytest.raises(CheckpointError, match="cannot tell them apart"):
        tensor_names.clip_tower_names(_VISION + ["embeddings.token_embedding.weight"], "f")
    with pytest.raises(CheckpointError, match="stored twice"):
        tensor_names.clip_tower_names(_VISION + ["vision_model." + n for n in _VISION], "f")
