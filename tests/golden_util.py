"""Shared helpers for tests: where the golden sets are, and golden checkpoints materialized once per session.

The one rule every test follows to find the golden sets (SPEC 5): the folder named by
$TGLLAVA_GOLDEN, else ../shared/golden relative to the checkout (the folder above tests/).
When neither exists, importing this module raises GoldenSetsNotFound, which names the places it
looked: the tests that need the golden sets then fail (at collection), they never skip.
"""
import functools
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)


class GoldenSetsNotFound(RuntimeError):
    """The golden sets are not where the tests look for them."""


def find_golden():
    """The golden-set folder: $TGLLAVA_GOLDEN, else ../shared/golden beside the checkout."""
    env = os.environ.get("TGLLAVA_GOLDEN")
    if env:
        if os.path.isfile(os.path.join(env, "materialize.py")):
            return os.path.abspath(env)
        raise GoldenSetsNotFound(f"TGLLAVA_GOLDEN={env} is not a golden-set folder (no materialize.py in it)")
    default = os.path.normpath(os.path.join(CHECKOUT, "..", "shared", "golden"))
    if os.path.isfile(os.path.join(default, "materialize.py")):
        return default
    raise GoldenSetsNotFound(
        f"golden sets not found: $TGLLAVA_GOLDEN is not set and {default} (../shared/golden relative to the "
        f"checkout {CHECKOUT}) has no materialize.py; set TGLLAVA_GOLDEN to the folder holding them")


GOLDEN = find_golden()
FIXTURES = os.path.join(GOLDEN, "fixtures")
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
