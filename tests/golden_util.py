"""Shared helpers for tests: locate ../shared/golden, materialize a golden checkpoint once per session."""
import functools
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.environ.get("TGLLAVA_GOLDEN") or os.path.normpath(os.path.join(HERE, "..", "..", "shared", "golden"))
SETS = ["tg-vicuna-tiny", "tg-qwen2-tiny", "llava15-tiny"]
_ROOT = tempfile.mkdtemp(prefix="tgllava-golden-")


@functools.lru_cache(maxsize=None)
def checkpoint(name):
    """(llm_dir, clip_dir) of golden set `name`, written once per test session."""
    out = os.path.join(_ROOT, name)
    if not os.path.exists(os.path.join(out, "llm", "config.json")):
        subprocess.check_call([sys.executable, os.path.join(GOLDEN, "materialize.py"), os.path.join(GOLDEN, name), out],
                              stdout=subprocess.DEVNULL)
    return os.path.join(out, "llm"), os.path.join(out, "clip")


@functools.lru_cache(maxsize=None)
def io(name):
    return dict(np.load(os.path.join(GOLDEN, name, "io.npz")))


@functools.lru_cache(maxsize=None)
def model(name, device="cpu"):
    import tgllava
    llm, clip = checkpoint(name)
    return tgllava.load(llm, clip, device=device)
