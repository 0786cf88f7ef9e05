"""Shared helpers of test_frontend_e2e.py and test_cli.py: golden checkpoints with tokenizer files.

`golden_set(name)` materializes a golden set (SPEC 5) once per test process
into a temporary folder and gives both folders tokenizer files written by
tgllava.fixtures' builders: a byte-level BPE tokenizer.json for the LLM (its
ids stay below the golden vocab of 1000) and a CLIP vocab.json + merges.txt
whose ids stay below the golden CLIP text vocab of 1024, with
<|startoftext|> = 1022 and <|endoftext|> = 1023 as in the golden text
guides.  `golden_model(name)` loads it once.  The golden sets are found by
golden_util's one rule ($TGLLAVA_GOLDEN, else ../shared/golden beside the
checkout); when they are missing the tests fail, saying where it looked.
"""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

from golden_util import FIXTURES, GOLDEN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "What is in this image?"

_sets, _models = {}, {}
_tmp = []


def _tmpdir():
    if not _tmp:
        d = tempfile.mkdtemp(prefix="tgllava-frontend-")
        _tmp.append(d)
        atexit.register(shutil.rmtree, d, True)
    return _tmp[0]


def _materialize_module():
    path = os.path.join(GOLDEN, "materialize.py")
    sys.path.insert(0, GOLDEN)
    try:
        spec = importlib.util.spec_from_file_location("_golden_materialize", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(GOLDEN)
    return mod


def golden_set(name):
    """(llm_dir, clip_dir, image_path) of golden set `name`, with tokenizer files."""
    if name not in _sets:
        from tgllava import fixtures

        mat = _materialize_module()
        out = os.path.join(_tmpdir(), name)
        clip_dir, llm_dir = mat.materialize(os.path.join(GOLDEN, name), out)
        assert fixtures.write_llm_tokenizer(llm_dir, vocab_size=1000) <= 1000
        assert fixtures.write_clip_tokenizer(clip_dir, vocab_size=1024) == (1022, 1023)
        _sets[name] = (llm_dir, clip_dir, os.path.join(GOLDEN, name, "image.png"))
    return _sets[name]


def golden_model(name):
    if name not in _models:
        import tgllava

        llm_dir, clip_dir, _ = golden_set(name)
        _models[name] = tgllava.load(llm_dir, clip_dir=clip_dir, progress=False)
    return _models[name]


def subprocess_env():
    import tgllava  # the package this test process imported (installed or in-place), not the source tree
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tgllava.__file__)))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


_answers = {}


def cached_chat(name, image, question=QUESTION, **kw):
    """chat() on golden model `name`, computed once per process for the same arguments."""
    from tgllava import chat

    key = (name, image, question, tuple(sorted(kw.items())))
    if key not in _answers:
        _answers[key] = chat.chat(golden_model(name), image, question, **kw)
    return _answers[key]


def second_image(name):
    """The golden picture of `name` mirrored left-right (a second, different image)."""
    from PIL import Image

    path = os.path.join(_tmpdir(), f"{name}-mirrored.png")
    if not os.path.exists(path):
        Image.open(golden_set(name)[2]).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(path)
    return path
