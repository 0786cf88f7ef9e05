"""Tower folders by name: a local path, a snapshot in the Hugging Face cache, or a download.

`mm_vision_tower` / `mm_text_tower` of an LLM config name a folder or a Hub repository
(openai/clip-vit-large-patch14-336).  `resolve_tower` finds it through `huggingface_hub` (its cache
lookup, environment variables and offline switch); with download=False (what `tgllava info` asks)
it never goes to the network.  `find_in_hf_cache` only looks in the cache.
"""

import os

_DOWNLOAD_PATTERNS = ["config.json", "*.safetensors", "*.bin", "*.json", "*.txt", "spiece.model"]


def _is_repo_id(name):
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def find_in_hf_cache(repo_id, cache_dir=None):
    """The cached snapshot folder of `repo_id` holding config.json, or None.

    The hub's own lookup (`try_to_load_from_cache`: the snapshot `refs/main` points to, in the
    cache its environment variables name), as transformers uses when loading a tower offline.
    """
    from huggingface_hub import try_to_load_from_cache

    if not repo_id or not _is_repo_id(repo_id):
        return None
    path = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    return os.path.dirname(path) if isinstance(path, str) else None


def resolve_tower(name_or_path, kind="vision", download=True):
    """Find the folder of a tower checkpoint (`mm_vision_tower` / `mm_text_tower`).

    A local folder is returned as given; otherwise the name is looked up in the Hugging Face
    cache; otherwise, unless download=False or the hub is offline (HF_HUB_OFFLINE), the config,
    weights and tokenizer files are downloaded with `snapshot_download`.  Returns None when
    nothing is found (or the download fails).
    """
    if kind not in ("vision", "text"):
        raise ValueError(f"kind must be 'vision' or 'text', got {kind!r}")
    if not name_or_path:
        return None
    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):
        return name_or_path
    found = find_in_hf_cache(name_or_path)
    if found is not None:
        return found
    from huggingface_hub import constants, snapshot_download

    if not download or constants.HF_HUB_OFFLINE or "/" not in name_or_path or not _is_repo_id(name_or_path):
        return None
    try:
        return snapshot_download(name_or_path, allow_patterns=list(_DOWNLOAD_PATTERNS))
    except Exception:  # network, auth or missing repo: report "not found"
        return None
