"""Shared helpers of test_frontend_e2e.py and test_cli.py: golden checkpoints with tokenizer files.

`golden_set(name)` gives a golden set (SPEC 5), materialized once per test
process by golden_util.checkpoint, in folders of its own (the weights linked)
with tokenizer files written by
tgllava.fixtures' builders: a byte-level BPE tokenizer.json for the LLM (its
ids stay below the golden vocab of 1000) and a CLIP vocab.json + merges.txt
whose ids stay below the golden CLIP text vocab of 1024, with
<|startoftext|> = 1022 and <|endoftext|> = 1023 as in the golden text
guides.  `golden_model(name)` loads it once.  The golden sets are found by
golden_util's one rule ($TGLLAVA_GOLDEN, else ../shared/golden beside the
checkout); when they are missing the tests fail, saying where it looked.
"""

import atexit
import os
import shutil
import tempfile

from golden_util import FIXTURES, GOLDEN, checkpoint

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


def golden_set(name):
    """(llm_dir, clip_dir, image_path) of golden set `name`, with tokenizer files: folders of their own whose
    weights are links to golden_util's one materialized copy (configs copied, so a test may edit them)."""
    if name not in _sets:
        from tgllava import fixtures

        dirs = {}
        for part, src in zip(("llm", "clip"), checkpoint(name)):
            dirs[part] = os.path.join(_tmpdir(), name, part)
            os.makedirs(dirs[part])
            os.symlink(os.path.join(src, "model.safetensors"), os.path.join(dirs[part], "model.safetensors"))
            shutil.copy(os.path.join(src, "config.json"), dirs[part])
        assert fixtures.write_llm_tokenizer(dirs["llm"], vocab_size=1000) <= 1000
        assert fixtures.write_clip_tokenizer(dirs["clip"], vocab_size=1024) == (1022, 1023)
        _sets[name] = (dirs["llm"], dirs["clip"], os.path.join(GOLDEN, name, "image.png"))
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
