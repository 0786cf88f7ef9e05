"""SigLIP test fixtures: the deterministic weights of tests/data/siglip and the checkpoint folders built from them.

tests/data/siglip holds what transformers computed (made by hand with make_siglip_fixtures.py, never by the
tests): the SiglipModel config, the tokenizer files, `weights.json` (a recipe: for every tensor its name,
shape, seed, scale and offset) and `reference.npz` (inputs and float64 outputs of transformers'
SiglipVisionModel / SiglipTextModel / SiglipTokenizer / SiglipImageProcessorPil).  The weights themselves are
not committed: `tensor()` rebuilds each one from its recipe entry (NumPy's PCG64 normal draws, cast to
float32), the same way the fixture script built the transformers model from them.  This module imports only
NumPy at the top, so the fixture script can use it under the throwaway venv that has torch but no tgllava.
"""
import json
import os
import shutil
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_DIR = os.path.join(HERE, "data", "siglip")
TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json")


def entry_for(name, shape):
    """The recipe entry of one tensor: linears scaled 1/sqrt(fan_in), norms near 1, biases and tables small."""
    shape = [int(d) for d in shape]
    seed = zlib.crc32(name.encode())
    last = name.rsplit(".", 1)[-1]
    if "norm" in name and last == "weight":
        scale, offset = 0.1, 1.0
    elif last == "bias" or "norm" in name:
        scale, offset = 0.1, 0.0
    elif "embedding" in name and "patch" not in name:
        scale, offset = 0.5, 0.0
    elif len(shape) >= 2:
        scale, offset = 1.0 / np.sqrt(int(np.prod(shape[1:]))), 0.0
    else:
        scale, offset = 0.5, 0.0
    return {"name": name, "shape": shape, "seed": seed, "scale": float(scale), "offset": float(offset)}


def tensor(entry):
    """The float32 tensor of a recipe entry."""
    rng = np.random.default_rng(entry["seed"])
    values = rng.standard_normal(entry["shape"]) * entry["scale"] + entry["offset"]
    return values.astype(np.float32)


def pixels_from_codes(codes):
    """Normalised float32 pixels k / 127.5 - 1 of uint8 codes k (the values SigLIP's preprocessing gives)."""
    return (np.asarray(codes).astype(np.float32) / np.float32(127.5) - np.float32(1)).astype(np.float32)


def recipe():
    with open(os.path.join(FIXTURE_DIR, "weights.json")) as f:
        return json.load(f)


def config():
    with open(os.path.join(FIXTURE_DIR, "config.json")) as f:
        return json.load(f)


def reference():
    return dict(np.load(os.path.join(FIXTURE_DIR, "reference.npz")))


def tensors(prefix=None, strip=False):
    """{name: float32 array} of the SiglipModel weights, only the names under `prefix` when given
    (strip=True drops the prefix: the unprefixed single-tower layout of transformers 5)."""
    out = {}
    for e in recipe()["tensors"]:
        name = e["name"]
        if prefix and not name.startswith(prefix):
            continue
        out[name[len(prefix):] if (prefix and strip) else name] = tensor(e)
    return out


def write_tower(folder, layout="SiglipModel", tokenizer=True):
    """Write a SigLIP tower folder in one of the layouts users have; returns the folder.

    layout: "SiglipModel" (vision_model.* + text_model.*, the SiglipConfig), "SiglipVisionModel" /
    "SiglipTextModel" (one tower, prefixed, its own config), or the same with ", unprefixed" (the
    names without vision_model. / text_model.).  tokenizer=True copies the SigLIP tokenizer files.
    """
    from tgllava.fixtures import save_safetensors

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    cfg = config()
    if layout == "SiglipModel":
        weights = tensors()
    else:
        kind = layout.split(",")[0]
        part = {"SiglipVisionModel": "vision", "SiglipTextModel": "text"}[kind]
        weights = tensors(f"{part}_model.", strip=layout.endswith("unprefixed"))
        sub = dict(cfg[f"{part}_config"])
        sub["model_type"] = f"siglip_{part}_model"
        sub["architectures"] = [kind]
        cfg = sub
    save_safetensors(os.path.join(folder, "model.safetensors"), weights)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    if tokenizer:
        for name in TOKENIZER_FILES:
            src = os.path.join(FIXTURE_DIR, name)
            if os.path.exists(src):
                shutil.copy(src, folder)
    return folder


def edit_config(folder, change):
    """Update keys of folder/config.json."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(change)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)


def llm_sizes(**change):
    """tgllava.fixtures sizes of a random TG-LLaVA LLM whose TG modules and projector fit the fixture's towers."""
    from tgllava import fixtures

    cfg = config()
    v, t = cfg["vision_config"], cfg["text_config"]
    sizes = dict(fixtures.DEMO_SIZES, image=v["image_size"], patch=v["patch_size"], v_hidden=v["hidden_size"],
                 t_hidden=t["hidden_size"])
    sizes.update(change)
    return sizes


def checkpoint(folder, layout="SiglipModel"):
    """(llm_dir, tower_dir) under `folder`: the fixture's SigLIP tower in `layout` and a random TG-LLaVA LLM
    (tgllava.fixtures.build_llm: FOM with 25 queries, DP with 4 x 25 positions) whose config names the tower."""
    from tgllava import fixtures

    tower = write_tower(os.path.join(folder, "siglip"), layout)
    llm = os.path.join(folder, "llm")
    fixtures.build_llm(llm, tower, llm_sizes())
    return llm, tower
