"""What a checkpoint header records: every setting that changes an answer.

A resumed run reuses the answers already in its checkpoints, so it must be
the run that wrote them.  `run_settings` gathers everything an answer
depends on - the tgllava version, the model's identity, the storage dtype,
the DP latents used, the prompt style and chat template, the token budget,
the sampling (greedy: temperature 0, seed 0) and the TG switches - and the
runner refuses to mix checkpoints whose settings differ.

A model's identity (`model_identity`) is, for a loaded tgllava.Model (or
anything with an ``llm_dir``), its architecture sizes and, for the LLM
folder and the CLIP folder (the text tower of TG-LLaVA, else the vision
tower), the real path plus a fingerprint of the files a load reads:
each one's size, modification time and a SHA-256 of its first MiB (all of
a config, index or tokenizer file; a safetensors header).  For other
models (a test fake, a user's wrapper), which have no files to go by, it
is a hash of their `config` (their `dtype` attribute is recorded too).

`describe_mismatch` names the first setting that differs and says how to
start fresh.
"""

import hashlib
import json
import os

# The files tgllava.load and the tokenizers read from a checkpoint folder.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".tiktoken")
_HASHED_PREFIX_BYTES = 1 << 20


def file_fingerprint(path):
    """'size mtime_ns sha256-of-the-first-MiB' of one file."""
    st = os.stat(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(_HASHED_PREFIX_BYTES)).hexdigest()
    return f"{st.st_size} {st.st_mtime_ns} {digest}"


def folder_fingerprint(folder):
    """{file name: file_fingerprint} of the model files directly in a checkpoint folder."""
    paths = {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))
             if name.endswith(_MODEL_FILE_SUFFIXES) and not name.startswith(".")}
    return {name: file_fingerprint(path) for name, path in paths.items() if os.path.isfile(path)}


def _unwrap(model):
    """The tgllava.Model inside an eval adapter, else the model itself."""
    from .adapter import ModelAdapter

    return model.model if isinstance(model, ModelAdapter) else model


def model_identity(model):
    """What identifies a model's weights and architecture (see the module text)."""
    model = _unwrap(model)
    llm_dir = getattr(model, "llm_dir", None)
    if not llm_dir:  # no files to go by: a hash of the config
        config = json.dumps(getattr(model, "config", None), sort_keys=True, default=str)
        return {"config": hashlib.sha256(config.encode("utf-8")).hexdigest()}
    identity = {"llm_dir": os.path.realpath(llm_dir), "llm_files": folder_fingerprint(llm_dir)}
    clip_dir = getattr(model, "clip_dir", None)
    if clip_dir:
        identity.update(clip_dir=os.path.realpath(clip_dir), clip_files=folder_fingerprint(clip_dir))
    sizes = getattr(model, "sizes", None)
    if sizes is not None:
        identity["sizes"] = {k: sizes[k] for k in sorted(sizes)}
    return identity


def run_settings(model, prompt_style, conv_mode, max_new_tokens, use_fom, use_dp):
    """The settings a checkpoint header records (a JSON-able dict, compared with ==)."""
    from tgllava import __version__

    model = _unwrap(model)
    sizes = getattr(model, "sizes", None) or {}
    settings = {
        "tgllava": __version__,
        "dtype": None if getattr(model, "dtype", None) is None else str(model.dtype),
        "prompt_style": prompt_style,
        "conv_mode": conv_mode if prompt_style == "llava" else None,
        "max_new_tokens": int(max_new_tokens),
        "temperature": 0.0,  # greedy decoding, as VLMEvalKit's LLaVA wrapper
        "seed": 0,
        "use_fom": bool(use_fom),
        "use_dp": bool(use_dp),
        "n_latents": sizes.get("p_latents"),  # every DP latent (the runner never asks for fewer)
        "model": model_identity(model),
    }
    return json.loads(json.dumps(settings))  # as a header reads back (tuples as lists), so == compares like for like


def first_difference(old, new, where=""):
    """(key path, old value, new value) of the first entry where two settings dicts differ, else None."""
    missing = object()
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key, missing), new.get(key, missing)
        path = f"{where}.{key}" if where else str(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, path)
            if found:
                return found
        elif a != b:
            unrecorded = "(absent)" if where else "(not recorded: an older tgllava)"
            return path, unrecorded if a is missing else repr(a), "(absent)" if b is missing else repr(b)
    return None


def describe_mismatch(path, recorded, current, current_is="this run"):
    """A message saying which setting of checkpoint `path` differs from `current_is`'s, and what to do."""
    recorded = recorded if isinstance(recorded, dict) else {}
    key, was, now = first_difference(recorded, current) or ("settings", repr(recorded), repr(current))
    return (f"{path} was written with {key} = {was}, but {current_is} has {key} = {now}; its answers "
            "cannot be mixed with these. Rerun with the settings it was made with to resume, or start "
            f"fresh: delete {path} (or use another work_dir / --work-dir, or model_name / --model-name)")
