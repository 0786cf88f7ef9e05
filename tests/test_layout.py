"""Tests for tgllava.layout: llava-hf name and config mapping, and tower
resolution through local folders and fake Hugging Face cache folders.
The network is never used: huggingface_hub is replaced by a fake."""

import json
import os
import sys
import time
import types

import pytest

from tgllava import layout
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


def test_is_llava_hf():
    assert layout.is_llava_hf(LLAVA_HF_CONFIG)
    assert layout.is_llava_hf({"model_type": "llava"})
    assert layout.is_llava_hf({"architectures": ["LlavaForConditionalGeneration"]})
    assert not layout.is_llava_hf({"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"]})
    assert not layout.is_llava_hf({})


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
    llm, clip = layout.map_llava_hf_names(names)
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
    llm, clip = layout.map_llava_hf_names(names)
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
        layout.map_llava_hf_names(["lm_head.weight", "image_newline"])
    llm, clip = layout.map_llava_hf_names(["lm_head.weight", "image_newline"], strict=False)
    assert llm == {"lm_head.weight": "lm_head.weight"} and clip == {}
    with pytest.raises(CheckpointError, match="both map to lm_head.weight"):
        layout.map_llava_hf_names(["lm_head.weight", "language_model.lm_head.weight"])


def test_llava_hf_config():
    out = layout.llava_hf_config(LLAVA_HF_CONFIG)
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
    out = layout.llava_hf_config(cfg)
    assert (out["hidden_size"], out["num_key_value_heads"]) == (5120, 40)
    assert out["mm_vision_select_feature"] == "cls_patch"
    # no vision_config: LlavaConfig's CLIP-L/14-336 default
    cfg = {"model_type": "llava", "text_config": {"model_type": "qwen2", "hidden_size": 896,
                                                   "num_attention_heads": 14, "num_key_value_heads": 2}}
    out = layout.llava_hf_config(cfg)
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
    ({"model_type": "llava_llama", "architectures": []}, "not a llava-hf config"),
])
def test_llava_hf_config_refusals(change, match):
    cfg = dict(LLAVA_HF_CONFIG, **change)
    with pytest.raises(CheckpointError, match=match):
        layout.llava_hf_config(cfg)


# --- tower resolution ------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Replace huggingface_hub by a fake that records calls and never touches the network."""
    calls = []
    fake = types.ModuleType("huggingface_hub")

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        raise OSError("network disabled in tests")

    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    return calls


def make_snapshot(cache, repo, rev, with_config=True, mtime=None):
    folder = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / rev
    folder.mkdir(parents=True)
    if with_config:
        (folder / "config.json").write_text("{}")
    if mtime is not None:
        os.utime(folder, (mtime, mtime))
    return folder


def test_local_folder_is_returned(tmp_path, no_network):
    assert layout.resolve_tower(str(tmp_path)) == str(tmp_path)
    assert layout.resolve_tower(tmp_path, kind="text") == str(tmp_path)
    assert no_network == []


def test_hf_cache_prefers_refs_main(tmp_path, monkeypatch, no_network):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    now = time.time()
    old = make_snapshot(cache, "openai/clip-vit-large-patch14-336", "aaa", mtime=now - 100)
    make_snapshot(cache, "openai/clip-vit-large-patch14-336", "bbb", mtime=now)
    refs = cache / "models--openai--clip-vit-large-patch14-336" / "refs"
    refs.mkdir()
    (refs / "main").write_text("aaa\n")
    assert layout.resolve_tower("openai/clip-vit-large-patch14-336") == str(old)
    assert no_network == []


def test_hf_cache_newest_snapshot_with_config(tmp_path, monkeypatch, no_network):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    now = time.time()
    make_snapshot(cache, "org/tower", "old", mtime=now - 100)
    newest = make_snapshot(cache, "org/tower", "new", mtime=now - 10)
    make_snapshot(cache, "org/tower", "partial", with_config=False, mtime=now)
    assert layout.resolve_tower("org/tower") == str(newest)


def test_hf_home_and_default_cache(tmp_path, monkeypatch, no_network):
    home = tmp_path / "hfhome"
    monkeypatch.setenv("HF_HOME", str(home))
    snap = make_snapshot(home / "hub", "org/tower", "r1")
    assert layout.hf_cache_dir() == str(home / "hub")
    assert layout.resolve_tower("org/tower") == str(snap)
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    snap = make_snapshot(tmp_path / "user" / ".cache" / "huggingface" / "hub", "org/tower", "r2")
    assert layout.resolve_tower("org/tower") == str(snap)


def test_download_only_when_online(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert layout.resolve_tower("org/missing") is None
    assert no_network == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert layout.resolve_tower("org/missing", kind="text") is None  # fake download fails
    assert no_network and no_network[0][0] == "org/missing"
    patterns = no_network[0][1]
    for p in ("config.json", "*.safetensors", "*.bin", "*.json", "*.txt"):
        assert p in patterns
    # paths that are not repo ids are never sent to the hub
    no_network.clear()
    assert layout.resolve_tower(str(tmp_path / "no" / "such" / "dir")) is None
    assert layout.resolve_tower("./relative/missing") is None
    assert no_network == []


def test_download_success_and_missing_hub(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    sys.modules["huggingface_hub"].snapshot_download = lambda repo_id, allow_patterns=None: "/fake/snap"
    assert layout.resolve_tower("org/tower") == "/fake/snap"
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert layout.resolve_tower("org/tower") is None


def test_resolve_tower_arguments(no_network):
    with pytest.raises(ValueError, match="kind"):
        layout.resolve_tower("x", kind="audio")
    assert layout.resolve_tower(None) is None
    assert layout.resolve_tower("") is None
